import numpy as np
import pytest

from tb_plugin.pretraining.count_baseline import BOUNDARY, CountBaseline, first_unique, neighbours
from tb_plugin.tokenizer import PAD

B = BOUNDARY


def chain_model(scheme="product"):
    return CountBaseline(scheme).fit([np.array([10, 11, 12, 13])] * 5)


@pytest.mark.parametrize("scheme", ["product", "backoff"])
def test_deterministic_chain_recovers_every_position_including_ends(scheme):
    model = chain_model(scheme)
    left = np.array([B, 10, 11, 12])
    right = np.array([11, 12, 13, B])
    assert model.predict_topk(left, right, k=1)[:, 0].tolist() == [10, 11, 12, 13]


def test_fit_padded_equals_fit_on_ragged_tracks():
    tracks = [np.array([10, 11, 12, 13]), np.array([20, 21, 22, 23, 24, 25]), np.array([10, 11, 30, 31])]
    padded = np.full((3, 8), PAD)
    for i, t in enumerate(tracks):
        padded[i, : len(t)] = t
    ragged = CountBaseline().fit(tracks)
    dense = CountBaseline().fit_padded(padded, np.array([4, 6, 4]))
    rng = np.random.default_rng(0)
    tokens = np.array([B, 10, 11, 12, 13, 20, 22, 24, 30, 31, 99])
    left, right = rng.choice(tokens, 200), rng.choice(tokens, 200)
    assert np.array_equal(ragged.predict_topk(left, right, 5), dense.predict_topk(left, right, 5))
    assert dense.n_tracks == 3 and dense.n_hits == 14


def test_backoff_order_trigram_then_left_then_right_then_unigram():
    tracks = (
        [np.array([1, 2, 3])] * 3 + [np.array([1, 5, 9])] + [np.array([7, 6, 3])] * 2 + [np.array([8, 8, 8, 8])] * 2
    )
    model = CountBaseline("backoff").fit(tracks)
    # context (1, 3) seen once with 2 as middle; left 1 -> {2: 3, 5: 1}; right 3 <- {2: 3, 6: 2}
    pred = model.predict_topk(np.array([1]), np.array([3]), k=5)[0].tolist()
    assert pred == [2, 5, 6, 8, 3]  # trigram, left bigram, right bigram, then unigram (8: 8 hits, 3: 5)
    # unseen left and right tokens: straight to the unigram
    assert model.predict_topk(np.array([40]), np.array([41]), k=3)[0].tolist() == [8, 3, 1]


def test_product_tier_ranks_modules_compatible_with_both_neighbours():
    # After 1 come 2 (x3) and 4 (x1); before 9 come 4 (x1) and 6 (x2). Context (1, 9) is never seen:
    # the only module seen after 1 and before 9 is 4, which plain backoff ranks behind 2.
    tracks = [np.array([1, 2, 3])] * 3 + [np.array([1, 4, 5]), np.array([0, 4, 9])] + [np.array([7, 6, 9])] * 2
    left, right = np.array([1]), np.array([9])
    assert CountBaseline("product").fit(tracks).predict_topk(left, right, 3)[0].tolist() == [4, 2, 6]
    assert CountBaseline("backoff").fit(tracks).predict_topk(left, right, 3)[0].tolist() == [2, 4, 6]


def test_ties_go_to_the_smaller_token_and_rows_have_no_duplicates():
    tracks = [np.array([1, 30, 2]), np.array([1, 20, 2]), np.array([1, 25, 2]), np.array([3, 20, 4])]
    model = CountBaseline().fit(tracks)
    pred = model.predict_topk(np.array([1, 3]), np.array([2, 4]), k=5)
    assert pred[0, :3].tolist() == [20, 25, 30]
    assert pred[1, 0] == 20
    for row in pred:
        assert len(set(row.tolist())) == len(row)
    # data order does not matter
    again = CountBaseline().fit(tracks[::-1]).predict_topk(np.array([1, 3]), np.array([2, 4]), k=5)
    assert np.array_equal(pred, again)


def test_boundary_contexts_count_first_and_last_hits():
    tracks = [np.array([5, 6, 7])] * 2 + [np.array([8, 6, 9])]
    model = CountBaseline().fit(tracks)
    assert model.predict_topk(np.array([B]), np.array([6]), k=2)[0].tolist() == [5, 8]  # first hits
    assert model.predict_topk(np.array([6]), np.array([B]), k=2)[0].tolist() == [7, 9]  # last hits
    # a one-hit query with no neighbours: the first-hit distribution
    assert model.predict_topk(np.array([B]), np.array([B]), k=1)[0, 0] == 5


def test_fewer_known_modules_than_k_pads_with_pad():
    model = CountBaseline().fit([np.array([10, 11])])
    assert model.predict_topk(np.array([10]), np.array([B]), k=4)[0].tolist() == [11, 10, PAD, PAD]


def test_first_unique_keeps_order_and_skips_negatives():
    cands = np.array([[3, -1, 3, 2, 5, 2, 7], [-1, -1, 4, 4, 4, -1, -1]])
    assert first_unique(cands, 3).tolist() == [[3, 2, 5], [4, PAD, PAD]]


def test_neighbours_of_padded_tracks():
    tokens = np.array([[10, 11, 12, 0], [20, 21, 22, 23]])
    left, right = neighbours(tokens, np.array([3, 4]), np.array([2, 0]))
    assert left.tolist() == [11, B] and right.tolist() == [B, 21]
    with pytest.raises(ValueError, match="inside its track"):
        neighbours(tokens, np.array([3, 4]), np.array([3, 0]))


def test_errors():
    with pytest.raises(RuntimeError, match="before fit"):
        CountBaseline().predict_topk(np.array([1]), np.array([2]))
    with pytest.raises(ValueError, match="scheme"):
        CountBaseline("smoothing")
    with pytest.raises(ValueError, match="empty"):
        CountBaseline().fit([])


def test_large_fit_and_predict_is_fast():
    import time

    rng = np.random.default_rng(0)
    k_tracks, width = 100_000, 8
    start = rng.integers(5, 4009, k_tracks)
    tokens = 5 + (start[:, None] + 37 * rng.integers(-3, 4, (k_tracks, width)).cumsum(1) - 5) % 4004
    lengths = rng.integers(4, 9, k_tracks)
    t0 = time.perf_counter()
    model = CountBaseline().fit_padded(tokens, lengths)
    pred = model.predict_topk(tokens[:50_000, 0], tokens[:50_000, 2], k=5)
    assert time.perf_counter() - t0 < 5.0
    assert pred.shape == (50_000, 5)
    assert (pred[:, 0] == tokens[:50_000, 1]).mean() > 0.1
