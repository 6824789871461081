"""The MLP every edge network is built from (the Interaction GNN's encoders and updates, the filter):
one builder with ACORN's layer order, shared so that the two networks cannot differ in it.
"""

from __future__ import annotations

from typing import Protocol

from torch import nn

ACTIVATIONS = {"SiLU": nn.SiLU, "ReLU": nn.ReLU, "GELU": nn.GELU, "Tanh": nn.Tanh, "LeakyReLU": nn.LeakyReLU}


class MLPStyle(Protocol):
    """What make_mlp reads from a model config (GNNConfig, filter_model.FilterNetworkConfig)."""

    layernorm: bool
    hidden_activation: str
    dropout: float


def make_mlp(
    d_in: int, d_hidden: int, d_out: int, n_layers: int, config: MLPStyle, output_activation: bool = True
) -> nn.Sequential:
    """Linear [-> LayerNorm] -> activation [-> dropout], n_layers times; the last layer bare when
    output_activation is False (the classifier head, whose output is a logit)."""
    layers: list[nn.Module] = []
    sizes = [d_in] + [d_hidden] * (n_layers - 1) + [d_out]
    for i in range(n_layers):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i == n_layers - 1 and not output_activation:
            break
        if config.layernorm:
            layers.append(nn.LayerNorm(sizes[i + 1]))
        layers.append(ACTIVATIONS[config.hidden_activation]())
        if config.dropout > 0:
            layers.append(nn.Dropout(config.dropout))
    return nn.Sequential(*layers)
