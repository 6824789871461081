"""The Interaction Network edge classifier (ACORN's InteractionGNN), nanoGPT style.

Built up from the smallest piece: the config, one message-passing round (its MLPs from mlp.py), the full
model, the weighted loss, and at the end a thin LightningModule that owns the optimiser. Inputs are
one graph (or a PyG batch of graphs, which is one graph with offset indices):

    x           [N, F_node]   scaled node features
    edge_index  [2, E]        src -> dst (inner to outer hit)
    edge_attr   [E, F_edge]   per-edge features (F_edge may be 0)

and the output is one logit per edge, [E]. Every round updates the edges from their two hits, then
the hits from the sum (or mean / max) of the messages on their incoming and on their outgoing edges,
kept apart so a hit can tell the hits before it from those after it. Both updates are residual, so
eight rounds train as easily as one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import lightning
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torch_geometric.utils import scatter

from stages.edge_classifier.filter_model import FilterNetwork, FilterNetworkConfig
from stages.edge_classifier.mlp import ACTIVATIONS, make_mlp
from stages.edge_classifier.module_embedding import ModuleVectors, ModuleVectorsConfig
from tb_plugin.model import warmup_linear_decay
from tb_plugin.training import adamw

AGGREGATIONS = ("sum", "mean", "max")


# ----------------------------------------------------------------------------------------------------
# Config


@dataclass
class GNNConfig:
    node_dim: int  # F_node: scaled node features per hit
    edge_dim: int = 0  # F_edge: extra per-edge features (dr, dphi, tb_sim, ...)
    hidden: int = 64
    n_graph_iters: int = 8
    nb_node_layer: int = 2  # layers of every node MLP
    nb_edge_layer: int = 2  # layers of every edge MLP
    layernorm: bool = True
    hidden_activation: str = "SiLU"
    aggregation: str = "sum"  # of the messages into a hit: sum (ACORN), mean or max
    dropout: float = 0.0
    recurrent: bool = False  # one set of message-passing weights shared by all rounds
    checkpointing: bool = False  # recompute each round in the backward pass: memory for time

    def __post_init__(self) -> None:
        for name in ("node_dim", "hidden", "n_graph_iters", "nb_node_layer", "nb_edge_layer"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GNNConfig.{name} must be a positive integer, got {value!r}")
        if isinstance(self.edge_dim, bool) or not isinstance(self.edge_dim, int) or self.edge_dim < 0:
            raise ValueError(f"GNNConfig.edge_dim must be an integer >= 0, got {self.edge_dim!r}")
        if self.hidden_activation not in ACTIVATIONS:
            raise ValueError(
                f"GNNConfig.hidden_activation must be one of {', '.join(ACTIVATIONS)}, got {self.hidden_activation!r}"
            )
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(
                f"GNNConfig.aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}"
            )
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"GNNConfig.dropout must be in [0, 1), got {self.dropout!r}")


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0  # linear warm-up, then linear decay to 0 at the last step (tb_plugin.model)

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"OptimConfig.lr must be > 0, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"OptimConfig.weight_decay must be >= 0, got {self.weight_decay!r}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"OptimConfig.warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")


# ----------------------------------------------------------------------------------------------------
# Pieces


class InteractionLayer(nn.Module):
    """One round of message passing: edges from [e, x_src, x_dst], then hits from [x, in, out]."""

    def __init__(self, config: GNNConfig) -> None:
        super().__init__()
        h = config.hidden
        self.aggregation = config.aggregation
        self.edge_net = make_mlp(3 * h, h, h, config.nb_edge_layer, config)
        self.node_net = make_mlp(3 * h, h, h, config.nb_node_layer, config)

    def forward(self, x: Tensor, e: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
        src, dst = edge_index  # [E] each
        e = e + self.edge_net(torch.cat([e, x[src], x[dst]], dim=1))  # [E, h]
        n = x.shape[0]
        incoming = scatter(e, dst, dim=0, dim_size=n, reduce=self.aggregation)  # [N, h] from the hits before
        outgoing = scatter(e, src, dim=0, dim_size=n, reduce=self.aggregation)  # [N, h] from the hits after
        x = x + self.node_net(torch.cat([x, incoming, outgoing], dim=1))  # [N, h]
        return x, e


# ----------------------------------------------------------------------------------------------------
# The model


@torch.compiler.disable  # data-dependent sizes: run eagerly, so a compiled network stays one graph after it
def connected_hits(x: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
    """The hits that touch an edge, and the edges renumbered to them. A hit without edges never sends or
    receives a message and every MLP works row by row, so dropping it leaves every edge score as it was;
    but each node MLP would still run on it. After the demo's filter about 40 % of the hits (noise, and
    hits whose edges were cut) have no edge, so this saves about that share of the node-side work."""
    used = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)  # [N]
    used[edge_index.reshape(-1)] = True
    if bool(used.all()):
        return x, edge_index
    new_index = torch.cumsum(used, dim=0) - 1  # [N] position of each kept hit
    return x[used], new_index[edge_index]  # [N', F], [2, E]


class InteractionNetwork(nn.Module):
    def __init__(self, config: GNNConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden
        self.node_encoder = make_mlp(config.node_dim, h, h, config.nb_node_layer, config)
        self.edge_encoder = make_mlp(2 * h + config.edge_dim, h, h, config.nb_edge_layer, config)
        n_layers = 1 if config.recurrent else config.n_graph_iters
        self.layers = nn.ModuleList(InteractionLayer(config) for _ in range(n_layers))
        self.classifier = make_mlp(3 * h, h, 1, config.nb_edge_layer, config, output_activation=False)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None = None) -> Tensor:
        """Edge logits [E]."""
        if x.dim() != 2 or x.shape[1] != self.config.node_dim:
            raise ValueError(f"x must be [N, {self.config.node_dim}] (GNNConfig.node_dim), got {list(x.shape)}")
        E = edge_index.shape[1]
        if edge_attr is None:
            edge_attr = x.new_zeros((E, 0))
        if edge_attr.shape != (E, self.config.edge_dim):
            raise ValueError(
                f"edge_attr must be [{E}, {self.config.edge_dim}] (GNNConfig.edge_dim), got {list(edge_attr.shape)}"
            )
        x, edge_index = connected_hits(x, edge_index)  # [N', F], [2, E]: the hits that touch an edge
        src, dst = edge_index  # [E] each
        x = self.node_encoder(x)  # [N', h]
        e = self.edge_encoder(torch.cat([x[src], x[dst], edge_attr], dim=1))  # [E, h]
        for i in range(self.config.n_graph_iters):
            layer = self.layers[0 if self.config.recurrent else i]
            if self.config.checkpointing and self.training and torch.is_grad_enabled():
                x, e = checkpoint(layer, x, e, edge_index, use_reentrant=False)
            else:
                x, e = layer(x, e, edge_index)
        return self.classifier(torch.cat([e, x[src], x[dst]], dim=1)).squeeze(-1)  # [E]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


# ----------------------------------------------------------------------------------------------------
# Training


def weighted_bce(logits: Tensor, edge_y: Tensor, weights: Tensor) -> Tensor:
    """ACORN's edge loss: BCE with per-edge weights, summed and divided by the edges that count.

    weight > 0 trains the edge with its own label, weight 0 leaves it out, weight < 0 trains it as a
    fake with |weight| (ACORN's way to push down true edges of particles that are not wanted).
    """
    negative = ((~edge_y) & (weights != 0)) | (weights < 0)  # [E]
    positive = edge_y & (weights > 0)  # [E]
    target = positive.float()  # [E]
    counted = positive | negative
    losses = F.binary_cross_entropy_with_logits(logits.float(), target, weight=weights.abs().float(), reduction="none")
    return (losses * counted).sum() / counted.sum().clamp(min=1)


def edge_metrics(logits: Tensor, edge_y: Tensor, edge_cut: float) -> dict[str, Tensor]:
    """Efficiency and purity of all true edges at the score cut: what a training log should show."""
    kept = torch.sigmoid(logits) > edge_cut  # [E]
    tp = (kept & edge_y).sum().float()
    return {"eff": tp / edge_y.sum().clamp(min=1), "pur": tp / kept.sum().clamp(min=1)}


ARCHITECTURES = ("InteractionNetwork", "Filter")


def build_network(architecture: str, model: dict) -> nn.Module:
    """The edge network named by `architecture`, from its config dict."""
    if architecture == "InteractionNetwork":
        return InteractionNetwork(GNNConfig(**model))
    if architecture == "Filter":
        return FilterNetwork(FilterNetworkConfig(**model))
    raise ValueError(
        f"EdgeClassifierModule.architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}"
    )


class EdgeClassifierModule(lightning.LightningModule):
    """Loss, metrics and optimiser around an edge network: the InteractionNetwork or the Filter MLP
    (`architecture`). Hyperparameters are plain dicts, so a checkpoint loads without this file's
    dataclasses being importable under the same names; `architecture` defaults to the GNN, so
    checkpoints written before the filter existed still load, and `module_embedding` defaults to None,
    so checkpoints written before it existed do too.

    `module_embedding`: None, or {modules: M, dim: D, similarity: bool}: the network is then wrapped in
    module_embedding.ModuleVectors (a trainable per-module vector looked up by each hit's module index),
    and `model` is the network's config with node_dim and edge_dim already counting its columns.

    A batch is a PyG Data (or Batch) with x, edge_index, edge_attr, edge_y (bool) and edge_weights, and
    hit_module [N] (dense module index) when the module has the embedding.
    `edge_cut` only sets the cut of the logged eff / pur figures.
    """

    def __init__(
        self,
        model: dict,
        optim: dict,
        edge_cut: float = 0.5,
        architecture: str = "InteractionNetwork",
        module_embedding: dict | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        network = build_network(architecture, model)
        self.vectors = None if module_embedding is None else ModuleVectorsConfig(**module_embedding)
        self.model = network if self.vectors is None else ModuleVectors(network, self.vectors)
        self.optim = OptimConfig(**optim)
        self.edge_cut = edge_cut

    def data_widths(self) -> tuple[int, int]:
        """(node, edge) feature columns the events must give: the network's input widths less the
        columns the module embedding adds. Read from the hyperparameters, so it also holds when
        `model` has been compiled."""
        model = self.hparams["model"]
        extra_node, extra_edge = (0, 0) if self.vectors is None else self.vectors.widths()
        return model["node_dim"] - extra_node, model.get("edge_dim", 0) - extra_edge

    def forward(
        self, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None = None, hit_module: Tensor | None = None
    ) -> Tensor:
        """Edge logits [E]; hit_module [N] is needed (and only read) when the module has the embedding."""
        if self.vectors is None:
            return self.model(x, edge_index, edge_attr)
        if hit_module is None:
            raise ValueError("this edge classifier has a module embedding: pass hit_module [N] (hit_module_index)")
        return self.model(x, edge_index, edge_attr, hit_module)

    def step(self, batch, split: str) -> Tensor:
        """The one step of training, validation and test: loss, then logging."""
        hit_module = None if self.vectors is None else batch.hit_module
        logits = self(batch.x, batch.edge_index, batch.edge_attr, hit_module)  # [E]
        edge_y = batch.edge_y.bool()
        loss = weighted_bce(logits, edge_y, batch.edge_weights)
        sync = split != "train"  # epoch-level val/test figures must be averaged over DDP ranks
        n_graphs = int(getattr(batch, "num_graphs", 1))
        self.log(f"{split}/loss", loss, prog_bar=True, batch_size=n_graphs, sync_dist=sync)
        with torch.no_grad():
            for name, value in edge_metrics(logits.detach(), edge_y, self.edge_cut).items():
                self.log(f"{split}/{name}", value, prog_bar=split == "val", batch_size=n_graphs, sync_dist=sync)
        return loss

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self.step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> Tensor:
        return self.step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> Tensor:
        return self.step(batch, "test")

    def configure_optimizers(self):
        o = self.optim
        # The module embedding (when there is one) is decayed like every other parameter: weight_decay
        # (default 0) is one key for the whole network. With weight_decay > 0, AdamW's decoupled decay
        # shrinks every row each step, also the rows of modules no training event hits (their gradient
        # is 0), and pulls the finetune arm's rows away from the pretrained table.
        optimizer = adamw(self, self.model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        total = self.trainer.estimated_stepping_batches
        warmup = int(min(o.warmup_steps, total)) if math.isfinite(total) else o.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_linear_decay(step, max(warmup, 1), total)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
