"""Graph efficiency / purity on truth edges, target selection, and the split-level evaluation."""

import math

import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from stages.graph_metrics import (
    GraphCounts,
    GraphEvaluation,
    graph_efficiency_purity,
    target_truth_mask,
    truth_edge_found,
)
from tb_plugin.event_store import MissingFieldError


def event() -> Data:
    """Four truth edges (pT 0.5, 2, 3, 5 GeV); three are graph edges 0, 2, 3 of five; edge 1 and 4 fake."""
    return Data(
        track_edges=torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]]),
        track_particle_pt=torch.tensor([500.0, 2000.0, 3000.0, 5000.0]),
        track_particle_eta=torch.tensor([0.1, -1.0, 2.0, 0.5]),
        track_to_edge_map=torch.tensor([0, -1, 2, 3]),
        edge_y=torch.tensor([True, False, True, True, False]),
        num_nodes=5,
    )


def test_target_mask_with_short_and_full_names():
    data = event()
    assert target_truth_mask(data, {"pt": [1000, math.inf]}).tolist() == [False, True, True, True]
    assert target_truth_mask(data, {"track_particle_pt": [1000, 2500]}).tolist() == [False, True, False, False]
    assert target_truth_mask(data, None).all()
    with pytest.raises(MissingFieldError, match="track_particle_nhits"):
        target_truth_mask(data, {"nhits": [5, math.inf]}, source="ev.pyg")


def test_efficiency_and_purity():
    data = event()
    target = target_truth_mask(data, {"pt": [1000, math.inf]})
    m = graph_efficiency_purity(data.track_to_edge_map, target, data.edge_y)
    assert m["efficiency"] == pytest.approx(2 / 3)
    assert m["purity"] == pytest.approx(3 / 5)
    assert (m["n_true"], m["n_found"], m["n_edges"], m["n_true_edges"]) == (3, 2, 5, 3)


def test_kept_mask_applies_to_both():
    data = event()
    kept = torch.tensor([True, True, False, True, False])
    assert truth_edge_found(data.track_to_edge_map, kept).tolist() == [True, False, False, True]
    m = graph_efficiency_purity(data.track_to_edge_map, None, data.edge_y, kept)
    assert m["efficiency"] == pytest.approx(2 / 4)
    assert m["purity"] == pytest.approx(2 / 3)


def test_counts_add_over_events_and_empty_gives_none():
    total = GraphCounts(4, 3, 10, 3, 1) + GraphCounts(6, 6, 30, 6, 1)
    r = total.rates()
    assert r["efficiency"] == pytest.approx(0.9) and r["purity"] == pytest.approx(9 / 40) and r["edges_per_event"] == 20
    assert GraphCounts().rates()["efficiency"] is None


def test_evaluation_of_a_split_and_plots(tmp_path):
    evaluation = GraphEvaluation({"pt": [1000, math.inf]})
    evaluation.add(event(), "a")
    evaluation.add(event(), "b")
    m = evaluation.metrics()
    assert (
        m["events"] == 2 and m["efficiency"] == pytest.approx(0.75) and m["target_efficiency"] == pytest.approx(2 / 3)
    )
    assert m["edges_per_event"] == 5
    paths = evaluation.plot(tmp_path)
    assert all(p.is_file() for p in paths)
    assert np.isclose(m["purity"], 0.6)
