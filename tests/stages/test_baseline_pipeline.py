"""The baseline pipeline end to end on tiny simulated events: data reading -> ModuleMap ->
InteractionGNN -> ConnectedComponents through `run_pipeline`, its outputs, metrics, submissions and resume."""

import json
from pathlib import Path

import pandas as pd
import yaml

from tb_plugin.event_store import SPLITS, list_event_files, load_event
from tb_plugin.geometry import Detector
from tb_plugin.pipeline import run_pipeline
from tb_plugin.simulation import SimulationConfig, simulate_dataset

SPLIT = [3, 1, 1]
STYLES = ("two_way", "one_way", "atlas")
RATES = ("efficiency", "efficiency_pt1", "fake_rate", "duplicate_rate")


def write_pipeline(root: Path) -> Path:
    """Stage config files under root/configs and the pipeline file that lists them (paths relative to it)."""
    configs = {
        "reading.yaml": {
            "stage": "data_reading",
            "model": "TrackMLReader",
            "input_dir": str(root / "events"),
            "stage_dir": str(root / "store"),
            "data_split": SPLIT,
        },
        "module_map.yaml": {
            "stage": "graph_construction",
            "model": "ModuleMap",
            "input_dir": str(root / "store"),
            "stage_dir": str(root / "module_map"),
            "window_tracks": {},
        },
        "gnn.yaml": {
            "stage": "edge_classifier",
            "model": "InteractionGNN",
            "input_dir": str(root / "module_map"),
            "stage_dir": str(root / "gnn"),
            "hidden": 8,
            "n_graph_iters": 2,
            "max_epochs": 1,
            "edge_features": ["dr", "dphi", "dz"],
            "edge_scales": [100.0, 0.1, 100.0],
        },
        # score_cut 0: a one-epoch GNN separates nothing yet, so every edge is kept and the tracks are the
        # graph's connected components; the test is about the pipeline's plumbing, not its quality.
        "cc.yaml": {
            "stage": "track_building",
            "model": "ConnectedComponents",
            "input_dir": str(root / "gnn"),
            "stage_dir": str(root / "cc"),
            "score_cut": 0.0,
        },
    }
    (root / "configs").mkdir()
    for name, values in configs.items():
        (root / "configs" / name).write_text(yaml.safe_dump(values))
    pipeline = root / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({"stages": [f"configs/{name}" for name in configs]}))
    return pipeline


def event_files(root: Path) -> list[Path]:
    return [
        f for stage in ("store", "module_map", "gnn", "cc") for s in SPLITS for f in list_event_files(root / stage, s)
    ]


def test_baseline_pipeline_runs_end_to_end_and_resumes(tmp_path):
    detector = Detector.builtin()
    simulate_dataset(
        SimulationConfig(n_events=sum(SPLIT), pileup=2, seed=5),
        detector,
        tmp_path / "events",
        progress=False,
        workers=1,
    )
    detector.to_csv(tmp_path / "events" / "detectors.csv")
    pipeline = write_pipeline(tmp_path)

    metrics = run_pipeline(pipeline)
    assert len(metrics) == 4

    # every stage wrote every event of every split, its artifacts and its metrics
    for stage in ("store", "module_map", "gnn", "cc"):
        assert [len(list_event_files(tmp_path / stage, s)) for s in SPLITS] == SPLIT, stage
        assert (tmp_path / stage / "eval" / "metrics.json").is_file(), stage
    assert (tmp_path / "module_map" / "artifacts" / "module_map.npz").is_file()
    assert (tmp_path / "gnn" / "artifacts" / "last.ckpt").is_file()
    scored = load_event(list_event_files(tmp_path / "cc", "testset")[0])
    assert {"edge_index", "edge_y", "edge_scores", "hit_track_labels", "track_edges"} <= set(scored.keys())
    assert [c["stage"] for c in scored.config] == [
        "data_reading",
        "graph_construction",
        "edge_classifier",
        "track_building",
    ]

    # track-building metrics: three matching styles, rates and the TrackML score in [0, 1]
    saved = json.loads((tmp_path / "cc" / "eval" / "metrics.json").read_text())
    assert saved["events"] == SPLIT[2]
    for style in STYLES:
        for key in RATES:
            assert 0.0 <= saved[style][key] <= 1.0, (style, key)
    assert 0.0 <= saved["trackml_score"] <= 1.0 and saved["trackml_score_events"] == SPLIT[2]

    # a submission per event, listing every hit of the event exactly once
    for split in SPLITS:
        for path in list_event_files(tmp_path / "cc", split):
            hit_id = load_event(path).hit_id.numpy()
            submission = pd.read_csv(tmp_path / "cc" / "submissions" / split / f"{path.stem}-submission.csv")
            assert submission.hit_id.is_unique and sorted(submission.hit_id) == sorted(hit_id.tolist()), path
            assert submission.track_id.notna().all()

    # a second run resumes: no event file is written again
    written = event_files(tmp_path)
    before = {f: f.stat().st_mtime_ns for f in written}
    run_pipeline(pipeline)
    assert event_files(tmp_path) == written
    assert {f: f.stat().st_mtime_ns for f in written} == before
