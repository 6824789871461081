"""Events per second of the built-in simulation at pile-up 200, without and with writing the files.

    .venv/bin/python benchmarks/simulation_speed.py [--events 6] [--pileup 200] [--detector PATH]

Three timings after one warm-up event (which builds the detector lookup tables once):
``simulate``: ``simulate_event`` alone; ``simulate+write``: each event simulated then written by
``trackml.write_event``, one after the other; ``dataset``: ``simulate_dataset`` with its default
worker processes (one per CPU), which simulates and writes events side by side. A fourth,
``command``, is the whole ``tb simulate`` run in a fresh Python process (imports, geometry file and
all, as a user sees it). Each is given in events per second (wall clock) and in CPU seconds per
event (all processes together). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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
    sizes: list[int] = []

    def simulate() -> None:
        sizes.extend(len(simulate_event(config, detector, event_id)["hits"]) for event_id in event_ids)

    def simulate_and_write(folder: str) -> None:
        for event_id in event_ids:
            frames = simulate_event(config, detector, event_id)
            trackml.write_event(trackml.event_prefix(folder, event_id), **frames)

    timings = {
        "simulate": timed(simulate),
        "simulate_and_write": timed(simulate_and_write, in_folder=True),
        "dataset": timed(lambda folder: simulate_dataset(config, detector, folder, progress=False), in_folder=True),
        "command": timed(lambda folder: run_command(args, config, folder), in_folder=True),
    }
    result = {
        "detector": str(args.detector) if args.detector else "builtin",
        "pileup": args.pileup,
        "events": args.events,
        "cpus": os.cpu_count(),
        "mean_hits_per_event": round(sum(sizes) / len(sizes)),
        **{f"{name}_events_per_s": round(args.events / wall, 3) for name, (wall, _) in timings.items()},
        **{f"{name}_cpu_s_per_event": round(cpu / args.events, 3) for name, (_, cpu) in timings.items()},
    }
    print(json.dumps(result, indent=2))
    return 0


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children (workers, subprocesses).

    Reported beside the wall time because other jobs on a shared 2-core machine slow the wall clock
    down, while the CPU time a run needs changes much less."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(work: Callable, in_folder: bool = False) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of `work`, called with a fresh temporary folder when `in_folder`."""
    with tempfile.TemporaryDirectory() as folder:
        cpu, started = cpu_seconds(), time.perf_counter()
        work(folder) if in_folder else work()
        return time.perf_counter() - started, cpu_seconds() - cpu


def run_command(args: argparse.Namespace, config: SimulationConfig, folder: str) -> None:
    """``tb simulate`` for the same events, as its own process from this checkout."""
    command = [sys.executable, "-m", "tb_plugin.cli", "-q", "simulate", "--events", str(args.events)]
    command += ["--pileup", str(args.pileup), "--seed", str(args.seed), "--out", folder]
    command += ["--first-event", str(config.first_event)]
    if args.detector:
        command += ["--detector", str(args.detector)]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    subprocess.run(command, check=True, cwd=REPO, env=environment, capture_output=True)


if __name__ == "__main__":
    raise SystemExit(main())
