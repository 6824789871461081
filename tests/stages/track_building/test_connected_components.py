import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from torch_geometric.data import Data

from stages.track_building import ConnectedComponents, ConnectedComponentsConfig
from stages.track_building.connected_components import (
    LABELS_FIELD,
    best_chain_edges,
    hit_particle_ids,
    particle_features,
    submission_frame,
    track_labels,
)
from tb_plugin.config import ConfigError, build
from tb_plugin.event_store import MissingFieldError, SplitError, event_file, list_event_files, load_event, save_event

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def stage(input_dir, stage_dir, **overrides):
    values = {
        "stage": "track_building",
        "model": "ConnectedComponents",
        "input_dir": str(input_dir),
        "stage_dir": str(stage_dir),
        **overrides,
    }
    return ConnectedComponents(build(ConnectedComponentsConfig, values, "cc.yaml"))


# Particles of the hand-made events: (particle_id, n_hits, pT MeV, eta).
PARTICLES = [(101, 6, 2000.0, 0.5), (102, 5, 500.0, -1.0), (103, 4, 1500.0, 2.0)]
N_NOISE = 3


def make_event(event_id, true_score=0.9, cut_edge=None, truth=True, edge_scores=True):
    """Particles' hits in order, then noise. Every consecutive pair of a particle's hits is a true
    edge (score `true_score`; the edge number `cut_edge` of the first particle gets 0.1), and a
    fake edge joins the first hit of each particle to the next particle's first hit (score 0.2)."""
    pid, edges, pts, etas, nhits = [], [], [], [], []
    first_hits = []
    for particle_id, n, pt, eta in PARTICLES:
        start = len(pid)
        first_hits.append(start)
        pid += [particle_id] * n
        for k in range(n - 1):
            edges.append((start + k, start + k + 1))
            pts.append(pt), etas.append(eta), nhits.append(n)
    pid += [0] * N_NOISE
    n_hits = len(pid)
    track_edges = torch.tensor(edges).T
    fake = list(zip(first_hits[:-1], first_hits[1:]))
    scores = [true_score] * len(edges) + [0.2] * len(fake)
    if cut_edge is not None:
        scores[cut_edge] = 0.1
    pid_t = torch.tensor(pid)
    weight = (pid_t != 0).float()
    fields = dict(
        hit_id=torch.arange(1, n_hits + 1),
        hit_r=torch.arange(n_hits, dtype=torch.float32),
        edge_index=torch.tensor(edges + fake).T.contiguous(),
        track_edges=track_edges,
        track_particle_id=pid_t[track_edges[0]],
        track_particle_pt=torch.tensor(pts),
        track_particle_eta=torch.tensor(etas),
        track_particle_nhits=torch.tensor(nhits),
    )
    if edge_scores:
        fields["edge_scores"] = torch.tensor(scores, dtype=torch.float32)
    if truth:
        fields.update(hit_particle_id=pid_t, hit_weight=weight / weight.sum())
    else:
        for key in [k for k in fields if k.startswith("track_")]:
            del fields[key]
    data = Data(**fields, num_nodes=n_hits)
    data.event_id = f"{event_id:09d}"
    data.config = [{"stage": "edge_classifier"}]
    return data


@pytest.fixture
def input_dir(tmp_path):
    folder = tmp_path / "gnn"
    save_event(make_event(1), event_file(folder, "testset", 1))  # perfect scores
    save_event(make_event(2, cut_edge=2), event_file(folder, "testset", 2))  # first particle split 3 + 3
    save_event(make_event(3, truth=False), event_file(folder, "testset", 3))
    return folder


def test_score_cut_min_track_length_and_labels():
    # 0-1-2 kept (3 hits); 2-3 below the cut; 3-4 kept (2 hits); 5-6 at the cut exactly: dropped; 7 alone.
    edge_index = np.array([[0, 1, 2, 3, 5], [1, 2, 3, 4, 6]])
    scores = np.array([0.9, 0.8, 0.3, 0.7, 0.5])
    assert track_labels(edge_index, scores, 8, 0.5, 3).tolist() == [0, 0, 0, -1, -1, -1, -1, -1]
    assert track_labels(edge_index, scores, 8, 0.5, 2).tolist() == [0, 0, 0, 1, 1, -1, -1, -1]
    assert track_labels(edge_index, scores, 8, 0.4, 2).tolist() == [0, 0, 0, 1, 1, 2, 2, -1]
    assert track_labels(np.zeros((2, 0), int), np.zeros(0), 3, 0.5, 2).tolist() == [-1, -1, -1]


def test_chains_keep_each_hits_best_edge_so_a_junction_does_not_merge_tracks():
    # Track A: 0-1-2-3, track B: 4-5-6-7; a wrong edge 1 -> 6 (0.6) above the cut joins them in plain CC.
    edge_index = np.array([[0, 1, 2, 4, 5, 6, 1], [1, 2, 3, 5, 6, 7, 6]])
    scores = np.array([0.9, 0.9, 0.9, 0.9, 0.8, 0.9, 0.6])
    assert track_labels(edge_index, scores, 8, 0.5, 3).tolist() == [0] * 8
    assert track_labels(edge_index, scores, 8, 0.5, 3, chains=True).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    keep = best_chain_edges(edge_index, scores)
    assert keep.tolist() == [True, True, True, True, True, True, False]
    # both ends must agree: when 1 -> 6 beats 1 -> 2 at hit 1 and 5 -> 6 at hit 6, it is kept and those two go
    scores_b = np.array([0.9, 0.7, 0.9, 0.9, 0.8, 0.9, 0.85])
    assert best_chain_edges(edge_index, scores_b).tolist() == [True, False, True, True, False, True, True]
    assert best_chain_edges(np.zeros((2, 0), int), np.zeros(0)).tolist() == []


def test_submission_lists_every_hit_once_and_loners_get_their_own_track():
    labels = np.array([0, 0, 0, -1, 1, 1, -1])
    frame = submission_frame(7, np.arange(1, 8), labels)
    assert frame.columns.tolist() == ["event_id", "hit_id", "track_id"]
    assert frame.hit_id.is_unique and sorted(frame.hit_id) == list(range(1, 8))
    assert frame.track_id.tolist() == [0, 0, 0, 2, 1, 1, 3]
    assert (frame.event_id == 7).all()


def test_truth_from_acorn_track_edges():
    data = make_event(1)
    del data.hit_particle_id
    pid = hit_particle_ids(data)
    assert pid.tolist() == [101] * 6 + [102] * 5 + [103] * 4 + [0] * 3
    assert hit_particle_ids(make_event(1, truth=False)) is None
    features = particle_features(data, np.array([102, 999]))
    assert features["track_particle_pt"][0] == 500.0 and np.isnan(features["track_particle_pt"][1])


def test_infer_writes_events_and_submissions_and_resumes(input_dir, tmp_path):
    out = tmp_path / "tb"
    cc = stage(input_dir, out)
    cc.infer()
    files = list_event_files(out, "testset")
    assert [f.name for f in files] == [f"event{i:09d}.pyg" for i in (1, 2, 3)]
    data = load_event(files[0])
    assert data[LABELS_FIELD].dtype == torch.int64
    # particles of 6, 5 and 4 hits become tracks 0, 1, 2; noise hits are in no track.
    assert data[LABELS_FIELD].tolist() == [0] * 6 + [1] * 5 + [2] * 4 + [-1] * 3
    assert data.config[-1]["stage"] == "track_building" and data.config[0]["stage"] == "edge_classifier"
    assert "edge_scores" in data and "track_edges" in data  # everything passes through
    split = load_event(files[1])[LABELS_FIELD].tolist()
    assert split[:6] == [0, 0, 0, 1, 1, 1]
    for i in (1, 2, 3):
        sub = pd.read_csv(out / "submissions" / "testset" / f"event{i:09d}-submission.csv")
        assert sub.columns.tolist() == ["event_id", "hit_id", "track_id"]
        assert sub.hit_id.is_unique and sorted(sub.hit_id) == list(range(1, 19))
        assert (sub.event_id == i).all()

    inode = files[0].stat().st_ino
    cc.infer()
    assert files[0].stat().st_ino == inode  # resumed: not rewritten
    (out / "submissions" / "testset" / "event000000001-submission.csv").unlink()
    cc.infer()
    assert (out / "submissions" / "testset" / "event000000001-submission.csv").exists()
    inode = files[0].stat().st_ino  # (rewritten with its submission: the inode it had before may be reused)
    cc.infer(overwrite=True)
    assert files[0].stat().st_ino != inode


def test_evaluate_metrics_and_plots(input_dir, tmp_path, caplog):
    out = tmp_path / "tb"
    cc = stage(input_dir, out)
    cc.infer()
    with caplog.at_level(logging.WARNING):
        metrics = cc.evaluate()
    assert "event000000003.pyg" in caplog.text
    on_disk = json.loads((out / "eval" / "metrics.json").read_text())
    assert on_disk["config"]["score_cut"] == 0.5
    assert (metrics["events"], metrics["events_without_truth"]) == (2, 1)
    for style in ("two_way", "one_way", "atlas"):
        for key in ("efficiency", "efficiency_pt1", "fake_rate", "duplicate_rate", "n_particles", "n_tracks"):
            assert key in on_disk[style]
    two_way, atlas = metrics["two_way"], metrics["atlas"]
    # Targets: particles with >= 5 hits: 101 and 102 in each event. Event 2 splits 101 into 3 + 3.
    assert two_way["n_particles"] == 4
    assert two_way["efficiency"] == pytest.approx(3 / 4)
    assert two_way["fake_rate"] == pytest.approx(2 / 7)  # tracks: 3 + 4; the two halves are fakes
    assert atlas["efficiency"] == 1.0 and atlas["duplicate_rate"] == pytest.approx(1 / 4)
    # pT > 1 GeV and >= 5 hits: only particle 101 (6 hits, 2 GeV).
    assert two_way["n_particles_pt1"] == 2 and two_way["efficiency_pt1"] == pytest.approx(1 / 2)
    assert 0 < metrics["trackml_score"] < 1 and metrics["trackml_score_events"] == 2
    for name in ("track_efficiency_vs_pt.png", "track_efficiency_vs_eta.png"):
        assert (out / "eval" / name).read_bytes()[:8] == PNG_MAGIC


def test_perfect_scores_give_perfect_metrics(tmp_path):
    folder = tmp_path / "gnn"
    save_event(make_event(5), event_file(folder, "testset", 5))
    cc = stage(folder, tmp_path / "tb", min_particle_hits=1)
    cc.infer()
    metrics = cc.evaluate()
    for style in ("two_way", "one_way", "atlas"):
        assert metrics[style]["efficiency"] == 1.0
        assert metrics[style]["fake_rate"] == 0.0
        assert metrics[style]["duplicate_rate"] == 0.0
    assert metrics["two_way"]["n_particles"] == 3
    assert metrics["trackml_score"] == pytest.approx(1.0)


def test_target_tracks_conditions(input_dir, tmp_path):
    cc = stage(input_dir, tmp_path / "tb", target_tracks={"pt": [1000, float("inf")]})
    cc.infer()
    metrics = cc.evaluate()
    assert metrics["two_way"]["n_particles"] == 2  # particle 101 in events 1 and 2


def test_no_event_with_truth_is_a_clear_error(tmp_path):
    folder = tmp_path / "gnn"
    save_event(make_event(3, truth=False), event_file(folder, "testset", 3))
    cc = stage(folder, tmp_path / "tb")
    cc.infer()
    with pytest.raises(ValueError, match="has truth"):
        cc.evaluate()


def test_missing_edge_scores_names_field_and_file(tmp_path):
    folder = tmp_path / "gnn"
    path = event_file(folder, "testset", 4)
    save_event(make_event(4, edge_scores=False), path)
    with pytest.raises(MissingFieldError, match=r"edge_scores") as err:
        stage(folder, tmp_path / "tb").infer()
    assert str(path) in str(err.value)


def test_empty_input_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no event files"):
        stage(tmp_path / "nothing", tmp_path / "tb").infer()


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("matching_fraction", 0.4, "matching_fraction"),
        ("min_track_length", 1, "min_track_length"),
        ("target_tracks", {"pt": ["above", 3]}, r"target_tracks.*pt.*above"),
    ],
)
def test_bad_config_names_the_key(tmp_path, key, value, message):
    with pytest.raises(ConfigError, match=message):
        stage(tmp_path / "in", tmp_path / "tb", **{key: value})


def test_repeated_hit_ids_cannot_make_a_submission(tmp_path):
    folder = tmp_path / "gnn"
    data = make_event(6)
    data.hit_id[1] = data.hit_id[0]
    path = event_file(folder, "testset", 6)
    save_event(data, path)
    with pytest.raises(ValueError, match="repeat") as err:
        stage(folder, tmp_path / "tb").infer()
    assert str(path) in str(err.value)


def test_submissions_of_events_that_left_the_split_are_refused_then_removed(input_dir, tmp_path):
    out = tmp_path / "tb"
    stage(input_dir, out).infer()
    moved = out / "submissions" / "testset" / "event000000003-submission.csv"
    (input_dir / "valset").mkdir()
    (input_dir / "testset" / "event000000003.pyg").rename(input_dir / "valset" / "event000000003.pyg")
    (out / "testset" / "event000000003.pyg").unlink()  # a stage of an older version: only its submission is left
    with pytest.raises(SplitError, match=r"submissions/testset/event000000003-submission\.csv.*--overwrite"):
        stage(input_dir, out).infer()
    stage(input_dir, out).infer(overwrite=True)
    assert not moved.exists() and (out / "submissions" / "valset" / "event000000003-submission.csv").is_file()
