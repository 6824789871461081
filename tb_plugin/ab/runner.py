"""`tb ab AB.yaml`: the baseline pipeline against the same pipeline with module vectors, arm by arm.

The arms are built from one pipeline file (arms.py): the baseline, and each named arm with its
embedding source (pretrained, random, shuffled, geometry, learned, finetune) and keys; today's
two-arm config is the one arm `trackingbert`. Every arm runs over every seed on the same events;
each arm is then compared with the baseline, and with its `compare_to` control when it names one,
paired by seed and event (statistics.py).

Layout under ab_dir (arms.py has the stage folders):

    <arm>/seed<k>/result.json          the seed's metrics: written last, so its presence means done
    results.json, REPORT.md, plots/

Every stage keeps its stage record (`stage_record.json`: config, input, finished phases, train
time), as `tb run` does; a rerun skips the stages it records as finished with the same config and
input and any seed with a result.json, so an interrupted A/B resumes.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stages.inference_chain import InferenceChain
from tb_plugin.ab.arms import ArmBuilder
from tb_plugin.ab.arms_report import HEADLINE, controls_section, render_ab_report
from tb_plugin.ab.config import BASELINE, ABConfig
from tb_plugin.ab.metrics import ArmEvents, collect_arm_events, metric_specs
from tb_plugin.ab.stage_runs import gradient_trained, run_once, trainable_parameters
from tb_plugin.atomic import atomic_path, write_text
from tb_plugin.config import ConfigError, to_record
from tb_plugin.event_store import list_event_files, load_event
from tb_plugin.pipeline import stage_from_mapping
from tb_plugin.stage import Stage
from tb_plugin.stage_record import RECORD as STAGE_RECORD  # noqa: F401  (tests name the record through the runner)
from tb_plugin.stage_record import finished, json_default

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
ARMS = (BASELINE, "trackingbert")  # the arms of a two-arm config
# sources whose vectors come from the pretrained model: the pretraining is part of their arms' cost
PRETRAINED_COST = ("pretrained", "shuffled", "finetune")


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
        self.arms = ArmBuilder(config, source)
        self.ab_dir = Path(config.ab_dir)
        self.names = config.arm_names  # the baseline first

    # ------------------------------------------------------------------------------ the arms

    @property
    def reading_values(self) -> dict[str, Any]:
        return self.arms.reading_values

    @property
    def tb_values(self) -> dict[str, Any]:
        return self.arms.tb_values

    def reading_stage(self) -> Stage:
        return self.arms.reading_stage()

    def pretraining_stage(self) -> Stage:
        return self.arms.pretraining_stage()

    def arm_values(self, arm: str, seed: int, n_labelled: int | None = None) -> list[dict[str, Any]]:
        return self.arms.arm_values(arm, seed, n_labelled)

    def plan(self, arm: str, seed: int, n_labelled: int | None = None) -> ArmPlan:
        values = self.arm_values(arm, seed, n_labelled)
        stages = [stage_from_mapping(v, f"{self.config.pipeline} ({arm}, seed {seed})") for v in values]
        root = self.ab_dir / ("low_label" if n_labelled is not None else "") / (f"n{n_labelled}" if n_labelled else "")
        return ArmPlan(arm, seed, stages, root / arm / f"seed{seed}")

    def source(self, arm: str) -> str:
        spec = self.arms.spec(arm)
        return "none" if spec is None else spec.source

    # ------------------------------------------------------------------------------ running

    def run(self, low_label: bool = False) -> dict[str, Any]:
        """Every arm over every seed (resuming), then results.json, REPORT.md and the plots."""
        from tb_plugin.ab.report import summary_table, write_report

        self.ab_dir.mkdir(parents=True, exist_ok=True)
        run_once(self.reading_stage())
        sweep = low_label or (self.config.low_label is not None and self.config.low_label.run)
        if self.config.jobs > 1:
            self.run_in_parallel(sweep)
        embeddings = self.run_embeddings()
        results: dict[str, Any] = {"config": self.config_record(), "arms": self.arm_records()}
        collected: dict[str, list[ArmEvents]] = {arm: [] for arm in self.names}
        for seed in self.config.seeds:
            for arm, (seed_result, events) in self.run_arms(seed, embeddings).items():
                results["arms"][arm]["seeds"].append(seed_result)
                collected[arm].append(events)
        measured = set.intersection(*(set(s["per_event"]) for arm in self.names for s in results["arms"][arm]["seeds"]))
        results["metrics"] = metric_specs(measured)
        results["overhead"] = overhead(results)
        comparisons = self.compare(results)
        results["comparisons"] = [{**c, "differences": as_dicts(c["differences"])} for c in comparisons]
        results["differences"] = results["comparisons"][0]["differences"]  # the first arm against the baseline
        if sweep:
            results["low_label"] = self.run_low_label(results, embeddings)
        results["plots"] = self.plot(results, collected)
        write_text(self.ab_dir / "results.json", json.dumps(results, indent=2, default=json_default) + "\n")
        write_report(self.ab_dir / "REPORT.md", render_ab_report(results))
        if len(comparisons) > 1:  # what the controls show: the headline metrics, a column per comparison
            print("\n".join(controls_section(results, results["comparisons"])))
        else:
            print(summary_table(results, results["differences"], arm=self.names[1]))
        print(f"  -> {self.ab_dir / 'REPORT.md'}, {self.ab_dir / 'results.json'}")
        return results

    def arm_records(self) -> dict[str, dict[str, Any]]:
        """results.json's `arms`: each arm's source and control (a two-arm A/B keeps today's form)."""
        if self.config.arms is None:
            return {arm: {"seeds": []} for arm in self.names}
        specs = self.config.arm_specs()
        records = {BASELINE: {"source": "none", "seeds": []}}
        for name, spec in specs.items():
            records[name] = {"source": spec.source, "compare_to": spec.controls, "seeds": []}
        return records

    def run_embeddings(self) -> dict[str, dict[str, Any]]:
        """Each tracking_bert source some arm reads, run once (resuming), with its record and parameters."""
        records = {}
        for source in self.arms.embedding_sources():
            stage = self.arms.embedding_stage(source)
            records[source] = run_once(stage)
            records[source]["trainable_parameters"] = trainable_parameters(stage) if source == "pretrained" else 0
        return records

    def run_in_parallel(self, low_label: bool = False) -> None:
        """The tracking_bert stages and every arm and seed's stages (with `low_label`, the sweep's too) in
        `jobs` worker processes (tb_plugin.ab.parallel); the walk over the arms that follows finds them
        finished."""
        from tb_plugin.ab.parallel import ordered_tasks, run_tasks

        embeddings = [[self.arms.embedding_values(source)] for source in self.arms.embedding_sources()]
        arms = [self.arm_values(arm, seed) for seed in self.config.seeds for arm in self.names]
        if low_label:
            arms += [
                self.arm_values(arm, seed, n)
                for n in self.low_label_counts()
                for seed in self.config.low_label_seeds or self.config.seeds
                for arm in self.names
            ]
        tasks = ordered_tasks(embeddings, str(self.config.tracking_bert))
        tasks.update(ordered_tasks(arms, f"{self.config.pipeline} (an A/B arm)"))
        run_tasks(tasks, self.config.jobs, self.ab_dir / "logs", finished)

    def config_record(self) -> dict[str, Any]:
        """The A/B config as recorded in results.json, its file paths relative to the working folder (a
        two-arm config leaves out the unused `arms` and `note`, so its record reads as before)."""
        record = to_record(self.config)
        for key in ("pipeline", "tracking_bert"):
            record[key] = os.path.relpath(record[key]) if Path(record[key]).is_absolute() else record[key]
        for key in ("arms", "note"):
            if record.get(key) is None:
                record.pop(key, None)
        return record

    def run_arms(
        self, seed: int, embeddings: dict[str, dict[str, Any]], n_labelled: int | None = None
    ) -> dict[str, tuple[dict[str, Any], ArmEvents]]:
        """Every arm of one seed, the baseline first: its valset operating points are those the other
        arms' matched rows are moved to."""
        out = {}
        reference = None
        for arm in self.names:
            out[arm] = self.run_seed(self.plan(arm, seed, n_labelled), embeddings, reference)
            if arm == BASELINE:
                reference = out[arm][0].get("operating_points", {})
        return out

    def run_seed(
        self, plan: ArmPlan, embeddings: dict[str, dict[str, Any]], reference: dict[str, float] | None = None
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
        embedding = self.embedding_cost(plan.arm, embeddings)
        if embedding is not None:
            train_time = {"tracking_bert": embedding[0], **train_time}
            params = {"tracking_bert": embedding[1], **params}
        chain = ([self.arms.embedding_stage(self.source(plan.arm))] if self.arms.reads_table(plan.arm) else []) + list(
            plan.stages
        )
        result = {
            "seed": plan.seed,
            "event_ids": events.event_ids,
            "metrics": events.pooled(),
            "per_event": events.per_event,
            "operating_points": events.operating_points,
            "trainable_parameters": {**params, "total": sum(params.values())},
            "train_time_s": {**train_time, "total": sum(train_time.values())},
            "inference_s_per_event": self.time_inference(chain),
            "validation_loss": validation_curves(plan.stages),
        }
        write_text(done, json.dumps(result, indent=2, default=json_default) + "\n")
        return result, events

    def embedding_cost(self, arm: str, embeddings: dict[str, dict[str, Any]]) -> tuple[float, int] | None:
        """(train seconds, trainable parameters) of the tracking_bert stage behind the arm's vectors: the
        pretraining for the sources made from it (a shuffled table also costs its own short run), the
        stage's own run (no training) for random and geometry; None for an arm without one."""
        source = self.source(arm)
        if source in PRETRAINED_COST and "pretrained" in embeddings:
            pre = embeddings["pretrained"]
            extra = embeddings.get(source, {}).get("train_time_s", 0.0) if source == "shuffled" else 0.0
            return pre["train_time_s"] + extra, pre["trainable_parameters"]
        if source in embeddings:
            return embeddings[source]["train_time_s"], 0
        return None

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

    # ------------------------------------------------------------------------------ comparisons

    def compare(self, results: dict[str, Any]) -> list[dict[str, Any]]:
        """Each (arm, control) pair of the config, paired over seeds and events, with its differences."""
        from tb_plugin.ab.statistics import compare

        b = self.config.bootstrap
        return [
            {
                "arm": arm,
                "control": control,
                "differences": compare(results, arm, control, n_boot=b.samples, confidence=b.confidence, seed=b.seed),
            }
            for arm, control in self.config.comparisons()
        ]

    # ------------------------------------------------------------------------------ low-label sweep

    def run_low_label(self, results: dict[str, Any], embeddings: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Each metric vs the number of labelled training events, every arm (mean and std over seeds),
        and per count each comparison's paired difference with its bootstrap interval (seeds and events
        resampled, as in the main comparison); the full count reuses the main runs."""
        from tb_plugin.ab.statistics import compare

        seeds = self.config.low_label_seeds or self.config.seeds
        full = self.full_labelled_events()
        counts = self.low_label_counts()
        sweep: dict[str, Any] = {"n_labelled": counts + [full], "seeds": seeds, "arms": {}, "comparisons": []}
        names = [m["name"] for m in results["metrics"]]
        main = {arm: {r["seed"]: r for r in results["arms"][arm]["seeds"]} for arm in self.names}
        per_n: dict[str, list[list[dict[str, Any]]]] = {arm: [] for arm in self.names}
        pairs = self.config.comparisons()
        differences: list[dict[str, Any]] = [{} for _ in pairs]
        b = self.config.bootstrap
        for n in counts + [None]:
            runs: dict[str, dict[str, list[dict[str, Any]]]] = {arm: {"seeds": []} for arm in self.names}
            for seed in seeds:
                done = n is None and all(seed in main[arm] for arm in self.names)
                arms = (
                    {arm: main[arm][seed] for arm in self.names}
                    if done
                    else {arm: r[0] for arm, r in self.run_arms(seed, embeddings, n).items()}
                )
                for arm in self.names:
                    runs[arm]["seeds"].append(arms[arm])
            for arm in self.names:
                per_n[arm].append([r["metrics"] for r in runs[arm]["seeds"]])
            for i, (arm, control) in enumerate(pairs):
                found = compare(
                    {"arms": runs, "metrics": results["metrics"]},
                    arm,
                    control,
                    n_boot=b.samples,
                    confidence=b.confidence,
                    seed=b.seed,
                )
                differences[i][str(n or full)] = {k: d.as_dict() for k, d in found.items() if k in names}
        for arm in self.names:
            sweep["arms"][arm] = {name: _mean_std([[m.get(name) for m in row] for row in per_n[arm]]) for name in names}
        sweep["comparisons"] = [
            {"arm": arm, "control": control, "differences": d} for (arm, control), d in zip(pairs, differences)
        ]
        sweep["differences"] = differences[0]  # the first arm against the baseline (the two-arm form)
        return sweep

    def low_label_counts(self) -> list[int]:
        """The sweep's labelled-event counts below the full run's (which the main runs give)."""
        spec = self.config.low_label
        full = self.full_labelled_events()
        return [n for n in sorted(set(spec.n_labelled if spec else [1, 2, 4, 8])) if n < full]

    def full_labelled_events(self) -> int:
        plan = self.plan(BASELINE, self.config.seeds[0])
        trained = [s for s in plan.stages if gradient_trained(s)]
        if not trained:
            raise ConfigError(f"{self.config.pipeline}: no gradient-trained downstream stage, so no low-label sweep")
        return self.arms.training_events(trained[0])

    # ------------------------------------------------------------------------------ plots

    def plot(self, results: dict[str, Any], collected: dict[str, list[ArmEvents]]) -> list[str]:
        from tb_plugin.ab import plots

        out = self.ab_dir / "plots"
        written: list[Path] = []
        pt = {
            arm: (
                np.concatenate([p for e in collected[arm] for p in e.particle_pt_gev] or [np.zeros(0)]),
                np.concatenate([r for e in collected[arm] for r in e.particle_reconstructed] or [np.zeros(0, bool)]),
            )
            for arm in self.names
        }
        if all(len(v[0]) for v in pt.values()):
            written.append(plots.plot_efficiency_vs_pt(pt, out / "track_efficiency_vs_pt.png"))
        roc = {
            arm: (
                np.concatenate([s for e in collected[arm] for s in e.roc_scores] or [np.zeros(0)]),
                np.concatenate([y for e in collected[arm] for y in e.roc_labels] or [np.zeros(0, bool)]),
            )
            for arm in self.names
        }
        if all(0 < v[1].sum() < len(v[1]) for v in roc.values()):
            written.append(plots.plot_roc(roc, out / "edge_roc.png"))
        comparisons = results["comparisons"]
        if len(comparisons) == 1:
            pair = (comparisons[0]["control"], comparisons[0]["arm"])
            written.append(
                plots.plot_metric_differences(results["differences"], results["metrics"], out / "differences.png", pair)
            )
        else:
            written.append(plots.plot_comparisons(comparisons, results["metrics"], out / "comparisons.png", HEADLINE))
        curves = plots.plot_validation_curves(results, out / "validation_loss.png")
        if curves is not None:
            written.append(curves)
        if "low_label" in results:
            written.extend(plots.plot_low_label(results["low_label"], results["metrics"], out))
        if "pretrained" in self.arms.embedding_sources():
            pca = embedding_pca(self.pretraining_stage(), out / "embedding_pca.png")
            if pca is not None:
                written.append(pca)
        return [str(Path(p).relative_to(self.ab_dir)) for p in written]


# ------------------------------------------------------------------------------ helpers


def validation_curves(stages: list[Stage]) -> dict[str, dict[str, list[float]]]:
    """Each gradient-trained stage's validation loss per epoch, from its CSV logs: whether more epochs
    would still have helped, arm by arm and seed by seed. A resumed run logs into a new version, so the
    versions are merged in the order written, a later one's epoch replacing an earlier one's."""
    curves = {}
    for stage in stages:
        if not gradient_trained(stage):
            continue
        by_epoch: dict[int, float] = {}
        for log_file in sorted((stage.stage_dir / "logs").glob("version_*/metrics.csv"), key=_version_number):
            with open(log_file, newline="") as handle:
                by_epoch.update(
                    {int(r["epoch"]): float(r["val/loss"]) for r in csv.DictReader(handle) if r.get("val/loss")}
                )
        if by_epoch:
            epochs = sorted(by_epoch)
            curves[stage.stage_dir.name] = {"epoch": epochs, "loss": [by_epoch[e] for e in epochs]}
    return curves


def _version_number(path: Path) -> int:
    return int(path.parent.name.removeprefix("version_") or 0)


def as_dicts(differences: dict[str, Any]) -> dict[str, Any]:
    return {name: d.as_dict() for name, d in differences.items()}


def overhead(results: dict[str, Any]) -> dict[str, Any]:
    """Each arm's inference time per event against the baseline's (means over seeds); the two-arm keys
    (`inference_ratio`, `trackingbert_s_per_event`) are those of the first arm."""
    arms = list(results["arms"])
    times = {
        arm: float(np.mean([s["inference_s_per_event"]["total"] for s in results["arms"][arm]["seeds"]]))
        for arm in arms
    }
    base = times[BASELINE]
    ratios = {arm: (times[arm] / base if base > 0 else None) for arm in arms[1:]}
    first = arms[1]
    out = {
        "inference_ratio": ratios[first],
        "baseline_s_per_event": base,
        "trackingbert_s_per_event": times[first],
        "target": 1.02,
    }
    if len(arms) > 2:
        out["arms"] = {arm: {"s_per_event": times[arm], "ratio": ratios[arm]} for arm in arms[1:]}
    return out


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


def load_runner(path: str | Path) -> ABRunner:
    from tb_plugin.ab.config import load_ab_config

    return ABRunner(load_ab_config(path), str(path))
