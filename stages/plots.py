"""Plotting helpers shared by the host stages: binned efficiencies and overlaid histograms.

Figures are drawn on an explicit Agg canvas (no pyplot), so plotting neither switches the backend of
a notebook that imports this module nor leaves open figures behind in a long run, and every PNG is
written atomically (a resumed run never finds half a file). Every helper takes several series so
that A/B arms (say, with and without TrackingBERT features) can be overlaid on one figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tb_plugin.atomic import atomic_path

DPI = 100
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*")

# One series: (x values, per-entry pass flags). A mapping gives each series its legend label.
EfficiencySeries = tuple[np.ndarray, np.ndarray]


def save_figure(fig: Figure, path: str | Path) -> Path:
    """PNG written atomically through an Agg canvas."""
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def wilson_interval(passed: np.ndarray, total: np.ndarray, z: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Efficiency and its binomial (Wilson score, 1 sigma) interval per bin; NaN where a bin is empty.

    Wilson rather than sqrt(e(1 - e) / n): the naive error is zero at e = 0 or 1, which draws a bin of
    three particles, all found, as exact. Wilson stays inside [0, 1] and keeps a width there.
    """
    passed = np.asarray(passed, dtype=np.float64)
    total = np.asarray(total, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        eff = passed / total
        denom = 1.0 + z**2 / total
        centre = (eff + z**2 / (2 * total)) / denom
        half = z * np.sqrt(eff * (1 - eff) / total + z**2 / (4 * total**2)) / denom
    empty = total <= 0
    eff[empty] = centre[empty] = half[empty] = np.nan
    # rounding can put a bound a hair on the wrong side of e at e = 0 or 1; error bars must not be negative
    lower = np.minimum(np.clip(centre - half, 0.0, 1.0), eff)
    upper = np.maximum(np.clip(centre + half, 0.0, 1.0), eff)
    return eff, lower, upper


def binned_efficiency(
    x: np.ndarray, passed: np.ndarray, bins: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(efficiency, lower, upper, entries) per bin; entries outside the bins or with NaN x are dropped."""
    x = np.asarray(x, dtype=np.float64)
    passed = np.asarray(passed, dtype=bool)
    if x.shape != passed.shape:
        raise ValueError(f"x has shape {x.shape} but passed has shape {passed.shape}; they must match")
    total, _ = np.histogram(x, bins=bins)
    hits, _ = np.histogram(x[passed], bins=bins)
    eff, lo, hi = wilson_interval(hits, total)
    return eff, lo, hi, total


def _as_series(
    series: Mapping[str, EfficiencySeries] | Sequence[EfficiencySeries],
) -> list[tuple[str, EfficiencySeries]]:
    if isinstance(series, Mapping):
        return [(str(label), s) for label, s in series.items()]
    return [("" if len(series) == 1 else f"series {i}", s) for i, s in enumerate(series)]


def plot_efficiency_curves(
    series: Mapping[str, EfficiencySeries] | Sequence[EfficiencySeries],
    bins: np.ndarray,
    xlabel: str,
    out_path: str | Path,
    *,
    ylabel: str = "efficiency",
    title: str | None = None,
    logx: bool = False,
) -> Path:
    """Several binned efficiencies overlaid, points at bin centres with Wilson error bars.

    Points of different series are nudged apart by a small fraction of the bin so overlapping error
    bars stay readable. Empty bins are left out.
    """
    entries = _as_series(series)
    if not entries:
        raise ValueError("no series to plot")
    bins = np.asarray(bins, dtype=np.float64)
    centres = np.sqrt(bins[:-1] * bins[1:]) if logx else 0.5 * (bins[:-1] + bins[1:])
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    n = len(entries)
    for i, (label, (x, passed)) in enumerate(entries):
        eff, lo, hi, total = binned_efficiency(x, passed, bins)
        shown = total > 0
        nudge = (i - (n - 1) / 2) * 0.3 / n  # fraction of the bin (of its log width with logx)
        if logx:
            xs = centres * (bins[1:] / bins[:-1]) ** nudge
        else:
            xs = centres + nudge * (bins[1:] - bins[:-1])
        ax.errorbar(
            xs[shown],
            eff[shown],
            yerr=[eff[shown] - lo[shown], hi[shown] - eff[shown]],
            fmt=MARKERS[i % len(MARKERS)],
            color=COLOURS[i % len(COLOURS)],
            markersize=4,
            capsize=2,
            label=f"{label} ({int(total.sum())} entries)" if label else None,
        )
    if logx:
        ax.set_xscale("log")
    ax.set_xlim(bins[0], bins[-1])
    ax.set_ylim(0.0, 1.1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if any(label for label, _ in entries):
        ax.legend(loc="lower right", fontsize="small")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, out_path)


def plot_binned_efficiency(
    x: np.ndarray,
    passed: np.ndarray,
    bins: np.ndarray,
    xlabel: str,
    out_path: str | Path,
    *,
    label: str = "",
    ylabel: str = "efficiency",
    title: str | None = None,
    logx: bool = False,
) -> Path:
    """One binned efficiency (fraction of entries with `passed` per bin of `x`)."""
    return plot_efficiency_curves({label: (x, passed)}, bins, xlabel, out_path, ylabel=ylabel, title=title, logx=logx)


def plot_histograms(
    series: Mapping[str, np.ndarray],
    bins: np.ndarray | int,
    xlabel: str,
    out_path: str | Path,
    *,
    ylabel: str = "entries",
    title: str | None = None,
    density: bool = False,
    logy: bool = False,
) -> Path:
    """Step histograms overlaid (score distributions of true and false edges, say)."""
    if not series:
        raise ValueError("no series to plot")
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for i, (label, values) in enumerate(series.items()):
        values = np.asarray(values, dtype=np.float64)
        ax.hist(
            values[np.isfinite(values)],
            bins=bins,
            histtype="step",
            density=density,
            linewidth=1.5,
            color=COLOURS[i % len(COLOURS)],
            label=f"{label} ({values.size})",
        )
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, out_path)
