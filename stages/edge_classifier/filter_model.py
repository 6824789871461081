"""The edge filter (ACORN's Filter), nanoGPT style: an MLP that scores each edge on its own.

A filter runs before the GNN to thin a large candidate graph cheaply: it sees only the two hits of an
edge and the edge's own features, never the neighbourhood, so edges can be scored in any order and in
chunks of any size (a 2 M-edge pile-up-200 graph is scored a million edges at a time). Inputs:

    x           [N, F_node]   scaled node features
    edge_index  [2, E]        src -> dst (inner to outer hit)
    edge_attr   [E, F_edge]   per-edge features (F_edge may be 0)

and the output is one logit per edge, [E]. The MLP builder is mlp.py's and the loss gnn_model's (weighted_bce), so
the two edge classifiers are built and trained the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from stages.edge_classifier.mlp import ACTIVATIONS, make_mlp


@dataclass
class FilterNetworkConfig:
    node_dim: int  # F_node: scaled node features per hit
    edge_dim: int = 0  # F_edge: extra per-edge features (dr, dphi, tb_sim, ...)
    hidden: int = 128  # ACORN's Filter default width
    nb_layer: int = 3  # layers of the MLP, the output layer included
    layernorm: bool = True
    hidden_activation: str = "SiLU"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("node_dim", "hidden", "nb_layer"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FilterNetworkConfig.{name} must be a positive integer, got {value!r}")
        if isinstance(self.edge_dim, bool) or not isinstance(self.edge_dim, int) or self.edge_dim < 0:
            raise ValueError(f"FilterNetworkConfig.edge_dim must be an integer >= 0, got {self.edge_dim!r}")
        if self.hidden_activation not in ACTIVATIONS:
            raise ValueError(
                f"FilterNetworkConfig.hidden_activation must be one of {', '.join(ACTIVATIONS)}, got {self.hidden_activation!r}"
            )
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"FilterNetworkConfig.dropout must be in [0, 1), got {self.dropout!r}")


class FilterNetwork(nn.Module):
    """[x_src, x_dst, edge_attr] -> MLP -> one logit per edge."""

    def __init__(self, config: FilterNetworkConfig) -> None:
        super().__init__()
        self.config = config
        d_in = 2 * config.node_dim + config.edge_dim
        self.net = make_mlp(d_in, config.hidden, 1, config.nb_layer, config, output_activation=False)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None = None) -> Tensor:
        """Edge logits [E]."""
        if x.dim() != 2 or x.shape[1] != self.config.node_dim:
            raise ValueError(
                f"x must be [N, {self.config.node_dim}] (FilterNetworkConfig.node_dim), got {list(x.shape)}"
            )
        E = edge_index.shape[1]
        if edge_attr is None:
            edge_attr = x.new_zeros((E, 0))
        if edge_attr.shape != (E, self.config.edge_dim):
            raise ValueError(
                f"edge_attr must be [{E}, {self.config.edge_dim}] (FilterNetworkConfig.edge_dim), got {list(edge_attr.shape)}"
            )
        src, dst = edge_index  # [E] each
        return self.net(torch.cat([x[src], x[dst], edge_attr], dim=1)).squeeze(-1)  # [E, 2F_node + F_edge] -> [E]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
