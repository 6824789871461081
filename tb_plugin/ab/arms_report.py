"""REPORT.md of an A/B with several arms or controls: what the controls show first, then every
comparison in full.

The first question a physicist asks of a gain from module embeddings is whether it comes from what
pretraining learned or from giving the network any code per module. So the report opens with one
table of the headline metrics, a column per comparison (arm − baseline, and arm − its control), before
the per-comparison tables, which are the two-arm report's own (report.py). The wording follows the
statistics only: better or worse when the whole interval lies on one side of zero.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tb_plugin.ab.report import (
    BETTER,
    NO_DIFFERENCE,
    WORSE,
    arm_description,
    as_difference,
    compact,
    confidence_level,
    format_seconds,
    format_signed,
    identical_metrics,
    low_label_section,
    mean_std_cell,
    metric_specs_of,
    overhead_line,
    plots_section,
    render_report,
    resources_section,
    summary_table,
    verdict,
    verdict_counts,
    verdict_rule,
)
from tb_plugin.ab.statistics import seed_summary

# The rows of the controls table, in order, where measured: the pipeline's targets and what moved.
HEADLINE = (
    "track_building.two_way.efficiency",
    "track_building.two_way.efficiency_pt1",
    "track_building.two_way.fake_rate",
    "track_building.trackml_score",
    "track_building.matched.two_way.efficiency_pt1",
    "track_building.matched.trackml_score",
    "track_building.size_matched.two_way.efficiency",
    "track_building.size_matched.two_way.efficiency_pt1",
    "track_building.size_matched.two_way.fake_rate",
    "track_building.size_matched.trackml_score",
    "edge_filter.edges_per_event",
    "edge_filter.at99.target_purity",
    "edge_classifier.target_purity",
    "edge_classifier.at99.target_purity",
    "graph_construction.target_efficiency",
    "graph_construction.edges_per_event",
)


def render_ab_report(results: Mapping[str, Any], *, relative_to: str | os.PathLike | None = None) -> str:
    """REPORT.md of any A/B: the two-arm report when there is one comparison, else the arms report."""
    comparisons = results.get("comparisons") or []
    if len(comparisons) <= 1:
        return render_report(results, results.get("differences") or {}, relative_to=relative_to)
    return render_arms_report(results, relative_to=relative_to)


def comparison_name(comparison: Mapping[str, Any]) -> str:
    return f"{comparison['arm']} − {comparison['control']}"


def render_arms_report(results: Mapping[str, Any], *, relative_to: str | os.PathLike | None = None) -> str:
    comparisons = list(results["comparisons"])
    first = comparisons[0]["differences"]
    level = confidence_level(first, results)
    arms = list(results["arms"])
    lines = [f"# A/B benchmark: {', '.join(arms[1:])} vs {arms[0]}", ""]
    lines += setup_lines(results, comparisons, level)
    lines += controls_section(results, comparisons)
    lines += arms_table(results, first)
    for comparison in comparisons:
        pair = (comparison["control"], comparison["arm"])
        differences = comparison["differences"]
        lines += [
            f"## {comparison_name(comparison)}",
            "",
            summary_table(results, differences, arm=pair[1], control=pair[0]).rstrip("\n"),
            "",
            verdict_counts(results, differences, pair),
            "",
        ]
    lines += [verdict_rule(level), ""]
    lines += resources_section(results)
    lines += overhead_section(results)
    lines += low_label_sections(results, comparisons)
    lines += plots_section(results.get("plots", []) or [], Path(relative_to) if relative_to is not None else None)
    return "\n".join(lines).rstrip("\n") + "\n"


def setup_lines(results: Mapping[str, Any], comparisons: Sequence[Mapping[str, Any]], level: float) -> list[str]:
    arms = list(results["arms"])
    baseline_seeds = results["arms"][arms[0]]["seeds"]
    seeds = sorted(int(s["seed"]) for s in baseline_seeds)
    n_events = len(baseline_seeds[0]["event_ids"]) if baseline_seeds else 0
    config = results.get("config") or {}
    samples = (config.get("bootstrap") or {}).get("samples")
    lines = ["## What was compared", "", f"- `{arms[0]}`: the pipeline as configured"]
    lines += [f"- `{arm}`: the same pipeline with {arm_description(results, arm)}" for arm in arms[1:]]
    lines += [
        f"- comparisons: {'; '.join(comparison_name(c) for c in comparisons)}",
        f"- seeds: {', '.join(map(str, seeds))} ({len(seeds)} per arm, the same in every arm)",
        f"- test events: {n_events}, the same events in every arm and seed",
        f"- differences: pooled over all (seed, event) cells (ratio of sums); intervals: {level:.0%} percentile "
        f"intervals of a paired bootstrap{f' with {samples} replicates' if samples else ''} that resamples "
        "seeds and events, one draw shared by every comparison",
    ]
    if len(seeds) == 1:
        lines.append("- with one seed only events are resampled: the intervals do not include seed-to-seed variation")
    if config.get("note"):
        lines.append(f"- **note**: {config['note']}")
    for key, value in config.items():
        if key not in ("bootstrap", "note", "arms"):
            lines.append(f"- `{key}`: `{compact(value)}`")
    return lines + [""]


def controls_section(results: Mapping[str, Any], comparisons: Sequence[Mapping[str, Any]]) -> list[str]:
    """The headline metrics, one column per comparison: which gain comes from a code per module (an arm
    without content against the baseline) and which from the content (an arm against its control)."""
    specs = {m["name"]: m for m in metric_specs_of(results, comparisons[0]["differences"])}
    shared = [identical_metrics(results, (c["control"], c["arm"])) for c in comparisons]
    rows = [
        name
        for name in HEADLINE
        if name in specs and any(name in c["differences"] and name not in same for c, same in zip(comparisons, shared))
    ]
    if not rows:
        return []
    lines = [
        "## What the controls show",
        "",
        "Each cell: the paired difference with its interval, and the verdict. A control (random, shuffled, "
        "learned) has the arm's shape without its content: a gain it shares is a gain of a code per module, "
        "not of what pretraining learned.",
        "",
        "| metric | " + " | ".join(comparison_name(c) for c in comparisons) + " |",
        "| --- |" + " ---: |" * len(comparisons),
    ]
    for name in rows:
        spec = specs[name]
        cells = [spec.get("label", name)]
        for comparison, same in zip(comparisons, shared):
            raw = comparison["differences"].get(name)
            if raw is None or name in same:
                cells.append("n/a" if raw is None else "identical (shared stages)")
                continue
            d = as_difference(raw)
            word = verdict(d, bool(spec.get("higher_is_better", True)))
            cells.append(f"{format_signed(d.estimate)} [{format_signed(d.ci_low)}, {format_signed(d.ci_high)}] {word}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Rows whose cells are identical in an arm and its control, event by event, come from stages the two share.",
        "",
        *control_sentences(results, comparisons),
        "",
    ]
    return lines


def control_sentences(results: Mapping[str, Any], comparisons: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per comparison: how many metrics are better, worse, not different (those identical by
    construction, made by stages the two arms share, left out)."""
    out = []
    for comparison in comparisons:
        specs = metric_specs_of(results, comparison["differences"])
        same = identical_metrics(results, (comparison["control"], comparison["arm"]))
        counts = {BETTER: 0, WORSE: 0, NO_DIFFERENCE: 0}
        for spec in specs:
            raw = comparison["differences"].get(spec["name"])
            if raw is not None and spec["name"] not in same:
                counts[verdict(raw, bool(spec.get("higher_is_better", True)))] += 1
        out.append(
            f"- {comparison_name(comparison)}: better on {counts[BETTER]}, worse on {counts[WORSE]}, "
            f"no significant difference on {counts[NO_DIFFERENCE]} of {sum(counts.values())} metrics"
        )
    return out


def arms_table(results: Mapping[str, Any], differences: Mapping[str, Any]) -> list[str]:
    """Every arm's value of every metric, mean ± std over seeds: the spread of each arm at a glance."""
    arms = list(results["arms"])
    n_seeds = len(results["arms"][arms[0]]["seeds"])
    lines = [
        f"## Every arm (mean ± std over {n_seeds} seeds)",
        "",
        "| metric | " + " | ".join(arms) + " |",
        "| --- |" + " ---: |" * len(arms),
    ]
    for spec in metric_specs_of(results, differences):
        cells = [spec.get("label", spec["name"])]
        cells += [mean_std_cell(*seed_summary(results, arm, spec["name"])) for arm in arms]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def overhead_section(results: Mapping[str, Any]) -> list[str]:
    overhead = results.get("overhead") or {}
    arms = list(results["arms"])
    per_arm = overhead.get("arms")
    if not per_arm:
        return ["## Inference overhead", "", overhead_line(overhead, (arms[0], arms[1])), ""]
    lines = [
        "## Inference overhead",
        "",
        f"`{arms[0]}` takes {format_seconds(overhead.get('baseline_s_per_event'))} s per event "
        f"(target for every arm: a ratio of at most {float(overhead.get('target', 1.02)):.3f}).",
        "",
    ]
    for arm, entry in per_arm.items():
        ratio = entry.get("ratio")
        text = "not measured" if ratio is None else f"ratio {ratio:.3f} ({ratio - 1:+.1%})"
        lines.append(f"- `{arm}`: {format_seconds(entry.get('s_per_event'))} s per event, {text}")
    return lines + [""]


def low_label_sections(results: Mapping[str, Any], comparisons: Sequence[Mapping[str, Any]]) -> list[str]:
    """The low-label sweep per comparison, on the headline metrics (the full tables are in results.json)."""
    low = results.get("low_label")
    if not low:
        return []
    swept = {(c["arm"], c["control"]): c["differences"] for c in low.get("comparisons", [])}
    lines = [
        "## Low-label sweep",
        "",
        f"The downstream stages retrained on the first n labelled training events ({compact(low['n_labelled'])}), "
        "each with as many optimiser steps as the full run; the headline metrics per comparison below, every "
        "metric in results.json (`low_label`).",
        "",
    ]
    for comparison in comparisons:
        key = (comparison["arm"], comparison["control"])
        if key not in swept:
            continue
        lines += low_label_section(
            results,
            comparison["differences"],
            (comparison["control"], comparison["arm"]),
            paired=swept[key],
            only=HEADLINE,
            title=f"### {comparison_name(comparison)}, by labelled events",
        )
    return lines
