"""Figures of the A/B benchmark: track efficiency vs pT, edge ROC, metric differences, low-label sweep.

Drawn on explicit Agg figures and written atomically through `stages.plots.save_figure`, like every
other figure of the project. The module-embedding PCA is the pretraining one, re-exported here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from stages.plots import COLOURS, MARKERS, plot_efficiency_curves, save_figure
from tb_plugin.ab.report import format_signed, verdict
from tb_plugin.ab.statistics import ARMS, Difference
from tb_plugin.pretraining.metrics import roc_auc, roc_curve
from tb_plugin.pretraining.plots import plot_embedding_pca

# the bins of the stages' own efficiency-vs-pT plots (stages.graph_metrics.PT_BINS_GEV), repeated here so
# that plotting does not import torch through stages.graph_metrics
PT_BINS_GEV = np.logspace(-1, 2, 16)  # 0.1 .. 100 GeV
ROC_MAX_POINTS = 4000  # points drawn per ROC curve; the curve of a million edges is no sharper with more

VERDICT_COLOURS = {"better": "#2ca02c", "worse": "#d62728", "no significant difference": "#7f7f7f"}


def _flat(values: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """One array from an array or a list of per-event arrays (the runner keeps them per event)."""
    if isinstance(values, np.ndarray):
        return values.ravel()
    parts = [np.asarray(v).ravel() for v in values]
    return np.concatenate(parts) if parts else np.zeros(0)


def plot_efficiency_vs_pt(
    arms: Mapping[str, tuple[np.ndarray | Sequence[np.ndarray], np.ndarray | Sequence[np.ndarray]]],
    out_path: str | os.PathLike,
    *,
    bins: np.ndarray = PT_BINS_GEV,
    title: str = "Track efficiency (two_way) vs pT",
) -> Path:
    """Track efficiency vs particle pT per arm, Wilson intervals, log x: where in pT the arms differ."""
    series = {arm: (_flat(pt), _flat(reco).astype(bool)) for arm, (pt, reco) in arms.items()}
    return plot_efficiency_curves(
        series, bins, "particle pT [GeV]", out_path, ylabel="track efficiency", title=title, logx=True
    )


def _thinned(fpr: np.ndarray, tpr: np.ndarray, max_points: int = ROC_MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most max_points of the curve's own points, the first and last kept; evenly spaced in index,
    plus a log-spaced set so that the low-FPR end (drawn on a log axis) keeps its detail."""
    if len(fpr) <= max_points:
        return fpr, tpr
    even = np.linspace(0, len(fpr) - 1, max_points // 2).astype(np.int64)
    logs = np.geomspace(1, len(fpr), max_points // 2).astype(np.int64) - 1
    keep = np.unique(np.r_[even, logs, len(fpr) - 1])
    return fpr[keep], tpr[keep]


def plot_roc(
    arms: Mapping[str, tuple[np.ndarray | Sequence[np.ndarray], np.ndarray | Sequence[np.ndarray]]],
    out_path: str | os.PathLike,
    *,
    title: str = "Edge classifier ROC",
) -> Path:
    """ROC of the edge scores per arm, AUC in the legend; linear axes left, log false-positive rate right,
    because edge classifiers sit near AUC 1 where the linear curves overlap."""
    if not arms:
        raise ValueError("no arms to plot")
    fig = Figure(figsize=(11.0, 4.8))
    linear, logx = fig.subplots(1, 2)
    min_fpr = 1.0
    for i, (arm, (scores, labels)) in enumerate(arms.items()):
        scores, labels = _flat(scores), _flat(labels)
        fpr, tpr = roc_curve(scores, labels)
        auc = roc_auc(scores, labels)
        fpr, tpr = _thinned(fpr, tpr)
        n_neg = int(len(labels) - np.asarray(labels, dtype=bool).sum())
        min_fpr = min(min_fpr, 1.0 / max(n_neg, 1))
        for ax in (linear, logx):
            ax.plot(fpr, tpr, color=COLOURS[i % len(COLOURS)], label=f"{arm} (AUC = {auc:.4f}, {len(labels)} edges)")
    linear.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="chance")
    linear.set_xlim(0.0, 1.0)
    logx.set_xscale("log")
    logx.set_xlim(max(min_fpr, 1e-6), 1.0)
    for ax in (linear, logx):
        ax.set_ylim(0.0, 1.0)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize="small")
    linear.set_title(title)
    logx.set_title(f"{title}, log false positive rate")
    fig.tight_layout()
    return save_figure(fig, out_path)


def _spec_list(metrics: Sequence[Mapping[str, Any] | str]) -> list[dict[str, Any]]:
    """Metric specs ({name, label, higher_is_better}) from specs or bare names."""
    return [{"name": m, "label": m, "higher_is_better": True} if isinstance(m, str) else dict(m) for m in metrics]


def plot_metric_differences(
    differences: Mapping[str, Difference | Mapping[str, Any]],
    metrics: Sequence[Mapping[str, Any] | str],
    out_path: str | os.PathLike,
    pair: tuple[str, str] = ARMS,
) -> Path:
    """Forest plot: each metric's difference (arm - control of `pair`) with its interval and a zero line.

    Metrics have unrelated scales (a purity difference of 0.01 beside an edges-per-event difference of
    1000), so each metric gets its own row with its own x axis centred on zero; the colour gives the
    verdict (green better, red worse, grey no significant difference), which accounts for metrics where
    lower is better.
    """
    specs = [s for s in _spec_list(metrics) if s["name"] in differences]
    if not specs:
        raise ValueError("none of the metrics has a difference to plot")
    fig = Figure(figsize=(8.0, 0.55 * len(specs) + 1.4))
    axes = np.atleast_1d(fig.subplots(len(specs), 1, sharex=False))
    level = None
    for ax, spec in zip(axes, specs):
        raw = differences[spec["name"]]
        d = raw if isinstance(raw, Difference) else Difference.from_dict(raw)
        level = d.confidence
        word = verdict(d, bool(spec.get("higher_is_better", True)))
        colour = VERDICT_COLOURS.get(word, "#7f7f7f")
        reach = max((abs(v) for v in (d.estimate, d.ci_low, d.ci_high) if math.isfinite(v)), default=0.0)
        reach = reach * 1.25 if reach > 0 else 1.0
        ax.axvline(0.0, color="black", linewidth=0.8)
        if math.isfinite(d.estimate):
            low = d.estimate - d.ci_low if math.isfinite(d.ci_low) else 0.0
            high = d.ci_high - d.estimate if math.isfinite(d.ci_high) else 0.0
            ax.errorbar(
                [d.estimate],
                [0.0],
                xerr=[[max(low, 0.0)], [max(high, 0.0)]],
                fmt="o",
                color=colour,
                capsize=3,
                markersize=5,
            )
        ax.set_xlim(-reach, reach)
        ax.set_ylim(-1.0, 1.0)
        ax.set_yticks([])
        ax.set_ylabel(spec.get("label", spec["name"]), rotation=0, ha="right", va="center", fontsize="small")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6, symmetric=True))
        ax.tick_params(axis="x", labelsize="x-small")
        ax.text(
            1.01,
            0.5,
            f"{format_signed(d.estimate)}\n{word}",
            transform=ax.transAxes,
            va="center",
            fontsize="x-small",
            color=colour,
        )
        ax.grid(axis="x", alpha=0.3)
    axes[-1].set_xlabel(f"{pair[1]} − {pair[0]} (each row on its own scale)")
    fig.suptitle(f"Differences with {level:.0%} paired-bootstrap intervals")
    handles = [Line2D([], [], marker="o", color=c, linestyle="", label=w) for w, c in VERDICT_COLOURS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize="x-small", frameon=False)
    fig.tight_layout(rect=(0.0, 0.04, 0.88, 0.97))
    return save_figure(fig, out_path)


def plot_comparisons(
    comparisons: Sequence[Mapping[str, Any]],
    metrics: Sequence[Mapping[str, Any] | str],
    out_path: str | os.PathLike,
    names: Sequence[str] | None = None,
) -> Path:
    """Forest plot of every comparison (arm − control): a row per metric on its own x scale centred on
    zero, one point with its interval per comparison, filled where the interval excludes zero. Set side
    by side, an arm against the baseline and the same arm against its control show at once which part of
    a gain the control shares. `names` picks the metrics (default: every metric some comparison has);
    a metric no comparison measures (shared stages: exactly zero everywhere) gets no row."""
    specs = [s for s in _spec_list(metrics) if any(_measured(c["differences"].get(s["name"])) for c in comparisons)]
    if names is not None:
        specs = [s for s in specs if s["name"] in names] or specs
    if not specs or not comparisons:
        raise ValueError("no comparison has a difference to plot")
    fig = Figure(figsize=(9.0, 0.42 * len(specs) * max(1, len(comparisons) / 2) + 1.6))
    axes = np.atleast_1d(fig.subplots(len(specs), 1, sharex=False))
    level = 0.95
    offsets = np.linspace(0.5, -0.5, len(comparisons)) if len(comparisons) > 1 else np.zeros(1)
    for ax, spec in zip(axes, specs):
        level = _comparison_row(ax, spec, comparisons, offsets) or level
    axes[-1].set_xlabel("difference (each row on its own scale; filled: the interval excludes zero)")
    fig.suptitle(f"Every comparison with {level:.0%} paired-bootstrap intervals")
    handles = [
        Line2D([], [], marker=MARKERS[i % len(MARKERS)], color=COLOURS[i % len(COLOURS)], linestyle="", label=name)
        for i, name in enumerate(f"{c['arm']} − {c['control']}" for c in comparisons)
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 3), fontsize="x-small", frameon=False)
    rows = (len(handles) + 2) // 3
    fig.tight_layout(rect=(0.0, 0.03 * rows + 0.02, 1.0, 0.97))
    return save_figure(fig, out_path)


def _measured(raw: Difference | Mapping[str, Any] | None) -> bool:
    """Whether a difference says anything: not missing, and not exactly zero with a zero-width interval
    (a metric of stages the two arms share, the same event by event)."""
    if raw is None:
        return False
    d = raw if isinstance(raw, Difference) else Difference.from_dict(raw)
    return not (d.estimate == 0 and d.ci_low == 0 and d.ci_high == 0)


def _comparison_row(
    ax: Any, spec: Mapping[str, Any], comparisons: Sequence[Mapping[str, Any]], offsets: np.ndarray
) -> float | None:
    """One metric's row of the forest plot: a point with its interval per comparison, on an x axis of
    its own centred on zero. Returns the intervals' confidence level (None when no comparison has it)."""
    found = [(i, c["differences"].get(spec["name"])) for i, c in enumerate(comparisons)]
    ds = [(i, raw if isinstance(raw, Difference) else Difference.from_dict(raw)) for i, raw in found if raw]
    finite = [abs(v) for _, d in ds for v in (d.estimate, d.ci_low, d.ci_high) if math.isfinite(v)]
    reach = max(finite, default=0.0) * 1.25 or 1.0
    ax.axvline(0.0, color="black", linewidth=0.8)
    for i, d in ds:
        if not math.isfinite(d.estimate):
            continue
        low = max(d.estimate - d.ci_low, 0.0) if math.isfinite(d.ci_low) else 0.0
        high = max(d.ci_high - d.estimate, 0.0) if math.isfinite(d.ci_high) else 0.0
        colour = COLOURS[i % len(COLOURS)]
        ax.errorbar(
            [d.estimate],
            [offsets[i]],
            xerr=[[low], [high]],
            fmt=MARKERS[i % len(MARKERS)],
            color=colour,
            markerfacecolor=colour if d.significant else "white",
            capsize=2,
            markersize=5,
        )
    ax.set_xlim(-reach, reach)
    ax.set_ylim(-1.0, 1.0)
    ax.set_yticks([])
    label = spec.get("label", spec["name"])
    ax.set_ylabel(label if len(label) < 60 else label[:57] + "…", rotation=0, ha="right", va="center")
    ax.yaxis.label.set_fontsize("x-small")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, symmetric=True))
    ax.tick_params(axis="x", labelsize="x-small")
    ax.grid(axis="x", alpha=0.3)
    return ds[0][1].confidence if ds else None


def plot_validation_curves(results: Mapping[str, Any], out_path: str | os.PathLike) -> Path | None:
    """Validation loss per epoch of each trained downstream stage (a panel each), every arm in its colour
    and every seed a line: whether more epochs would still have helped an arm, and how far apart its
    seeds end. None when no seed recorded a curve."""
    arms = list(results["arms"])
    stages = sorted(
        {name for arm in arms for s in results["arms"][arm]["seeds"] for name in s.get("validation_loss", {})}
    )
    if not stages:
        return None
    fig = Figure(figsize=(5.0 * len(stages), 4.2))
    axes = np.atleast_1d(fig.subplots(1, len(stages)))
    for ax, stage in zip(axes, stages):
        for i, arm in enumerate(arms):
            for k, seed in enumerate(results["arms"][arm]["seeds"]):
                curve = seed.get("validation_loss", {}).get(stage)
                if not curve:
                    continue
                ax.plot(
                    curve["epoch"],
                    curve["loss"],
                    marker=MARKERS[i % len(MARKERS)],
                    markersize=3,
                    color=COLOURS[i % len(COLOURS)],
                    alpha=0.85,
                    linewidth=1,
                    label=arm if k == 0 else None,
                )
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation loss (weighted BCE)")
        ax.set_title(stage, fontsize="small")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="x-small", title="one line per seed", title_fontsize="x-small")
    fig.tight_layout()
    return save_figure(fig, out_path)


def _values(entry: Mapping[str, Any], key: str, n: int) -> np.ndarray:
    raw = entry.get(key)
    if raw is None:
        return np.zeros(n)
    values = np.asarray(raw, dtype=np.float64)
    if values.shape != (n,):
        raise ValueError(f"low_label '{key}' has {values.size} values for {n} labelled-event counts")
    return values


def plot_low_label(
    low_label: Mapping[str, Any], metrics: Sequence[Mapping[str, Any] | str], out_dir: str | os.PathLike
) -> list[Path]:
    """low_label_<metric>.png per metric: the metric vs the number of labelled training events (log2 x),
    both arms with their seed std as error bars. The claim that pretraining helps most with few labels
    is read off these. Metrics without any value in any arm get no figure."""
    n_labelled = np.asarray(low_label["n_labelled"], dtype=np.float64)
    arms = low_label["arms"]
    written = []
    for spec in _spec_list(metrics):
        name = spec["name"]
        present = [
            arm
            for arm in arms
            if name in arms[arm] and np.isfinite(_values(arms[arm][name], "mean", len(n_labelled))).any()
        ]
        if not present:  # the runner lists every metric, None where the pipeline has no such stage
            continue
        fig = Figure(figsize=(6.5, 4.5))
        ax = fig.add_subplot()
        for i, arm in enumerate(present):
            mean = _values(arms[arm][name], "mean", len(n_labelled))
            std = np.nan_to_num(_values(arms[arm][name], "std", len(n_labelled)))
            nudge = 2 ** ((i - (len(present) - 1) / 2) * 0.06)  # keep the arms' error bars apart
            ax.errorbar(
                n_labelled * nudge,
                mean,
                yerr=std,
                fmt=MARKERS[i % len(MARKERS)] + "-",
                color=COLOURS[i % len(COLOURS)],
                capsize=3,
                markersize=5,
                label=arm,
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(n_labelled, [str(int(n)) for n in n_labelled])
        ax.set_xlabel("labelled training events")
        ax.set_ylabel(spec.get("label", name))
        ax.set_title(f"{spec.get('label', name)} vs labelled events")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", title="error bars: std over seeds", title_fontsize="x-small")
        fig.tight_layout()
        written.append(save_figure(fig, Path(out_dir) / f"low_label_{name.replace('.', '_')}.png"))
    return written


__all__: Sequence[str] = [
    "PT_BINS_GEV",
    "plot_efficiency_vs_pt",
    "plot_roc",
    "plot_metric_differences",
    "plot_comparisons",
    "plot_validation_curves",
    "plot_low_label",
    "plot_embedding_pca",
]
