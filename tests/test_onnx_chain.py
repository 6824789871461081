"""benchmarks/onnx_chain.py: the onnxruntime chain's numpy features equal the stages' own, and at --tiny size
(pile-up 2, two test events) its edge scores and track labels equal the PyTorch chain's, with every
stage timed in both."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch
from torch_geometric.data import Data

pytest.importorskip("onnxruntime")

from stages.edge_classifier.module_embedding import MODULE_FIELD
from stages.features import EDGE_FEATURES, edge_feature_matrix, node_feature_matrix
from stages.model_exports import EDGE_FEATURE_DEFINITIONS

onnx_chain = importlib.import_module("benchmarks.onnx_chain")


def random_hits(n: int = 40, seed: int = 0) -> Data:
    """Hits with every field the features read; a few share a radius, so phislope meets its dr = 0 case."""
    g = torch.Generator().manual_seed(seed)
    r = torch.rand(n, generator=g) * 1000.0
    r[:5] = 300.0
    return Data(
        hit_r=r,
        hit_phi=(torch.rand(n, generator=g) * 2 - 1) * torch.pi,
        hit_z=torch.randn(n, generator=g) * 500.0,
        hit_eta=torch.randn(n, generator=g),
        hit_tb_emb=torch.randn(n, 4, generator=g),
        num_nodes=n,
    )


def test_every_edge_feature_has_a_numpy_definition():
    assert set(onnx_chain.EDGE_FEATURES) == set(EDGE_FEATURES) == set(EDGE_FEATURE_DEFINITIONS)
    assert onnx_chain.MODULE_FIELD == MODULE_FIELD  # what the sidecar's hit_module input reads


def test_numpy_features_equal_the_stages_features():
    data = random_hits()
    edge_index = torch.randint(0, data.num_nodes, (2, 120), generator=torch.Generator().manual_seed(1))
    edge_index[:, :4] = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])  # same-radius pairs
    hits = onnx_chain.event_arrays(Data(**{k: data[k] for k in data.keys()}, edge_index=edge_index))
    scales = [100.0, 0.1, 100.0, 0.1, 0.01, 1.0, 1.0]
    layout = [{"name": name, "scale": s} for name, s in zip(EDGE_FEATURES, scales)]
    expected = edge_feature_matrix(data, edge_index, list(EDGE_FEATURES), "test") / torch.tensor(scales)
    got = onnx_chain.edge_matrix(hits, hits["edge_index"], layout)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-6)

    nodes = [
        {"field": "hit_r", "scale": 1000.0},
        {"field": "hit_tb_emb", "scale": 2.0},
        {"field": "hit_z", "scale": 1.0},
    ]
    expected = node_feature_matrix(data, ["hit_r", "hit_tb_emb", "hit_z"], [1000.0, 2.0, 1.0], "test")
    got = onnx_chain.node_matrix(hits, nodes)
    assert got.shape == (data.num_nodes, 6)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-6)


def test_scores_of_two_different_graphs_are_compared_on_their_common_edges():
    a = np.array([[0, 1, 2, 3], [1, 2, 3, 4]])
    b = np.array([[1, 3, 5], [2, 4, 6]])  # shares (1, 2) and (3, 4) with a, in other positions
    diff = onnx_chain.common_diff(a, np.array([0.1, 0.2, 0.3, 0.4]), b, np.array([0.25, 0.4, 0.9]), n_hits=7)
    assert diff == pytest.approx(0.05)


def test_the_tiny_chain_scores_and_builds_tracks_like_pytorch(tmp_path, capfd):
    out = tmp_path / "onnx_chain.json"
    assert onnx_chain.main(["--tiny", "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())

    check = result["check"]
    assert check["max_abs_diff"] <= 1e-4
    assert check["scores_within_tolerance"] and check["passed"]
    assert check["map_identical_fraction"] == check["filter_kept_identical_fraction"] == 1.0
    assert check["identical_tracks_fraction"] == 1.0
    events = result["events"]
    assert len(events) == 2
    assert sum(e["tracks"] for e in events) > 0  # labels that could differ, not all -1
    for event in events:
        assert event["tracks_identical"] and event["filter_kept_identical"] and event["map_identical"]
        assert event["filter_max_abs_diff"] <= 1e-4 and event["gnn_max_abs_diff"] <= 1e-4
        for chain in ("torch", "onnx"):
            assert list(event["seconds"][chain]) == list(onnx_chain.STAGES)
            assert all(s >= 0 for s in event["seconds"][chain].values())
            assert event["total_seconds"][chain] > 0
    for chain in ("torch", "onnx"):
        assert list(result["mean_seconds"][chain]) == list(onnx_chain.STAGES)
        assert result["mean_total_seconds"][chain] > 0
    assert set(result["torch_over_onnx"]) == {*onnx_chain.STAGES, "total"}
    assert result["machine"]["threads"] == 2
    assert result["exports"]["filter"]["export_check_max_abs_diff"] <= 1e-4
    assert "| **total** |" in capfd.readouterr().out
