"""graph_truth: orientation, deduplication, edge_y and track_to_edge_map on a hand-made event."""

import numpy as np
import torch

from stages.graph_construction.truth import graph_truth, hit_order, sorted_unique

# Five hits on a line outwards (r^2 + z^2 grows with the index), plus hit 5 sharing hit 2's r^2 + z^2.
R2Z2 = torch.tensor([1.0, 4.0, 9.0, 16.0, 25.0, 9.0], dtype=torch.float64)


def test_orientation_duplicates_truth_and_missing_edges():
    edges = torch.tensor(
        [[1, 0, 2, 3, 1, 4, 2, 5], [0, 1, 1, 2, 1, 0, 3, 2]]
    )  # (1,0) and (0,1) are one edge; (1,1) a self loop; (4,0) points inwards
    truth = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])  # truth edge (3, 4) is not in the graph
    edge_index, edge_y, mapping = graph_truth(edges, truth, R2Z2)

    assert edge_index.dtype == torch.int64 and edge_y.dtype == torch.bool and mapping.dtype == torch.int64
    pairs = set(map(tuple, edge_index.T.tolist()))
    assert pairs == {(0, 1), (1, 2), (2, 3), (0, 4), (2, 5)}
    assert edge_index.shape[1] == len(pairs)  # no duplicates, no self loop
    # every edge points outwards (ties by hit index)
    rank = hit_order(R2Z2)
    assert (rank[edge_index[0].numpy()] < rank[edge_index[1].numpy()]).all()
    # truth
    assert mapping[3] == -1
    for t in range(3):
        assert edge_index[:, mapping[t]].tolist() == truth[:, t].tolist()
    assert set(np.flatnonzero(edge_y.numpy())) == set(mapping[:3].tolist())
    assert int(edge_y.sum()) == 3


def test_truth_edge_given_outside_in_still_matches_the_oriented_graph_edge():
    edge_index, edge_y, mapping = graph_truth(torch.tensor([[0], [1]]), torch.tensor([[1], [0]]), R2Z2)
    assert edge_index.tolist() == [[0], [1]] and edge_y.tolist() == [True] and mapping.tolist() == [0]


def test_empty_graph_and_empty_truth():
    edge_index, edge_y, mapping = graph_truth(torch.zeros((2, 0), dtype=torch.long), torch.tensor([[0], [1]]), R2Z2)
    assert edge_index.shape == (2, 0) and edge_y.shape == (0,) and mapping.tolist() == [-1]
    edge_index, edge_y, mapping = graph_truth(torch.tensor([[0], [1]]), torch.zeros((2, 0), dtype=torch.long), R2Z2)
    assert edge_index.shape == (2, 1) and edge_y.tolist() == [False] and mapping.shape == (0,)


def test_hit_index_out_of_range_is_an_error():
    import pytest

    with pytest.raises(ValueError, match="edge_index refers to hits outside"):
        graph_truth(torch.tensor([[0], [9]]), torch.zeros((2, 0), dtype=torch.long), R2Z2)


def test_sorted_unique_is_np_unique():
    keys = np.random.default_rng(0).integers(0, 500, 2_000)  # many duplicates
    for sample in (keys, keys[:1], keys[:0], np.array([7, 7, 7])):
        assert np.array_equal(sorted_unique(sample), np.unique(sample))
