import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch_geometric.data import Data

from stages.track_building.connected_components import (
    LABELS_FIELD,
    ConnectedComponents,
    ConnectedComponentsConfig,
    track_labels,
)
from stages.track_building.walkthrough import (
    Walkthrough,
    WalkthroughConfig,
    chain_groups,
    event_hit_rank,
    kept_oriented_edges,
    walkthrough_labels,
)
from tb_plugin.config import ConfigError, build
from tb_plugin.event_store import event_file, list_event_files, load_event, save_event
from tb_plugin.pipeline import load_stage
from tb_plugin.registry import resolve

REPO = Path(__file__).resolve().parents[3]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def walk(edges, scores, n, min_len=3, cut=0.5, rank=None):
    return walkthrough_labels(
        np.array(edges, dtype=np.int64).T.reshape(2, -1),
        np.array(scores, dtype=np.float32),
        n,
        cut,
        min_len,
        hit_rank=rank,
    ).tolist()


# ------------------------------------------------------------------------------------- the algorithm


def test_walk_follows_the_best_branch_and_the_loser_walks_on_its_own():
    # 0-1-2-3 (0.9); at hit 1 a second branch 1 -> 4 (0.6) leads on to 4-5-6.
    edges = [(0, 1), (1, 2), (2, 3), (1, 4), (4, 5), (5, 6)]
    scores = [0.9, 0.9, 0.9, 0.6, 0.9, 0.9]
    assert walk(edges, scores, 8, min_len=3) == [0, 0, 0, 0, 1, 1, 1, -1]  # the loser's 3 hits: a track
    assert walk(edges, scores, 8, min_len=4) == [0, 0, 0, 0, -1, -1, -1, -1]  # ... or nothing
    # the branch wins when its edge is the better one: 0-1-4-5-6, and 2-3 alone
    scores_b = [0.9, 0.6, 0.9, 0.9, 0.9, 0.9]
    assert walk(edges, scores_b, 8, min_len=3) == [0, 0, -1, -1, 0, 0, 0, -1]
    assert walk(edges, scores_b, 8, min_len=2) == [0, 0, 1, 1, 0, 0, 0, -1]
    # connected components merge both branches into one track
    assert track_labels(np.array(edges).T, np.array(scores), 8, 0.5, 3).tolist() == [0] * 7 + [-1]


def test_a_contested_hit_goes_to_the_best_edge_into_it():
    # Track A 0-1-2-3, track B 4-5-6-7 (5 -> 6 at 0.8); a wrong edge 1 -> 6 beats 1 -> 2 at hit 1.
    edges = [(0, 1), (1, 2), (2, 3), (4, 5), (5, 6), (6, 7), (1, 6)]
    # 1 -> 6 (0.7) loses hit 6 to 5 -> 6 (0.8): walk A falls back on 1 -> 2
    assert walk(edges, [0.9, 0.6, 0.9, 0.9, 0.8, 0.9, 0.7], 8) == [0, 0, 0, 0, 1, 1, 1, 1]
    # 1 -> 6 (0.85) wins hit 6: A = 0-1-6-7, B stops at 4-5, and 2-3 is walked in a later round
    assert walk(edges, [0.9, 0.6, 0.9, 0.9, 0.8, 0.9, 0.85], 8, min_len=2) == [0, 0, 1, 1, 2, 2, 0, 0]
    # equal scores: the lower walking hit (1) wins
    assert walk(edges, [0.9, 0.6, 0.9, 0.9, 0.8, 0.9, 0.8], 8, min_len=2) == [0, 0, 1, 1, 2, 2, 0, 0]


def test_equal_scores_go_to_the_lower_target():
    edges = [(0, 1), (1, 3), (1, 2), (2, 4), (3, 5)]
    assert walk(edges, [0.9, 0.8, 0.8, 0.9, 0.9], 6, min_len=2) == [0, 0, 0, 1, 0, 1]


def test_simple_chains_are_tracks_as_they_are_and_branched_components_are_walked():
    # chain 0-1-2-3 with a weak (but kept) edge, chain 4-5 (too short), a merge 6 -> 8 <- 7 -> 9 (not
    # a chain), and hit 10 alone.
    src, dst = np.array([0, 1, 2, 4, 6, 7, 7]), np.array([1, 2, 3, 5, 8, 8, 9])
    group, walked = chain_groups(src, dst, 11)
    assert walked.tolist() == [False] * 6 + [True] * 4 + [False]
    assert len(set(group[:4])) == 1 and group[4] == group[5] != group[0] and (group[6:10] == -1).all()
    scores = [0.9, 0.55, 0.9, 0.9, 0.9, 0.7, 0.6]
    assert walk(list(zip(src, dst)), scores, 11, min_len=2) == [0, 0, 0, 0, 1, 1, 2, 3, 2, 3, -1]
    # a cycle is no chain either (edges not oriented): it is walked from its lowest hit
    assert chain_groups(np.array([0, 1, 2]), np.array([1, 2, 0]), 3)[1].tolist() == [True] * 3
    assert walk([(1, 2), (2, 0), (0, 1), (2, 3)], [0.9, 0.6, 0.9, 0.9], 4) == [0, 0, 0, 0]


def test_min_track_length_and_score_cut():
    edges = [(0, 1), (1, 2), (3, 4), (4, 5), (5, 6), (6, 7)]
    scores = [0.9, 0.9, 0.9, 0.9, 0.5, 0.9]  # 5 -> 6 at the cut exactly: dropped
    assert walk(edges, scores, 9, min_len=3) == [0, 0, 0, 1, 1, 1, -1, -1, -1]
    assert walk(edges, scores, 9, min_len=2) == [0, 0, 0, 1, 1, 1, 2, 2, -1]
    assert walk(edges, scores, 9, min_len=4) == [-1] * 9
    assert walk(edges, scores, 9, min_len=2, cut=0.4) == [0, 0, 0, 1, 1, 1, 1, 1, -1]
    assert walk([], [], 3, min_len=2) == [-1, -1, -1]


def test_edges_are_oriented_inner_to_outer_by_r2_z2():
    # hit 2 has the smallest r but the largest z: it is the outermost (r^2 + z^2).
    data = Data(hit_r=torch.tensor([1.0, 2.0, 0.5]), hit_z=torch.tensor([0.0, 0.0, 5.0]), num_nodes=3)
    rank = event_hit_rank(data, 3, "e.pyg")
    assert rank.tolist() == [0, 1, 2]
    assert event_hit_rank(Data(hit_r=torch.tensor([3.0, 1.0, 2.0]), num_nodes=3), 3, "e.pyg").tolist() == [2, 0, 1]
    assert event_hit_rank(Data(hit_id=torch.arange(3), num_nodes=3), 3, "e.pyg") is None
    with pytest.raises(ValueError, match=r"e\.pyg.*hit_r.*\[2\]"):
        event_hit_rank(Data(hit_r=torch.ones(3), hit_id=torch.arange(2)), 2, "e.pyg")
    # written outside-in, plus a self loop and an edge below the cut
    edge_index = np.array([[2, 1, 1, 0], [1, 0, 1, 2]])
    src, dst, score = kept_oriented_edges(edge_index, np.array([0.9, 0.8, 0.9, 0.1]), 0.5, rank)
    assert (src.tolist(), dst.tolist(), score.tolist()) == ([1, 0], [2, 1], [0.9, 0.8])
    # both directions of every edge (an undirected file) walk as the oriented graph does
    both = [(0, 1), (1, 0), (1, 2), (2, 1), (1, 3), (3, 1)]
    r = np.arange(4)
    assert walk(both, [0.9, 0.9, 0.9, 0.9, 0.6, 0.6], 4, rank=r) == [0, 0, 0, -1]


# ------------------------------------------------------------------------------------- the stage

# (particle_id, n_hits, pT MeV, eta); hit k of a particle sits at r = 10 (k + 1) mm.
PARTICLES = [(101, 6, 2000.0, 0.5), (102, 5, 500.0, -1.0), (103, 4, 1500.0, 2.0)]


def scored_event(event_id: int, wrong_score: float) -> Data:
    """Each particle's hits joined in order by edges of score 0.9, 3 noise hits, and one wrong edge
    from the 2nd hit of 101 to the 3rd hit of 102 with `wrong_score` (above the cut: a junction)."""
    pid, r, edges = [], [], []
    for particle_id, n, _, _ in PARTICLES:
        edges += [(len(pid) + k, len(pid) + k + 1) for k in range(n - 1)]
        pid += [particle_id] * n
        r += [10.0 * (k + 1) for k in range(n)]
    pid += [0] * 3
    r += [5.0, 15.0, 25.0]
    truth = torch.tensor(edges).T
    pid_t = torch.tensor(pid)
    by_id = {p: (pt, eta) for p, _, pt, eta in PARTICLES}
    edge_pid = pid_t[truth[0]]
    weight = (pid_t != 0).float()
    data = Data(
        hit_id=torch.arange(1, len(pid) + 1),
        hit_r=torch.tensor(r),
        hit_z=torch.zeros(len(pid)),
        edge_index=torch.tensor(edges + [(1, 8)]).T.contiguous(),
        edge_scores=torch.tensor([0.9] * len(edges) + [wrong_score]),
        hit_particle_id=pid_t,
        hit_weight=weight / weight.sum(),
        track_edges=truth,
        track_particle_id=edge_pid,
        track_particle_pt=torch.tensor([by_id[int(p)][0] for p in edge_pid]),
        track_particle_eta=torch.tensor([by_id[int(p)][1] for p in edge_pid]),
        num_nodes=len(pid),
    )
    data.event_id = f"{event_id:09d}"
    data.config = [{"stage": "edge_classifier"}]
    return data


def stage(cls, config_class, input_dir: Path, stage_dir: Path, model: str, **overrides):
    values = {
        "stage": "track_building",
        "model": model,
        "input_dir": str(input_dir),
        "stage_dir": str(stage_dir),
        **overrides,
    }
    return cls(build(config_class, values, "tb.yaml"))


@pytest.fixture
def built(tmp_path):
    """Both builders run (infer + evaluate) on the same two events: event 1 with the wrong edge below
    the cut, event 2 with it above."""
    folder = tmp_path / "gnn"
    save_event(scored_event(1, 0.3), event_file(folder, "testset", 1))
    save_event(scored_event(2, 0.7), event_file(folder, "testset", 2))
    runs = {}
    for name, cls, config_class in (
        ("cc", ConnectedComponents, ConnectedComponentsConfig),
        ("walk", Walkthrough, WalkthroughConfig),
    ):
        builder = stage(cls, config_class, folder, tmp_path / name, cls.__name__)
        builder.infer()
        runs[name] = (builder, builder.evaluate())
    return tmp_path, runs


def test_infer_writes_the_fields_and_submissions_of_connected_components(built):
    root, runs = built
    files = {name: list_event_files(root / name, "testset") for name in runs}
    assert (
        [f.name for f in files["walk"]] == [f.name for f in files["cc"]] == ["event000000001.pyg", "event000000002.pyg"]
    )
    for cc_file, walk_file in zip(files["cc"], files["walk"]):
        cc_data, walk_data = load_event(cc_file), load_event(walk_file)
        assert sorted(walk_data.keys()) == sorted(cc_data.keys())
        labels = walk_data[LABELS_FIELD]
        assert labels.dtype == torch.int64 and labels.shape == (walk_data.num_nodes,)
        assert walk_data.config[-1]["model"] == "Walkthrough" and "chains" not in walk_data.config[-1]
        # every particle a track, numbered by lowest hit; noise in none
        assert labels.tolist() == [0] * 6 + [1] * 5 + [2] * 4 + [-1] * 3
        name = f"{walk_file.stem}-submission.csv"
        walk_sub = pd.read_csv(root / "walk" / "submissions" / "testset" / name)
        cc_sub = pd.read_csv(root / "cc" / "submissions" / "testset" / name)
        assert walk_sub.columns.tolist() == cc_sub.columns.tolist() == ["event_id", "hit_id", "track_id"]
        assert walk_sub.hit_id.tolist() == cc_sub.hit_id.tolist() and walk_sub.hit_id.is_unique
        assert walk_sub.track_id.tolist() == [0] * 6 + [1] * 5 + [2] * 4 + [3, 4, 5]
    # connected components merge 101 and 102 at the wrong edge of event 2
    assert load_event(files["cc"][1])[LABELS_FIELD].tolist()[:11] == [0] * 11


def test_evaluate_gives_the_metrics_and_plots_of_connected_components(built):
    root, runs = built
    on_disk = {name: json.loads((root / name / "eval" / "metrics.json").read_text()) for name in runs}
    assert set(on_disk["walk"]) == set(on_disk["cc"])
    for style in ("two_way", "one_way", "atlas"):
        assert set(on_disk["walk"][style]) == set(on_disk["cc"][style])
        assert "efficiency_pt1" in on_disk["walk"][style]
    assert on_disk["walk"]["config"]["model"] == "Walkthrough"
    walk_metrics, cc_metrics = runs["walk"][1], runs["cc"][1]
    assert walk_metrics["two_way"]["efficiency"] == 1.0 and walk_metrics["two_way"]["fake_rate"] == 0.0
    assert walk_metrics["two_way"]["efficiency_pt1"] == 1.0
    assert walk_metrics["trackml_score"] == pytest.approx(1.0) and walk_metrics["trackml_score_events"] == 2
    assert cc_metrics["two_way"]["efficiency"] == pytest.approx(3 / 4)  # 102 lost in the merge of event 2
    for name in ("track_efficiency_vs_pt.png", "track_efficiency_vs_eta.png"):
        assert (root / "walk" / "eval" / name).read_bytes()[:8] == PNG_MAGIC


def test_registry_and_shipped_config_resolve_walkthrough(tmp_path):
    assert resolve("track_building", "Walkthrough", "tb.yaml") is Walkthrough
    builder = load_stage(REPO / "configs" / "track_building" / "walkthrough.yaml")
    assert isinstance(builder, Walkthrough) and isinstance(builder.config, WalkthroughConfig)
    assert str(builder.config.input_dir) == "runs/demo/edge_classifier"
    assert str(builder.config.stage_dir) == "runs/demo/track_building_walkthrough"


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("matching_fraction", 0.4, r"'matching_fraction'.*\[0\.5, 1\]"),
        ("min_track_length", 1, r"'min_track_length'.*at least 2"),
        ("score_cut", math.nan, r"'score_cut'.*number"),
        ("dataset", "test", r"'dataset'.*Allowed: 'trainset', 'valset', 'testset'"),
        ("chains", True, r"unknown key 'chains'"),
    ],
)
def test_bad_config_names_the_key(tmp_path, key, value, message):
    with pytest.raises(ConfigError, match=message):
        stage(Walkthrough, WalkthroughConfig, tmp_path / "in", tmp_path / "tb", "Walkthrough", **{key: value})
