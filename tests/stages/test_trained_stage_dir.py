"""`trained_stage_dir`: a trained pipeline applied to new events without truth (what
configs/pipelines/demo_on_real.yaml does with the demo's artifacts and real TrackML files), on tiny
simulated events: the stages infer with the training run's artifacts, write only into their own
stage_dir, train nothing, and their evaluations say "no truth" instead of stopping the pipeline."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tb_plugin.config import ConfigError
from tb_plugin.event_store import SPLITS, list_event_files, load_event
from tb_plugin.pipeline import load_stage, run_pipeline
from tests.conftest import simulated_feature_store

SPLIT = [3, 1, 1]
TRAINED = ("module_map", "filter", "edge_classifier")  # the stages that learn (the demo's folder names)


def stage_configs(store: Path) -> dict[str, dict]:
    """Module map -> filter (valset-chosen cut) -> GNN -> connected components, tiny and one epoch each."""
    edge = {"edge_features": ["dr", "dphi", "dz"], "edge_scales": [100.0, 0.1, 100.0], "max_epochs": 1}
    return {
        "module_map": {
            "stage": "graph_construction",
            "model": "ModuleMap",
            "input_dir": str(store),
            "window_tracks": {},
        },
        "filter": {"stage": "edge_classifier", "model": "Filter", "hidden": 8, "nb_layer": 2, **edge},
        "edge_classifier": {
            "stage": "edge_classifier",
            "model": "InteractionGNN",
            "hidden": 8,
            "n_graph_iters": 1,
            **edge,
        },
        "track_building": {"stage": "track_building", "model": "ConnectedComponents", "score_cut": 0.0},
    }


def write_pipeline(path: Path, entries: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"stages": entries}))
    return path


def chain(root: Path, store: Path, trained: Path | None = None) -> list[dict]:
    """The stages under root, each reading the previous one's stage_dir; with `trained`, every stage
    that learns infers with the artifacts of the same stage under `trained`."""
    entries, previous = [], store
    for name, values in stage_configs(store).items():
        entry = {**values, "input_dir": str(previous), "stage_dir": str(root / name)}
        if trained is not None and name in TRAINED:
            entry["trained_stage_dir"] = str(trained / name)
        entries.append(entry)
        previous = root / name
    return entries


def tree(folder: Path) -> dict[str, int]:
    """Every file under folder with its modification time: what a read-only use must leave alone."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A trained run (root/trained) and the same events' hits alone (root/hits_only: no particles, no
    truth, as the real sample), read into root/new/store."""
    root = tmp_path_factory.mktemp("trained_stage_dir")
    store = simulated_feature_store(root, sum(SPLIT), pileup=2, seed=11, data_split=SPLIT)
    run_pipeline(write_pipeline(root / "train.yaml", chain(root / "trained", store)))
    hits = root / "hits_only"
    hits.mkdir()
    for path in (root / "events").glob("*"):
        if path.name.endswith("-hits.csv") or path.name == "detectors.csv":
            shutil.copy(path, hits / path.name)
    reading = {"stage": "data_reading", "model": "TrackMLReader", "input_dir": str(hits), "data_split": [0, 0, 5]}
    load_stage_values(root / "reading.yaml", {**reading, "stage_dir": str(root / "new" / "store")}).infer()
    return root


def load_stage_values(path: Path, values: dict):
    path.write_text(yaml.safe_dump(values))
    return load_stage(path)


def trained_event(root: Path, stage: str, name: str):
    """The training run's output of the event called `name`, whichever split it is in."""
    return next(load_event(p) for s in SPLITS for p in list_event_files(root / "trained" / stage, s) if p.name == name)


@pytest.fixture(scope="module")
def applied(runs) -> tuple[list[dict], dict[str, int], dict[str, int]]:
    """The trained pipeline run on the truthless store into root/new: (its metrics, the training run's
    files before, and after)."""
    before = tree(runs / "trained")
    new = runs / "new"
    metrics = run_pipeline(write_pipeline(runs / "apply.yaml", chain(new, new / "store", trained=runs / "trained")))
    return metrics, before, tree(runs / "trained")


def test_a_trained_pipeline_runs_on_events_without_truth(runs, applied):
    metrics, before, after = applied
    new = runs / "new"
    assert metrics == [{}, {}, {}, {}]  # every evaluation skipped: no truth
    assert after == before  # nothing trained, chosen or written in the training run
    for name in (*TRAINED, "track_building"):
        assert not (new / name / "artifacts").exists(), name
    # the same hits through the same artifacts: the training run's graphs, scores and tracks exactly
    for path in list_event_files(new / "track_building", "testset"):
        ours = load_event(path)
        assert "track_edges" not in ours
        for stage, field in (
            ("filter", "edge_scores"),
            ("edge_classifier", "edge_scores"),
            ("track_building", "hit_track_labels"),
        ):
            theirs = trained_event(runs, stage, path.name)
            mine = load_event(new / stage / "testset" / path.name)
            assert torch.equal(mine.edge_index, theirs.edge_index), (stage, path.name)
            assert torch.equal(mine[field], theirs[field]), (stage, path.name)
    assert len(list_event_files(new / "track_building", "testset")) == sum(SPLIT)


def test_train_is_refused_and_eval_says_no_truth(runs, run_tb):
    new = runs / "new"
    entry = chain(new, new / "store", trained=runs / "trained")[0]
    config = runs / "module_map_applied.yaml"
    config.write_text(yaml.safe_dump(entry))
    refused = run_tb(["train", str(config)])
    assert refused.returncode == 2 and error_lines(refused.stderr) == [refused.stderr.strip()]
    assert "key 'trained_stage_dir'" in refused.stderr
    assert run_tb(["infer", str(config)]).returncode == 0
    evaluated = run_tb(["eval", str(config)])
    assert evaluated.returncode == 2 and "Traceback" not in evaluated.stderr
    (line,) = error_lines(evaluated.stderr)
    assert "has truth (track_edges): nothing to evaluate" in line


def error_lines(stderr: str) -> list[str]:
    """The lines of `tb`'s one-line error report (progress bars may share stderr)."""
    return [line.strip() for line in stderr.splitlines() if line.strip().startswith("tb: error: ")]


def test_a_missing_cut_is_refused_without_writing_to_the_trained_run(runs, tmp_path):
    """The filter's valset-chosen cut belongs to its checkpoint: a training run without one is an
    error naming the key, never a cut chosen anew into the training run's folder."""
    trained = tmp_path / "trained_filter"
    shutil.copytree(runs / "trained" / "filter" / "artifacts", trained / "artifacts")
    (trained / "artifacts" / "edge_cut.json").unlink()
    entry = {**chain(tmp_path, tmp_path)[1], "input_dir": str(runs / "trained" / "module_map")}
    filter_stage = load_stage_values(tmp_path / "filter.yaml", {**entry, "trained_stage_dir": str(trained)})
    with pytest.raises(FileNotFoundError, match="key 'trained_stage_dir'.*edge_cut.json"):
        filter_stage.infer()
    assert not (trained / "artifacts" / "edge_cut.json").exists()


def test_only_stages_with_artifacts_take_the_key(tmp_path):
    reading = {"stage": "data_reading", "model": "TrackMLReader", "input_dir": "x", "stage_dir": "y"}
    with pytest.raises(ConfigError, match="unknown key 'trained_stage_dir'"):
        load_stage_values(tmp_path / "reading.yaml", {**reading, "data_split": [0, 0, 1], "trained_stage_dir": "z"})
    gnn = chain(tmp_path, tmp_path / "store")[2]
    assert not load_stage_values(tmp_path / "gnn.yaml", gnn).trained_elsewhere
    stage = load_stage_values(tmp_path / "gnn.yaml", {**gnn, "trained_stage_dir": str(tmp_path / "t")})
    assert stage.trained_elsewhere and stage.trained_dir == tmp_path / "t"


def test_the_summary_counts_what_the_run_wrote(runs, applied, capsys):
    """benchmarks/demo_on_real.py on the run above: its counts are the files' own."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import demo_on_real

    assert demo_on_real.main(["--real", str(runs / "new"), "--map-dir", str(runs / "trained" / "module_map")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert len(summary["events"]) == sum(SPLIT)
    lengths = []
    for event in summary["events"]:
        path = runs / "new" / "track_building" / "testset" / event["event"]
        labels = load_event(path).hit_track_labels
        scored = load_event(runs / "new" / "edge_classifier" / "testset" / event["event"])
        assert event["module_map_edges"] == load_event(runs / "new" / "module_map" / "testset" / path.name).num_edges
        assert event["gnn_edges_above_cut"] == int((scored.edge_scores > 0.5).sum())
        assert event["track_candidates"] == len(labels[labels >= 0].unique())
        lengths += labels[labels >= 0].unique(return_counts=True)[1].tolist()
    assert sum(summary["track_length_counts"].values()) == len(lengths) > 0
    assert 0.0 < summary["hit_coverage"] <= 1.0
