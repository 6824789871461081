"""Per-stage inference time and peak memory of the baseline chain on full-occupancy events (CPU, or GPU).

    .venv/bin/python benchmarks/inference_speed.py [--events 3] [--map-events 30] [--threads 2]
                                                   [--filter-events 6] [--filter-epochs 20]
                                                   [--filter-sector 200000] [--hidden H] [--iters K]
                                                   [--accelerator cpu|gpu] [--compile] [--precision bf16-mixed] [--out runs/bench/inference_speed.json]

Two chains are timed on the same events, run in memory by stages.inference_chain.InferenceChain, one
event at a time, with the keys of the shipped configs (configs/graph_construction/module_map.yaml,
configs/edge_classifier/filter.yaml, configs/edge_classifier/interaction_gnn.yaml,
configs/track_building/connected_components.yaml; --hidden / --iters override the GNN's size):
  without the filter: data reading (TrackML CSVs -> Data) -> ModuleMap -> InteractionGNN -> ConnectedComponents
  with the filter:    data reading -> ModuleMap -> Filter -> InteractionGNN -> ConnectedComponents
Targets (issues): under 10 s per pile-up-200 event on a 2-core CPU, peak memory under 8 GB; the
filter cuts the GNN's edges at least 4x while keeping 99 % of the target (pT > 1 GeV) truth edges.

Setup, in a child process so its memory does not count (everything under --work, reused by a rerun):
  1. simulates `--map-events` pile-up-200 training events and `--events` test events (the real
     detector's geometry when ../shared/trackml/detectors.csv exists, else the built-in one);
  2. reads the training events and learns the module map from all of them;
  3. builds the graphs of `--filter-events` training events and trains the edge filter on the first
     two thirds of them, with its cut chosen on the rest for 99 % target efficiency (filter.yaml's
     edge_cut); its efficiency is then measured on the test events, which neither the map nor the
     filter saw;
  4. trains the GNN for one epoch on a phi sector of the first graph. Its scores are meaningless;
     inference time does not depend on them (the edges cut by score_cut only change the
     connected-components step, which is the cheapest). Both chains use this one GNN.
Timing, in this process (setup's memory does not count): one untimed warm-up event (a training
event), then every test event through the chain, from its CSV files to its track labels; then the real
hits of ../shared/trackml/event000001001-hits.csv (no truth file exists: time, graph size and memory
only), read with the real detectors.csv. Peak memory is ru_maxrss of this process: the peak over the
whole timing run (interpreter, torch, loaded models and the largest event), not a per-event figure.

Prints one JSON object to stdout (progress goes to stderr) and writes it to --out.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from stages.graph_metrics import target_truth_mask  # noqa: E402
from stages.inference_chain import InferenceChain  # noqa: E402
from tb_plugin.config import load_yaml  # noqa: E402
from tb_plugin.event_store import list_event_files, load_event, save_event  # noqa: E402
from tb_plugin.geometry import Detector  # noqa: E402
from tb_plugin.pipeline import stage_from_mapping  # noqa: E402
from tb_plugin.simulation import SimulationConfig, simulate_dataset  # noqa: E402
from tb_plugin.stage import Stage  # noqa: E402
from tb_plugin.trackml import event_prefix, list_events  # noqa: E402

SHARED = REPO.parent / "shared" / "trackml"
REAL_EVENT = 1001
CONFIGS = {
    "graph_construction": REPO / "configs" / "graph_construction" / "module_map.yaml",
    "filter": REPO / "configs" / "edge_classifier" / "filter.yaml",
    "edge_classifier": REPO / "configs" / "edge_classifier" / "interaction_gnn.yaml",
    "track_building": REPO / "configs" / "track_building" / "connected_components.yaml",
}
CHAINS = {
    "without_filter": ["graph_construction", "edge_classifier", "track_building"],
    "with_filter": ["graph_construction", "filter", "edge_classifier", "track_building"],
}
TARGET_SECONDS = 10.0
TARGET_MEMORY_MB = 8 * 1024
TARGET_EDGE_REDUCTION = 4.0
FIRST_TRAIN_EVENT, FIRST_TEST_EVENT = 1000, 5000
GNN_TRAIN_EDGES = 50_000  # the phi sector the one-epoch GNN trains on
FILTER_TRAIN_EDGES = 200_000  # the filter's training sector: the config's 5k is a pile-up-10 size
FILTER_EPOCHS = 20


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def peak_memory_mb() -> float:
    """ru_maxrss of this process (kB on Linux): its peak resident memory so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------------------------- setup


def sim_detector(shared: Path) -> tuple[Detector, str]:
    """The real geometry when the shared folder has it (the real hits then share the map's module
    index exactly), else the built-in detector."""
    if (shared / "detectors.csv").is_file():
        return Detector.from_csv(shared / "detectors.csv"), str(shared / "detectors.csv")
    return Detector.builtin(), "builtin"


def simulate(folder: Path, n_events: int, first_event: int, pileup: float, seed: int, detector: Detector) -> None:
    """Simulated events in `folder` unless a previous run left exactly these there."""
    wanted = list(range(first_event, first_event + n_events))
    have = [event_id for event_id, _ in list_events(folder)] if folder.is_dir() else []
    stored = folder / "detectors.csv"
    if have == wanted and stored.is_file() and Detector.from_csv(stored).geometry_hash() == detector.geometry_hash():
        log(f"reusing {n_events} simulated events in {folder}")
        return
    if folder.is_dir():
        for path in folder.iterdir():
            path.unlink()
    log(f"simulating {n_events} events at pile-up {pileup:g} into {folder}")
    simulate_dataset(
        SimulationConfig(n_events=n_events, pileup=pileup, seed=seed, first_event=first_event), detector, folder
    )
    detector.to_csv(stored)


def stage_values(name: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The shipped baseline config of a host stage, pointed at the benchmark's folders."""
    values = load_yaml(CONFIGS[name])
    if name == "graph_construction":
        values.update(
            input_dir=str(work / "store"), stage_dir=str(work / "module_map"), data_split=[args.map_events, 0, 0]
        )
        values.pop("map_events", None)
    elif name == "edge_classifier":
        values.update(
            input_dir=str(work / "graphs"),
            stage_dir=str(work / "gnn"),
            data_split=[1, 0, 0],
            max_epochs=1,
            warmup_steps=0,
            max_train_edges=GNN_TRAIN_EDGES,
            accelerator=args.accelerator,
            devices=1,
            num_workers=0,
            logger="csv",
        )
        values["compile_inference"] = args.compile
        values["precision"] = args.precision
        if args.hidden is not None:
            values["hidden"] = args.hidden
        if args.iters is not None:
            values["n_graph_iters"] = args.iters
    elif name == "filter":
        n_val = max(args.filter_events // 3, 1)
        values.update(
            input_dir=str(work / "graphs"),
            stage_dir=str(work / "filter"),
            data_split=[args.filter_events - n_val, n_val, 0],
            max_epochs=args.filter_epochs,
            val_every_n_epochs=5,
            max_train_edges=args.filter_sector,
            accelerator=args.accelerator,
            devices=1,
            num_workers=0,
            logger="csv",
            compile_inference=args.compile,
            precision=args.precision,
        )
    else:
        values.update(input_dir=str(work / "gnn"), stage_dir=str(work / "track_building"))
    return values


def reader(input_dir: Path, stage_dir: Path, detector: str, n_events: int) -> Stage:
    values = {
        "stage": "data_reading",
        "model": "TrackMLReader",
        "input_dir": str(input_dir),
        "stage_dir": str(stage_dir),
        "data_split": [n_events, 0, 0],
        "use_cells": False,
    }
    if detector != "builtin":
        values["detector"] = detector
    return stage_from_mapping(values, "inference_speed reader")


def write_graphs(module_map: Stage, work: Path, n_events: int) -> None:
    """The map's graphs of the first n training events: the first two thirds into graphs/trainset (the
    GNN trains on the first), the rest into graphs/valset (where the filter's cut is chosen)."""
    n_val = max(n_events // 3, 1)
    build = None  # the map is loaded once, and only when a graph is missing
    for i, path in enumerate(list_event_files(work / "store", "trainset")[:n_events]):
        split = "trainset" if i < n_events - n_val else "valset"
        out = work / "graphs" / split / path.name
        moved = work / "graphs" / ("valset" if split == "trainset" else "trainset") / path.name
        if moved.exists():  # another --filter-events splits the graphs differently: one split per event
            moved.unlink()
        if not out.exists():
            log(f"graph of training event {path.name} -> {split}")
            build = build or module_map.event_processor()
            save_event(build(load_event(path), path), out)


def retrain(stage: Stage, folder: Path) -> None:
    """Train the stage afresh (a new size or config must not resume an old checkpoint)."""
    for old in (folder / "artifacts").glob("*"):
        if old.is_file():
            old.unlink()
    stage.train()


def prepare(args: argparse.Namespace) -> None:
    """Everything the timing needs: simulated events, the learned map, the trained filter, a (briefly)
    trained GNN."""
    torch.set_num_threads(args.threads)
    work = args.work
    detector, detector_name = sim_detector(args.shared)
    simulate(work / "sim" / "train", args.map_events, FIRST_TRAIN_EVENT, args.pileup, args.seed, detector)
    simulate(work / "sim" / "test", args.events, FIRST_TEST_EVENT, args.pileup, args.seed + 1, detector)
    reader(work / "sim" / "train", work / "store", detector_name, args.map_events).infer()
    module_map = stage_from_mapping(stage_values("graph_construction", work, args), str(CONFIGS["graph_construction"]))
    module_map.train()
    write_graphs(module_map, work, args.filter_events)
    retrain(stage_from_mapping(stage_values("filter", work, args), str(CONFIGS["filter"])), work / "filter")
    retrain(
        stage_from_mapping(stage_values("edge_classifier", work, args), str(CONFIGS["edge_classifier"])), work / "gnn"
    )


# ------------------------------------------------------------------------------------- timing


@functools.lru_cache(maxsize=1)
def target_conditions() -> list[Any]:
    """The filter config's target_tracks, as conditions on truth edges."""
    return stage_from_mapping(load_yaml(CONFIGS["filter"]), str(CONFIGS["filter"])).config.target_conditions()


def target_truth_in_graph(data: Any, source: str) -> int:
    """Target truth edges (pT > 1 GeV particles, the filter config's target_tracks) present in the
    event's graph: the numerator of graph efficiency, and before / after the filter, of its efficiency."""
    target = target_truth_mask(data, target_conditions(), source)  # [T]
    return int((data.track_to_edge_map.long()[target] >= 0).sum())


def event_row(event_id: int, data: Any, seconds: dict[str, float], with_truth: bool = True) -> dict[str, Any]:
    labels = data.hit_track_labels
    row = {
        "event_id": event_id,
        "hits": int(data.num_nodes),
        "edges": int(data.edge_index.shape[1]),
        "tracks": int(labels.max()) + 1 if labels.numel() else 0,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "total_seconds": round(sum(seconds.values()), 3),
    }
    if with_truth:
        row["target_truth_edges"] = target_truth_in_graph(data, f"event {event_id}")
    return row


def host_stages(work: Path, args: argparse.Namespace, chain: str) -> list[Stage]:
    return [stage_from_mapping(stage_values(name, work, args), str(CONFIGS[name])) for name in CHAINS[chain]]


def time_simulated(args: argparse.Namespace, detector_name: str, chain_name: str) -> dict[str, Any]:
    """One chain over the simulated test events, after an untimed warm-up event."""
    work = args.work
    start = time.perf_counter()
    chain = InferenceChain(
        [reader(work / "sim" / "test", work / "read", detector_name, args.events), *host_stages(work, args, chain_name)]
    )
    load_seconds = time.perf_counter() - start
    warm = list_events(work / "sim" / "train")[0]
    log(f"{chain_name}: warm-up on training event {warm[0]} (not timed)")
    chain.run(None, warm[1])
    rows = []
    for event_id, prefix in tqdm(list_events(work / "sim" / "test"), desc=chain_name, unit="event", file=sys.stderr):
        data, seconds = chain.run(None, prefix)
        rows.append(event_row(event_id, data, seconds))
        log(
            f"event {event_id}: {rows[-1]['hits']:,} hits, {rows[-1]['edges']:,} edges, {rows[-1]['total_seconds']:.2f} s {rows[-1]['seconds']}"
        )
        del data
    totals = [r["total_seconds"] for r in rows]
    return {
        "stages": [s.config.model for s in chain.stages],
        "events": rows,
        "mean_seconds": {
            name: round(float(np.mean([r["seconds"][name] for r in rows])), 3) for name in chain.stage_names
        },
        "mean_total_seconds": round(float(np.mean(totals)), 3),
        "max_total_seconds": round(float(np.max(totals)), 3),
        "mean_hits": round(float(np.mean([r["hits"] for r in rows]))),
        "mean_edges": round(float(np.mean([r["edges"] for r in rows]))),
        "load_seconds": round(load_seconds, 3),
        "peak_memory_mb": round(peak_memory_mb(), 1),
    }


def filter_effect(without: dict[str, Any], with_filter: dict[str, Any]) -> dict[str, Any]:
    """What the filter does to the GNN's input on the test events: the edge reduction (the map's edges /
    the filter's) and the share of the graph's target truth edges it keeps, summed over events."""
    before = sum(r["target_truth_edges"] for r in without["events"])
    after = sum(r["target_truth_edges"] for r in with_filter["events"])
    reduction = without["mean_edges"] / with_filter["mean_edges"] if with_filter["mean_edges"] else None
    return {
        "gnn_edges_without": without["mean_edges"],
        "gnn_edges_with": with_filter["mean_edges"],
        "edge_reduction": round(reduction, 3) if reduction is not None else None,
        "target_efficiency": round(after / before, 5) if before else None,
        "target_truth_edges_before": before,
        "target_truth_edges_after": after,
        "seconds_saved": round(without["mean_total_seconds"] - with_filter["mean_total_seconds"], 3),
    }


def map_compatibility(sim: Detector, real: Detector) -> tuple[bool, str]:
    """Whether a map learned on `sim` applies to hits indexed with `real`: the map stores dense module
    indices, the rank of (volume, layer, module) in the sorted module table, so it applies when both
    tables hold the same ids (equal ids hashes)."""
    if sim.geometry_hash() == real.geometry_hash():
        return True, "the map was learned on events simulated with this detectors.csv: same geometry, same module index"
    if sim.ids_hash() == real.ids_hash():
        return True, (
            "the simulation used the built-in detector, which has the real file's (volume, layer, module) ids, "
            "so the module index agrees and every id names the same module, but module positions differ "
            "slightly, so the doublet windows are approximate"
        )
    return (
        False,
        "the real detector's module ids differ from the simulated detector's: a map learned there cannot apply",
    )


def time_real(args: argparse.Namespace) -> dict[str, Any]:
    """Both chains on the real hits of event 1001 (no truth: time, graph size and memory only)."""
    hits = args.shared / f"event{REAL_EVENT:09d}-hits.csv"
    if not hits.is_file() or not (args.shared / "detectors.csv").is_file():
        return {
            "skipped": f"{hits} or {args.shared / 'detectors.csv'} not found (../shared/trackml beside the checkout)"
        }
    sim_name = sim_detector(args.shared)[1]
    sim = Detector.builtin() if sim_name == "builtin" else Detector.from_csv(sim_name)
    applies, why = map_compatibility(sim, Detector.from_csv(args.shared / "detectors.csv"))
    result: dict[str, Any] = {
        "file": str(hits),
        "truth": "none (no truth file: time, graph size and memory only)",
        "module_map": why,
    }
    for chain_name in CHAINS if applies else ["reading_only"]:
        read = reader(args.shared, args.work / "read_real", str(args.shared / "detectors.csv"), 1)
        chain = InferenceChain([read, *host_stages(args.work, args, chain_name)] if applies else [read])
        data, seconds = chain.run(None, event_prefix(args.shared, REAL_EVENT))
        if applies:
            result[chain_name] = event_row(REAL_EVENT, data, seconds, with_truth=False)
        else:
            result[chain_name] = {"hits": int(data.num_nodes), "seconds": {k: round(v, 3) for k, v in seconds.items()}}
    result["peak_memory_mb"] = round(peak_memory_mb(), 1)
    return result


def chain_target(simulated: dict[str, Any]) -> dict[str, Any]:
    total = simulated["mean_total_seconds"]
    return {
        "seconds_met": total < TARGET_SECONDS,
        "over_by_seconds": round(max(total - TARGET_SECONDS, 0.0), 3),
        "slowest_stage": max(simulated["mean_seconds"], key=simulated["mean_seconds"].get),
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    detector_name = sim_detector(args.shared)[1]
    chains = {name: time_simulated(args, detector_name, name) for name in CHAINS}
    real = time_real(args)
    effect = filter_effect(chains["without_filter"], chains["with_filter"])
    gnn = load_yaml(CONFIGS["edge_classifier"])
    hidden, iters = args.hidden or gnn.get("hidden", 64), args.iters or gnn.get("n_graph_iters", 8)
    peak = peak_memory_mb()
    return {
        "per_stage_seconds": {name: c["mean_seconds"] for name, c in chains.items()},
        "total_seconds": {name: c["mean_total_seconds"] for name, c in chains.items()},
        "filter": effect,
        "peak_memory_mb": round(peak, 1),
        "target": {
            "seconds": TARGET_SECONDS,
            "memory_mb": TARGET_MEMORY_MB,
            "memory_met": peak < TARGET_MEMORY_MB,
            "edge_reduction": TARGET_EDGE_REDUCTION,
            "edge_reduction_met": effect["edge_reduction"] is not None
            and effect["edge_reduction"] >= TARGET_EDGE_REDUCTION,
            **{name: chain_target(c) for name, c in chains.items()},
        },
        "notes": [
            "per_stage_seconds and total_seconds: mean over the simulated pile-up-200 test events, wall clock, "
            "from the CSV files to the track labels, after one untimed warm-up event; the chains run one after the other",
            "filter.target_efficiency: target (pT > 1 GeV) truth edges in the filtered graph / those in the map's graph, "
            "summed over the test events, which neither the map nor the filter trained on",
            "peak_memory_mb: ru_maxrss of the timing process, the peak over the whole timing run (models, "
            "every event, the real hits); setup (simulation, map learning, training) ran in another process",
            f"the GNN (hidden {hidden}, {iters} iterations) was trained for one epoch on one event: its scores are "
            "not meaningful, and inference time does not depend on them",
        ],
        "simulated": chains,
        "real_hits": real,
        "setup": {
            "pileup": args.pileup,
            "map_events": args.map_events,
            "test_events": args.events,
            "filter_events": args.filter_events,
            "filter_epochs": args.filter_epochs,
            "filter_train_edges": args.filter_sector,
            "detector": detector_name,
            "gnn_hidden": hidden,
            "gnn_iters": iters,
            "accelerator": args.accelerator,
            "compile_inference": args.compile,
            "precision": args.precision,
            "seed": args.seed,
            "configs": {name: str(path.relative_to(REPO)) for name, path in CONFIGS.items()},
        },
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
    }


def make_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The options of the setup and the timing; benchmarks/onnx_chain.py takes the same ones, so both
    set up (and reuse) the same --work folder alike."""
    parser = argparse.ArgumentParser(description=description or __doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=3, help="pile-up-200 test events timed (default 3)")
    parser.add_argument(
        "--map-events", type=int, default=30, help="pile-up-200 events the module map learns from (default 30)"
    )
    parser.add_argument("--pileup", type=float, default=200.0)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument(
        "--filter-events",
        type=int,
        default=6,
        help="training events whose graphs train (two thirds) and calibrate (one third) the filter (default 6)",
    )
    parser.add_argument(
        "--filter-epochs", type=int, default=FILTER_EPOCHS, help=f"filter training epochs (default {FILTER_EPOCHS})"
    )
    parser.add_argument(
        "--filter-sector",
        type=int,
        default=FILTER_TRAIN_EDGES,
        help=f"edges per filter training step, a random phi sector of one graph (default {FILTER_TRAIN_EDGES:,})",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the filter and the GNN (compile_inference; the warm-up event pays it)",
    )
    parser.add_argument(
        "--precision",
        choices=["32-true", "bf16-mixed"],
        default="32-true",
        help="precision of the filter and the GNN, in training and inference (bf16-mixed: bfloat16 autocast)",
    )
    parser.add_argument("--hidden", type=int, default=None, help="GNN hidden size (default: the config's)")
    parser.add_argument(
        "--iters", type=int, default=None, help="GNN message-passing iterations (default: the config's)"
    )
    parser.add_argument(
        "--accelerator",
        choices=["cpu", "gpu"],
        default="cpu",
        help="where the filter and the GNN train and infer (default cpu; gpu: benchmarks/gpu_check.sh)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--work", type=Path, default=REPO / "runs" / "bench" / "inference_speed", help="setup folder (reused)"
    )
    parser.add_argument("--shared", type=Path, default=SHARED, help="folder of the real TrackML files")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "inference_speed.json")
    parser.add_argument("--prepare-only", action="store_true", help=argparse.SUPPRESS)  # the setup child process
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Sizes the setup can work with, else parser.error naming the option."""
    for key in ("events", "map_events", "threads", "filter_epochs", "filter_sector"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1, got {getattr(args, key)}")
    if not 2 <= args.filter_events <= args.map_events:
        parser.error(
            f"--filter-events must be between 2 and --map-events ({args.map_events}), got {args.filter_events}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    if args.prepare_only:
        with contextlib.redirect_stdout(sys.stderr):
            prepare(args)
        return 0
    child = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--prepare-only",
        *(argv if argv is not None else sys.argv[1:]),
    ]
    start = time.perf_counter()
    subprocess.run(child, check=True, stdout=sys.stderr)
    log(f"setup took {time.perf_counter() - start:.0f} s")
    if not (args.shared / "detectors.csv").is_file():
        log(f"{args.shared} not found: the real-hits part is skipped")
    with contextlib.redirect_stdout(sys.stderr):  # stages print summaries; stdout carries only the JSON
        result = measure(args)
    text = json.dumps(result, indent=2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
