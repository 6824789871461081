"""REPORT.md of the A/B benchmark: metric differences with their intervals, costs, overhead, low-label sweep.

The wording follows the statistics and nothing else: a metric is called better or worse only when its
whole bootstrap interval lies on one side of zero, and "no significant difference" is never rephrased
as a gain. The report is rendered from results.json alone (differences may be `Difference` objects or
their `as_dict()` form), so it can be regenerated without rerunning anything.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tb_plugin.ab.statistics import ARMS, Difference, seed_summary
from tb_plugin.atomic import write_text

BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no significant difference"
NOT_COMPARED = "not compared"
MISSING = "n/a"
Pair = tuple[str, str]  # (control, arm)


# ---------------------------------------------------------------------------- number formats


def format_value(x: float | None) -> str:
    """4 significant digits for rates and scores; whole numbers with thousands separators from 1000 up
    (edges per event), where 4 significant digits would switch to exponent notation."""
    if x is None or not math.isfinite(x):
        return MISSING
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.4g}"


def format_signed(x: float | None) -> str:
    """format_value with an explicit sign, so a difference reads as a direction."""
    text = format_value(x)
    return text if text == MISSING or text.startswith("-") else f"+{text}"


def format_spread(x: float | None) -> str:
    """A std to 2 significant digits without exponent notation: its third digit is noise."""
    if x is None or not math.isfinite(x):
        return MISSING
    if x == 0:
        return "0"
    digits = max(0, 1 - math.floor(math.log10(abs(x))))
    return f"{x:,.{digits}f}"


def format_seconds(x: float | None) -> str:
    return MISSING if x is None or not math.isfinite(x) else f"{x:.3f}"


def mean_std_cell(mean: float, std: float, fmt=format_value, spread=format_spread) -> str:
    """'mean ± std', or the mean alone when the seeds agree (a std at floating-point rounding of the
    mean, e.g. 1e-16 from averaging equal values, counts as agreement)."""
    if not math.isfinite(mean):
        return MISSING
    agree = not std or abs(std) <= 1e-12 * max(abs(mean), 1.0)
    return fmt(mean) if agree else f"{fmt(mean)} ± {spread(std)}"


# ---------------------------------------------------------------------------- verdicts


def as_difference(diff: Difference | Mapping[str, Any]) -> Difference:
    return diff if isinstance(diff, Difference) else Difference.from_dict(diff)


def verdict(diff: Difference | Mapping[str, Any] | None, higher_is_better: bool) -> str:
    """'better' / 'worse' for the arm when the interval excludes zero, else 'no significant difference'."""
    if diff is None:
        return NOT_COMPARED
    d = as_difference(diff)
    if not d.significant:
        return NO_DIFFERENCE
    return BETTER if (d.estimate > 0) == higher_is_better else WORSE


def metric_specs_of(results: Mapping[str, Any], differences: Mapping[str, Any]) -> list[dict[str, Any]]:
    """results['metrics'] in report order, plus any compared metric it does not list (label = name)."""
    specs = [dict(m) for m in results.get("metrics", [])]
    listed = {m["name"] for m in specs}
    specs += [{"name": n, "label": n, "higher_is_better": True} for n in differences if n not in listed]
    return specs


def identical_metrics(results: Mapping[str, Any], pair: Pair = ARMS) -> set[str]:
    """Metrics whose every per-event cell is the same in both arms of `pair`, seed by seed: made by
    stages the arms share (an A/B that changes only track building shares the graph, the filter and the
    GNN). Their difference is zero by construction, not a measurement, so the table lists them in one line."""
    seeds = {arm: results["arms"][arm]["seeds"] for arm in pair}
    if not all(seeds.values()) or len(seeds[pair[0]]) != len(seeds[pair[1]]):
        return set()
    names = set.intersection(*(set(s.get("per_event") or {}) for arm in pair for s in seeds[arm]))
    return {
        name
        for name in names
        if all(a["per_event"][name] == b["per_event"][name] for a, b in zip(seeds[pair[0]], seeds[pair[1]]))
    }


def confidence_level(differences: Mapping[str, Any], results: Mapping[str, Any]) -> float:
    for diff in differences.values():
        return as_difference(diff).confidence
    return float(results.get("config", {}).get("bootstrap", {}).get("confidence", 0.95))


# ---------------------------------------------------------------------------- sections


def summary_table(
    results: Mapping[str, Any],
    differences: Mapping[str, Difference | Mapping[str, Any]],
    arm: str = ARMS[1],
    control: str = ARMS[0],
) -> str:
    """The metric table of one comparison: one row per metric with both arms' mean ± std over seeds, the
    pooled difference (arm − control) with its interval and the verdict."""
    pair = (control, arm)
    seeds = len(results["arms"][control]["seeds"])
    level = f"{confidence_level(differences, results):.0%}"
    lines = [
        f"| metric | {control} (mean ± std, {seeds} seeds) | {arm} (mean ± std, {seeds} seeds) "
        f"| difference {arm} − {control} [{level} CI] | verdict |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    same = identical_metrics(results, pair)
    for spec in metric_specs_of(results, differences):
        name = spec["name"]
        if name in same:
            continue
        cells = [spec.get("label", name)]
        for arm in pair:
            cells.append(mean_std_cell(*seed_summary(results, arm, name)))
        raw = differences.get(name)
        if raw is None:
            cells.append(MISSING)
        else:
            d = as_difference(raw)
            cells.append(f"{format_signed(d.estimate)} [{format_signed(d.ci_low)}, {format_signed(d.ci_high)}]")
        cells.append(verdict(raw, bool(spec.get("higher_is_better", True))))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def verdict_counts(results: Mapping[str, Any], differences: Mapping[str, Any], pair: Pair = ARMS) -> str:
    counts = {BETTER: 0, WORSE: 0, NO_DIFFERENCE: 0}
    same = identical_metrics(results, pair)
    shared = [spec.get("label", spec["name"]) for spec in metric_specs_of(results, differences) if spec["name"] in same]
    for spec in metric_specs_of(results, differences):
        if spec["name"] in differences and spec["name"] not in same:
            counts[verdict(differences[spec["name"]], bool(spec.get("higher_is_better", True)))] += 1
    n = sum(counts.values())
    text = (
        f"Of {n} metrics compared, {pair[1]} is significantly better on {counts[BETTER]}, significantly "
        f"worse on {counts[WORSE]}, and shows no significant difference on {counts[NO_DIFFERENCE]}."
    )
    if shared:
        text += (
            f" Identical in both arms, event by event (made by stages the arms share), and left out of the "
            f"table: {'; '.join(shared)}."
        )
    return text


def compact(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def setup_section(results: Mapping[str, Any], differences: Mapping[str, Any], pair: Pair = ARMS) -> list[str]:
    baseline_seeds = results["arms"][pair[0]]["seeds"]
    seeds = sorted(int(s["seed"]) for s in baseline_seeds)
    n_events = len(baseline_seeds[0]["event_ids"]) if baseline_seeds else 0
    config = results.get("config") or {}
    bootstrap = config.get("bootstrap", {}) if isinstance(config, Mapping) else {}
    level = confidence_level(differences, results)
    samples = bootstrap.get("samples") if isinstance(bootstrap, Mapping) else None
    lines = [
        "## What was compared",
        "",
        f"- arms: `{pair[0]}` (the pipeline as configured) and `{pair[1]}` (the same pipeline with "
        f"{arm_description(results, pair[1])})",
        f"- seeds: {', '.join(map(str, seeds))} ({len(seeds)} per arm, the same in both)",
        f"- test events: {n_events}, the same events in every arm and seed",
        f"- differences: pooled over all (seed, event) cells (ratio of sums); intervals: {level:.0%} percentile "
        f"intervals of a paired bootstrap{f' with {samples} replicates' if samples else ''} that resamples "
        "seeds and events, one event draw shared by both arms",
    ]
    if len(seeds) == 1:
        lines.append("- with one seed only events are resampled: the intervals do not include seed-to-seed variation")
    if isinstance(config, Mapping):
        for key, value in config.items():
            if key != "bootstrap":
                lines.append(f"- `{key}`: `{compact(value)}`")
    return lines + [""]


SOURCE_WORDS = {
    "pretrained": "TrackingBERT module-embedding features",
    "random": "the module-embedding features of the untrained TrackingBERT (a random code per module)",
    "shuffled": "the pretrained module-embedding features, rows permuted among the modules of each volume",
    "geometry": "module-descriptor features from detectors.csv (centre, normal, pitches, thickness, volume, layer)",
    "learned": "a per-module vector trained from scratch inside each edge classifier",
    "finetune": "a per-module vector inside each edge classifier, initialised from the pretrained table and trained",
    "none": "its own keys",
}


def arm_description(results: Mapping[str, Any], arm: str) -> str:
    """What an arm adds to the pipeline, from its source (and, for a two-arm config, its features)."""
    config = results.get("config") or {}
    source = results["arms"][arm].get("source")
    if source is None:  # a two-arm results.json: the trackingbert arm, source pretrained
        if config.get("trackingbert_features") is not None:
            return SOURCE_WORDS["pretrained"]
        return "the keys `trackingbert_keys` sets, which use the pretrained TrackingBERT; no features"
    spec = (config.get("arms") or {}).get(arm) or {}
    text = SOURCE_WORDS.get(source, f"source {source}")
    features = spec.get("features", "default")
    if features == "default":
        features = config.get("trackingbert_features")
    if features is None and source not in ("none",):
        text = f"the keys of `arms.{arm}.keys`, which use the {source} model; no features"
    if spec.get("keys") and source != "none":
        text += f", and the keys {compact(spec['keys'], 120)}"
    elif spec.get("keys"):
        text = f"the keys {compact(spec['keys'], 120)}"
    return text


def _seed_stats(values: Sequence[float]) -> tuple[float, float]:
    """(mean, std ddof = 1); std exactly 0 when the seeds agree, where float rounding would leave ~1e-17."""
    if not values:
        return math.nan, math.nan
    same = max(values) == min(values)
    return float(np.mean(values)), 0.0 if same else float(np.std(values, ddof=1))


def _keys(results: Mapping[str, Any], field: str) -> list[str]:
    """Components named under `field` in any seed of any arm, first-seen order, 'total' last."""
    seen: dict[str, None] = {}
    for arm in results["arms"]:
        for s in results["arms"][arm]["seeds"]:
            seen.update(dict.fromkeys(s.get(field, {}) or {}))
    keys = [k for k in seen if k != "total"]
    return keys + (["total"] if "total" in seen else [])


def _resource_cell(results: Mapping[str, Any], arm: str, field: str, key: str, fmt) -> str:
    values = [
        float(s[field][key])
        for s in results["arms"][arm]["seeds"]
        if isinstance(s.get(field), Mapping) and s[field].get(key) is not None
    ]
    return mean_std_cell(*_seed_stats(values), fmt=fmt, spread=fmt)


def _count(x: float | None) -> str:
    return MISSING if x is None or not math.isfinite(x) else f"{x:,.0f}"


def resources_section(results: Mapping[str, Any]) -> list[str]:
    arms = list(results["arms"])
    rows = []
    for field, what, fmt in (
        ("trainable_parameters", "trainable parameters", _count),
        ("train_time_s", "training time [s]", format_seconds),
        ("inference_s_per_event", "inference [s per event]", format_seconds),
    ):
        for key in _keys(results, field):
            cells = [f"{what}: {key}"] + [_resource_cell(results, arm, field, key, fmt) for arm in arms]
            rows.append("| " + " | ".join(cells) + " |")
    if not rows:
        return []
    jobs = int((results.get("config") or {}).get("jobs") or 1)
    shared = (
        f" The stages ran in {jobs} worker processes (key `jobs`): a training time includes waiting for the CPU "
        "while other stages ran, so it does not compare arms; inference was timed alone."
        if jobs > 1
        else ""
    )
    return [
        "## Cost",
        "",
        f"Mean ± std over seeds (no ± when every seed gave the same value).{shared}",
        "",
        "| quantity | " + " | ".join(arms) + " |",
        "| --- |" + " ---: |" * len(arms),
        *rows,
        "",
    ]


def overhead_line(overhead: Mapping[str, Any] | None, pair: Pair = ARMS) -> str:
    """One sentence: both arms' inference time per event, their ratio, and whether it meets the target."""
    if not overhead or overhead.get("inference_ratio") is None:
        return "Inference overhead: not measured."
    ratio = float(overhead["inference_ratio"])
    target = overhead.get("target")
    times = ""
    if overhead.get("baseline_s_per_event") is not None and overhead.get("trackingbert_s_per_event") is not None:
        times = (
            f"{pair[1]} takes {format_seconds(float(overhead['trackingbert_s_per_event']))} s per event, "
            f"{pair[0]} {format_seconds(float(overhead['baseline_s_per_event']))} s; "
        )
    text = f"Inference overhead: {times}ratio {ratio:.3f} ({ratio - 1:+.1%})"
    if target is None:
        return text + "."
    meets = "meets" if ratio <= float(target) else "does not meet"
    return text + f", which **{meets}** the target of at most {float(target):.3f}."


def low_label_section(
    results: Mapping[str, Any],
    differences: Mapping[str, Any],
    pair: Pair = ARMS,
    paired: Mapping[str, Any] | None = None,
    only: Sequence[str] | None = None,
    title: str = "## Low-label sweep",
) -> list[str]:
    """The sweep's table for one comparison (`paired`: its differences by count; the two-arm ones by
    default), restricted to the metrics `only` names when given."""
    low = results.get("low_label")
    if not low:
        return []
    n_labelled = list(low["n_labelled"])
    arms = low["arms"]
    specs = {m["name"]: m for m in metric_specs_of(results, differences)}
    names = [n for n in specs if all(n in arms.get(a, {}) for a in pair)]
    names += sorted(n for n in arms.get(pair[0], {}) if n in arms.get(pair[1], {}) and n not in specs)
    # the runner lists every metric, None where the pipeline has no such stage: such rows say nothing
    names = [n for n in names if any(v is not None for a in pair for v in arms[a][n]["mean"])]
    if only is not None:
        names = [n for n in names if n in only]
    paired = low.get("differences", {}) if paired is None else paired
    lines = [
        title,
        "",
        "The downstream stages retrained on the first n labelled training events; mean ± std over seeds"
        + (f" {', '.join(map(str, low['seeds']))}" if low.get("seeds") else "")
        + "; the difference is paired (same seeds and test events), with its bootstrap interval.",
        "",
        f"| metric | labelled events | {pair[0]} | {pair[1]} | difference [CI] | verdict |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for name in names:
        label = specs.get(name, {}).get("label", name)
        for i, n in enumerate(n_labelled):
            cells = [label, str(n)]
            for arm in pair:
                entry = arms[arm][name]
                mean, std = _nan(entry["mean"][i]), _nan((entry.get("std") or [0.0] * len(n_labelled))[i])
                cells.append(mean_std_cell(mean, std if math.isfinite(std) else 0.0))
            cells += paired_cells(paired.get(str(n), {}).get(name), specs.get(name, {}))
            lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def paired_cells(difference: Mapping[str, Any] | None, spec: Mapping[str, Any]) -> list[str]:
    """The difference [CI] and verdict cells of one low-label row ('—' where the sweep has none)."""
    if difference is None:
        return [MISSING, NOT_COMPARED]
    d = as_difference(difference)
    return [
        f"{format_signed(d.estimate)} [{format_signed(d.ci_low)}, {format_signed(d.ci_high)}]",
        verdict(d, bool(spec.get("higher_is_better", True))),
    ]


def _nan(x: float | None) -> float:
    return math.nan if x is None else float(x)


def plots_section(plots: Iterable[str | os.PathLike], relative_to: Path | None) -> list[str]:
    lines = []
    for p in plots:
        path = Path(p)
        if relative_to is not None and path.is_absolute():
            path = Path(os.path.relpath(path, relative_to))
        lines.append(f"- [{path.name}]({path.as_posix()})")
    return ["## Plots", "", *lines, ""] if lines else []


def render_report(
    results: Mapping[str, Any],
    differences: Mapping[str, Difference | Mapping[str, Any]],
    *,
    relative_to: str | os.PathLike | None = None,
) -> str:
    """REPORT.md text of an A/B with one comparison, the baseline and one arm (`differences` are that
    comparison's; arms_report.py renders A/Bs with more). Plot paths in results['plots'] are linked as
    given, or relative to `relative_to` (the report's folder) when they are absolute."""
    comparisons = results.get("comparisons") or []
    pair = (comparisons[0]["control"], comparisons[0]["arm"]) if comparisons else ARMS
    level = confidence_level(differences, results)
    lines = [f"# A/B benchmark: {pair[1]} vs {pair[0]}", ""]
    lines += setup_section(results, differences, pair)
    lines += [
        "## Metrics",
        "",
        summary_table(results, differences, arm=pair[1], control=pair[0]).rstrip("\n"),
        "",
        verdict_counts(results, differences, pair),
        "",
        verdict_rule(level),
        "",
    ]
    lines += resources_section(results)
    lines += ["## Inference overhead", "", overhead_line(results.get("overhead"), pair), ""]
    lines += low_label_section(results, differences, pair)
    lines += plots_section(results.get("plots", []) or [], Path(relative_to) if relative_to is not None else None)
    return "\n".join(lines).rstrip("\n") + "\n"


def verdict_rule(level: float) -> str:
    """What a verdict means, said once under the tables."""
    return (
        f"A verdict is *{BETTER}* or *{WORSE}* only when the whole {level:.0%} interval lies on one side of zero; "
        f"*{NO_DIFFERENCE}* means the interval includes zero, so the data show no difference of either sign "
        "(which is not the same as showing the arms equal). With many metrics, about "
        f"{1 - level:.0%} of them can come out significant by chance alone."
    )


def write_report(path: str | os.PathLike, text: str) -> Path:
    """Write REPORT.md atomically (a rerun never leaves half a report)."""
    write_text(path, text)
    return Path(path)


__all__: Sequence[str] = [
    "BETTER",
    "WORSE",
    "NO_DIFFERENCE",
    "NOT_COMPARED",
    "format_value",
    "format_signed",
    "format_spread",
    "format_seconds",
    "verdict",
    "summary_table",
    "identical_metrics",
    "overhead_line",
    "render_report",
    "write_report",
]
