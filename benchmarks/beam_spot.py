"""The demo's trained pipeline on other beam spots: how much it loses, and whether it says so.

    make demo-pipeline                                  # trains runs/demo (as shipped)
    .venv/bin/python benchmarks/beam_spot.py [--trained runs/demo] [--events 10] [--out runs/beam_spot]
        [--map-from DIR]                                # another trained module map (e.g. one trained on 50 mm)
        [--beam-spot ZMIN ZMAX]                         # the map's key beam_spot: z0 windows widened to it

For each condition (vertex sigma z of 5.5, 20 and 50 mm; the beam spot moved by 10 and 30 mm at
5.5 mm) it simulates --events events at pile-up 10 (seed 11, ids from 9000), reads them, and runs the
trained stages on them with trained_stage_dir (nothing is trained on them). Per condition: the module
map's efficiency for pT > 1 GeV truth edges (graph), the GNN's cumulative pT > 1 GeV edge efficiency
at its cut (edge), the pT > 1 GeV track efficiency (two_way) and the TrackML score, and whether any
stage's inference warned that its events lie outside its training's run conditions.

Prints a markdown table and writes it with the JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tb_plugin.pipeline import run_pipeline  # noqa: E402

CONDITIONS = {  # name: (vertex sigma z, vertex mean z) in mm
    "nominal (5.5 mm)": (5.5, 0.0),
    "sigma z 20 mm": (20.0, 0.0),
    "sigma z 50 mm": (50.0, 0.0),
    "moved 10 mm": (5.5, 10.0),
    "moved 30 mm": (5.5, 30.0),
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def simulate(folder: Path, events: int, sigma: float, mean: float) -> None:
    if (folder / "detectors.csv").is_file():
        return
    tb = [sys.executable, "-m", "tb_plugin.cli", "-q", "simulate"]
    options = ["--events", str(events), "--pileup", "10", "--seed", "11", "--first-event", "9000"]
    options += ["--vertex-sigma-z", str(sigma), "--vertex-z-mean", str(mean), "--out", str(folder)]
    subprocess.run([*tb, *options], check=True, cwd=ROOT)


def pipeline(
    root: Path, events: Path, trained: Path, map_from: Path, n_events: int, beam_spot: list[float] | None
) -> Path:
    """data reading of `events` -> the trained map, filter, GNN -> connected components, into root."""
    split = [0, 0, n_events]
    stages = [
        {"config": "../configs/data_reading/simulated.yaml", "input_dir": str(events)},
        {
            "config": "../configs/graph_construction/module_map.yaml",
            "trained_stage_dir": str(map_from),
            "beam_spot": beam_spot,
        },
        {"config": "../configs/edge_classifier/filter.yaml", "trained_stage_dir": str(trained / "filter")},
        {
            "config": "../configs/edge_classifier/interaction_gnn.yaml",
            "trained_stage_dir": str(trained / "edge_classifier"),
        },
        {"config": "../configs/track_building/connected_components.yaml"},
    ]
    names = ["feature_store", "module_map", "filter", "edge_classifier", "track_building"]
    for i, (stage, name) in enumerate(zip(stages, names)):
        stage["stage_dir"] = str(root / name)
        stage["data_split"] = split
        if i:
            stage["input_dir"] = str(root / names[i - 1])
    stages[-1].pop("data_split")
    path = ROOT / "benchmarks" / f".beam_spot_{root.name}.yaml"  # beside configs/: its paths are relative
    path.write_text(yaml.safe_dump({"stages": stages}))
    return path


def wilson(found: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson interval of found / total (particles taken as independent: a little narrow,
    since the particles of one event share its vertices)."""
    if total == 0:
        return (0.0, 1.0)
    p = found / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (centre - half, centre + half)


class Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "run conditions" in message or "luminous region" in message:
            self.messages.append(message)


def metrics(root: Path) -> dict[str, Any]:
    def read(stage: str) -> dict[str, Any]:
        return json.loads((root / stage / "eval" / "metrics.json").read_text())

    tracks = read("track_building")
    found, total = tracks["two_way"]["n_reconstructed_particles_pt1"], tracks["two_way"]["n_particles_pt1"]
    return {
        "track_efficiency_pt1_interval": wilson(found, total),
        "particles_pt1": total,
        "graph_efficiency_pt1": read("module_map")["target_efficiency"],
        "graph_edges_per_event": read("module_map")["edges_per_event"],
        "edge_efficiency_pt1": read("edge_classifier")["cumulative_target_efficiency"],
        "track_efficiency_pt1": tracks["two_way"]["efficiency_pt1"],
        "trackml_score": tracks["trackml_score"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trained", type=Path, default=ROOT / "runs" / "demo")
    parser.add_argument("--map-from", type=Path, help="the trained module map to use (default: TRAINED/module_map)")
    parser.add_argument("--beam-spot", type=float, nargs=2, metavar=("ZMIN", "ZMAX"))
    parser.add_argument("--events", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "beam_spot")
    args = parser.parse_args()
    map_from = args.map_from or args.trained / "module_map"
    label = "shipped map" if args.map_from is None else f"map of {args.map_from}"
    if args.trained.resolve() != (ROOT / "runs" / "demo").resolve():
        label = f"pipeline of {args.trained}" + ("" if args.map_from is None else f", {label}")
    if args.beam_spot:
        label += f" beam_spot {args.beam_spot[0]:g} {args.beam_spot[1]:g}"
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    rows = {}
    for name, (sigma, mean) in CONDITIONS.items():
        events = args.out / "events" / f"{slug(name)}_{args.events}"
        simulate(events, args.events, sigma, mean)
        root = args.out / slug(label) / slug(name)
        root.mkdir(parents=True, exist_ok=True)
        config = pipeline(
            root, events.resolve(), args.trained.resolve(), map_from.resolve(), args.events, args.beam_spot
        )
        handler = Warnings()
        logging.getLogger().addHandler(handler)
        try:
            run_pipeline(config, overwrite=True)
        finally:
            logging.getLogger().removeHandler(handler)
            config.unlink()
        rows[name] = {**metrics(root), "warned": bool(handler.messages), "warnings": handler.messages}
        print(f"{name}: {json.dumps({k: v for k, v in rows[name].items() if k != 'warnings'})}", flush=True)
    table = [
        "| condition | map edges / event | graph eff. pT>1 | edge eff. pT>1 | track eff. pT>1 | TrackML score | warned |"
    ]
    table.append("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, row in rows.items():
        table.append(
            f"| {name} | {row['graph_edges_per_event']:,.0f} | {row['graph_efficiency_pt1']:.3f} | {row['edge_efficiency_pt1']:.3f} | "
            f"{row['track_efficiency_pt1']:.3f} [{row['track_efficiency_pt1_interval'][0]:.3f}, "
            f"{row['track_efficiency_pt1_interval'][1]:.3f}] | {row['trackml_score']:.3f} | {'yes' if row['warned'] else 'no'} |"
        )
    text = "\n".join(table)
    print(f"\n{label}, {args.events} events per condition at pile-up 10\n\n{text}")
    out = args.out / slug(label)
    (out / "table.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"map": str(map_from), "events": args.events, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
