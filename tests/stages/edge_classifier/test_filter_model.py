import lightning
import pytest
import torch

from stages.edge_classifier.filter_model import FilterNetwork, FilterNetworkConfig
from stages.edge_classifier.gnn_model import EdgeClassifierModule, InteractionNetwork


def test_filter_scores_each_edge_from_its_own_hits_only():
    torch.manual_seed(0)
    model = FilterNetwork(FilterNetworkConfig(node_dim=3, edge_dim=2, hidden=16, nb_layer=3)).eval()
    x, edge_index, edge_attr = torch.randn(6, 3), torch.tensor([[0, 1, 2, 4], [1, 2, 3, 5]]), torch.randn(4, 2)
    logits = model(x, edge_index, edge_attr)
    assert logits.shape == (4,) and torch.isfinite(logits).all()
    moved = x.clone()
    moved[3] += 5.0  # only edge 2-3 touches hit 3: no message passing
    after = model(moved, edge_index, edge_attr)
    assert torch.equal(logits[[0, 1, 3]], after[[0, 1, 3]]) and not torch.allclose(logits[2], after[2])
    assert torch.allclose(model(x, edge_index[:, 1:3], edge_attr[1:3]), logits[1:3])  # any subset scores alike
    assert FilterNetwork(FilterNetworkConfig(node_dim=3, hidden=8, nb_layer=1))(x, edge_index).shape == (4,)


def test_filter_config_and_input_errors_name_the_field():
    with pytest.raises(ValueError, match="nb_layer"):
        FilterNetworkConfig(node_dim=3, nb_layer=0)
    with pytest.raises(ValueError, match="hidden_activation"):
        FilterNetworkConfig(node_dim=3, hidden_activation="Swish")
    model = FilterNetwork(FilterNetworkConfig(node_dim=3, edge_dim=2))
    with pytest.raises(ValueError, match="edge_dim"):
        model(torch.randn(4, 3), torch.tensor([[0], [1]]), torch.randn(1, 3))


def test_module_holds_either_network_and_old_checkpoints_load(tmp_path):
    gnn = EdgeClassifierModule(model=dict(node_dim=3, hidden=8, n_graph_iters=1), optim=dict(lr=1e-3))
    flt = EdgeClassifierModule(model=dict(node_dim=3, hidden=8), optim=dict(lr=1e-3), architecture="Filter")
    assert isinstance(gnn.model, InteractionNetwork) and isinstance(flt.model, FilterNetwork)
    with pytest.raises(ValueError, match="architecture"):
        EdgeClassifierModule(model=dict(node_dim=3), optim={}, architecture="Transformer")
    # a checkpoint written before `architecture` existed: its hyperparameters lack the key
    old = {
        "state_dict": gnn.state_dict(),
        "pytorch-lightning_version": lightning.__version__,
        "hyper_parameters": {
            "model": dict(node_dim=3, hidden=8, n_graph_iters=1),
            "optim": dict(lr=1e-3),
            "edge_cut": 0.5,
        },
    }
    torch.save(old, tmp_path / "old.ckpt")
    loaded = EdgeClassifierModule.load_from_checkpoint(tmp_path / "old.ckpt", map_location="cpu")
    assert isinstance(loaded.model, InteractionNetwork)
    x, edge_index = torch.randn(4, 3), torch.tensor([[0, 1], [1, 2]])
    assert torch.equal(loaded.eval()(x, edge_index), gnn.eval()(x, edge_index))
