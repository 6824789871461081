"""Shared fixtures. The real TrackML files live in ../shared/trackml beside the checkout."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_TRACKML = REPO_ROOT.parent / "shared" / "trackml"


def load_benchmark(name: str) -> types.ModuleType:
    """benchmarks/<name>.py as a module (the benchmarks are scripts, not a package), registered in
    sys.modules so that its dataclasses resolve their annotations."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def shared_trackml() -> Path:
    """The folder of real TrackML files; tests that need it skip with the reason when it is absent."""
    if not (SHARED_TRACKML / "detectors.csv").is_file():
        pytest.skip(f"real TrackML files not found at {SHARED_TRACKML} (../shared/trackml beside the checkout)")
    return SHARED_TRACKML


def _tiny_detector_csv(path: Path) -> None:
    """Four pixel-barrel modules facing the beam line along +x, at the real layer radii."""
    header = (
        "volume_id,layer_id,module_id,cx,cy,cz,rot_xu,rot_xv,rot_xw,rot_yu,rot_yv,rot_yw,"
        "rot_zu,rot_zv,rot_zw,module_t,module_minhu,module_maxhu,module_hv,pitch_u,pitch_v"
    )
    rows = [
        f"8,{layer},1,{r},0,0,0,0,1,1,0,0,0,1,0,0.15,8.4,8.4,36,0.05,0.05625"
        for layer, r in ((2, 32.0), (4, 72.0), (6, 116.0), (8, 172.0))
    ]
    path.write_text("\n".join([header, *rows]) + "\n")


def tiny_event_frames(event_id: int):
    """One hand-made event: particle A (4 hits, vertex at the origin), particle B (3 hits, vertex
    at x = 200 mm, so it travels inwards: its hits are ordered from the outside in), one noise hit.
    hit_ids are deliberately not in trajectory order."""
    import pandas as pd

    radii = {2: 32.0, 4: 72.0, 6: 116.0, 8: 172.0}
    pid_a, pid_b = 4503668346847232 + event_id, 4503805785800704 + event_id
    # (hit_id, layer, particle)
    layout = [
        (5, 2, pid_a),
        (3, 4, pid_a),
        (8, 6, pid_a),
        (1, 8, pid_a),
        (2, 8, pid_b),
        (7, 6, pid_b),
        (4, 4, pid_b),
        (6, 2, 0),
    ]
    hits = (
        pd.DataFrame(
            {
                "hit_id": [h for h, _, _ in layout],
                "x": [radii[lay] for _, lay, _ in layout],
                "y": [0.5 * i for i in range(len(layout))],
                "z": [0.1 * radii[lay] for _, lay, _ in layout],
                "volume_id": 8,
                "layer_id": [lay for _, lay, _ in layout],
                "module_id": 1,
            }
        )
        .sort_values("hit_id")
        .reset_index(drop=True)
    )
    by_hit = {h: (lay, p) for h, lay, p in layout}
    truth = pd.DataFrame(
        {
            "hit_id": hits["hit_id"],
            "particle_id": [by_hit[h][1] for h in hits["hit_id"]],
            "tx": hits["x"],
            "ty": hits["y"],
            "tz": hits["z"],
            "tpx": 1.0,
            "tpy": 0.0,
            "tpz": 0.1,
            "weight": 0.0,
        }
    )
    truth.loc[truth.particle_id != 0, "weight"] = 1.0 / 7
    particles = pd.DataFrame(
        {
            "particle_id": [pid_a, pid_b],
            "vx": [0.0, 200.0],
            "vy": [0.0, 0.0],
            "vz": [0.0, 20.0],
            "px": [3.0, -0.6],
            "py": [4.0, 0.8],
            "pz": [0.0, 0.0],
            "q": [1, -1],
            "nhits": [4, 3],
        }
    )
    return hits, particles, truth


@pytest.fixture
def tiny_trackml_folder(tmp_path: Path) -> Path:
    """A folder of six hand-made TrackML events and its detectors.csv."""
    from tb_plugin.trackml import event_prefix, write_event

    folder = tmp_path / "trackml"
    folder.mkdir()
    _tiny_detector_csv(folder / "detectors.csv")
    for event_id in range(100, 106):
        hits, particles, truth = tiny_event_frames(event_id)
        write_event(event_prefix(folder, event_id), hits=hits, particles=particles, truth=truth)
    return folder


@pytest.fixture
def make_tiny_event():
    """The builder of the hand-made event, for tests that alter one before writing it."""
    return tiny_event_frames


# A `tb` command in a child process, optionally killed with SIGKILL (no cleanup, no finally blocks) at
# the end of the first training batch of a given epoch of whichever stage trains first: what a job
# scheduler or an out-of-memory killer does. The hook is set on the Trainer's EpochTimer callback, so
# the kill lands after that epoch's previous one wrote last.ckpt.
_TB_CHILD = """
import os, signal, sys
kill_epoch = int(sys.argv[1])
if kill_epoch >= 0:
    from tb_plugin import training

    def kill(self, trainer, *args):
        if trainer.current_epoch == kill_epoch:
            os.kill(os.getpid(), signal.SIGKILL)

    training.EpochTimer.on_train_batch_end = kill
from tb_plugin.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _run_tb(args: list[str], kill_in_epoch: int | None = None, cwd: Path | None = None):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}  # the same threads in every run
    command = [sys.executable, "-c", _TB_CHILD, str(-1 if kill_in_epoch is None else kill_in_epoch), "-q", *args]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture
def run_tb():
    """run_tb(["train", config], kill_in_epoch=1) -> CompletedProcess; returncode -9 when it was killed."""
    return _run_tb


def simulated_feature_store(root: Path, n_events: int, pileup: float, seed: int, data_split: list[int]) -> Path:
    """Simulate events with the built-in detector into root/events and read them into root/store (the
    data reading stage, data_split as given); returns root/store. For module-scoped fixtures."""
    from tb_plugin.geometry import Detector
    from tb_plugin.pipeline import stage_from_mapping
    from tb_plugin.simulation import SimulationConfig, simulate_dataset

    detector = Detector.builtin()
    config = SimulationConfig(n_events=n_events, pileup=pileup, seed=seed)
    simulate_dataset(config, detector, root / "events", progress=False, workers=1)
    detector.to_csv(root / "events" / "detectors.csv")
    reading = {"stage": "data_reading", "model": "TrackMLReader", "input_dir": str(root / "events")}
    stage_from_mapping({**reading, "stage_dir": str(root / "store"), "data_split": data_split}, "reading.yaml").infer()
    return root / "store"
