"""Track-building speed: the walkthrough's labelling against connected components', on big graphs.

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/walkthrough_speed.py
        [--graph FILE.pyg] [--repeats 5] [--seed 0] [--tracks 11000] [--layers 10] [--noise 10000]
        [--fakes-per-hit 13] [--score-cut 0.5] [--min-track-length 3] [--out runs/bench/walkthrough_speed.json]
        [--tracking-bert-dir runs/demo/ab/tracking_bert]

What is timed is the per-event labelling that `infer` runs, on arrays already in memory (no file
I/O): stages.track_building.walkthrough.walkthrough_labels (cut, orientation by the given hit rank,
chains, walks, numbering) and, for comparison, connected_components.track_labels, plain and with
`chains`. The hit rank (event_hit_rank: the inner-to-outer order of r^2 + z^2) is timed on its own.
Each function runs once to warm up, then --repeats times; min and median seconds are reported.

By default the graph is synthetic, built in code from --seed, at the size of a pile-up-200 event
after the module map: --tracks helical tracks on --layers barrel layers (each hit present with
probability 0.97, a missing hit bridged by a skip edge), --noise random hits, and per hit of layer l
--fakes-per-hit fake edges to hits of layer l + 1 near it in phi (so fakes make junctions, as in a
real graph); about 117k hits and 1.4M edges at the defaults (a fake drawn twice, or equal to a true
edge, is kept once). Scores: 1 - |N(0, 0.2)| on true edges, |N(0, 0.3)| on fakes (clipped to
[0, 1]), so about 1 % of true edges and 10 % of fakes pass a cut at 0.5. With
--graph, a saved event (edge_index, edge_scores; hit positions for the rank, hit_particle_id for the
efficiency) is timed instead.

After the builders, what follows the walkthrough when asked for is timed on its labels the same way:
fragment stitching (stitching.py) and candidate scoring (rejection.py) with the geometry scorers
(thresholds of the config defaults), and, with --tracking-bert-dir (a trained tracking_bert stage_dir),
the TrackingBERT ones. The synthetic hits carry no module: for the TrackingBERT timings each hit gets
a module drawn at random from the model's vocabulary, so those scores are meaningless and only the
time (how many sequences, masked copies and forward passes) is real.

Also reported, untimed: the kept edges, the hits the walk had to walk (not on simple chains), and
the two_way efficiency and fake rate (matching.py, f = 0.5, particles with >= 5 hits) of both
builders, so the speed is read next to what each buys.

Prints the result as JSON and writes it to --out (with the command line, arguments and machine load).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch_geometric.data import Data  # noqa: E402

from stages.graph_construction.truth import hit_order  # noqa: E402
from stages.track_building.connected_components import graph_arrays, hit_particle_ids, track_labels  # noqa: E402
from stages.track_building.matching import count_matches, match_event  # noqa: E402
from stages.track_building.rejection import Rejector, geometry_candidate_score  # noqa: E402
from stages.track_building.stitching import JunctionWindows, Stitcher, TrackingBERTScorer, geometry_scorer  # noqa: E402
from stages.track_building.walkthrough import chain_groups, event_hit_rank, kept_oriented_edges, walkthrough_labels  # noqa: E402
from tb_plugin.event_store import load_event  # noqa: E402

LAYER_R_MM = (32.0, 72.0, 116.0, 172.0, 260.0, 360.0, 500.0, 660.0, 820.0, 1020.0)
HIT_KEPT = 0.97
FAKE_PHI_NEIGHBOURS = 40  # a fake goes to one of this many hits of the next layer, either side in phi
MIN_PARTICLE_HITS = 5


# ------------------------------------------------------------------------------------- the graph


def layer_radii(layers: int) -> np.ndarray:
    """Radii of `layers` barrel layers: the list above, extended linearly past its end."""
    radii = list(LAYER_R_MM[:layers])
    while len(radii) < layers:
        radii.append(radii[-1] + 160.0)
    return np.array(radii)


def synthetic_hits(rng: np.random.Generator, tracks: int, layers: int, noise: int) -> dict[str, np.ndarray]:
    """Hits of helical tracks from the beam line (phi bends with r as 1/pT, z = z0 + r cot theta),
    each present with probability HIT_KEPT, then uniform noise hits; hits are in random order."""
    radii = layer_radii(layers)
    phi0 = rng.uniform(-np.pi, np.pi, tracks)
    bend = rng.normal(0.0, 4e-4, tracks)  # rad / mm
    cot = rng.uniform(-2.0, 2.0, tracks)
    z0 = rng.normal(0.0, 50.0, tracks)
    track = np.repeat(np.arange(tracks), layers)
    layer = np.tile(np.arange(layers), tracks)
    present = rng.random(track.size) < HIT_KEPT
    track, layer = track[present], layer[present]
    r = radii[layer]
    phi = np.angle(np.exp(1j * (phi0[track] + bend[track] * r)))
    z = z0[track] + r * cot[track]
    noise_layer = rng.integers(0, layers, noise)
    layer = np.concatenate([layer, noise_layer])
    r = np.concatenate([r, radii[noise_layer]])
    phi = np.concatenate([phi, rng.uniform(-np.pi, np.pi, noise)])
    z = np.concatenate([z, rng.uniform(-1000.0, 1000.0, noise)])
    particle = np.concatenate([track + 1, np.zeros(noise, dtype=np.int64)])
    shuffle = rng.permutation(layer.size)
    return {
        "layer": layer[shuffle],
        "r": r[shuffle],
        "phi": phi[shuffle],
        "z": z[shuffle],
        "particle": particle[shuffle],
    }


def true_edges(hits: dict[str, np.ndarray]) -> np.ndarray:
    """[2, T] each particle's consecutive hits, inner -> outer (a missing layer gives a skip edge)."""
    particle = hits["particle"]
    order = np.lexsort((hits["layer"], particle))
    same = (particle[order[1:]] == particle[order[:-1]]) & (particle[order[1:]] > 0)
    return np.stack([order[:-1][same], order[1:][same]])


def fake_edges(rng: np.random.Generator, hits: dict[str, np.ndarray], per_hit: int) -> np.ndarray:
    """[2, F] from each hit to `per_hit` hits of the next layer near it in phi (with repeats)."""
    src_all, dst_all = [], []
    for layer in range(int(hits["layer"].max())):
        inner = np.flatnonzero(hits["layer"] == layer)
        outer = np.flatnonzero(hits["layer"] == layer + 1)
        outer = outer[np.argsort(hits["phi"][outer])]
        at = np.searchsorted(hits["phi"][outer], hits["phi"][inner])  # [A] where each inner hit's phi falls
        offset = rng.integers(-FAKE_PHI_NEIGHBOURS, FAKE_PHI_NEIGHBOURS + 1, (inner.size, per_hit))
        src_all.append(np.repeat(inner, per_hit))
        dst_all.append(outer[(at[:, None] + offset).reshape(-1) % outer.size])
    return np.stack([np.concatenate(src_all), np.concatenate(dst_all)])


def synthetic_graph(args: argparse.Namespace) -> dict[str, Any]:
    """edge_index [2, E] (unique, inner -> outer), edge_scores [E], hit rank and particle per hit."""
    rng = np.random.default_rng(args.seed)
    hits = synthetic_hits(rng, args.tracks, args.layers, args.noise)
    n = hits["layer"].size
    truth = true_edges(hits)
    fakes = fake_edges(rng, hits, args.fakes_per_hit)
    keys, first = np.unique(np.concatenate([truth[0] * n + truth[1], fakes[0] * n + fakes[1]]), return_index=True)
    is_true = first < truth.shape[1]  # a fake edge equal to a true one is dropped
    edge_index = np.stack([keys // n, keys % n])
    scores = np.where(is_true, 1.0 - np.abs(rng.normal(0.0, 0.2, keys.size)), np.abs(rng.normal(0.0, 0.3, keys.size)))
    perm = rng.permutation(keys.size)  # no help from a sorted edge list
    return {
        "edge_index": edge_index[:, perm],
        "edge_scores": np.clip(scores, 0.0, 1.0).astype(np.float32)[perm],
        "num_nodes": n,
        "particle": hits["particle"],
        "rank": None,
        "radius2": hits["r"] ** 2 + hits["z"] ** 2,
        "true_edges": int(is_true.sum()),
        "data": Data(
            hit_r=torch.from_numpy(hits["r"]),
            hit_phi=torch.from_numpy(hits["phi"]),
            hit_z=torch.from_numpy(hits["z"]),
            num_nodes=n,
        ),
    }


def saved_graph(path: Path) -> dict[str, Any]:
    """The same fields from a saved event (graph_arrays, event_hit_rank, hit_particle_ids)."""
    data = load_event(path)
    edge_index, edge_scores, num_nodes = graph_arrays(data, path)
    return {
        "edge_index": edge_index,
        "edge_scores": edge_scores,
        "num_nodes": num_nodes,
        "particle": hit_particle_ids(data),
        "rank": lambda: event_hit_rank(data, num_nodes, path),
        "radius2": None,
        "true_edges": int(data.edge_y.sum()) if "edge_y" in data else None,
        "data": data,
    }


# ------------------------------------------------------------------------------------- timing


def timed(function: Callable[[], Any], repeats: int) -> tuple[dict[str, float], Any]:
    """(min and median seconds over `repeats` runs after one warm-up run, the warm-up's result)."""
    result = function()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return {"min_seconds": float(np.min(seconds)), "median_seconds": float(np.median(seconds))}, result


def quality(labels: np.ndarray, particle: np.ndarray | None) -> dict[str, Any] | None:
    """two_way efficiency (particles with >= MIN_PARTICLE_HITS hits) and fake rate, f = 0.5."""
    if particle is None:
        return None
    tracks, particles = match_event(labels, particle, 0.5)
    rates = count_matches(tracks, particles, particles.n_hits.to_numpy() >= MIN_PARTICLE_HITS, "two_way").rates()
    return {key: rates[key] for key in ("efficiency", "fake_rate", "duplicate_rate", "n_particles", "n_tracks")}


def run(graph: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Time the rank, the walkthrough and connected components (plain and chains) on one graph."""
    edge_index, scores, n = graph["edge_index"], graph["edge_scores"], graph["num_nodes"]
    rank_of = graph["rank"] or (lambda: hit_order(graph["radius2"]))
    rank_time, rank = timed(rank_of, args.repeats)
    builders = {
        "walkthrough": lambda: walkthrough_labels(
            edge_index, scores, n, args.score_cut, args.min_track_length, hit_rank=rank
        ),
        "connected_components": lambda: track_labels(edge_index, scores, n, args.score_cut, args.min_track_length),
        "connected_components_chains": lambda: track_labels(
            edge_index, scores, n, args.score_cut, args.min_track_length, chains=True
        ),
    }
    results: dict[str, Any] = {"hit_rank": rank_time}
    walked_labels = None
    for name, build in builders.items():
        seconds, labels = timed(build, args.repeats)
        results[name] = seconds | {"tracks": int(labels.max()) + 1, "two_way": quality(labels, graph["particle"])}
        print(f"{name}: {seconds['min_seconds']:.3f} s (median {seconds['median_seconds']:.3f})", file=sys.stderr)
        walked_labels = labels if name == "walkthrough" else walked_labels
    results["after_walkthrough"] = time_after_builder(graph["data"], walked_labels, args)
    src, dst, _ = kept_oriented_edges(edge_index, scores, args.score_cut, rank)
    walked = int(chain_groups(src, dst, n)[1].sum())
    results["graph"] = {
        "hits": n,
        "edges": int(edge_index.shape[1]),
        "true_edges": graph["true_edges"],
        "kept_edges": int(src.size),
        "walked_hits": walked,
    }
    return results


def time_after_builder(data: Data, labels: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """Stitching and candidate scoring on the walkthrough's labels: geometry, and TrackingBERT when a
    model is given (random modules of its vocabulary on hits without one: the module docstring)."""
    windows = JunctionWindows(0.3, 100.0, 500.0, 5)
    steps = {
        "stitch_geometry": Stitcher(windows, geometry_scorer(1.0, 3.0)),
        "reject_geometry": Rejector(geometry_candidate_score(1.0), cut=-3.0),
    }
    if args.tracking_bert_dir is not None:
        tb = TrackingBERTScorer.from_stage_dir(args.tracking_bert_dir, None, 2, 1024)
        if "hit_module_index" not in data and "hit_module_id" not in data:
            vocabulary = tb.tokenizer.token_to_module
            data.hit_module_index = torch.from_numpy(
                vocabulary[np.random.default_rng(0).integers(0, len(vocabulary), data.num_nodes)]
            )
        steps |= {"stitch_tb": Stitcher(windows, tb.scorer(-2.0)), "reject_tb": Rejector(tb.candidate_scores, cut=-3.0)}
    out = {}
    for name, step in steps.items():
        with torch.inference_mode():
            seconds, result = timed(lambda step=step: step(data, labels, "event.pyg"), args.repeats)
        out[name] = seconds | {"stitch_merges" if name.startswith("stitch") else "below_cut": int(result[-1])}
        print(f"{name}: {seconds['min_seconds']:.3f} s (median {seconds['median_seconds']:.3f})", file=sys.stderr)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--graph", type=Path, help="a saved event (edge_index, edge_scores) instead of the synthetic one"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tracks", type=int, default=11000)
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--noise", type=int, default=10000)
    parser.add_argument("--fakes-per-hit", type=int, default=13)
    parser.add_argument("--score-cut", type=float, default=0.5)
    parser.add_argument("--min-track-length", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "walkthrough_speed.json")
    parser.add_argument(
        "--tracking-bert-dir", type=Path, help="a trained tracking_bert stage_dir: time stitch/reject tb"
    )
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    started = time.perf_counter()
    graph = saved_graph(args.graph) if args.graph else synthetic_graph(args)
    built = time.perf_counter() - started
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "graph_source": str(args.graph) if args.graph else "synthetic",
        "graph_build_seconds": built,
        **run(graph, args),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
