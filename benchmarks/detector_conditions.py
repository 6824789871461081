"""Detector conditions the simulation lacks, and recalibration from tracks without truth (issue 25).

    make demo                                   # the ideal A/B: runs/demo/ab (baseline, pretrained, random)
    .venv/bin/python benchmarks/detector_conditions.py configs/ab/conditions.yaml [--datasets ideal,c01] [--seeds 0]

The pipeline and TrackingBERT are trained on ideal simulation (the A/B config's `ab_dir`, as `make demo`
leaves it). The "data" are events simulated with the same particles (same seed and event ids) on a
detector with conditions (`tb simulate --dead-fraction --efficiency-spread --misalignment-mm ...`):
dead modules, a spread of module efficiencies, misaligned modules, while detectors.csv keeps the nominal
geometry. On each dataset's test events, for every downstream seed of the A/B:

    baseline      (a) the baseline arm as trained (trained_stage_dir: nothing retrained)
    pretrained    (b) the TrackingBERT arm with its simulation embeddings
    recalibrated  (c) arm b's downstream stages as trained, with the embeddings of TrackingBERT fine-tuned
                  from the simulation model (init_from) on the track candidates that arm b's pipeline (seed
                  0) reconstructs on the data's training events (tracks_from: track_building): no truth;
                  the fine-tuned table is injected in the simulation table's coordinates
    random        (d) the random-code control as trained: a code that cannot learn from the data
    retrained     (e) the baseline's filter and GNN retrained on the data's truth (the module map as
                  trained): the upper bound of what the classifiers, where module vectors enter, can recover

Paired bootstrap differences (seeds x events) of each arm against its control, and of each arm on the
conditions against itself on the ideal events (the loss): at the cuts the stages chose on simulation
(what a run without truth has), and, as the check that a difference is not an operating point that
moved, with each arm's GNN cut to the baseline's efficiency and its filter to the baseline's graph size
on the data's valset (which uses the valset's truth). The
recalibrated table's shift from the simulation table, per module class (dead, inefficient, strongly
misaligned, other), against the same fine-tuning on ideal events, is plotted.

Writes, under out_dir: <dataset>/... (the stage folders), results.json, REPORT.md and
embedding_shift.png. A finished stage is read again, not rerun; bad input is one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tb_plugin.ab.metrics import collect_arm_events  # noqa: E402
from tb_plugin.ab.parallel import ordered_tasks, run_tasks  # noqa: E402
from tb_plugin.ab.runner import ABRunner, load_runner  # noqa: E402
from tb_plugin.ab.stage_runs import run_once  # noqa: E402
from tb_plugin.ab.statistics import compare  # noqa: E402
from tb_plugin.atomic import write_text  # noqa: E402
from tb_plugin.config import ConfigError, load_yaml  # noqa: E402
from tb_plugin.pipeline import stage_from_mapping  # noqa: E402
from tb_plugin.stage import Stage  # noqa: E402
from tb_plugin.stage_record import finished, json_default  # noqa: E402
from tb_plugin.tokenizer import N_SPECIAL  # noqa: E402

ARMS = ("baseline", "pretrained", "recalibrated", "random", "retrained")
CONDITION_OPTIONS = ("dead_fraction", "efficiency_spread", "misalignment_mm", "misalignment_mrad", "conditions_seed")
# (arm, control): what each difference asks
COMPARISONS = (
    ("pretrained", "baseline"),  # b - a: the simulation embeddings on the data
    ("recalibrated", "pretrained"),  # c - b: what recalibration without truth adds
    ("recalibrated", "random"),  # c - d: beyond a code per module
    ("retrained", "baseline"),  # e - a: the upper bound's recovery
)
METRICS = (
    ("track_building.two_way.efficiency", "track efficiency (all)"),
    ("track_building.two_way.efficiency_pt1", "track efficiency, pT > 1 GeV"),
    ("track_building.two_way.fake_rate", "fake rate"),
    ("track_building.trackml_score", "TrackML score"),
    ("track_building.matched.trackml_score", "TrackML score, GNN at the baseline's efficiency"),
    ("track_building.size_matched.trackml_score", "TrackML score, at the baseline's graph size"),
    ("edge_classifier.target_efficiency", "edge efficiency, pT > 1 GeV"),
    ("graph_construction.target_efficiency", "graph efficiency, pT > 1 GeV"),
)


@dataclass(kw_only=True)
class ExperimentConfig:
    """configs/ab/conditions.yaml, checked once here."""

    ab: Path  # the ideal A/B whose trained arms are applied (relative to the config file)
    out_dir: Path
    events: int = 85
    pileup: float = 10.0
    seed: int = 21
    first_event: int = 30000
    data_split: list[int] = field(default_factory=lambda: [60, 5, 20])
    seeds: list[int] | None = None  # downstream seeds of the A/B; None: all of them
    datasets: dict[str, dict[str, float]] = field(default_factory=dict)
    recalibration: dict[str, Any] = field(default_factory=dict)  # tracking_bert keys of the fine-tuning
    bootstrap: dict[str, Any] = field(default_factory=lambda: {"samples": 2000, "confidence": 0.95, "seed": 0})

    def __post_init__(self) -> None:
        if "ideal" not in self.datasets:
            raise ValueError("key 'datasets' needs an 'ideal' entry ({}): the reference every loss is taken from")
        for name, options in self.datasets.items():
            unknown = sorted(set(options or {}) - set(CONDITION_OPTIONS))
            if unknown:
                raise ValueError(
                    f"key 'datasets.{name}' has unknown option {unknown[0]!r}. Allowed: {', '.join(CONDITION_OPTIONS)}"
                )
        if len(self.data_split) != 3 or sum(self.data_split) > self.events or min(self.data_split[1:]) < 1:
            raise ValueError(
                f"key 'data_split' must be [train, val, test] with val and test >= 1 and at most 'events' "
                f"({self.events}) in all, got {self.data_split}"
            )


def load_config(path: Path) -> ExperimentConfig:
    values = load_yaml(path)
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of keys")
    known = set(ExperimentConfig.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}. Allowed: {', '.join(sorted(known))}")
    for key in ("ab", "out_dir"):
        if key not in values:
            raise ConfigError(f"{path}: key {key!r} is required")
    values["ab"] = (path.parent / values["ab"]).resolve()
    values["out_dir"] = Path(values["out_dir"])
    try:
        return ExperimentConfig(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{path}: {err}") from None


# ------------------------------------------------------------------------------------------- the data


SIMULATED_WITH = "simulated_with.json"  # the `tb simulate` options a dataset's folder was written with


def simulate(config: ExperimentConfig, name: str, folder: Path) -> None:
    """`tb simulate` of one dataset: the same particles for every dataset, its own detector conditions.
    A folder written with other options is refused (the stages downstream would be refused as stale)."""
    options = ["--events", str(config.events), "--pileup", str(config.pileup), "--seed", str(config.seed)]
    options += ["--first-event", str(config.first_event), "--out", str(folder)]
    for key, value in (config.datasets[name] or {}).items():
        options += [f"--{key.replace('_', '-')}", str(value)]
    record = folder / SIMULATED_WITH
    if (folder / "simulation.json").is_file():
        if record.is_file() and json.loads(record.read_text()) == options:
            return
        raise ConfigError(
            f"{folder} was simulated with other options than dataset {name!r} of the config now asks "
            f"({' '.join(options)}); remove {folder.parent} to simulate it again"
        )
    subprocess.run([sys.executable, "-m", "tb_plugin.cli", "-q", "simulate", *options], check=True, cwd=ROOT)
    write_text(record, json.dumps(options) + "\n")


def read_events(runner: ABRunner, config: ExperimentConfig, root: Path) -> Path:
    """The dataset's feature store, read as the A/B's data reading reads its events."""
    values = {**runner.reading_values, "input_dir": str(root / "simulated"), "stage_dir": str(root / "feature_store")}
    values["data_split"] = list(config.data_split)
    run_once(stage_from_mapping(values, "data reading (conditions)"))
    return root / "feature_store"


# ------------------------------------------------------------------------------------------- the arms


def embedding_values(runner: ABRunner, source: str, store: Path, stage_dir: Path, **keys: Any) -> dict[str, Any]:
    """The A/B's tracking_bert stage of `source` on the dataset's events: its trained model injected
    (trained_stage_dir), or with `keys` (recalibration) a new training from it."""
    values = dict(runner.arms.embedding_values(source))
    trained = values["stage_dir"]
    values.update(input_dir=str(store), stage_dir=str(stage_dir), data_split=None)
    values.update(keys or {"trained_stage_dir": str(trained)})
    return values


RETRAINED = frozenset({"edge_classifier"})  # arm e: what the module embeddings enter, trained on the data


def applied_values(
    runner: ABRunner, arm: str, seed: int, first_input: Path, root: Path, retrain: frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    """The A/B arm's downstream stages of `seed`, rewired to read `first_input` and write under `root`:
    as trained (trained_stage_dir, for the stages that have artifacts), but the kinds of stage in
    `retrain`, trained again on these events. Arm e retrains the filter and the GNN, where the module
    vectors enter and what recalibration can at best repair; its module map stays the simulation's,
    which learned from the demo's 360 events (the data's 60 are too few to learn one)."""
    ab_dir = Path(runner.config.ab_dir).resolve()
    moved: dict[str, str] = {}
    out = []
    for i, v in enumerate(runner.arm_values(arm, seed)):
        original = Path(v["stage_dir"]).resolve()
        mapped = {**v, "stage_dir": str(root / original.relative_to(ab_dir / arm))}
        mapped["input_dir"] = str(first_input) if i == 0 else moved[str(Path(v["input_dir"]).resolve())]
        has_artifacts = hasattr(stage_from_mapping(mapped, f"{arm} seed {seed}").config, "trained_stage_dir")
        if has_artifacts and v["stage"] not in retrain:
            mapped["trained_stage_dir"] = str(original)
        moved[str(original)] = mapped["stage_dir"]
        out.append(mapped)
    return out


@dataclass
class Dataset:
    name: str
    root: Path
    store: Path
    arms: dict[str, dict[int, list[Stage]]] = field(default_factory=dict)
    recalibration: Stage | None = None  # arm c's tracking_bert stage, fine-tuned on the candidates


def arm_plan(runner: ABRunner, config: ExperimentConfig, data: Dataset, seeds: list[int]) -> dict[str, Any]:
    """Every stage the dataset's arms run, as config mappings: the two tables injected, arms a, b, d as
    trained, the recalibration on arm b's candidates (seed `seeds[0]`), arm c, and arm e retrained."""
    root = data.root
    tables = {s: embedding_values(runner, s, data.store, root / f"tracking_bert_{s}") for s in ("pretrained", "random")}
    inputs = {"baseline": data.store, **{s: Path(v["stage_dir"]) for s, v in tables.items()}}
    arms = {
        arm: {s: applied_values(runner, arm, s, inputs[arm], root / arm) for s in seeds}
        for arm in ("baseline", "pretrained", "random")
    }
    keys = {
        "init_from": str(runner.arms.embedding_values("pretrained")["stage_dir"]),
        "tracks_from": "track_building",
        "tracks_dir": arms["pretrained"][seeds[0]][-1]["stage_dir"],  # arm b's tracks, on every split
        **config.recalibration,
    }
    tables["recalibrated"] = embedding_values(
        runner, "pretrained", data.store, root / "tracking_bert_recalibrated", **keys
    )
    recalibrated = Path(tables["recalibrated"]["stage_dir"])
    arms["recalibrated"] = {
        s: applied_values(runner, "pretrained", s, recalibrated, root / "recalibrated") for s in seeds
    }
    arms["retrained"] = {
        s: applied_values(runner, "baseline", s, data.store, root / "retrained", RETRAINED) for s in seeds
    }
    return {"tables": tables, "arms": arms}


def run_in_order(tasks: dict[Path, Any]) -> None:
    """Every task in this process, each after the tasks whose folders it reads."""
    done: set[Path] = set()
    while len(done) < len(tasks):
        ready = [path for path, task in tasks.items() if path not in done and task.needs(tasks) <= done]
        if not ready:
            raise RuntimeError(f"conditions: {sorted(map(str, set(tasks) - done))} wait for stages that never run")
        for path in ready:
            run_once(stage_from_mapping(tasks[path].values, tasks[path].source))
            done.add(path)


def prepare_dataset(runner: ABRunner, config: ExperimentConfig, name: str, seeds: list[int], jobs: int) -> Dataset:
    """Simulate and read one dataset, then run every stage of its arms, `jobs` at a time (each after
    the stages it reads, as the A/B runs its stages: tb_plugin.ab.parallel)."""
    root = (config.out_dir / name).resolve()
    simulate(config, name, root / "simulated")
    data = Dataset(name, root, read_events(runner, config, root))
    plan = arm_plan(runner, config, data, seeds)
    lists = [[values] for values in plan["tables"].values()]
    lists += [values for seeds_of in plan["arms"].values() for values in seeds_of.values()]
    source = f"conditions ({name})"
    tasks = ordered_tasks(lists, source)
    if jobs > 1:
        run_tasks(tasks, jobs, root / "logs", finished)
    run_in_order(tasks)  # in one process (what the workers ran is read, not rerun)
    data.recalibration = stage_from_mapping(plan["tables"]["recalibrated"], source)
    data.arms = {
        arm: {s: [stage_from_mapping(v, source) for v in values] for s, values in by_seed.items()}
        for arm, by_seed in plan["arms"].items()
    }
    return data


# ------------------------------------------------------------------------------------------- the numbers


def arm_results(data: Dataset) -> dict[str, Any]:
    """results.json's `arms` of one dataset (per seed: event ids and per-event cells), for the paired
    bootstrap of tb_plugin.ab.statistics; each arm's matched rows take the baseline's operating point."""
    arms: dict[str, Any] = {arm: {"seeds": []} for arm in ARMS}
    reference: dict[int, dict[str, float]] = {}  # the baseline's operating points, per seed
    for arm in ARMS:  # the baseline first
        for seed, stages in data.arms[arm].items():
            events = collect_arm_events(stages, reference=reference.get(seed))
            reference.setdefault(seed, events.operating_points)
            arms[arm]["seeds"].append({"seed": seed, "event_ids": events.event_ids, "per_event": events.per_event})
    return arms


PARTICLE_CLASSES = {
    "dead": "through a dead module",
    "misaligned": "on a strongly misaligned module",
    "other": "on neither",
}
CLASS_METRICS = tuple(
    (f"particles_{c}.efficiency", f"track efficiency, particles {t}") for c, t in PARTICLE_CLASSES.items()
)


def particle_classes(data: Dataset, ideal: Dataset, event_ids: list[str]) -> dict[str, dict[int, str]]:
    """Per test event, each particle's class from where it crossed the detector in the ideal twin (the
    same particles; on the data a dead module's hit is gone): `dead` if a crossing is on one of this
    dataset's dead modules, else `misaligned` if one is on a strongly misaligned module (module_classes),
    else `other`."""
    import pandas as pd

    from tb_plugin.geometry import Detector

    folder = ideal.root / "simulated"
    detector = Detector.from_csv(folder / "detectors.csv")
    modules = module_classes(data.root, detector)  # [M]
    out = {}
    for event in event_ids:
        hits = pd.read_csv(folder / f"event{event}-hits.csv", usecols=["hit_id", "volume_id", "layer_id", "module_id"])
        truth = pd.read_csv(folder / f"event{event}-truth.csv", usecols=["hit_id", "particle_id"])
        merged = hits.merge(truth, on="hit_id")
        index = detector.index(merged.volume_id.to_numpy(), merged.layer_id.to_numpy(), merged.module_id.to_numpy())
        frame = pd.DataFrame({"particle_id": merged.particle_id, "class": modules[index]})
        dead = set(frame.particle_id[frame["class"] == "dead"])
        misaligned = set(frame.particle_id[frame["class"] == "misaligned"]) - dead
        out[event] = {int(p): "dead" for p in dead} | {int(p): "misaligned" for p in misaligned}
    return out


def add_class_cells(arms: dict[str, Any], data: Dataset, classes: dict[str, dict[int, str]]) -> dict[str, Any]:
    """A copy of `arms` with the two_way efficiency of each particle class per event (target particles),
    from the track building of `data`'s arms, in the events' order of `arms`."""
    out = json.loads(json.dumps(arms))
    for arm, record in out.items():
        for seed_record, stages in zip(record["seeds"], data.arms[arm].values()):
            tracks = stages[-1]
            cells = {name: {"num": [], "den": []} for name, _ in CLASS_METRICS}
            for event in seed_record["event_ids"]:
                particles = tracks.event_matches(tracks.stage_dir / "testset" / f"event{event}.pyg").particles
                kind = particles.particle_id.map(lambda p, c=classes[event]: c.get(int(p), "other")).to_numpy()
                found = particles["reconstructed_two_way"].to_numpy()
                for (name, _), cls in zip(CLASS_METRICS, PARTICLE_CLASSES):
                    cells[name]["num"].append(float(found[kind == cls].sum()))
                    cells[name]["den"].append(float((kind == cls).sum()))
            seed_record["per_event"].update(cells)
    return out


def differences(arms: dict[str, Any], pairs: list[tuple[str, str]], bootstrap: dict[str, Any]) -> dict[str, Any]:
    """Every (arm, control) pair's paired differences of the reported metrics."""
    out = {}
    options = {"n_boot": bootstrap["samples"], "confidence": bootstrap["confidence"], "seed": bootstrap["seed"]}
    for arm, control in pairs:
        found = compare({"arms": arms}, arm, control, **options)
        out[f"{arm} - {control}"] = {m: vars(found[m]) for m, _ in (*METRICS, *CLASS_METRICS) if m in found}
    return out


def losses(ideal: dict[str, Any], data: dict[str, Any], bootstrap: dict[str, Any]) -> dict[str, Any]:
    """Each arm on the conditions minus itself on the ideal events: the same particles, event by event."""
    merged = {f"{arm}@{tag}": arms[arm] for tag, arms in (("ideal", ideal), ("data", data)) for arm in ARMS}
    pairs = [(f"{arm}@data", f"{arm}@ideal") for arm in ARMS]
    return {key.split("@")[0]: value for key, value in differences(merged, pairs, bootstrap).items()}


def means(arms: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Each arm's pooled value of each metric, averaged over seeds."""
    out: dict[str, dict[str, float | None]] = {}
    for arm, record in arms.items():
        out[arm] = {}
        for metric, _ in (*METRICS, *CLASS_METRICS):
            values = []
            for seed in record["seeds"]:
                cells = seed["per_event"].get(metric)
                if cells and sum(cells["den"]):
                    values.append(sum(cells["num"]) / sum(cells["den"]))
            out[arm][metric] = float(np.mean(values)) if values else None
    return out


# ------------------------------------------------------------------------------------------- the table's shift

CLASSES = ("dead", "inefficient", "misaligned", "other")


def module_classes(root: Path, detector: Any) -> np.ndarray:
    """Each module's class [M] from the dataset's conditions file: dead; inefficient (efficiency below
    0.97); misaligned (in-plane shift in the top tenth of the misaligned modules); other."""
    from tb_plugin.simulation.detector_conditions import CONDITIONS_FILE, read_conditions

    classes = np.full(len(detector), "other", dtype=object)
    path = root / "simulated" / CONDITIONS_FILE
    if not path.is_file():
        return classes
    conditions = read_conditions(path, detector)
    rows = detector.index_strict(conditions.volume_id, conditions.layer_id, conditions.module_id)
    in_plane = np.hypot(conditions.shift[:, 0], conditions.shift[:, 1])  # [K] mm
    if (in_plane > 0).any():
        classes[rows[in_plane >= np.quantile(in_plane[in_plane > 0], 0.9)]] = "misaligned"
    classes[rows[conditions.efficiency < 0.97]] = "inefficient"
    classes[rows[conditions.dead]] = "dead"
    return classes


def table_shift(runner: ABRunner, data: Dataset) -> dict[str, Any]:
    """How far fine-tuning moved each module's vector (L2 of the raw token rows, in units of the
    simulation table's mean row norm), by module class of this dataset's conditions."""
    start_stage = stage_from_mapping(runner.arms.embedding_values("pretrained"), "tracking_bert (simulation)")
    start_module, tokenizer, detector = start_stage.trained()
    tuned = data.recalibration.trained()[0].model.module_embeddings().detach()  # [V, C]
    start = start_module.model.module_embeddings().detach()
    tokens = tokenizer.module_to_token  # [M]
    in_vocab = tokens >= N_SPECIAL  # the special tokens come first; modules outside the vocabulary map to UNK
    scale = float(start[N_SPECIAL:].norm(dim=1).mean())
    shift = (tuned[tokens] - start[tokens]).norm(dim=1).numpy() / scale  # [M]
    classes = module_classes(data.root, detector)
    out: dict[str, Any] = {}
    for name in CLASSES:
        chosen = shift[in_vocab & (classes == name)]
        out[name] = {"modules": int(len(chosen)), "shift": chosen.tolist()}
    return out


def plot_shift(shifts: dict[str, dict[str, Any]], path: Path) -> Path:
    """Mean shift per module class and dataset, with a 95 % bootstrap interval over modules."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(len(shifts), 1)
    for i, (dataset, classes) in enumerate(shifts.items()):
        ax.plot([], [], "o", color=f"C{i}", label=dataset)
        for j, name in enumerate(CLASSES):
            values = np.asarray(classes[name]["shift"])
            if len(values) == 0:
                continue
            boot = rng.choice(values, (1000, len(values))).mean(axis=1)
            low, high = np.percentile(boot, [2.5, 97.5])
            mean = values.mean()
            ax.errorbar(j + i * width, mean, yerr=[[mean - low], [high - mean]], fmt="o", capsize=3, color=f"C{i}")
    ax.set_xticks(np.arange(len(CLASSES)) + width * (len(shifts) - 1) / 2, CLASSES)
    ax.set_ylabel("recalibration shift of the module vector\n(relative to the mean row norm)")
    ax.set_title("What recalibration without truth moved, by module class")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------- the report


def _cell(d: dict[str, Any] | None) -> str:
    if not d:
        return "n/a"
    text = f"{d['estimate']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"
    return f"**{text}**" if d["significant"] else text


def report(results: dict[str, Any]) -> str:
    """REPORT.md: per dataset the arms' values, the comparisons and the losses from ideal."""
    lines = ["# Detector conditions and recalibration without truth", ""]
    for name, block in results["datasets"].items():
        lines += [f"## {name}: {json.dumps(block['conditions'])}", ""]
        lines += ["| metric | " + " | ".join(ARMS) + " |", "| --- |" + " ---: |" * len(ARMS)]
        for metric, label in METRICS:
            values = [block["means"][arm].get(metric) for arm in ARMS]
            lines.append(f"| {label} | " + " | ".join("n/a" if v is None else f"{v:.4f}" for v in values) + " |")
        rows = list(block["differences"].items()) + [
            (f"{a}: data - ideal", d) for a, d in block.get("loss", {}).items()
        ]
        lines += [
            "",
            "| difference | " + " | ".join(label for _, label in METRICS) + " |",
            "| --- |" + " --- |" * len(METRICS),
        ]
        for key, diff in rows:
            lines.append(f"| {key} | " + " | ".join(_cell(diff.get(m)) for m, _ in METRICS) + " |")
        if block["means"]["baseline"].get(CLASS_METRICS[0][0]) is not None:  # the particles' classes
            lines += ["", "| | " + " | ".join(label for _, label in CLASS_METRICS) + " |", "| --- |" + " --- |" * 3]
            for arm in ARMS:
                values = [block["means"][arm].get(m) for m, _ in CLASS_METRICS]
                lines.append(f"| {arm} | " + " | ".join("n/a" if v is None else f"{v:.4f}" for v in values) + " |")
            for key, diff in rows:
                lines.append(f"| {key} | " + " | ".join(_cell(diff.get(m)) for m, _ in CLASS_METRICS) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--datasets", help="comma-separated dataset names (default: all; ideal is always run)")
    parser.add_argument("--seeds", help="comma-separated downstream seeds (default: the config's, else the A/B's)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes for the stage runs (2 on 2 cores)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        runner = load_runner(config.ab)
        names = ["ideal"] + [
            n for n in (args.datasets.split(",") if args.datasets else config.datasets) if n != "ideal"
        ]
        missing = [n for n in names if n not in config.datasets]
        if missing:
            raise ConfigError(
                f"--datasets: {missing[0]!r} is not in {args.config}. Allowed: {', '.join(config.datasets)}"
            )
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else (config.seeds or list(runner.config.seeds))
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        results = run(runner, config, names, seeds, args.jobs)
    except ConfigError as err:  # a folder from other options, a stale stage: one line
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report(results))
    return 0


def run(runner: ABRunner, config: ExperimentConfig, names: list[str], seeds: list[int], jobs: int) -> dict[str, Any]:
    """Every dataset's arms, their comparisons and losses, the table's shift; results.json, REPORT.md
    and the plot written under out_dir."""
    results: dict[str, Any] = {"config": json.loads(json.dumps(vars(config), default=json_default)), "datasets": {}}
    arms_by_name: dict[str, Any] = {}
    datasets: dict[str, Dataset] = {}
    shifts: dict[str, Any] = {}
    for name in names:
        print(f"conditions: dataset {name}", file=sys.stderr)
        data = prepare_dataset(runner, config, name, seeds, jobs)
        arms_by_name[name] = arm_results(data)
        datasets[name] = data
        if name != "ideal":  # each particle's class, on the data and on its ideal twin
            classes = particle_classes(data, datasets["ideal"], arms_by_name[name]["baseline"]["seeds"][0]["event_ids"])
            arms_by_name[name] = add_class_cells(arms_by_name[name], data, classes)
            ideal_twin = add_class_cells(arms_by_name["ideal"], datasets["ideal"], classes)
        block = {
            "conditions": config.datasets[name] or {},
            "means": means(arms_by_name[name]),
            "differences": differences(arms_by_name[name], list(COMPARISONS), config.bootstrap),
        }
        if name != "ideal":
            block["loss"] = losses(ideal_twin, arms_by_name[name], config.bootstrap)
        shifts[name] = table_shift(runner, data)
        block["shift"] = {
            c: {"modules": v["modules"], "mean": float(np.mean(v["shift"])) if v["shift"] else None}
            for c, v in shifts[name].items()
        }
        results["datasets"][name] = block
    out = config.out_dir
    results["plot"] = str(plot_shift(shifts, out / "embedding_shift.png"))
    write_text(out / "results.json", json.dumps(results, indent=2, default=json_default) + "\n")
    write_text(out / "REPORT.md", report(results))
    return results


if __name__ == "__main__":
    sys.exit(main())
