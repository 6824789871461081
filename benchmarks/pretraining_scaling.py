"""The pretraining scaling sweep: what more pretraining compute buys, in MDM and downstream.

Each point of the sweep is a set of tracking_bert keys (epochs, training events, width, vocabulary,
softmax) on top of a base TrackingBERT config. For every point the script runs one A/B of the base A/B
config with four arms: pretrained (compared with random) and finetune (compared with learned), so each
point gets the downstream differences that separate pretrained content from a code per module, with
their paired confidence intervals. All points share one baseline and one learned arm, and the random
control of every point of the same model shape (`reuse_ab_dir` of the first point): only the pretrained
and finetune arms are run again per point.

Per point it records the pretraining compute (training tokens and FLOPs: 6 x parameters x tokens for
the encoder, plus attention and the MDM softmax over its candidates), the pretraining time, MDM top-1
and within 20 mm minus the count baseline (over the whole vocabulary and within the masked hit's layer),
NTP AUC, and the downstream differences. It writes, under the sweep's out_dir:

    scaling.json   every figure, with the sweep config
    scaling.md     the table
    scaling.png    MDM gain and downstream differences (with their intervals) against FLOPs

    .venv/bin/python benchmarks/pretraining_scaling.py configs/scaling/cpu.yaml
    .venv/bin/python benchmarks/pretraining_scaling.py configs/scaling/cpu.yaml --points demo_layer,epochs8
    .venv/bin/python benchmarks/pretraining_scaling.py configs/scaling/cpu.yaml --summary   # table and plot only

A sweep file with `tracking_bert` and `input_dir` in place of `ab` runs pretraining only (train and
evaluate each point, no A/B): the GPU run of benchmarks/gpu_scaling.sh, whose minutes do not fit the
downstream arms. Its rows have MDM, NTP and compute, and no downstream columns.

A point that finished is read again, not rerun (the A/B resumes from its stage records); `--points`
runs some points, and the summary covers every point that has finished. Bad input
(a missing file, an unknown key, a point without a name) gets one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tb_plugin.ab.runner import load_runner
from tb_plugin.atomic import write_text
from tb_plugin.config import ConfigError, load_yaml
from tb_plugin.pipeline import load_stage, run_phase, stage_from_mapping
from tb_plugin.stage_record import json_default, phase_done, train_seconds
from tb_plugin.training import read_checkpoint

ARMS = {
    "pretrained": {"source": "pretrained", "compare_to": "random"},
    "random": {"source": "random"},
    "learned": {"source": "learned"},
    "finetune": {"source": "finetune", "compare_to": "learned"},
}
CONTROLS = ("shuffled", "geometry")  # a point's `controls` adds these arms, each compared with random
COMPARISONS = (
    ("pretrained", "random"),
    ("finetune", "learned"),
    *(("pretrained", c) for c in CONTROLS),
    *((c, "random") for c in CONTROLS),
)
DOWNSTREAM = {  # results.json metric -> short name in the table
    "track_building.trackml_score": "TrackML score",
    "track_building.two_way.efficiency": "efficiency",
    "track_building.two_way.efficiency_pt1": "efficiency pT > 1 GeV",
    "track_building.two_way.fake_rate": "fake rate",
    "track_building.matched.trackml_score": "TrackML score at matched efficiency",
    "track_building.size_matched.trackml_score": "TrackML score at the baseline's graph size",
}
SIZE_MATCHED = "track_building.size_matched.trackml_score"  # the cut that moves graph size out of the comparison
HEADLINE = "track_building.trackml_score"
POINT_KEYS = {"name", "keys", "controls"}


@dataclass(kw_only=True)
class SweepConfig:
    """The sweep file: where it writes, the base A/B, and the points (name + tracking_bert keys)."""

    out_dir: Path
    ab: Path | None = None  # the base A/B config (pipeline, seeds, features, bootstrap); its arms are replaced by ARMS
    tracking_bert: Path | None = None  # without `ab`: the base tracking_bert config, pretraining only
    input_dir: Path | None = None  # and the feature store it reads
    points: list[dict[str, Any]] = field(default_factory=list)
    source: str = "the sweep config"

    @classmethod
    def load(cls, path: Path) -> SweepConfig:
        values = load_yaml(path)
        unknown = sorted(set(values) - {"out_dir", "ab", "tracking_bert", "input_dir", "points", "note"})
        if unknown:
            raise ConfigError(
                f"{path}: unknown key(s) {unknown}; expected out_dir, points, and ab or tracking_bert + input_dir"
            )
        for key in ("out_dir", "points"):
            if key not in values:
                raise ConfigError(f"{path}: key '{key}' is missing")
        if ("ab" in values) == ("tracking_bert" in values) or ("tracking_bert" in values) != ("input_dir" in values):
            raise ConfigError(
                f"{path}: give key 'ab' (a base A/B config: every point gets its A/B) or keys 'tracking_bert' "
                f"and 'input_dir' (pretraining only), not both"
            )
        points = values["points"]
        if not isinstance(points, list) or not points:
            raise ConfigError(f"{path}: key 'points' must be a non-empty list of {{name, keys}}")
        names = []
        for i, point in enumerate(points):
            if not isinstance(point, dict) or not isinstance(point.get("name"), str) or set(point) - POINT_KEYS:
                raise ConfigError(
                    f"{path}: points[{i}] must be {{name: <text>, keys: {{tracking_bert keys}}, controls: [...]}}"
                )
            controls = point.get("controls", [])
            if not isinstance(controls, list) or not set(controls) <= set(CONTROLS):
                raise ConfigError(f"{path}: points[{i}].controls must be a list of {list(CONTROLS)}, got {controls!r}")
            if not isinstance(point.get("keys", {}), dict):
                raise ConfigError(f"{path}: points[{i}].keys must be a mapping of tracking_bert keys")
            names.append(point["name"])
        if len(set(names)) != len(names):
            raise ConfigError(f"{path}: point names must be unique, got {names}")
        files = {key: (path.parent / values[key]).resolve() for key in ("ab", "tracking_bert") if key in values}
        for key, file in files.items():
            if not file.is_file():
                raise ConfigError(f"{path}: key '{key}': {file} not found")
        input_dir = Path(values["input_dir"]) if "input_dir" in values else None
        if input_dir is not None and not input_dir.is_dir():
            raise ConfigError(f"{path}: key 'input_dir': {input_dir} is not a folder (a data reading stage_dir)")
        return cls(
            out_dir=Path(values["out_dir"]),
            ab=files.get("ab"),
            tracking_bert=files.get("tracking_bert"),
            input_dir=input_dir,
            points=points,
            source=str(path),
        )


def tracking_bert_file(sweep: SweepConfig, point: dict[str, Any], base: Path) -> Path:
    """Write the point's tracking_bert config (the base with the point's keys) under out_dir/configs.
    Every key is checked here, by building the stage, before anything runs."""
    tb_values = {**load_yaml(base), **point.get("keys", {})}
    if sweep.ab is None:  # pretraining only: the sweep says where it reads and writes
        tb_values.update(input_dir=str(sweep.input_dir), stage_dir=str(sweep.out_dir.resolve() / point["name"]))
    stage_from_mapping(tb_values, f"{sweep.source}, point {point['name']}")  # one line on a bad key
    folder = sweep.out_dir.resolve() / "configs"
    folder.mkdir(parents=True, exist_ok=True)
    tb_file = folder / f"{point['name']}.tracking_bert.yaml"
    write_text(tb_file, yaml.safe_dump(tb_values, sort_keys=False))
    return tb_file


def arms(point: dict[str, Any]) -> dict[str, Any]:
    """The A/B's arms: ARMS, and the point's `controls`, each compared with random and the pretrained arm
    compared with each: shuffled (the pretrained table permuted within each volume: module content against
    the per-volume spread any such table has) and geometry (the module descriptors of detectors.csv:
    pretraining against a structured table that costs nothing)."""
    controls = point.get("controls", [])
    if not controls:
        return ARMS
    pretrained = {**ARMS["pretrained"], "compare_to": ["random", *controls]}
    return {**ARMS, "pretrained": pretrained, **{c: {"source": c, "compare_to": "random"} for c in controls}}


def point_configs(sweep: SweepConfig, point: dict[str, Any], first: str) -> Path:
    """Write the point's tracking_bert and A/B configs under out_dir/configs; returns the A/B's path."""
    base = load_yaml(sweep.ab)
    tb_file = tracking_bert_file(sweep, point, (sweep.ab.parent / base["tracking_bert"]).resolve())
    folder = tb_file.parent
    ab_values = {k: v for k, v in base.items() if k not in ("trackingbert_keys", "low_label", "tracking_bert_dir")}
    ab_values.update(
        ab_dir=str(sweep.out_dir.resolve() / point["name"]),
        pipeline=str((sweep.ab.parent / base["pipeline"]).resolve()),
        tracking_bert=str(tb_file),
        arms=arms(point),
        reuse_ab_dir=None if point["name"] == first else str(sweep.out_dir.resolve() / first),
    )
    ab_file = folder / f"{point['name']}.ab.yaml"
    write_text(ab_file, yaml.safe_dump(ab_values, sort_keys=False))
    return ab_file


# ---------------------------------------------------------------------------------------------- compute


def pretraining_compute(stage: Any) -> dict[str, float]:
    """Training tokens and FLOPs of the stage's pretraining. FLOPs: 6 x matmul parameters x tokens for
    the encoder (forward 2, backward 4), 12 x layers x length x width x tokens for attention, and
    6 x scored positions x candidates x width for the MDM softmax (the whole vocabulary, or the mean
    size of the masked modules' layers)."""
    config = stage.config
    module, tokenizer, _ = stage.trained()
    data = stage.datamodule(tokenizer)
    data.prepare_data()
    data.setup("fit")
    rows = data.datasets["trainset"].rows
    real = rows["attention_mask"].bool()  # [P, L]
    # epochs actually trained: the optimiser steps of the last checkpoint (max_time_s or early stopping
    # may have ended training before max_epochs), in epochs of this trainset and batch size
    steps_per_epoch = math.ceil(len(real) / config.batch_size)
    last = stage.artifacts / "last.ckpt"
    steps = int(read_checkpoint(last).get("global_step", 0)) if last.is_file() else steps_per_epoch * config.max_epochs
    epochs = steps / steps_per_epoch
    tokens = int(int(real.sum()) * epochs)
    lengths = real.sum(dim=1).float()  # [P]
    mean_length = float((lengths**2).sum() / lengths.sum())  # attention cost per token grows with its row
    modules = int((rows["hit_position"] >= 0).sum())
    scored = modules * config.mask_rate * epochs
    C, n_layer = config.n_embd, config.n_layer
    matmul = n_layer * (4 * C * C + 2 * C * config.d_ff) + 2 * C * C  # blocks, MDM dense, NTP pooler
    if config.mdm_candidates == "all":
        candidates = float(tokenizer.vocab_size)
    else:
        groups = tokenizer.layer_groups()
        size = np.bincount(groups[groups >= 0])
        hit_group = groups[rows["input_ids"][rows["hit_position"] >= 0].numpy()]  # training rows are unmasked
        candidates = float(size[hit_group[hit_group >= 0]].mean())
    flops = 6 * matmul * tokens + 12 * n_layer * mean_length * C * tokens + 6 * scored * candidates * C
    return {
        "tokens": tokens,
        "epochs_trained": round(epochs, 3),
        "flops": float(flops),
        "mdm_candidates_mean": candidates,
        "train_pairs": len(lengths),
        "parameters": module.model.num_params(),
    }


# ---------------------------------------------------------------------------------------------- one point


def mdm_gain(metrics: dict[str, Any], task: str) -> dict[str, float]:
    bert, count = metrics[task]["trackingbert"], metrics[task]["count_baseline"]
    return {
        "top1": bert["top1"],
        "top1_minus_count": bert["top1"] - count["top1"],
        "within_20mm": bert["within_20mm"],
        "within_20mm_minus_count": bert["within_20mm"] - count["within_20mm"],
    }


def downstream(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The two control comparisons' differences of the DOWNSTREAM metrics, with intervals."""
    out: dict[str, dict[str, Any]] = {}
    for arm, control in COMPARISONS:
        found = [c for c in results["comparisons"] if c["arm"] == arm and c["control"] == control]
        if not found:  # the shuffled comparisons exist only where the point asks for the arm
            continue
        diffs = found[0]["differences"]
        out[f"{arm} - {control}"] = {
            metric: {k: diffs[metric][k] for k in ("estimate", "ci_low", "ci_high", "significant")}
            for metric in DOWNSTREAM
            if metric in diffs
        }
    return out


def run_point(sweep: SweepConfig, point: dict[str, Any], first: str) -> dict[str, Any]:
    """Run (or resume) the point's A/B, then read its pretraining metrics, compute and differences; with
    a sweep of pretraining only, train and evaluate the point's stage (resuming) instead."""
    if sweep.ab is None:
        stage = load_stage(tracking_bert_file(sweep, point, sweep.tracking_bert))
        if not phase_done(stage, "train"):
            run_phase(stage, "train", stage.train)
        if not phase_done(stage, "eval"):
            run_phase(stage, "eval", stage.evaluate)
        results = None
    else:
        runner = load_runner(point_configs(sweep, point, first))
        results = runner.run()
        stage = runner.pretraining_stage()
    metrics = json.loads((stage.stage_dir / "eval" / "metrics.json").read_text())
    config = stage.config
    return {
        "name": point["name"],
        "keys": point.get("keys", {}),
        "vocabulary": "whole detector" if config.volumes is None else f"volumes {list(config.volumes)}",
        "mdm_candidates": config.mdm_candidates,
        "n_embd": config.n_embd,
        "max_epochs": config.max_epochs,
        "compute": pretraining_compute(stage),
        "pretraining_s": train_seconds(stage),
        "mdm": mdm_gain(metrics, "mdm"),
        "mdm_layer": mdm_gain(metrics, "mdm_layer"),
        "ntp_auc": metrics["ntp"]["auc"],
        "downstream": downstream(results) if results is not None else {},
    }


# ---------------------------------------------------------------------------------------------- outputs


def first_significant(points: list[dict[str, Any]], comparison: str = "pretrained - random") -> dict[str, Any] | None:
    """The point of least FLOPs where the comparison's headline difference is positive and significant."""
    for point in sorted(points, key=lambda p: p["compute"]["flops"]):
        d = point["downstream"].get(comparison, {}).get(HEADLINE)
        if d and d["significant"] and d["estimate"] > 0:
            return point
    return None


def _ci(d: dict[str, Any] | None) -> str:
    if d is None:
        return "n/a"
    text = f"{d['estimate']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"
    return f"**{text}**" if d["significant"] else text


def table(points: list[dict[str, Any]]) -> str:
    """Markdown: one row per point, by FLOPs."""
    head = (
        "| point | vocabulary | softmax | width | epochs | tokens | FLOPs | pretraining | MDM top-1 − count "
        "(all / layer) | within 20 mm − count (layer) | NTP AUC | pretrained − random, TrackML | pretrained − random, "
        "eff. pT > 1 | finetune − learned, TrackML | finetune − learned, eff. pT > 1 | pretrained − shuffled, "
        "TrackML | pretrained − geometry, TrackML | pretrained − random, TrackML at the baseline's graph size "
        "| pretrained − shuffled, TrackML at the baseline's graph size |"
    )
    lines = [head, "|" + " --- |" * 19]
    for p in sorted(points, key=lambda q: q["compute"]["flops"]):
        pr, fl, ps, pg = (
            p["downstream"].get(c, {})
            for c in ("pretrained - random", "finetune - learned", "pretrained - shuffled", "pretrained - geometry")
        )
        auc = "n/a" if p["ntp_auc"] is None else f"{p['ntp_auc']:.3f}"
        lines.append(
            f"| {p['name']} | {p['vocabulary']} | {p['mdm_candidates']} | {p['n_embd']} | {p['compute']['epochs_trained']:.3g} "
            f"| {p['compute']['tokens']:.3g} | {p['compute']['flops']:.3g} | {p['pretraining_s'] / 60:.1f} min "
            f"| {p['mdm']['top1_minus_count']:+.3f} / {p['mdm_layer']['top1_minus_count']:+.3f} "
            f"| {p['mdm_layer']['within_20mm_minus_count']:+.3f} | {auc} "
            f"| {_ci(pr.get(HEADLINE))} | {_ci(pr.get('track_building.two_way.efficiency_pt1'))} "
            f"| {_ci(fl.get(HEADLINE))} | {_ci(fl.get('track_building.two_way.efficiency_pt1'))} "
            f"| {_ci(ps.get(HEADLINE))} | {_ci(pg.get(HEADLINE))} "
            f"| {_ci(pr.get(SIZE_MATCHED))} | {_ci(ps.get(SIZE_MATCHED))} |"
        )
    return "\n".join(lines)


def plot(points: list[dict[str, Any]], path: Path) -> Path:
    """Left: MDM top-1 minus the count baseline and NTP AUC; right: the downstream TrackML-score
    differences with their intervals; both against pretraining FLOPs (log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted(points, key=lambda q: q["compute"]["flops"])
    flops = np.array([p["compute"]["flops"] for p in points])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.plot(flops, [p["mdm"]["top1_minus_count"] for p in points], "o", label="MDM top-1 − count, all modules")
    left.plot(flops, [p["mdm_layer"]["top1_minus_count"] for p in points], "s", label="MDM top-1 − count, in layer")
    left.plot(flops, [(p["ntp_auc"] or 0.5) - 0.5 for p in points], "^", label="NTP AUC − 0.5")
    for x, p in zip(flops, points):
        left.annotate(
            p["name"], (x, p["mdm_layer"]["top1_minus_count"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    left.axhline(0, color="grey", lw=0.8)
    left.set(xscale="log", xlabel="pretraining FLOPs", ylabel="difference", title="pretraining tasks")
    left.legend(fontsize=8)
    shown = (("pretrained - random", "o"), ("finetune - learned", "s"), ("pretrained - shuffled", "^"))
    shown += (("pretrained - geometry", "v"),)
    for shift, (comparison, marker) in zip((0.91, 0.97, 1.03, 1.09), shown):
        d = [p["downstream"].get(comparison, {}).get(HEADLINE) for p in points]
        if not any(d):  # a sweep of pretraining only
            continue
        est = np.array([x["estimate"] if x else np.nan for x in d])
        err = np.array([[x["estimate"] - x["ci_low"], x["ci_high"] - x["estimate"]] if x else [0, 0] for x in d]).T
        right.errorbar(flops * shift, est, yerr=err, fmt=marker, capsize=3, label=comparison.replace(" - ", " − "))
    if not any(p["downstream"] for p in points):
        right.text(0.5, 0.5, "pretraining only: no downstream A/B", ha="center", transform=right.transAxes)
    right.axhline(0, color="grey", lw=0.8)
    right.set(
        xscale="log",
        xlim=(flops.min() / 2, flops.max() * 2),
        xlabel="pretraining FLOPs",
        ylabel="TrackML score difference (95 % CI)",
        title="downstream",
    )
    if any(p["downstream"] for p in points):
        right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def finished_point(out: Path, point: dict[str, Any]) -> dict[str, Any] | None:
    """The point's point.json, its downstream differences re-read from its A/B's results.json (so a
    metric added to DOWNSTREAM reaches old points), or None where it has not run or ran other keys."""
    path = out / point["name"] / "point.json"
    if not path.is_file():
        return None
    done = json.loads(path.read_text())
    if done.get("keys", {}) != point.get("keys", {}):
        print(
            f"warning: {path} ran keys {done.get('keys')}, the sweep now asks {point.get('keys', {})}: "
            "left out of the summary; delete the point's folder to rerun it",
            file=sys.stderr,
        )
        return None
    results = out / point["name"] / "results.json"
    if results.is_file():
        done["downstream"] = downstream(json.loads(results.read_text()))
    return done


def run(sweep: SweepConfig, only: list[str] | None = None) -> dict[str, Any]:
    """Every point (or the `only` ones), each saved as out_dir/<name>/point.json, then the summary files
    over every point of the sweep that has one (a point run alone joins the others' table)."""
    names = [p["name"] for p in sweep.points]
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        raise ConfigError(f"--points: unknown point(s) {unknown}; the sweep has {names}")
    first = names[0]  # its baseline, learned and random runs serve the others (when it has finished)
    out = sweep.out_dir
    for i, point in enumerate(sweep.points):
        if only is not None and point["name"] not in only:
            continue
        print(f"[{i + 1}/{len(sweep.points)}] point {point['name']}: {point.get('keys', {})}", flush=True)
        done = run_point(sweep, point, first)
        write_text(out / point["name"] / "point.json", json.dumps(done, indent=2, default=json_default) + "\n")
    points = [p for p in (finished_point(out, point) for point in sweep.points) if p is not None]
    best = first_significant(points)
    summary = {
        "sweep": {
            "source": sweep.source,
            "ab": None if sweep.ab is None else str(sweep.ab),
            "tracking_bert": None if sweep.tracking_bert is None else str(sweep.tracking_bert),
            "input_dir": None if sweep.input_dir is None else str(sweep.input_dir),
            "points": sweep.points,
        },
        "points": points,
        "first_significant_pretrained_over_random": None if best is None else best["name"],
    }
    write_text(out / "scaling.json", json.dumps(summary, indent=2, default=json_default) + "\n")
    write_text(out / "scaling.md", table(points) + "\n")
    plot(points, out / "scaling.png")
    print(table(points))
    verdict = "none of the points" if best is None else f"{best['name']} ({best['compute']['flops']:.3g} FLOPs)"
    print(f"smallest compute where pretrained beats random on the TrackML score, significantly: {verdict}")
    print(f"  -> {out / 'scaling.md'}, {out / 'scaling.json'}, {out / 'scaling.png'}")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", type=Path, help="the sweep's YAML (configs/scaling/cpu.yaml)")
    ap.add_argument("--points", default=None, help="comma-separated point names (default: all)")
    ap.add_argument(
        "--summary", action="store_true", help="run nothing: rebuild the table and plot from point.json files"
    )
    args = ap.parse_args(argv)
    try:
        sweep = SweepConfig.load(args.config)
        run(sweep, [] if args.summary else args.points.split(",") if args.points else None)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
