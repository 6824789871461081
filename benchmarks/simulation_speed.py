"""Events per second of the built-in simulation at pile-up 200, without and with writing the files.

    .venv/bin/python benchmarks/simulation_speed.py [--events 6] [--pileup 200] [--detector PATH]

Three timings after one warm-up event (which builds the detector lookup tables once):
``simulate``: ``simulate_event`` alone; ``simulate+write``: each event simulated then written by
``trackml.write_event``, one after the other; ``dataset``: ``simulate_dataset`` with its default
worker processes (one per CPU), which simulates and writes events side by side. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tb_plugin import trackml  # noqa: E402
from tb_plugin.geometry import Detector  # noqa: E402
from tb_plugin.simulation import SimulationConfig, simulate_dataset, simulate_event  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=6)
    parser.add_argument("--pileup", type=float, default=200.0)
    parser.add_argument("--detector", type=Path, default=None, help="detectors.csv (default: Detector.builtin())")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    detector = Detector.from_csv(args.detector) if args.detector else Detector.builtin()
    config = SimulationConfig(n_events=args.events, pileup=args.pileup, seed=args.seed, first_event=1000)
    simulate_event(config, detector, 999)  # warm-up: lookup tables, spectra tables

    event_ids = range(config.first_event, config.first_event + args.events)
    started = time.perf_counter()
    sizes = [len(simulate_event(config, detector, event_id)["hits"]) for event_id in event_ids]
    simulate_seconds = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        for event_id in event_ids:
            frames = simulate_event(config, detector, event_id)
            trackml.write_event(trackml.event_prefix(folder, event_id), **frames)
        serial_seconds = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        simulate_dataset(config, detector, folder, progress=False)
        dataset_seconds = time.perf_counter() - started

    result = {
        "detector": str(args.detector) if args.detector else "builtin",
        "pileup": args.pileup,
        "events": args.events,
        "cpus": os.cpu_count(),
        "mean_hits_per_event": round(sum(sizes) / len(sizes)),
        "simulate_events_per_s": round(args.events / simulate_seconds, 3),
        "simulate_and_write_events_per_s": round(args.events / serial_seconds, 3),
        "dataset_events_per_s": round(args.events / dataset_seconds, 3),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
