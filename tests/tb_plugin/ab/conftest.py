"""The tiny A/B every runner test builds on: simulated events, a four-stage pipeline, a TrackingBERT
config and an A/B config."""

from pathlib import Path

import pytest
import yaml

from tb_plugin.geometry import Detector
from tb_plugin.simulation import SimulationConfig, simulate_dataset

TB_TINY = {
    "stage": "tracking_bert",
    "model": "TrackingBERT",
    "input_dir": "unused_input",
    "stage_dir": "unused_stage",
    "volumes": [7, 8, 9],
    "n_layer": 1,
    "n_embd": 8,
    "n_head": 2,
    "d_ff": 16,
    "lr": 3e-3,
    "warmup_steps": 2,
    "batch_size": 256,
    "max_epochs": 1,
    "accelerator": "cpu",
    "flat_columns": False,
}


def write_yaml(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def ab_setup(tmp_path_factory) -> Path:
    """Simulated events, a four-stage pipeline, a TrackingBERT config and an A/B config, all tiny."""
    root = tmp_path_factory.mktemp("ab")
    detector = Detector.builtin()
    simulate_dataset(SimulationConfig(n_events=7, pileup=3, seed=5), detector, root / "events", progress=False)
    detector.to_csv(root / "events" / "detectors.csv")
    configs = root / "configs"
    configs.mkdir()
    stages = [
        {
            "stage": "data_reading",
            "model": "TrackMLReader",
            "input_dir": str(root / "events"),
            "stage_dir": str(root / "feature_store"),
            "data_split": [4, 1, 2],
        },
        {"stage": "graph_construction", "model": "ModuleMap", "input_dir": "x", "stage_dir": "x"},
        {
            "stage": "edge_classifier",
            "model": "Filter",
            "input_dir": "x",
            "stage_dir": "x",
            "node_features": ["hit_r", "hit_phi", "hit_z"],
            "node_scales": [1000, 3.14159, 1000],
            "edge_features": ["dr", "dz"],
            "edge_scales": [100, 100],
            "hidden": 8,
            "nb_layer": 2,
            "max_epochs": 1,
            "edge_cut": {"target_efficiency": 0.99},
        },
        {
            "stage": "edge_classifier",
            "model": "InteractionGNN",
            "input_dir": "x",
            "stage_dir": "x",
            "node_features": ["hit_r", "hit_phi", "hit_z"],
            "node_scales": [1000, 3.14159, 1000],
            "edge_features": ["dr", "dphi"],
            "edge_scales": [100, 0.1],
            "hidden": 8,
            "n_graph_iters": 1,
            "max_epochs": 2,
            "lr": 3e-3,
        },
        {"stage": "track_building", "model": "ConnectedComponents", "input_dir": "x", "stage_dir": "x"},
    ]
    write_yaml(configs / "pipeline.yaml", {"stages": stages})
    write_yaml(configs / "tb.yaml", TB_TINY)
    write_yaml(
        configs / "ab.yaml",
        {
            "ab_dir": str(root / "ab"),
            "pipeline": "pipeline.yaml",
            "tracking_bert": "tb.yaml",
            "seeds": [0, 1],
            "bootstrap": {"samples": 200},
            "timing_events": 1,
            "timing_repeats": 1,
            "low_label": {"n_labelled": [1, 2], "seeds": [0]},
            "trackingbert_keys": {"ConnectedComponents": {"min_track_length": 4}},
        },
    )
    return configs / "ab.yaml"


@pytest.fixture
def finished_by_hand():
    """Makes a stage folder look finished (its record: every phase done, with its config and input),
    as an earlier A/B would have left it."""
    from tb_plugin import stage_record

    def finish(stage) -> None:
        for phase in stage_record.needed_phases(stage):
            stage_record.begin(stage, phase)
            stage_record.finish(stage, phase, 0.0)

    return finish
