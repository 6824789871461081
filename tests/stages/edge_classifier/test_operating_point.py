import math

import numpy as np
import pytest
import torch

from stages.edge_classifier.operating_point import KEEP_ALL, cut_for_efficiency, rates, rates_at_cut


def kept(scores, cut) -> int:
    return int((np.asarray(scores) > cut).sum())


def test_cut_keeps_the_share_and_is_the_largest_such_cut():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    cut = cut_for_efficiency(scores, 0.6)  # 3 of 5
    assert kept(scores, cut) == 3
    assert 0.6 < cut < 0.7
    assert kept(scores, np.nextafter(cut, np.inf)) == 2  # one step up already loses an edge: the largest cut
    assert kept(scores, cut_for_efficiency(scores, 1.0)) == 5
    assert kept(scores, cut_for_efficiency(scores, 0.01)) == 1


def test_float32_scores_get_a_cut_exact_in_float32_comparisons():
    scores = np.random.default_rng(0).random(1000).astype(np.float32)
    cut = cut_for_efficiency(scores, 0.9)
    assert kept(scores, cut) == 900
    assert int((torch.from_numpy(scores) > cut).sum()) == 900  # torch compares a float32 tensor in float32
    assert (
        int((torch.from_numpy(scores) > float(np.float32(np.nextafter(np.float32(cut), np.float32(1))))).sum()) == 899
    )


def test_rounding_does_not_ask_for_one_edge_too_many():
    scores = np.linspace(0.01, 1.0, 100)
    assert kept(scores, cut_for_efficiency(scores, 0.99)) == 99  # 0.99 * 100 is 99.00000000000001 in floats


def test_ties_are_kept_together():
    scores = np.array([0.5, 0.5, 0.5, 0.1])
    assert kept(scores, cut_for_efficiency(scores, 0.5)) == 3


def test_n_target_counts_edges_already_removed():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])  # 8 of 10 target edges left
    assert kept(scores, cut_for_efficiency(scores, 0.7, n_target=10)) == 7
    assert kept(scores, cut_for_efficiency(scores, 0.8, n_target=10)) == 8
    assert cut_for_efficiency(scores, 0.9, n_target=10) == KEEP_ALL == -math.inf  # 9 of 10 cannot be reached


def test_nothing_to_count_and_bad_arguments():
    assert cut_for_efficiency(np.array([]), 0.9) == KEEP_ALL
    with pytest.raises(ValueError, match="efficiency"):
        cut_for_efficiency(np.array([0.5]), 0.0)
    with pytest.raises(ValueError, match="n_target"):
        cut_for_efficiency(np.array([0.5, 0.6]), 0.5, n_target=1)


def test_rates_at_cut_by_hand():
    #                 target true  target true  other true  fake  fake  fake
    scores = np.array([0.9, 0.2, 0.8, 0.7, 0.6, 0.1])
    edge_y = np.array([True, True, True, False, False, False])
    edge_target = np.array([True, True, False, False, False, False])
    r = rates_at_cut(scores, edge_y, edge_target, 0.5)  # kept: 0, 2, 3, 4
    assert r["n_kept"] == 4 and r["n_target"] == 2
    assert r["target_efficiency"] == pytest.approx(1 / 2)
    assert r["target_purity"] == pytest.approx(1 / 3)  # the other true edge counts neither way
    assert r["acorn_target_purity"] == pytest.approx(1 / 4)
    assert r["efficiency"] == pytest.approx(2 / 3)
    assert r["purity"] == pytest.approx(2 / 4)
    assert rates_at_cut(scores, edge_y, edge_target, 0.5, n_target=4)["target_efficiency"] == pytest.approx(1 / 4)
    none = rates_at_cut(scores, edge_y, edge_target, 0.95)
    assert (
        none["n_kept"] == 0
        and none["purity"] is None
        and none["target_purity"] is None
        and none["target_efficiency"] == 0.0
    )
    assert rates(scores > 0.5, edge_y, edge_target) == r
    with pytest.raises(ValueError, match="shape"):
        rates(scores > 0.5, edge_y[:3], edge_target)
