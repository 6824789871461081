"""A small simulated feature store shared by the pretraining-stage tests (built once per session)."""

from pathlib import Path

import pytest

from tb_plugin.geometry import Detector
from tb_plugin.pipeline import stage_from_mapping
from tb_plugin.simulation import SimulationConfig, simulate_dataset


@pytest.fixture(scope="session")
def simulated_store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("simulated")
    detector = Detector.builtin()
    simulate_dataset(SimulationConfig(n_events=6, pileup=5, seed=11), detector, root / "events", progress=False)
    detector.to_csv(root / "events" / "detectors.csv")
    reading = {
        "stage": "data_reading",
        "model": "TrackMLReader",
        "input_dir": str(root / "events"),
        "stage_dir": str(root / "store"),
        "data_split": [4, 1, 1],
    }
    stage_from_mapping(reading, "reading.yaml").infer()
    return root / "store"
