"""Candidate scoring (stages/track_building/rejection.py) on small events built here."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from stages.track_building.connected_components import LABELS_FIELD
from stages.track_building.rejection import (
    BELOW_FIELD,
    CUT_FILE,
    FLAG_FIELD,
    SCORE_FIELD,
    SCORES_PLOT,
    Rejector,
    candidates,
    choose_cut,
    geometry_candidate_score,
    read_cut,
    track_scores,
)
from stages.track_building.stitching import TrackingBERTScorer
from stages.track_building.walkthrough import Walkthrough, WalkthroughConfig
from tb_plugin.config import ConfigError, build
from tb_plugin.event_store import list_event_files, load_event, save_event
from tests.stages.track_building.fragments import S_A, S_B, event, helix, tb_event, tiny_trackingbert

ZIGZAG = np.r_[helix(S_A), helix(S_B, charge=-1)]  # one candidate of two tracks that turn apart


@pytest.fixture(scope="module")
def tiny_tb():
    return tiny_trackingbert()


def chained(*tracks: np.ndarray, particles=None):
    """An event of the given tracks, each a chain of edges scored 0.9, with truth particles 1, 2, ..."""
    data, labels = event(*tracks)
    edges = [(i, i + 1) for i in range(len(labels) - 1) if labels[i] == labels[i + 1]]
    data.edge_index = torch.tensor(edges, dtype=torch.int64).T
    data.edge_scores = torch.full((len(edges),), 0.9)
    data.hit_particle_id = torch.as_tensor(particles if particles is not None else labels + 1)
    return data


def test_the_cut_keeps_the_asked_fraction_of_true_candidates():
    scores = np.r_[np.arange(100.0), np.nan]  # nan: unscored, not counted
    assert choose_cut(scores, 0.99) == 1.0 and (scores[np.isfinite(scores)] >= 1.0).mean() == 0.99
    assert choose_cut(scores, 0.9) == 10.0 and choose_cut(scores, 1.0) == 0.0
    with pytest.raises(ValueError, match="no true candidate"):
        choose_cut(np.array([np.nan]), 0.99)


def test_geometry_scores_a_helix_above_two_tracks_in_one():
    data, labels = event(helix(np.r_[S_A, S_B]), ZIGZAG, helix(S_A[:2], phi0=2.0))
    fragments, _ = candidates(data, labels, "e.pyg")
    score = geometry_candidate_score(1.0)(data, fragments, "e.pyg")
    assert score[0] > -1e-3 and score[1] < -100 and np.isnan(score[2])  # 2 hits: no fit, no score


def test_the_rejector_drops_or_flags_below_the_cut_and_never_an_unscored_candidate():
    data, labels = event(helix(np.r_[S_A, S_B]), ZIGZAG, helix(S_A[:2], phi0=2.0))
    kept, per_hit, below = Rejector(geometry_candidate_score(1.0), cut=-10.0)(data, labels, "e.pyg")
    assert below == 1 and kept.tolist() == [0] * 10 + [-1] * 10 + [2] * 2
    assert np.isfinite(per_hit[:20]).all() and np.isnan(per_hit[20:]).all()
    np.testing.assert_allclose(track_scores(labels, per_hit)[:2], per_hit[[0, 10]])
    flagged, _, below = Rejector(geometry_candidate_score(1.0), cut=-10.0, action="flag")(data, labels, "e.pyg")
    assert below == 1 and flagged.tolist() == labels.tolist()
    unchanged, _, below = Rejector(geometry_candidate_score(1.0), cut=None)(data, labels, "e.pyg")
    assert below == 0 and unchanged.tolist() == labels.tolist()


def test_tb_candidate_scores_are_deterministic_given_the_model(tiny_tb):
    module, tokenizer, detector = tiny_tb
    data, labels = tb_event(tokenizer, strip_hits=range(10, 14))  # C: one pixel hit left
    fragments, _ = candidates(data, labels, "e.pyg")
    scorer = TrackingBERTScorer(module.model, tokenizer, detector, junction_hits=2, batch_size=3)
    first = scorer.candidate_scores(data, fragments, "e.pyg")
    assert np.isfinite(first[:2]).all() and (first[:2] < 0).all() and np.isnan(first[2])  # C: nothing to judge
    assert np.array_equal(first, scorer.candidate_scores(data, fragments, "e.pyg"), equal_nan=True)  # no dropout
    wide = TrackingBERTScorer(module.model, tokenizer, detector, junction_hits=2, batch_size=1000)
    np.testing.assert_allclose(wide.candidate_scores(data, fragments, "e.pyg"), first, rtol=1e-5)
    # another module sequence scores differently: the score reads the modules
    other, _ = tb_event(tokenizer, strip_hits=(0,))
    assert not np.isclose(scorer.candidate_scores(other, fragments, "e.pyg")[0], first[0])


def walkthrough(tmp_path: Path, **keys) -> Walkthrough:
    values = {"stage": "track_building", "model": "Walkthrough", "stage_dir": tmp_path / "out"}
    values |= {"input_dir": tmp_path / "in", "min_track_length": 3, "reject": "geometry"} | keys
    return Walkthrough(build(WalkthroughConfig, values, "t.yaml"))


def test_the_cut_is_chosen_on_the_valset_and_applied_at_infer(tmp_path, caplog):
    # valset: 9 true helices and one candidate of two particles (a fake) -> the cut sits below the helices
    tracks = [helix(np.r_[S_A, S_B], phi0=0.6 * k) for k in range(9)]
    particles = np.r_[np.repeat(np.arange(1, 10), 10), [10] * 5 + [11] * 5]
    save_event(chained(*tracks, ZIGZAG, particles=particles), tmp_path / "in" / "valset" / "event000000001.pyg")
    save_event(chained(helix(np.r_[S_A, S_B]), ZIGZAG), tmp_path / "in" / "testset" / "event000000002.pyg")
    stage = walkthrough(tmp_path, reject_keep=1.0)
    assert stage.trainable and not walkthrough(tmp_path, reject_min_score=-5.0).trainable
    with pytest.raises(FileNotFoundError, match="reject_cut.json.*tb train"):
        stage.infer()
    stage.train()
    record = json.loads((tmp_path / "out" / CUT_FILE).read_text())
    assert (record["true_candidates"], record["fake_candidates"], record["fake_below_cut"]) == (9, 1, 1)
    assert record["true_below_cut"] == 0 and record["auc_scored"] == 1.0 and (tmp_path / "out" / SCORES_PLOT).exists()
    assert read_cut(tmp_path / "out") == record["cut"]
    stage.infer()
    out = load_event(list_event_files(tmp_path / "out", "testset")[0])
    assert out[LABELS_FIELD].tolist() == [0] * 10 + [-1] * 10 and out[BELOW_FIELD] == 1
    assert torch.isfinite(out[SCORE_FIELD][:10]).all() and torch.isnan(out[SCORE_FIELD][10:]).all()
    metrics = stage.evaluate()
    assert metrics["reject_below_cut"] == 1 and metrics["two_way"]["fake_rate"] == 0.0
    # another cut after the events were built: said, since infer keeps finished events
    with caplog.at_level(logging.WARNING):
        walkthrough(tmp_path, reject_keep=0.5).train()
    assert "the reject cut changes" in caplog.text and "--overwrite" in caplog.text
    flag = walkthrough(tmp_path, reject_min_score=record["cut"], reject_action="flag", stage_dir=tmp_path / "flag")
    flagged = flag.event_processor()(load_event(tmp_path / "in" / "testset" / "event000000002.pyg"), Path("e.pyg"))
    assert flagged[LABELS_FIELD].tolist() == [0] * 10 + [1] * 10
    assert flagged[FLAG_FIELD].tolist() == [False] * 10 + [True] * 10


def test_no_valset_truth_is_a_one_line_error(tmp_path):
    data = chained(helix(np.r_[S_A, S_B]))
    del data.hit_particle_id
    save_event(data, tmp_path / "in" / "valset" / "event000000001.pyg")
    with pytest.raises(ValueError, match=r"valset: none of the 1 events has truth"):
        walkthrough(tmp_path).train()
    with pytest.raises(FileNotFoundError, match=r"no event files in .*valset"):
        walkthrough(tmp_path, input_dir=tmp_path / "elsewhere").train()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"reject": "chi2"}, r"key 'reject'.*'none', 'geometry', 'tb'"),
        ({"reject": "tb"}, r"tracking_bert_dir.*reject: tb"),
        ({"reject_keep": 0.0}, r"reject_keep.*\(0, 1\]"),
        ({"reject_action": "hide"}, r"key 'reject_action'.*'drop', 'flag'"),
    ],
)
def test_reject_config_errors_name_the_key(tmp_path, overrides, message):
    values = {
        "stage": "track_building",
        "model": "Walkthrough",
        "stage_dir": tmp_path / "out",
        "input_dir": tmp_path / "in",
    }
    with pytest.raises(ConfigError, match=message) as err:
        build(WalkthroughConfig, values | overrides, "t.yaml")
    assert "\n" not in str(err.value)
