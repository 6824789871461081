import math

import pytest
import torch
from torch_geometric.data import Data

from stages.features import check_feature_config, edge_feature_matrix, node_feature_matrix
from tb_plugin.event_store import MissingFieldError


def event():
    return Data(
        hit_r=torch.tensor([30.0, 70.0, 70.0]),
        hit_phi=torch.tensor([3.1, -3.1, 0.0]),
        hit_z=torch.tensor([1.0, 3.0, 5.0]),
        hit_eta=torch.tensor([0.1, 0.2, 0.3]),
        hit_tb_emb=torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]]),
        num_nodes=3,
    )


def test_node_features_concatenate_in_order_and_scale():
    x = node_feature_matrix(event(), ["hit_r", "hit_tb_emb", "hit_z"], [10.0, 2.0, 1.0], "e.pyg")
    assert x.shape == (3, 4)
    assert x[:, 0].tolist() == [3.0, 7.0, 7.0]
    assert x[1, 1:3].tolist() == [0.5, 0.5]
    assert x[:, 3].tolist() == [1.0, 3.0, 5.0]


def test_missing_node_feature_names_feature_and_file():
    with pytest.raises(MissingFieldError, match=r"event000000001\.pyg: the event has no field 'hit_cell_count'"):
        node_feature_matrix(event(), ["hit_r", "hit_cell_count"], None, "event000000001.pyg")


def test_edge_features():
    edges = torch.tensor([[0, 1], [1, 2]])
    f = edge_feature_matrix(event(), edges, ["dr", "dphi", "dz", "deta", "phislope", "rphislope", "tb_sim"], "e")
    dphi = 2 * math.pi - 6.2  # wrapped across +-pi
    assert f[0, 0] == pytest.approx(40.0) and f[0, 1] == pytest.approx(dphi, abs=1e-5)
    assert f[0, 2] == pytest.approx(2.0) and f[0, 3] == pytest.approx(0.1)
    assert f[0, 4] == pytest.approx(dphi / 40.0, abs=1e-6) and f[0, 5] == pytest.approx(dphi / 40.0 * 50.0, abs=1e-4)
    assert f[1, 4] == 0.0  # same radius: no slope
    assert f[0, 6] == pytest.approx(1 / math.sqrt(2)) and f[1, 6] == pytest.approx(1 / math.sqrt(2))


def test_tb_sim_without_embedding_is_a_clear_error():
    data = event()
    del data.hit_tb_emb
    with pytest.raises(MissingFieldError, match="'tb_sim' needs the field 'hit_tb_emb'"):
        edge_feature_matrix(data, torch.tensor([[0], [1]]), ["tb_sim"], "e")


@pytest.mark.parametrize(
    "args, pattern",
    [
        (([], None, []), "must list at least one"),
        ((["hit_r", "hit_z"], [1.0], []), "'node_scales' has 1 entries but 'node_features' has 2"),
        ((["hit_r"], [0.0], []), "finite non-zero"),
        ((["hit_r"], None, ["dR"]), r"unknown feature\(s\) \['dR'\]"),
    ],
)
def test_config_checks(args, pattern):
    with pytest.raises(ValueError, match=pattern):
        check_feature_config(*args)
