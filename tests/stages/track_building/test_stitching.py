"""Fragment stitching (stages/track_building/stitching.py) on small events built here."""

from pathlib import Path

import numpy as np
import pytest
import torch

from stages.graph_construction.truth import hit_order
from stages.track_building.connected_components import LABELS_FIELD, ConnectedComponents, ConnectedComponentsConfig
from stages.track_building.stitching import (
    MERGES_FIELD,
    Fragments,
    JunctionWindows,
    Stitcher,
    TrackingBERTScorer,
    candidate_pairs,
    geometry_scorer,
    greedy_merge,
    helix_chi2,
    hit_positions,
    join,
    make_stitcher,
)
from stages.track_building.walkthrough import Walkthrough, WalkthroughConfig
from tb_plugin.config import ConfigError, build
from tb_plugin.event_store import list_event_files, load_event, save_event
from tests.stages.track_building.fragments import S_A, S_B, event, helix, tb_event, tiny_trackingbert

WINDOWS = JunctionWindows(max_dphi=0.3, max_dz=100.0, max_gap=500.0, max_candidates=5)


def geometry_stitch(data, labels, max_chi2=10.0):
    return Stitcher(WINDOWS, geometry_scorer(1.0, max_chi2))(data, labels, "e.pyg")


# ------------------------------------------------------------------------------------- geometry


def test_stitching_keys_only_lower_the_fragment_length(tmp_path):
    values = {
        "stage": "track_building",
        "model": "Walkthrough",
        "stage_dir": tmp_path / "out",
        "input_dir": tmp_path / "in",
    }
    for stitch, min_track_length, expected in (("none", 6, 6), ("geometry", 6, 4), ("geometry", 3, 3)):
        config = build(WalkthroughConfig, values | {"stitch": stitch, "min_track_length": min_track_length}, "t")
        assert Walkthrough(config).fragment_length == expected


def test_two_fragments_of_one_helix_are_stitched():
    data, labels = event(helix(S_A), helix(S_B))
    grouping, merges = geometry_stitch(data, labels)
    assert merges == 1 and len(set(grouping.tolist())) == 1
    # the order of the labels does not matter: the outer fragment labelled first
    data, labels = event(helix(S_B), helix(S_A))
    assert geometry_stitch(data, labels)[1] == 1


def test_fragments_of_different_tracks_are_not_stitched():
    # opposite curvature: the junction passes the windows (dphi ~ 0.17 rad), the helix fit does not
    data, labels = event(helix(S_A), helix(S_B, charge=-1))
    fragments = Fragments.from_labels(labels, np.arange(len(labels)))
    a, b = candidate_pairs(fragments, hit_positions(data, "e.pyg"), np.arange(10), WINDOWS)
    assert (a.tolist(), b.tolist()) == ([0], [1])
    assert helix_chi2(join(fragments, a, b), hit_positions(data, "e.pyg"), 1.0)[0] > 100
    assert geometry_stitch(data, labels)[1] == 0
    # far in z: the same helix shifted by 300 mm is no candidate at all
    data, labels = event(helix(S_A), helix(S_B, z0=300.0))
    assert geometry_stitch(data, labels, max_chi2=np.inf)[1] == 0
    # B inside A (before A's outer hit) is no candidate either, whatever the score
    data, labels = event(helix(S_B), helix(S_A[:2]))
    assert geometry_stitch(data, labels, max_chi2=np.inf)[1] == 1  # A = the inner two hits, B = the outer five
    data, labels = event(helix(np.r_[S_A, S_B[-1:]]), helix(S_B[:-1]))  # A's outer hit lies beyond B's inner
    assert geometry_stitch(data, labels, max_chi2=np.inf)[1] == 0


def test_a_fragment_end_joins_only_the_better_of_two_candidates():
    # B1 continues A exactly; B2 is a slightly stiffer track from the same place: both pass a loose chi2
    a, b1, b2 = helix(S_A), helix(S_B), helix(S_B, radius=1500.0)
    data, labels = event(a, b2, b1)  # the worse candidate first, so order cannot decide
    fragments = Fragments.from_labels(labels, np.arange(len(labels)))
    xyz = np.concatenate([a, b2, b1])
    chi2 = helix_chi2(join(fragments, np.array([0, 0]), np.array([1, 2])), xyz, 1.0)
    assert chi2[1] < chi2[0] < np.inf
    grouping, merges = geometry_stitch(data, labels, max_chi2=np.inf)
    assert merges == 1
    assert grouping[0] == grouping[-1] and grouping[5] != grouping[0]  # A + B1; B2 alone


def test_greedy_merge_uses_each_end_once_and_chains():
    # A -> B (0.9), A -> C (0.8), B -> C (0.7): A's outer end goes to B, then B's to C: one chain
    root, merges = greedy_merge(
        3, np.array([0, 0, 1]), np.array([1, 2, 2]), np.array([0.9, 0.8, 0.7]), np.ones(3, bool)
    )
    assert merges == 2 and len(set(root.tolist())) == 1
    # C's inner end is taken by A (0.9), so B -> C (0.8) cannot join; nothing accepted below
    root, merges = greedy_merge(3, np.array([0, 1]), np.array([2, 2]), np.array([0.9, 0.8]), np.array([True, True]))
    assert merges == 1 and root[0] == root[2] != root[1]
    assert greedy_merge(2, np.array([0]), np.array([1]), np.array([0.9]), np.array([False]))[1] == 0


def test_both_builders_stitch_and_count_the_merges(tmp_path):
    data, labels = event(helix(S_A), helix(S_B), helix(S_A, phi0=2.5))
    chain = [(i, i + 1) for i in range(14) if i not in (4, 9)]  # three chains, no edge A -> B
    data.edge_index = torch.tensor(chain, dtype=torch.int64).T
    data.edge_scores = torch.full((len(chain),), 0.9)
    for cls, config_cls, model in (
        (Walkthrough, WalkthroughConfig, "Walkthrough"),
        (ConnectedComponents, ConnectedComponentsConfig, "ConnectedComponents"),
    ):
        values = {
            "stage": "track_building",
            "model": model,
            "stage_dir": tmp_path / model,
            "input_dir": tmp_path / "in",
        }
        plain = cls(build(config_cls, values, "t.yaml")).event_processor()(data.clone(), Path("event000000001.pyg"))
        assert plain[LABELS_FIELD].tolist() == [0] * 5 + [1] * 5 + [2] * 5 and MERGES_FIELD not in plain
        stitched = cls(build(config_cls, values | {"stitch": "geometry"}, "t.yaml")).event_processor()(
            data.clone(), Path("event000000001.pyg")
        )
        assert stitched[LABELS_FIELD].tolist() == [0] * 10 + [1] * 5 and stitched[MERGES_FIELD] == 1


def test_short_fragments_are_kept_for_stitching_and_dropped_when_not_joined(tmp_path):
    # min_track_length 6: A (5 hits) + B (3 hits) join into one track of 8; C (3 hits, elsewhere) is dropped
    data, _ = event(helix(S_A), helix(S_B[:3]), helix(S_A[:3], phi0=2.5))
    chain = [(0, 1), (1, 2), (2, 3), (3, 4), (5, 6), (6, 7), (8, 9), (9, 10)]
    data.edge_index = torch.tensor(chain, dtype=torch.int64).T
    data.edge_scores = torch.full((len(chain),), 0.9)
    values = {
        "stage": "track_building",
        "model": "Walkthrough",
        "stage_dir": tmp_path / "out",
        "input_dir": tmp_path / "in",
    }
    values |= {"min_track_length": 6, "stitch_min_fragment_length": 3}
    for stitch, expected in (("none", [-1] * 11), ("geometry", [0] * 8 + [-1] * 3)):
        stage = Walkthrough(build(WalkthroughConfig, values | {"stitch": stitch}, "t.yaml"))
        assert stage.event_processor()(data.clone(), Path("event000000001.pyg"))[LABELS_FIELD].tolist() == expected


def test_evaluate_reports_the_merges(tmp_path):
    data, _ = event(helix(S_A), helix(S_B))
    chain = [(i, i + 1) for i in range(9) if i != 4]
    data.edge_index = torch.tensor(chain, dtype=torch.int64).T
    data.edge_scores = torch.full((len(chain),), 0.9)
    data.hit_particle_id = torch.full((10,), 7)
    save_event(data, tmp_path / "in" / "testset" / "event000000001.pyg")
    values = {"stage": "track_building", "model": "Walkthrough", "stage_dir": tmp_path / "out"}
    stage = Walkthrough(build(WalkthroughConfig, values | {"input_dir": tmp_path / "in", "stitch": "geometry"}, "t"))
    stage.infer()
    assert load_event(list_event_files(tmp_path / "out", "testset")[0])[MERGES_FIELD] == 1
    metrics = stage.evaluate()
    assert metrics["stitch_merges"] == 1 and metrics["two_way"]["efficiency"] == 1.0


# ------------------------------------------------------------------------------------- TrackingBERT


@pytest.fixture(scope="module")
def tiny_tb():
    return tiny_trackingbert()


def tb_scores(scorer, data, labels):
    xyz = hit_positions(data, "e.pyg")
    rank = hit_order((xyz**2).sum(axis=1))
    fragments = Fragments.from_labels(labels, rank)
    a, b = candidate_pairs(fragments, xyz, rank, WINDOWS)
    return a, b, scorer.scores(data, join(fragments, a, b), "e.pyg")


def test_tb_scores_are_deterministic_and_the_threshold_decides(tiny_tb):
    module, tokenizer, detector = tiny_tb
    scorer = TrackingBERTScorer(module.model, tokenizer, detector, junction_hits=2, batch_size=3)
    data, labels = tb_event(tokenizer)
    a, b, first = tb_scores(scorer, data, labels)
    assert (a.tolist(), b.tolist()) == ([0, 0], [1, 2])  # nearest first
    assert np.isfinite(first).all() and (first < 0).all()
    assert np.array_equal(first, tb_scores(scorer, data, labels)[2])  # eval mode: no dropout
    # one forward pass per batch of masked copies: the batch size changes nothing
    wide = TrackingBERTScorer(module.model, tokenizer, detector, junction_hits=2, batch_size=1000)
    np.testing.assert_allclose(tb_scores(wide, data, labels)[2], first, rtol=1e-5)
    best = int(np.argmax(first))
    for min_score, merges in ((first.max() - 1e-6, 1), (first.max() + 1e-6, 0)):
        grouping, n = Stitcher(WINDOWS, scorer.scorer(min_score))(data, labels, "e.pyg")
        assert n == merges
        if merges:
            assert grouping[0] == grouping[5 * b[best]] and grouping[5 * b[1 - best]] != grouping[0]


def test_a_layer_softmax_model_is_scored_within_the_true_modules_layer(tiny_tb):
    """A model pretrained with mdm_candidates: layer learned log-probabilities among a layer's modules:
    its junction scores are those, so higher than over the whole vocabulary (fewer rivals)."""
    module, tokenizer, detector = tiny_tb
    data, labels = tb_event(tokenizer)
    whole = tb_scores(TrackingBERTScorer(module.model, tokenizer, detector, 2, 64), data, labels)[2]
    layer = tb_scores(TrackingBERTScorer(module.model, tokenizer, detector, 2, 64, "layer"), data, labels)[2]
    assert np.isfinite(layer).all() and (layer <= 0).all() and (layer > whole).all()


def test_tb_skips_unknown_modules_and_never_merges_an_unscorable_pair(tiny_tb):
    module, tokenizer, detector = tiny_tb
    scorer = TrackingBERTScorer(module.model, tokenizer, detector, junction_hits=2, batch_size=64)
    # A's last two hits on strips: only B's first two positions are scored, and the score changes
    data, labels = tb_event(tokenizer, strip_hits=(3, 4))
    a, b, partial = tb_scores(scorer, data, labels)
    assert np.isfinite(partial).all()
    assert not np.allclose(partial, tb_scores(scorer, *tb_event(tokenizer))[2])
    # every hit of B1 (hits 5-9) on strips: B1 is unscorable, and never merged even at min_score -inf
    data, labels = tb_event(tokenizer, strip_hits=range(5, 10))
    a, b, scores = tb_scores(scorer, data, labels)
    assert np.isnan(scores[b.tolist().index(1)]) and np.isfinite(scores[b.tolist().index(2)])
    grouping, merges = Stitcher(WINDOWS, scorer.scorer(-np.inf))(data, labels, "e.pyg")
    assert merges == 1 and grouping[5] != grouping[0] == grouping[10]
    # every hit on strips: nothing to score, nothing merged
    data, labels = tb_event(tokenizer, strip_hits=range(15))
    assert np.isnan(tb_scores(scorer, data, labels)[2]).all()
    assert Stitcher(WINDOWS, scorer.scorer(-np.inf))(data, labels, "e.pyg")[1] == 0


def test_tb_scorer_loads_from_a_tracking_bert_stage_dir(tiny_tb, tmp_path):
    module, tokenizer, detector = tiny_tb
    artifacts = tmp_path / "tb" / "artifacts"
    artifacts.mkdir(parents=True)
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, artifacts / "best.ckpt")
    tokenizer.save(artifacts / "vocab.json")
    detector.to_csv(tmp_path / "tb" / "detectors.csv")
    values = {"stage": "track_building", "model": "Walkthrough", "stage_dir": tmp_path / "out"}
    values |= {"input_dir": tmp_path / "in", "stitch": "tb", "tracking_bert_dir": tmp_path / "tb"}
    assert isinstance(make_stitcher(build(WalkthroughConfig, values, "t.yaml"), tmp_path / "in"), Stitcher)
    loaded = TrackingBERTScorer.from_stage_dir(tmp_path / "tb", tmp_path / "in", 2, 64)
    direct = TrackingBERTScorer(module.model, tokenizer, detector, 2, 64)
    data, labels = tb_event(tokenizer)
    np.testing.assert_allclose(tb_scores(loaded, data, labels)[2], tb_scores(direct, data, labels)[2], rtol=1e-6)
    # another geometry beside the data is refused by the stage's own check
    other = tmp_path / "in"
    other.mkdir()
    detector.subset(slice(0, 100)).to_csv(other / "detectors.csv")
    with pytest.raises(ValueError, match="geometry"):
        TrackingBERTScorer.from_stage_dir(tmp_path / "tb", other, 2, 64)


# ------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"stitch": "helix"}, r"key 'stitch'.*'none', 'geometry', 'tb'"),
        ({"stitch": "tb"}, r"tracking_bert_dir"),
        ({"stitch_max_dphi": 0}, r"stitch_max_dphi.*\(0, pi\]"),
        ({"stitch_max_gap": -1}, r"stitch_max_gap.*positive"),
        ({"stitch_junction_hits": 0}, r"stitch_junction_hits.*at least 1"),
        ({"stitch_min_fragment_length": 1}, r"stitch_min_fragment_length.*at least 2"),
    ],
)
def test_stitch_config_errors_name_the_key(tmp_path, overrides, message):
    values = {
        "stage": "track_building",
        "model": "Walkthrough",
        "stage_dir": tmp_path / "out",
        "input_dir": tmp_path / "in",
    }
    with pytest.raises(ConfigError, match=message) as err:
        build(WalkthroughConfig, values | overrides, "t.yaml")
    assert "\n" not in str(err.value)


def test_missing_tracking_bert_stage_is_a_clear_error(tmp_path):
    values = {
        "stage": "track_building",
        "model": "Walkthrough",
        "stage_dir": tmp_path / "out",
        "input_dir": tmp_path / "in",
    }
    config = build(WalkthroughConfig, values | {"stitch": "tb", "tracking_bert_dir": tmp_path / "nope"}, "t")
    with pytest.raises(FileNotFoundError, match="no trained TrackingBERT"):
        make_stitcher(config, tmp_path)
