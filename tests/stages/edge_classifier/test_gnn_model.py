import pytest
import torch

from stages.edge_classifier.gnn_model import (
    EdgeClassifierModule,
    GNNConfig,
    InteractionNetwork,
    connected_hits,
    weighted_bce,
)


def small_config(**overrides) -> GNNConfig:
    values = dict(node_dim=3, edge_dim=2, hidden=16, n_graph_iters=3, nb_node_layer=2, nb_edge_layer=2)
    return GNNConfig(**{**values, **overrides})


def chain_graph():
    """Two chains of 4 hits (0-1-2-3 and 4-5-6-7) plus two hits 8, 9 joined by one isolated edge."""
    edge_index = torch.tensor([[0, 1, 2, 4, 5, 6, 8], [1, 2, 3, 5, 6, 7, 9]])
    x = torch.randn(10, 3)
    edge_attr = torch.randn(7, 2)
    return x, edge_index, edge_attr


def test_forward_gives_one_logit_per_edge():
    torch.manual_seed(0)
    x, edge_index, edge_attr = chain_graph()
    for overrides in ({}, {"recurrent": True}, {"aggregation": "mean", "layernorm": False}, {"edge_dim": 0}):
        model = InteractionNetwork(small_config(**overrides))
        logits = model(x, edge_index, edge_attr if overrides.get("edge_dim", 2) else None)
        assert logits.shape == (7,)
        assert torch.isfinite(logits).all()


def test_wrong_feature_width_is_an_error_that_names_the_config_field():
    model = InteractionNetwork(small_config())
    x, edge_index, edge_attr = chain_graph()
    with pytest.raises(ValueError, match="node_dim"):
        model(torch.randn(10, 4), edge_index, edge_attr)
    with pytest.raises(ValueError, match="edge_dim"):
        model(x, edge_index, torch.randn(7, 5))


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="hidden"):
        GNNConfig(node_dim=3, hidden=0)
    with pytest.raises(ValueError, match="aggregation"):
        GNNConfig(node_dim=3, aggregation="median")


def test_message_passing_uses_the_neighbourhood():
    """An edge's output changes when a hit two edges away changes, and an edge of another component
    does not: information flows along the graph and only along it."""
    torch.manual_seed(0)
    model = InteractionNetwork(small_config()).eval()
    x, edge_index, edge_attr = chain_graph()
    before = model(x, edge_index, edge_attr)
    moved = x.clone()
    moved[3] += 5.0  # last hit of the first chain
    after = model(moved, edge_index, edge_attr)
    assert not torch.allclose(before[0], after[0])  # edge 0-1 sees hit 3 through 1-2 and 2-3
    assert torch.allclose(before[3:], after[3:])  # other chain and the isolated edge are untouched
    # adding an edge next to the isolated one changes its score
    grown = torch.cat([edge_index, torch.tensor([[9], [7]])], dim=1)
    grown_out = model(x, grown, torch.cat([edge_attr, torch.randn(1, 2)]))
    assert not torch.allclose(before[6], grown_out[6])


def test_hits_without_edges_change_no_score():
    """connected_hits drops hits without edges before the node MLPs: inserting such hits (noise) anywhere
    in the hit list, with any features, leaves every edge score as it was."""
    torch.manual_seed(0)
    x, edge_index, edge_attr = chain_graph()
    for overrides in ({}, {"aggregation": "mean"}, {"recurrent": True}):
        model = InteractionNetwork(small_config(**overrides)).eval()
        before = model(x, edge_index, edge_attr)
        position = torch.tensor([0, 1, 2, 5, 6, 7, 8, 11, 12, 13])  # where the 10 hits go among 14
        padded = torch.randn(14, 3) * 100.0  # 4 isolated hits at 3, 4, 9, 10
        padded[position] = x
        after = model(padded, position[edge_index], edge_attr)
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)


def test_connected_hits_keeps_the_hits_with_edges_in_order():
    x = torch.arange(6.0)[:, None]  # [6, 1]
    kept, edges = connected_hits(x, torch.tensor([[4, 1], [1, 5]]))
    assert kept.flatten().tolist() == [1.0, 4.0, 5.0]
    assert edges.tolist() == [[1, 0], [0, 2]]
    whole, whole_edges = connected_hits(x[:2], torch.tensor([[0], [1]]))  # every hit has an edge
    assert torch.equal(whole, x[:2]) and whole_edges.tolist() == [[0], [1]]


def test_weighted_bce_follows_acorn_weights():
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0])
    edge_y = torch.tensor([True, False, True, True])
    weights = torch.tensor([1.0, 1.0, 0.0, -2.0])  # edge 2 left out, edge 3 trained as a fake, weight 2
    loss = weighted_bce(logits, edge_y, weights)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = (
        bce(logits[0], torch.tensor(1.0)) + bce(logits[1], torch.tensor(0.0)) + 2 * bce(logits[3], torch.tensor(0.0))
    ) / 3
    assert torch.isclose(loss, expected)


def test_a_few_training_steps_lower_the_loss():
    """Hits on two straight lines, true edges along each line, fakes across: learnable in a few steps."""
    torch.manual_seed(0)
    from torch_geometric.data import Data

    r = torch.arange(1.0, 7.0)
    x = torch.cat(
        [torch.stack([r, torch.zeros(6), r * 0.5], 1), torch.stack([r, torch.ones(6), -r * 0.5], 1)]
    )  # [12, 3]
    along = torch.tensor([[i, i + 1] for i in range(5)] + [[6 + i, 7 + i] for i in range(5)]).T
    across = torch.tensor([[i, 7 + i] for i in range(5)] + [[6 + i, i + 1] for i in range(5)]).T
    edge_index = torch.cat([along, across], dim=1)
    batch = Data(
        x=x,
        edge_index=edge_index,
        edge_attr=torch.zeros(20, 0),
        edge_y=torch.arange(20) < 10,
        edge_weights=torch.ones(20),
    )
    module = EdgeClassifierModule(model=dict(node_dim=3, hidden=16, n_graph_iters=2), optim=dict(lr=1e-2))
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)

    def loss() -> torch.Tensor:
        return weighted_bce(module(batch.x, batch.edge_index, batch.edge_attr), batch.edge_y, batch.edge_weights)

    first = loss().item()
    for _ in range(30):
        optimizer.zero_grad()
        value = loss()
        value.backward()
        optimizer.step()
    assert loss().item() < 0.5 * first
