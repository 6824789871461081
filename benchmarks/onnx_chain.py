"""The filter -> GNN chain with its networks run by onnxruntime from their exported files, timed beside PyTorch.

    .venv/bin/python benchmarks/onnx_chain.py [--events 3] [--threads 2] [--work runs/bench/inference_speed]
                                              [--out runs/bench/onnx_chain.json] [--tiny]
                                              [any setup option of benchmarks/inference_speed.py]

What a deployment without this package's PyTorch networks needs: the exported model files
(filter.onnx, interaction_gnn.onnx), their sidecars (<file>.json, whose `layout` says how the inputs
are built from an event: node fields, edge features, scales, the filter's cut) and onnxruntime, with
numpy for the features and the pruning and scipy for the connected components. The onnxruntime chain
here uses nothing else for those steps: its node and edge features are built from the sidecar's
layout by the numpy code below (OnnxEdgeNetwork), not by stages.features. What still needs torch:
  - data reading and the module map: the repo's TrackMLReader and ModuleMap processors (torch tensors,
    a torch_geometric Data; the map's edge search is written in torch), reused as they are;
  - connected components: stages.track_building.connected_components.track_labels is numpy and scipy
    only, but its module imports torch (a deployment copies the function);
  - the setup: simulation, map learning, training and `tb export`'s tracing.

Setup, in a child process, is benchmarks/inference_speed.py's (its `prepare`, with the same options
and --work folder, so both benchmarks reuse one setup): pile-up-200 simulated events, the learned
module map, the trained filter (its cut chosen on the valset) and the one-epoch GNN. The child then
exports both networks with tb_plugin.model_export (checked there against PyTorch on random inputs) to
<work>/onnx/.

Timing, in this process: both chains start from the test events' CSV files and end at their track
labels, one event at a time, interleaved (each event through both chains before the next; which chain
goes first alternates, so neither always finds the CSV files in the page cache first), after one
untimed warm-up event through each:
  PyTorch       stages.inference_chain.InferenceChain: TrackMLReader -> ModuleMap -> Filter ->
                InteractionGNN -> ConnectedComponents, the keys of benchmarks/inference_speed.py
  onnxruntime   the same reading and module map, then the two .onnx files (features from the
                sidecars, the filter scored in chunks of its inference_chunk_edges, pruned at the
                sidecar's edge_cut), then track_labels with the track-building config's keys
torch and onnxruntime get the same intra-op thread count (--threads); onnxruntime runs its operators
one at a time (inter-op threads 1) and its idle threads do not spin, so they take no CPU from the
interleaved PyTorch chain.

The check: per event, the filter's scores of the edges both chains kept and the GNN's scores must
differ by at most TOLERANCE, both filters must keep the same edges, and the track labels must be
identical. An edge within rounding of the cut can fall on either side of it and then change the GNN's
graph: the JSON says in how many events that happened.

Prints a markdown table (stdout; progress goes to stderr) and writes the JSON to --out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from benchmarks import inference_speed as bench  # noqa: E402
from stages.inference_chain import InferenceChain  # noqa: E402
from stages.model_exports import exportable_models  # noqa: E402
from stages.track_building.connected_components import track_labels  # noqa: E402
from tb_plugin.model_export import export_models  # noqa: E402
from tb_plugin.pipeline import stage_from_mapping  # noqa: E402
from tb_plugin.trackml import list_events  # noqa: E402

TOLERANCE = 1e-4
STAGES = ("data_reading", "module_map", "filter", "gnn", "connected_components")  # the with_filter chain, in order
NETWORKS = {"filter": "filter", "gnn": "edge_classifier"}  # chain step -> inference_speed's stage name
MODULE_FIELD = "hit_module_index"  # the event field the sidecar's `hit_module` input names
TINY = {  # --tiny: pile-up 2, a few events, small networks; a test runs it in well under a minute
    "pileup": 2.0,
    "map_events": 3,
    "filter_events": 3,
    "filter_epochs": 1,
    "events": 2,
    "hidden": 8,
    "iters": 1,
    "work": REPO / "runs" / "bench" / "onnx_chain_tiny",
    "out": REPO / "runs" / "bench" / "onnx_chain_tiny.json",
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ deployment: numpy + onnxruntime


def wrap_phi(dphi: np.ndarray) -> np.ndarray:
    return np.remainder(dphi + math.pi, 2 * math.pi) - math.pi


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity, as torch.nn.functional.cosine_similarity (eps 1e-8)."""
    dot = np.einsum("ij,ij->i", a, b)
    norms = np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", b, b)
    return dot / np.sqrt(np.maximum(norms, np.float32(1e-16)))


def slope(hits: Mapping[str, np.ndarray], src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """dphi / dr, 0 where |dr| <= 1e-6 (endcap disks: hits at one radius have no slope)."""
    dr = hits["hit_r"][dst] - hits["hit_r"][src]
    dphi = wrap_phi(hits["hit_phi"][dst] - hits["hit_phi"][src])
    usable = np.abs(dr) > 1e-6
    return np.where(usable, dphi / np.where(usable, dr, np.float32(1.0)), np.float32(0.0))


# The sidecar's edge feature definitions (stages/model_exports.py EDGE_FEATURE_DEFINITIONS), in numpy
EdgeFeature = Callable[[Mapping[str, np.ndarray], np.ndarray, np.ndarray], np.ndarray]
EDGE_FEATURES: dict[str, EdgeFeature] = {
    "dr": lambda h, s, d: h["hit_r"][d] - h["hit_r"][s],
    "dphi": lambda h, s, d: wrap_phi(h["hit_phi"][d] - h["hit_phi"][s]),
    "dz": lambda h, s, d: h["hit_z"][d] - h["hit_z"][s],
    "deta": lambda h, s, d: h["hit_eta"][d] - h["hit_eta"][s],
    "phislope": slope,
    "rphislope": lambda h, s, d: slope(h, s, d) * np.float32(0.5) * (h["hit_r"][s] + h["hit_r"][d]),
    "tb_sim": lambda h, s, d: cosine(h["hit_tb_emb"][s], h["hit_tb_emb"][d]),
}


def node_matrix(hits: Mapping[str, np.ndarray], node_features: list[dict[str, Any]]) -> np.ndarray:
    """float32 [N, F]: each sidecar field divided by its scale, side by side ([N, D] fields give D columns)."""
    columns = []
    for feature in node_features:
        value = hits[feature["field"]].astype(np.float32, copy=False)
        columns.append((value if value.ndim == 2 else value[:, None]) / np.float32(feature["scale"]))
    return np.concatenate(columns, axis=1)


def edge_matrix(
    hits: Mapping[str, np.ndarray], edge_index: np.ndarray, edge_features: list[dict[str, Any]]
) -> np.ndarray:
    """float32 [E, F_e]: each sidecar edge feature of src -> dst divided by its scale."""
    src, dst = edge_index
    columns = [EDGE_FEATURES[f["name"]](hits, src, dst) for f in edge_features]
    scales = np.asarray([f["scale"] for f in edge_features], dtype=np.float32)
    return np.stack(columns, axis=1).astype(np.float32, copy=False) / scales


def session_options(threads: int) -> ort.SessionOptions:
    """`threads` intra-op threads like torch's, operators one at a time, no spinning between runs."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def filter_cut(layout: Mapping[str, Any], sidecar: Path) -> float:
    """The sidecar's edge_cut: kept edges score above it; -inf when the valset had no target edge."""
    cut = layout["edge_cut"]
    if cut["value"] is not None:
        return float(cut["value"])
    if cut.get("keep_all"):
        return -math.inf
    raise ValueError(f"{sidecar}: the edge cut was never chosen ({cut['provenance']})")


@dataclass
class OnnxEdgeNetwork:
    """An exported edge classifier and what its sidecar says: how to build its inputs, its cut, its chunk."""

    session: ort.InferenceSession
    input_names: list[str]
    node_features: list[dict[str, Any]]
    edge_features: list[dict[str, Any]]
    cut: float | None  # the filter's cut (it prunes); None for the GNN, whose scores go to track building
    chunk: int | None  # edges per run: the filter scores each edge alone, so chunks bound its memory

    @classmethod
    def load(cls, model_file: Path, threads: int) -> OnnxEdgeNetwork:
        sidecar = Path(f"{model_file}.json")
        record = json.loads(sidecar.read_text())
        layout = record["layout"]
        session = ort.InferenceSession(
            str(model_file), sess_options=session_options(threads), providers=["CPUExecutionProvider"]
        )
        prunes = bool(layout.get("prunes"))
        chunk = record["config"].get("inference_chunk_edges") if prunes else None
        return cls(
            session=session,
            input_names=[i.name for i in session.get_inputs()],  # an input the graph does not read is left out
            node_features=layout["x"]["node_features"],
            edge_features=layout["edge_attr"]["edge_features"] if layout.get("edge_attr") else [],
            cut=filter_cut(layout, sidecar) if prunes else None,
            chunk=int(chunk) if chunk else None,
        )

    def scores(self, hits: Mapping[str, np.ndarray], edge_index: np.ndarray) -> np.ndarray:
        """float32 [E]: edge_scores of every edge, `chunk` edges per run."""
        x = node_matrix(hits, self.node_features)  # [N, F]
        E = edge_index.shape[1]
        step = max(self.chunk or E, 1)
        out = []
        for start in range(0, E, step):
            part = np.ascontiguousarray(edge_index[:, start : start + step])  # [2, E']
            feed = {"x": x, "edge_index": part}
            if self.edge_features:
                feed["edge_attr"] = edge_matrix(hits, part, self.edge_features)  # [E', F_e]
            if "hit_module" in self.input_names:
                feed["hit_module"] = hits[MODULE_FIELD].astype(np.int64, copy=False)  # [N]
            out.append(self.session.run(None, {k: v for k, v in feed.items() if k in self.input_names})[0])
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def event_arrays(data: Any) -> dict[str, np.ndarray]:
    """The hand-off from the (torch) module map: every hit field as a numpy array, floats as float32 (what
    the features are computed in), and edge_index as int64."""
    arrays = {}
    for key, value in data.items():
        if torch.is_tensor(value) and key.startswith("hit_"):
            array = value.numpy()
            arrays[key] = array.astype(np.float32, copy=False) if np.issubdtype(array.dtype, np.floating) else array
    arrays["edge_index"] = data.edge_index.numpy().astype(np.int64, copy=False)
    return arrays


@dataclass
class OnnxRun:
    """What one event left behind in the onnxruntime chain, for the comparison."""

    map_edges: np.ndarray  # [2, E] the module map's graph
    filter_scores: np.ndarray  # [E]
    kept: np.ndarray  # bool [E]
    gnn_scores: np.ndarray  # [E']
    labels: np.ndarray  # [N]


class OnnxChain:
    """Data reading and the module map (the repo's processors, torch), then onnxruntime and numpy/scipy."""

    def __init__(self, read: Callable, module_map: Callable, onnx_dir: Path, track_keys: dict[str, Any], threads: int):
        self.read, self.module_map = read, module_map
        self.filter = OnnxEdgeNetwork.load(onnx_dir / "filter.onnx", threads)
        self.gnn = OnnxEdgeNetwork.load(onnx_dir / "interaction_gnn.onnx", threads)
        self.track_keys = track_keys  # score_cut, min_track_length, chains

    def run(self, prefix: Path) -> tuple[OnnxRun, dict[str, float]]:
        """One event from its TrackML prefix to its track labels; wall seconds per step (STAGES)."""
        seconds: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            seconds[name] = now - clock
            clock = now

        data = self.read(None, prefix)
        lap("data_reading")
        data = self.module_map(data, prefix)
        hits = event_arrays(data)
        lap("module_map")
        edge_index = hits["edge_index"]
        filter_scores = self.filter.scores(hits, edge_index)  # [E]
        kept = filter_scores > self.filter.cut  # [E]
        pruned = edge_index[:, kept]  # [2, E']
        lap("filter")
        gnn_scores = self.gnn.scores(hits, pruned)  # [E']
        lap("gnn")
        labels = track_labels(pruned, gnn_scores, int(data.num_nodes), **self.track_keys)
        lap("connected_components")
        return OnnxRun(edge_index, filter_scores, kept, gnn_scores, labels), seconds


# ------------------------------------------------------------------------------ setup


def prepare_and_export(args: argparse.Namespace) -> None:
    """inference_speed's setup, then both networks exported (and checked) to <work>/onnx."""
    bench.prepare(args)
    for name in NETWORKS.values():
        stage = stage_from_mapping(bench.stage_values(name, args.work, args), str(bench.CONFIGS[name]))
        export_models(exportable_models(stage, bench.CONFIGS[name]), args.work / "onnx", "onnx")


def export_records(onnx_dir: Path) -> dict[str, Any]:
    """Each exported file's size and the export's own check (random inputs, tb_plugin.model_export)."""
    out = {}
    for name in ("filter", "interaction_gnn"):
        record = json.loads((onnx_dir / f"{name}.onnx.json").read_text())
        out[name] = {
            "file": str(onnx_dir / f"{name}.onnx"),
            "bytes": (onnx_dir / f"{name}.onnx").stat().st_size,
            "opset": record.get("opset"),
            "export_check_max_abs_diff": record["check"]["max_abs_diff"],
            "edge_cut": record["layout"]["edge_cut"].get("value"),
        }
    return out


# ------------------------------------------------------------------------------ the two chains


Recorded = dict[str, Any]


def recording(process: Callable, name: str, store: Recorded) -> Callable:
    """The processor, keeping a reference to the event's edge_index and edge_scores after it (no copy:
    stages replace these tensors, they never change them in place)."""

    def run(data: Any, source: Path) -> Any:
        data = process(data, source)
        store[name] = (data.edge_index, getattr(data, "edge_scores", None))
        return data

    return run


def torch_chain(args: argparse.Namespace, detector_name: str) -> tuple[InferenceChain, Recorded]:
    """inference_speed's with_filter chain from the CSVs, each step's graph and scores recorded."""
    work = args.work
    chain = InferenceChain(
        [
            bench.reader(work / "sim" / "test", work / "read", detector_name, args.events),
            *bench.host_stages(work, args, "with_filter"),
        ]
    )
    store: Recorded = {}
    chain.processors = [recording(p, name, store) for p, name in zip(chain.processors, STAGES)]
    return chain, store


def onnx_chain(args: argparse.Namespace, detector_name: str, track: Any) -> OnnxChain:
    work = args.work
    read = bench.reader(work / "sim" / "test", work / "read_onnx", detector_name, args.events)
    module_map = stage_from_mapping(
        bench.stage_values("graph_construction", work, args), str(bench.CONFIGS["graph_construction"])
    )
    keys = {
        "score_cut": track.config.score_cut,
        "min_track_length": track.fragment_length,
        "chains": track.config.chains,
    }
    return OnnxChain(read.event_processor(), module_map.event_processor(), work / "onnx", keys, args.threads)


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return math.inf
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


def common_diff(
    edges_a: np.ndarray, scores_a: np.ndarray, edges_b: np.ndarray, scores_b: np.ndarray, n_hits: int
) -> float:
    """max |a - b| of the scores of the edges (src, dst) both graphs hold: the comparison that still
    means something when the two graphs differ."""
    keys_a = edges_a[0].astype(np.int64) * n_hits + edges_a[1]
    keys_b = edges_b[0].astype(np.int64) * n_hits + edges_b[1]
    _, in_a, in_b = np.intersect1d(keys_a, keys_b, assume_unique=False, return_indices=True)
    return max_diff(scores_a[in_a], scores_b[in_b])


def same_graph(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b))


def compare(data: Any, store: Recorded, run: OnnxRun) -> dict[str, Any]:
    """The two chains' outputs of one event side by side. The filter's scores are compared on the edges
    both filters kept (the PyTorch chain keeps only the scores of its kept edges), the GNN's over its
    whole graph when both filters kept the same edges, else over the edges both kept (the two GNN
    graphs then differ, and so may the scores)."""
    n_hits = int(data.num_nodes)
    pruned_t, filter_t = store["filter"][0].numpy(), store["filter"][1].float().numpy()  # [2, E'], [E']
    gnn_t = store["gnn"][1].float().numpy()  # [E']
    pruned_o = run.map_edges[:, run.kept]  # [2, E'']
    same_kept = same_graph(pruned_t, pruned_o)
    labels_t = data.hit_track_labels.numpy()
    return {
        "map_identical": same_graph(store["module_map"][0].numpy(), run.map_edges),
        "filter_max_abs_diff": common_diff(pruned_t, filter_t, pruned_o, run.filter_scores[run.kept], n_hits),
        "gnn_max_abs_diff": max_diff(gnn_t, run.gnn_scores)
        if same_kept
        else common_diff(pruned_t, gnn_t, pruned_o, run.gnn_scores, n_hits),
        "filter_kept_identical": same_kept,
        "tracks_identical": bool(np.array_equal(labels_t, run.labels)),
        "tracks": int(labels_t.max()) + 1 if labels_t.size else 0,
    }


def rounded(seconds: Mapping[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in seconds.items()}


def time_event(
    chain: InferenceChain, store: Recorded, onnx: OnnxChain, event_id: int, prefix: Path, torch_first: bool
) -> dict[str, Any]:
    """One event through both chains (in the order asked), timed per stage, and compared."""
    results: dict[str, Any] = {}
    for which in ("torch", "onnx") if torch_first else ("onnx", "torch"):
        if which == "torch":
            data, seconds = chain.run(None, prefix)
            results["torch"] = (data, dict(zip(STAGES, seconds.values())))
        else:
            results["onnx"] = onnx.run(prefix)
    (data, torch_seconds), (run, onnx_seconds) = results["torch"], results["onnx"]
    return {
        "event_id": event_id,
        "hits": int(data.num_nodes),
        "map_edges": int(run.map_edges.shape[1]),
        "filter_edges": {"torch": int(store["filter"][0].shape[1]), "onnx": int(run.kept.sum())},
        "first": "torch" if torch_first else "onnx",
        "seconds": {"torch": rounded(torch_seconds), "onnx": rounded(onnx_seconds)},
        "total_seconds": {"torch": round(sum(torch_seconds.values()), 4), "onnx": round(sum(onnx_seconds.values()), 4)},
        **compare(data, store, run),
    }


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means per stage and chain, their ratios, and the check over every event."""
    mean = {
        which: {s: round(float(np.mean([r["seconds"][which][s] for r in rows])), 4) for s in STAGES}
        for which in ("torch", "onnx")
    }
    totals = {which: round(float(np.mean([r["total_seconds"][which] for r in rows])), 4) for which in mean}
    filter_diff = max(r["filter_max_abs_diff"] for r in rows)
    gnn_diff = max(r["gnn_max_abs_diff"] for r in rows)
    identical = sum(r["tracks_identical"] for r in rows) / len(rows)
    kept_identical = sum(r["filter_kept_identical"] for r in rows) / len(rows)
    map_identical = sum(r["map_identical"] for r in rows) / len(rows)
    return {
        "mean_seconds": mean,
        "mean_total_seconds": totals,
        "torch_over_onnx": {
            s: round(mean["torch"][s] / mean["onnx"][s], 3) if mean["onnx"][s] else None for s in STAGES
        }
        | {"total": round(totals["torch"] / totals["onnx"], 3) if totals["onnx"] else None},
        "check": {
            "tolerance": TOLERANCE,
            "filter_max_abs_diff": filter_diff,
            "gnn_max_abs_diff": gnn_diff,
            "max_abs_diff": max(filter_diff, gnn_diff),
            "scores_within_tolerance": max(filter_diff, gnn_diff) <= TOLERANCE,
            "map_identical_fraction": map_identical,
            "filter_kept_identical_fraction": kept_identical,
            "identical_tracks_fraction": identical,
            "passed": max(filter_diff, gnn_diff) <= TOLERANCE and kept_identical == 1.0 and identical == 1.0,
        },
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    detector_name = bench.sim_detector(args.shared)[1]
    start = time.perf_counter()
    chain, store = torch_chain(args, detector_name)
    torch_load = time.perf_counter() - start
    start = time.perf_counter()
    onnx = onnx_chain(args, detector_name, chain.stages[-1])
    onnx_load = time.perf_counter() - start
    warm = list_events(args.work / "sim" / "train")[0]
    log(f"warm-up on training event {warm[0]} through both chains (not timed)")
    chain.run(None, warm[1])
    onnx.run(warm[1])
    rows = []
    for i, (event_id, prefix) in enumerate(list_events(args.work / "sim" / "test")):
        rows.append(time_event(chain, store, onnx, event_id, prefix, torch_first=i % 2 == 0))
        r = rows[-1]
        log(
            f"event {event_id}: {r['hits']:,} hits, {r['map_edges']:,} -> {r['filter_edges']['torch']:,} edges; "
            f"PyTorch {r['total_seconds']['torch']:.2f} s, onnxruntime {r['total_seconds']['onnx']:.2f} s; "
            f"max abs diff filter {r['filter_max_abs_diff']:.2g}, GNN {r['gnn_max_abs_diff']:.2g}; "
            f"tracks identical: {r['tracks_identical']}"
        )
        store.clear()
    return {
        **summary(rows),
        "load_seconds": {"torch": round(torch_load, 3), "onnx": round(onnx_load, 3)},
        "peak_memory_mb": round(bench.peak_memory_mb(), 1),
        "events": rows,
        "exports": export_records(args.work / "onnx"),
        "notes": [
            "seconds: wall clock per stage, from the CSV files to the track labels, after one untimed warm-up "
            "event; each event goes through both chains before the next, the first chain alternating",
            "data_reading and module_map run the same (torch) code in both chains; filter and gnn include "
            "building the features (PyTorch: stages.features; onnxruntime: numpy from the sidecar's layout)",
            "filter_max_abs_diff: over the edges both filters kept; gnn_max_abs_diff: over the GNN's graph "
            "(over the edges both kept where the filters kept different edges); map_identical: the module map "
            "(the same code in both chains) built the same graph",
            "peak_memory_mb: ru_maxrss of the timing process, which holds both chains: not a figure of either",
            "the GNN was trained for one epoch on one event (inference_speed.py): its scores are not "
            "meaningful, and neither time nor the comparison depends on that",
        ],
        "setup": {
            "pileup": args.pileup,
            "map_events": args.map_events,
            "test_events": args.events,
            "filter_events": args.filter_events,
            "filter_epochs": args.filter_epochs,
            "gnn_hidden": args.hidden,
            "gnn_iters": args.iters,
            "detector": detector_name,
            "work": str(args.work),
            "compile_inference": args.compile,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
    }


LABELS = {
    "data_reading": "data reading",
    "module_map": "module map",
    "filter": "filter",
    "gnn": "Interaction GNN",
    "connected_components": "connected components",
}


def markdown(result: dict[str, Any]) -> str:
    """The per-stage means side by side, and the check, as markdown."""
    mean, ratio, check = result["mean_seconds"], result["torch_over_onnx"], result["check"]
    lines = ["| stage | PyTorch s | onnxruntime s | PyTorch / onnxruntime |", "|---|---:|---:|---:|"]
    for s in STAGES:
        lines.append(
            f"| {LABELS[s]} | {mean['torch'][s]:.3f} | {mean['onnx'][s]:.3f} | {ratio[s] or float('nan'):.2f} |"
        )
    totals = result["mean_total_seconds"]
    lines.append(
        f"| **total** | **{totals['torch']:.3f}** | **{totals['onnx']:.3f}** | **{ratio['total'] or float('nan'):.2f}** |"
    )
    n = len(result["events"])
    lines += [
        "",
        f"{n} events, {result['machine']['threads']} threads each. Edge scores, max |onnxruntime - PyTorch|: "
        f"filter {check['filter_max_abs_diff']:.2g}, GNN {check['gnn_max_abs_diff']:.2g} (tolerance {TOLERANCE:g}); "
        f"same filtered graph in {check['filter_kept_identical_fraction']:.0%} and identical track labels in "
        f"{check['identical_tracks_fraction']:.0%} of the events: {'passed' if check['passed'] else 'FAILED'}.",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ command line


def parse(argv: list[str] | None) -> argparse.Namespace:
    """inference_speed.py's options (the same setup) and --tiny; with --tiny, TINY's sizes unless given."""
    parser = bench.make_parser(__doc__.split("\n\n")[0])
    parser.set_defaults(out=REPO / "runs" / "bench" / "onnx_chain.json")
    parser.add_argument(
        "--tiny", action="store_true", help="pile-up 2, 2 test events, small networks: a check in well under a minute"
    )
    args = parser.parse_args(argv)
    if args.tiny:
        parser.set_defaults(**TINY)
        args = parser.parse_args(argv)
    bench.check_args(parser, args)
    if args.accelerator != "cpu" or args.precision != "32-true":
        parser.error("the comparison runs on the CPU in float32: leave --accelerator and --precision at their defaults")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.prepare_only:
        with contextlib.redirect_stdout(sys.stderr):
            prepare_and_export(args)
        return 0
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--prepare-only", *argv], check=True, stdout=sys.stderr
    )
    log(f"setup and export took {time.perf_counter() - start:.0f} s")
    with contextlib.redirect_stdout(sys.stderr):  # stages print summaries; stdout carries only the table
        result = measure(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
