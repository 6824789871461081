"""What the demo's trained pipeline made of real TrackML events (configs/pipelines/demo_on_real.yaml).

    tb run configs/pipelines/demo_on_real.yaml        # after `make demo`; writes runs/real
    .venv/bin/python benchmarks/demo_on_real.py [--real runs/real] [--map-dir DIR] [--out FILE]

Real files carry no truth, so no efficiency can be measured: this reports what can be, per event and
summed over the events of every split. Graph sizes: the module map's edges, the edges the filter
kept, the GNN's edges above its edge_cut (read from the GNN's config record in the event); the track
candidates (hit_track_labels >= 0) and their lengths in hits; and the module map's coverage, the
share of hits on a module that is an end of at least one of the map's module pairs: a hit on a
module the demo's training events never connected can get no edge at all. The map lives in the
dense module index space, which equals the real detector's because the built-in detector has the
real file's module ids (README, "Data formats").

Prints one JSON object and writes it to --out when given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from torch_geometric.data import Data

from stages.graph_construction.module_map import MAP_FILE, ModuleMapTable
from tb_plugin.event_store import SPLITS, list_event_files, load_event

GRAPH_STAGES = ("module_map", "filter", "edge_classifier")


def mapped_modules(map_file: Path) -> np.ndarray:
    """Sorted dense indices of the modules that end at least one of the map's module pairs."""
    return np.unique(ModuleMapTable.load(map_file).pairs)


def gnn_cut(data: Data) -> float:
    """The edge_cut the GNN stage ran with, from the last edge_classifier record of the event's config."""
    records = [c for c in data.config if c.get("stage") == "edge_classifier"]
    return float(records[-1]["edge_cut"])


def event_summary(real: Path, split: str, name: str, modules: np.ndarray) -> dict[str, Any]:
    """Graph sizes, track candidates and map coverage of one event written by every stage of the run."""
    edges = {stage: int(load_event(real / stage / split / name).edge_index.shape[1]) for stage in GRAPH_STAGES}
    scored = load_event(real / "edge_classifier" / split / name)
    tracks = load_event(real / "track_building" / split / name)
    labels = tracks.hit_track_labels.numpy()
    lengths = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(0, dtype=np.int64)
    on_map = np.isin(tracks.hit_module_index.numpy(), modules)
    return {
        "event": name,
        "hits": int(len(labels)),
        "module_map_edges": edges["module_map"],
        "filter_kept_edges": edges["filter"],
        "gnn_edges_above_cut": int((scored.edge_scores > gnn_cut(scored)).sum()),
        "track_candidates": int(len(lengths)),
        "hits_in_tracks": int((labels >= 0).sum()),
        "track_lengths": lengths.tolist(),
        "hits_on_mapped_modules": int(on_map.sum()),
    }


def summarise(events: list[dict[str, Any]], modules: np.ndarray) -> dict[str, Any]:
    """Totals over the events, the length distribution of every candidate, and the map's coverage."""
    lengths = np.array([n for e in events for n in e.pop("track_lengths")], dtype=np.int64)
    hits = sum(e["hits"] for e in events)
    values, counts = np.unique(lengths, return_counts=True)
    return {
        "events": events,
        "mapped_modules": int(len(modules)),
        "hit_coverage": sum(e["hits_on_mapped_modules"] for e in events) / max(hits, 1),
        "track_length_counts": {int(v): int(c) for v, c in zip(values, counts)},
        "track_length_quantiles_10_50_90": np.quantile(lengths, [0.1, 0.5, 0.9]).tolist() if len(lengths) else [],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, default=Path("runs/real"), help="the run's output (default runs/real)")
    parser.add_argument(
        "--map-dir",
        type=Path,
        default=Path("runs/demo/ab/baseline/graph_construction"),
        help="the trained module map's stage_dir (default: the demo A/B's baseline map, the one demo_on_real.yaml reads)",
    )
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    modules = mapped_modules(args.map_dir / "artifacts" / MAP_FILE)
    done = [(split, path.name) for split in SPLITS for path in list_event_files(args.real / "track_building", split)]
    if not done:
        print(f"no events in {args.real / 'track_building'}: run the pipeline first", file=sys.stderr)
        return 2
    result = summarise([event_summary(args.real, split, name, modules) for split, name in done], modules)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
