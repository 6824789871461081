"""`tb ab AB.yaml`: the baseline pipeline against the same pipeline with TrackingBERT features.

The arms are built from one pipeline file, so they cannot drift apart:

    baseline       data reading -> [downstream stages of the pipeline]
    trackingbert   data reading -> tracking_bert -> [the same stages, with hit_tb_emb appended to
                   node_features and tb_sim to edge_features wherever a stage has those keys]

Data reading runs once, where the pipeline puts it, and is shared: both arms see the same events and
splits. TrackingBERT is pretrained once, on the trainset and valset of data reading only, never on
the test events the arms are measured on. Each seed sets `seed` of every downstream stage in both arms.
Stages without a Trainer (module map, connected components) are deterministic given their input, so
a run of them whose upstream is seed-free is shared by the seeds instead of being repeated.

Layout under ab_dir:

    tracking_bert/                     the pretrained stage (trackingbert arm only; key tracking_bert_dir moves it)
    <arm>/<stage>/                     seed-free stages (e.g. the module map)
    <arm>/seed<k>/<stage>/             the rest, per seed
    <arm>/seed<k>/result.json          the seed's metrics: written last, so its presence means done
    low_label/n<n>/<arm>/seed<k>/...   the low-label sweep
    results.json, REPORT.md, plots/

Every stage writes `ab_stage.json` (train time, parameters) when it has trained, inferred and been
evaluated; a rerun skips such stages and any seed with a result.json, so an interrupted A/B resumes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stages.inference_chain import InferenceChain
from tb_plugin.ab.config import ABConfig
from tb_plugin.ab.metrics import ArmEvents, collect_arm_events, metric_specs
from tb_plugin.atomic import atomic_path, write_text
from tb_plugin.config import ConfigError, load_yaml, to_record
from tb_plugin.event_store import list_event_files, load_event
from tb_plugin.pipeline import load_pipeline, stage_from_mapping
from tb_plugin.registry import resolve
from tb_plugin.stage import Stage
from tb_plugin.training import TrainerConfig

log = logging.getLogger(__name__)

ARMS = ("baseline", "trackingbert")
STAGE_RECORD = "ab_stage.json"
RESULT_FILE = "result.json"
FEATURE_KEYS = ("node_features", "node_scales", "edge_features", "edge_scales")


def gradient_trained(stage: Stage) -> bool:
    """Stages with a Lightning Trainer depend on their seed; the others are deterministic."""
    return isinstance(stage.config, TrainerConfig)


@dataclass
class ArmPlan:
    """The downstream stages of one arm and seed, wired to their folders, in order."""

    arm: str
    seed: int
    stages: list[Stage]
    result_dir: Path


class ABRunner:
    def __init__(self, config: ABConfig, source: str = "the A/B config") -> None:
        self.config = config
        entries = load_pipeline(config.pipeline)
        if entries[0].values.get("stage") != "data_reading":
            raise ConfigError(
                f"{config.pipeline}: the A/B needs data reading as the pipeline's first stage "
                f"(both arms share its events), got stage '{entries[0].values.get('stage')}'"
            )
        if len(entries) < 2:
            raise ConfigError(f"{config.pipeline}: the A/B needs stages after data reading to compare")
        for entry in entries[1:]:
            if entry.values.get("stage") in ("data_reading", "tracking_bert"):
                raise ConfigError(
                    f"{entry.source}: the baseline pipeline must not hold a '{entry.values['stage']}' stage "
                    f"after data reading (the A/B adds tracking_bert itself)"
                )
        self.reading_values = dict(entries[0].values)
        self.downstream = [dict(e.values) for e in entries[1:]]
        models = sorted({str(v.get("model")) for v in self.downstream})
        for key in ("trackingbert_keys", "baseline_keys"):
            for model in getattr(config, key):
                if model not in models:
                    raise ConfigError(
                        f"{source}: key '{key}.{model}': the pipeline {config.pipeline.name} has no stage of "
                        f"model '{model}'; its models are {', '.join(models)}"
                    )
        self.tb_values = load_yaml(config.tracking_bert)
        if self.tb_values.get("stage") != "tracking_bert":
            raise ConfigError(
                f"{config.tracking_bert}: key 'stage' must be tracking_bert, got {self.tb_values.get('stage')!r}"
            )
        self.ab_dir = Path(config.ab_dir)

    # ------------------------------------------------------------------------------ the arms

    def reading_stage(self) -> Stage:
        return stage_from_mapping(self.reading_values, str(self.config.pipeline))

    def pretraining_values(self) -> dict[str, Any]:
        return {
            **self.tb_values,
            "input_dir": self.reading_stage().stage_dir,
            "stage_dir": self.config.tracking_bert_dir or self.ab_dir / "tracking_bert",
        }

    def pretraining_stage(self) -> Stage:
        return stage_from_mapping(self.pretraining_values(), str(self.config.tracking_bert))

    def arm_values(self, arm: str, seed: int, n_labelled: int | None = None) -> list[dict[str, Any]]:
        """The downstream stage configs of one arm and seed (and labelled-event count), wired in order.

        A trackingbert-arm stage whose config and input are the baseline's (an A/B that adds no
        features and sets keys on a later stage only, e.g. track building) is the baseline's run: it
        keeps the baseline's folder, so the arms share it instead of training it twice."""
        if arm not in ARMS:
            raise ValueError(f"unknown arm '{arm}'; expected one of {', '.join(ARMS)}")
        features = arm == "trackingbert" and self.config.trackingbert_features is not None
        upstream = self.pretraining_stage().stage_dir if features else self.reading_stage().stage_dir
        shared = self.arm_values("baseline", seed, n_labelled) if arm == "trackingbert" and not features else []
        seeded = False
        wired = []
        for i, (values, name) in enumerate(zip(self.downstream, stage_folders(self.downstream))):
            values = copy.deepcopy(values)
            values["input_dir"] = upstream
            values.update(copy.deepcopy(self.arm_keys(arm).get(values["model"], {})))
            if features:
                self.add_features(values)
            if arm == "trackingbert" and values.get("tracking_bert_dir") is None and self.uses_model(values):
                values["tracking_bert_dir"] = self.pretraining_stage().stage_dir  # the A/B's own model
            stage = stage_from_mapping(values, "the A/B arm")
            if n_labelled is not None and gradient_trained(stage):
                self.set_labelled_events(values, stage, n_labelled)
            seeded = seeded or gradient_trained(stage)
            if seeded:  # a seed-free stage keeps its own seed: one run of it serves every seed
                values["seed"] = seed
            root = self.ab_dir
            if n_labelled is not None and seeded:
                root = root / "low_label" / f"n{n_labelled}"
            folder = root / arm / (f"seed{seed}" if seeded else "") / name
            if i < len(shared) and {**values, "stage_dir": None} == {**shared[i], "stage_dir": None}:
                folder = shared[i]["stage_dir"]
            values["stage_dir"] = self.reused(values, folder, upstream)
            folder = values["stage_dir"]
            wired.append(values)
            upstream = folder
        return wired

    def reused(self, values: dict[str, Any], folder: Path, upstream: Path) -> Path:
        """`folder`, or its twin under `reuse_ab_dir` when that holds a finished run of the same config on
        the same input (upstream stages reused, or shared by both A/Bs: data reading, a pretraining
        named by tracking_bert_dir): another A/B's runs are read instead of run again."""
        other = self.config.reuse_ab_dir
        if other is None or not Path(folder).is_relative_to(self.ab_dir):
            return folder
        if Path(upstream).is_relative_to(self.ab_dir) and not Path(upstream).is_relative_to(other):
            return folder  # the input is this A/B's own run: nothing made from it can be elsewhere
        twin = Path(other) / Path(folder).relative_to(self.ab_dir)
        return twin if finished_with(stage_from_mapping({**values, "stage_dir": twin}, "the A/B arm")) else folder

    @staticmethod
    def uses_model(values: dict[str, Any]) -> bool:
        """A stage with a `tracking_bert_dir` key that asks for the model by a key set to `tb` (track
        building's stitch: tb and reject: tb)."""
        config_class = resolve(str(values.get("stage")), str(values.get("model")), "the A/B arm").config_class
        has_key = any(f.name == "tracking_bert_dir" for f in dataclasses.fields(config_class))
        return has_key and any(v == "tb" for v in values.values())

    def arm_keys(self, arm: str) -> dict[str, dict[str, Any]]:
        """Keys the A/B config sets on this arm's stages, by model (e.g. the module map's prior)."""
        return self.config.trackingbert_keys if arm == "trackingbert" else self.config.baseline_keys

    def add_features(self, values: dict[str, Any]) -> None:
        """Append the TrackingBERT features (and their scales) to the stage's feature keys, where the
        stage has them; a stage without scales gets 1.0 for its own features, which is no scaling."""
        add = self.config.trackingbert_features
        config = stage_from_mapping(values, "the A/B arm").config
        for key, scale_key, extra, extra_scales in (
            ("node_features", "node_scales", add.node_features, add.node_scales),
            ("edge_features", "edge_scales", add.edge_features, add.edge_scales),
        ):
            if not extra or not hasattr(config, key):
                continue
            current = list(getattr(config, key))
            values[key] = current + list(extra)
            if hasattr(config, scale_key):
                scales = getattr(config, scale_key)
                values[scale_key] = (list(scales) if scales is not None else [1.0] * len(current)) + list(extra_scales)

    def set_labelled_events(self, values: dict[str, Any], stage: Stage, n: int) -> None:
        """First n training events, and as many optimiser steps (and validations) as the full run."""
        full = self.training_events(stage)
        if n > full:
            raise ConfigError(
                f"key 'low_label.n_labelled': {n} labelled events asked for, but the stage trains on {full}"
            )
        split = list(stage.config.data_split or [full, 10**9, 10**9])
        split[0] = n
        values["data_split"] = split
        factor = math.ceil(full / n)
        values["max_epochs"] = stage.config.max_epochs * factor
        values["val_every_n_epochs"] = stage.config.val_every_n_epochs * factor

    def training_events(self, stage: Stage) -> int:
        """Training events a downstream stage sees: the smallest first data_split entry along the chain
        from data reading to it (a stage only reads the events its upstream stages wrote)."""
        counts = []
        reading = self.reading_stage()
        if reading.config.data_split is not None:
            counts.append(reading.config.data_split[0])
        else:
            written = list_event_files(reading.stage_dir, "trainset")
            if written:
                counts.append(len(written))
        for values in self.downstream:
            split = values.get("data_split")
            if split is not None:
                counts.append(split[0])
            if values.get("stage") == stage.config.stage and values.get("model") == stage.config.model:
                break
        if not counts:
            raise ConfigError(
                f"{self.config.pipeline}: cannot tell how many labelled training events there are before "
                "data reading has run (give data reading a data_split)"
            )
        return min(counts)

    def plan(self, arm: str, seed: int, n_labelled: int | None = None) -> ArmPlan:
        values = self.arm_values(arm, seed, n_labelled)
        stages = [stage_from_mapping(v, f"{self.config.pipeline} ({arm}, seed {seed})") for v in values]
        root = (
            self.ab_dir
            / ("low_label" if n_labelled is not None else "")
            / (f"n{n_labelled}" if n_labelled is not None else "")
        )
        return ArmPlan(arm, seed, stages, root / arm / f"seed{seed}")

    # ------------------------------------------------------------------------------ running

    def run(self, low_label: bool = False) -> dict[str, Any]:
        """Both arms over every seed (resuming), then results.json, REPORT.md and the plots."""
        from tb_plugin.ab.report import render_report, summary_table, write_report
        from tb_plugin.ab.statistics import compare_arms

        self.ab_dir.mkdir(parents=True, exist_ok=True)
        run_once(self.reading_stage())
        if self.config.jobs > 1:
            self.run_in_parallel()
        pretraining = self.pretraining_stage()
        pretrain_record = run_once(pretraining)
        pretrain_record["trainable_parameters"] = trainable_parameters(pretraining)

        results: dict[str, Any] = {"config": self.config_record(), "arms": {arm: {"seeds": []} for arm in ARMS}}
        collected: dict[str, list[ArmEvents]] = {arm: [] for arm in ARMS}
        for seed in self.config.seeds:
            for arm, (seed_result, events) in self.run_arms(seed, pretrain_record).items():
                results["arms"][arm]["seeds"].append(seed_result)
                collected[arm].append(events)
        measured = set.intersection(*(set(s["per_event"]) for arm in ARMS for s in results["arms"][arm]["seeds"]))
        results["metrics"] = metric_specs(measured)
        results["overhead"] = overhead(results)
        b = self.config.bootstrap
        differences = compare_arms(results, n_boot=b.samples, confidence=b.confidence, seed=b.seed)
        results["differences"] = {name: d.as_dict() for name, d in differences.items()}
        if low_label or (self.config.low_label is not None and self.config.low_label.run):
            results["low_label"] = self.run_low_label(results, pretrain_record)
        results["plots"] = self.plot(results, differences, collected, pretraining)
        write_text(self.ab_dir / "results.json", json.dumps(results, indent=2, default=_json_default) + "\n")
        write_report(self.ab_dir / "REPORT.md", render_report(results, differences))
        print(summary_table(results, differences))
        print(f"  -> {self.ab_dir / 'REPORT.md'}, {self.ab_dir / 'results.json'}")
        return results

    def run_in_parallel(self) -> None:
        """The pretraining and every arm and seed's stages in `jobs` worker processes (tb_plugin.ab.parallel);
        the walk over the arms that follows finds them finished."""
        from tb_plugin.ab.parallel import ordered_tasks, run_tasks

        pretraining = self.pretraining_values()
        arms = [self.arm_values(arm, seed) for seed in self.config.seeds for arm in ARMS]
        tasks = ordered_tasks([[pretraining]], str(self.config.tracking_bert))
        tasks.update(ordered_tasks(arms, f"{self.config.pipeline} (an A/B arm)"))
        run_tasks(tasks, self.config.jobs, self.ab_dir / "logs", lambda path: (path / STAGE_RECORD).exists())

    def config_record(self) -> dict[str, Any]:
        """The A/B config as recorded in results.json, its file paths relative to the working folder."""
        record = to_record(self.config)
        for key in ("pipeline", "tracking_bert"):
            record[key] = os.path.relpath(record[key]) if Path(record[key]).is_absolute() else record[key]
        return record

    def run_arms(
        self, seed: int, pretrain_record: dict[str, Any], n_labelled: int | None = None
    ) -> dict[str, tuple[dict[str, Any], ArmEvents]]:
        """Both arms of one seed, the baseline first: its valset GNN efficiency is the operating point
        the trackingbert arm's matched track rows are moved to."""
        out = {}
        reference = None
        for arm in ARMS:
            out[arm] = self.run_seed(self.plan(arm, seed, n_labelled), pretrain_record, reference)
            reference = out[arm][0].get("operating_points", {})
        return out

    def run_seed(
        self, plan: ArmPlan, pretrain_record: dict[str, Any], reference: dict[str, float] | None = None
    ) -> tuple[dict[str, Any], ArmEvents]:
        """One arm and seed: its stages (resuming), then its per-event metrics and timings."""
        done = plan.result_dir / RESULT_FILE
        print(f"A/B: {plan.arm} arm, seed {plan.seed}")
        records = {s.stage_dir.name: run_once(s) for s in plan.stages}
        events = collect_arm_events(plan.stages, reference=reference)
        if done.exists():
            return json.loads(done.read_text()), events
        train_time = {name: r["train_time_s"] for name, r in records.items()}
        params = {s.stage_dir.name: trainable_parameters(s) for s in plan.stages}
        if plan.arm == "trackingbert":
            train_time = {"tracking_bert": pretrain_record["train_time_s"], **train_time}
            params = {"tracking_bert": pretrain_record["trainable_parameters"], **params}
        adds_features = plan.arm == "trackingbert" and self.config.trackingbert_features is not None
        chain_stages = ([self.pretraining_stage()] if adds_features else []) + plan.stages
        result = {
            "seed": plan.seed,
            "event_ids": events.event_ids,
            "metrics": events.pooled(),
            "per_event": events.per_event,
            "operating_points": events.operating_points,
            "trainable_parameters": {**params, "total": sum(params.values())},
            "train_time_s": {**train_time, "total": sum(train_time.values())},
            "inference_s_per_event": self.time_inference(chain_stages),
        }
        write_text(done, json.dumps(result, indent=2, default=_json_default) + "\n")
        return result, events

    def time_inference(self, stages: list[Stage]) -> dict[str, float]:
        """Mean over the timed test events of the median over repeats of each stage's in-memory time."""
        files = list_event_files(self.reading_stage().stage_dir, "testset")[: self.config.timing_events]
        if not files:
            raise FileNotFoundError(f"no test events in {self.reading_stage().stage_dir / 'testset'} to time")
        chain = InferenceChain(stages)
        per_event: list[dict[str, float]] = []
        for path in files:
            runs = []
            for _ in range(self.config.timing_repeats):
                data = load_event(path)
                with torch.inference_mode():
                    _, seconds = chain.run(data, path)
                runs.append(seconds)
            per_event.append({name: statistics.median(r[name] for r in runs) for name in runs[0]})
        timing = {name: float(np.mean([e[name] for e in per_event])) for name in per_event[0]}
        return {**timing, "total": sum(timing.values())}

    # ------------------------------------------------------------------------------ low-label sweep

    def run_low_label(self, results: dict[str, Any], pretrain_record: dict[str, Any]) -> dict[str, Any]:
        """Each metric vs the number of labelled training events, both arms (mean and std over seeds),
        and per count the paired difference with its bootstrap interval (seeds and events resampled, as
        in the main comparison); the full count reuses the main runs."""
        from tb_plugin.ab.statistics import compare_arms

        spec = self.config.low_label
        counts = sorted(set(spec.n_labelled if spec else [1, 2, 4, 8]))
        seeds = self.config.low_label_seeds or self.config.seeds
        full = self.full_labelled_events()
        counts = [n for n in counts if n < full]
        sweep: dict[str, Any] = {"n_labelled": counts + [full], "seeds": seeds, "arms": {}, "differences": {}}
        names = [m["name"] for m in results["metrics"]]
        main = {arm: {r["seed"]: r for r in results["arms"][arm]["seeds"]} for arm in ARMS}
        per_n: dict[str, list[list[dict[str, Any]]]] = {arm: [] for arm in ARMS}
        b = self.config.bootstrap
        for n in counts + [None]:
            runs: dict[str, dict[str, list[dict[str, Any]]]] = {arm: {"seeds": []} for arm in ARMS}
            for seed in seeds:
                done = n is None and all(seed in main[arm] for arm in ARMS)
                arms = (
                    {arm: main[arm][seed] for arm in ARMS}
                    if done
                    else {arm: r[0] for arm, r in self.run_arms(seed, pretrain_record, n).items()}
                )
                for arm in ARMS:
                    runs[arm]["seeds"].append(arms[arm])
            for arm in ARMS:
                per_n[arm].append([r["metrics"] for r in runs[arm]["seeds"]])
            differences = compare_arms(
                {"arms": runs, "metrics": results["metrics"]}, n_boot=b.samples, confidence=b.confidence, seed=b.seed
            )
            sweep["differences"][str(n or full)] = {k: d.as_dict() for k, d in differences.items() if k in names}
        for arm in ARMS:
            sweep["arms"][arm] = {name: _mean_std([[m.get(name) for m in row] for row in per_n[arm]]) for name in names}
        return sweep

    def full_labelled_events(self) -> int:
        plan = self.plan("baseline", self.config.seeds[0])
        trained = [s for s in plan.stages if gradient_trained(s)]
        if not trained:
            raise ConfigError(f"{self.config.pipeline}: no gradient-trained downstream stage, so no low-label sweep")
        return self.training_events(trained[0])

    # ------------------------------------------------------------------------------ plots

    def plot(
        self, results: dict[str, Any], differences: dict, collected: dict[str, list[ArmEvents]], pretraining: Stage
    ) -> list[str]:
        from tb_plugin.ab import plots

        out = self.ab_dir / "plots"
        written: list[Path] = []
        pt = {
            arm: (
                np.concatenate([p for e in collected[arm] for p in e.particle_pt_gev] or [np.zeros(0)]),
                np.concatenate([r for e in collected[arm] for r in e.particle_reconstructed] or [np.zeros(0, bool)]),
            )
            for arm in ARMS
        }
        if all(len(v[0]) for v in pt.values()):
            written.append(plots.plot_efficiency_vs_pt(pt, out / "track_efficiency_vs_pt.png"))
        roc = {
            arm: (
                np.concatenate([s for e in collected[arm] for s in e.roc_scores] or [np.zeros(0)]),
                np.concatenate([y for e in collected[arm] for y in e.roc_labels] or [np.zeros(0, bool)]),
            )
            for arm in ARMS
        }
        if all(0 < v[1].sum() < len(v[1]) for v in roc.values()):
            written.append(plots.plot_roc(roc, out / "edge_roc.png"))
        written.append(plots.plot_metric_differences(differences, results["metrics"], out / "differences.png"))
        if "low_label" in results:
            written.extend(plots.plot_low_label(results["low_label"], results["metrics"], out))
        pca = embedding_pca(pretraining, out / "embedding_pca.png")
        if pca is not None:
            written.append(pca)
        return [str(Path(p).relative_to(self.ab_dir)) for p in written]


# ------------------------------------------------------------------------------ helpers


def stage_folders(downstream: list[dict[str, Any]]) -> list[str]:
    """A folder name per downstream stage: its `stage` key, with the model added where two stages share
    it (a filter and a GNN are both edge_classifier stages)."""
    kinds = [v["stage"] for v in downstream]
    return [
        kind if kinds.count(kind) == 1 else f"{kind}_{str(v['model']).lower()}" for kind, v in zip(kinds, downstream)
    ]


def run_once(stage: Stage) -> dict[str, Any]:
    """Train (timed), infer and evaluate a stage unless its record says it is done; returns the record."""
    record_path = stage.stage_dir / STAGE_RECORD
    if record_path.exists():
        record = json.loads(record_path.read_text())
        check_same_config(record, stage, record_path)
        return record
    train_time = 0.0
    if stage.trainable:
        start = time.perf_counter()
        stage.train()
        train_time = time.perf_counter() - start
    stage.infer()
    stage.evaluate()
    record = {
        "stage": stage.config.stage,
        "model": stage.config.model,
        "train_time_s": train_time,
        "config": to_record(stage.config),
    }
    write_text(record_path, json.dumps(record, indent=2, default=_json_default) + "\n")
    return record


def changed_keys(record: dict[str, Any], stage: Stage) -> list[str]:
    """The keys whose value in the stage's config differs from the one a finished run recorded."""
    current = json.loads(json.dumps(to_record(stage.config), default=_json_default))
    previous = record.get("config", {})
    defaults = field_defaults(type(stage.config))
    return sorted(
        k
        for k in set(current) | set(previous)
        if current.get(k) != previous.get(k)
        # a key added in a later version, at its default (which keeps the old behaviour), is no change
        and not (k not in previous and k in defaults and current.get(k) == defaults[k])
    )


def finished_with(stage: Stage) -> bool:
    """Whether the stage's folder holds a finished run (its ab_stage.json) of exactly this config."""
    record_path = stage.stage_dir / STAGE_RECORD
    return record_path.is_file() and not changed_keys(json.loads(record_path.read_text()), stage)


def check_same_config(record: dict[str, Any], stage: Stage, record_path: Path) -> None:
    """A finished stage is reused only for the config that produced it: after a config edit, resuming
    would silently mix old results into the new A/B."""
    current = json.loads(json.dumps(to_record(stage.config), default=_json_default))
    previous = record.get("config", {})
    changed = changed_keys(record, stage)
    if changed:
        details = ", ".join(f"{k}: {previous.get(k)!r} -> {current.get(k)!r}" for k in changed[:5])
        raise ConfigError(
            f"{record_path}: this stage finished with another config ({details}); remove "
            f"{stage.stage_dir} (or use another ab_dir) to rerun it with the new one"
        )


def field_defaults(config_class: type) -> dict[str, Any]:
    """The plain declared defaults of a config dataclass's fields, as they read in a JSON record (fields
    without one, or with a default factory, are left out: such keys always count as changed)."""
    out = {}
    for f in dataclasses.fields(config_class):
        if f.default is not dataclasses.MISSING:
            try:
                out[f.name] = json.loads(json.dumps(f.default, default=_json_default))
            except TypeError:
                continue
    return out


def trainable_parameters(stage: Stage) -> int:
    """Parameters with gradients of the stage's trained model; 0 for stages without one."""
    trained = getattr(stage, "trained", None)
    if trained is None or not gradient_trained(stage):
        return 0
    module = trained()
    module = module[0] if isinstance(module, tuple) else module
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad))


def overhead(results: dict[str, Any]) -> dict[str, Any]:
    """TrackingBERT arm / baseline inference time per event (means over seeds)."""
    times = {
        arm: float(np.mean([s["inference_s_per_event"]["total"] for s in results["arms"][arm]["seeds"]]))
        for arm in ARMS
    }
    return {
        "inference_ratio": times["trackingbert"] / times["baseline"] if times["baseline"] > 0 else None,
        "baseline_s_per_event": times["baseline"],
        "trackingbert_s_per_event": times["trackingbert"],
        "target": 1.02,
    }


def embedding_pca(stage: Stage, out_path: Path) -> Path | None:
    """The module-embedding PCA map that the tracking_bert stage's evaluation drew, beside the A/B plots."""
    source = stage.stage_dir / "eval" / "embedding_pca.png"
    if not source.exists():
        return None
    with atomic_path(out_path) as tmp:
        shutil.copyfile(source, tmp)
    return out_path


def _mean_std(rows: list[list[float | None]]) -> dict[str, list[float | None]]:
    means, stds = [], []
    for row in rows:
        values = [v for v in row if v is not None]
        means.append(float(np.mean(values)) if values else None)
        stds.append(float(np.std(values, ddof=1)) if len(values) > 1 else 0.0 if values else None)
    return {"mean": means, "std": stds}


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def load_runner(path: str | Path) -> ABRunner:
    from tb_plugin.ab.config import load_ab_config

    return ABRunner(load_ab_config(path), str(path))
