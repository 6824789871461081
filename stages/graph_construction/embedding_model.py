"""The metric-learning model: an MLP that maps each hit's node features to a point on the unit
sphere in `emb_dim` dimensions, trained so that consecutive hits of a track land close together and
other pairs at least `margin` apart; and the radius + kNN neighbour search that turns the embedding
into a graph.

Neighbour search needs no compiled PyG extension: scipy's cKDTree on CPU, a blocked torch.cdist +
topk on GPU (blocks of queries, so the distance matrix never holds more than `block_elements` entries).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import nn
from torch_geometric.data import Data

from stages.graph_construction.truth import graph_truth
from stages.graph_metrics import graph_counts
from tb_plugin.training import adamw

ACTIVATIONS = {"Tanh": nn.Tanh, "ReLU": nn.ReLU, "SiLU": nn.SiLU, "GELU": nn.GELU}


# ------------------------------------------------------------------------------------- neighbours


def radius_knn_cpu(points: np.ndarray, r: float, k: int, query: np.ndarray | None = None) -> np.ndarray:
    """int64 [2, E]: for each query point i (default: all), edges i -> j to its at most k nearest
    other points closer than r."""
    points = np.ascontiguousarray(points, dtype=np.float64)
    n = len(points)
    query = np.arange(n) if query is None else np.asarray(query, dtype=np.int64)
    if n < 2 or k < 1 or query.size == 0:
        return np.zeros((2, 0), dtype=np.int64)
    kk = min(k + 1, n)  # +1: the point itself comes back at distance 0
    _, idx = cKDTree(points).query(points[query], k=kk, distance_upper_bound=r)
    idx = idx.reshape(query.size, kk)  # [Q, k+1]; missing neighbours are n
    valid = (idx < n) & (idx != query[:, None])
    valid &= np.cumsum(valid, axis=1) <= k  # self was absent (duplicate points): keep k
    src = np.broadcast_to(query[:, None], idx.shape)[valid]
    return np.stack([src, idx[valid]]).astype(np.int64)


def radius_knn_torch(
    points: torch.Tensor, r: float, k: int, query: torch.Tensor | None = None, block_elements: int = 1 << 26
) -> torch.Tensor:
    """int64 [2, E] on points.device: as radius_knn_cpu, by blocked cdist + topk (for GPUs)."""
    n = points.shape[0]
    query = torch.arange(n, device=points.device) if query is None else query.to(points.device)
    if n < 2 or k < 1 or query.numel() == 0:
        return torch.zeros((2, 0), dtype=torch.long, device=points.device)
    kk = min(k + 1, n)
    block = max(1, block_elements // n)
    edges = []
    for first in range(0, query.numel(), block):
        rows = query[first : first + block]  # [B]
        dist, idx = torch.topk(torch.cdist(points[rows], points), kk, dim=1, largest=False)  # [B, k+1]
        src = rows[:, None].expand_as(idx)
        valid = (dist < r) & (idx != src)
        valid &= torch.cumsum(valid.long(), dim=1) <= k
        edges.append(torch.stack([src[valid], idx[valid]]))
    return torch.cat(edges, dim=1)


def edge_lengths(points: np.ndarray | torch.Tensor, edges: np.ndarray | torch.Tensor) -> np.ndarray:
    """float64 [E]: the Euclidean distance between the two points of each edge [2, E], in float64 from
    the points' float32 values, the arithmetic of radius_knn_cpu's cKDTree: a cut `length < r` then
    selects the edges its search at radius r finds (up to rounding at the boundary itself)."""
    if torch.is_tensor(points):
        points = points.detach().float().cpu().numpy()
    if torch.is_tensor(edges):
        edges = edges.detach().cpu().numpy()
    p = np.asarray(points, dtype=np.float32).astype(np.float64)  # [N, D]
    e = np.asarray(edges, dtype=np.int64).reshape(2, -1)  # [2, E]
    return np.sqrt(((p[e[0]] - p[e[1]]) ** 2).sum(axis=1))  # [E]


def radius_knn(points: torch.Tensor, r: float, k: int, query: torch.Tensor | None = None) -> torch.Tensor:
    """int64 [2, E] on points.device: cKDTree for CPU tensors, blocked cdist + topk on an accelerator."""
    points = points.detach()
    if points.device.type == "cpu":
        q = None if query is None else query.numpy()
        return torch.from_numpy(radius_knn_cpu(points.float().numpy(), r, k, q))
    return radius_knn_torch(points, r, k, query)


# ------------------------------------------------------------------------------------- the model


def make_mlp(in_dim: int, hidden: int, nb_layer: int, out_dim: int, activation: str, layernorm: bool) -> nn.Sequential:
    """nb_layer hidden layers (Linear, LayerNorm?, activation), then a linear output layer."""
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(nb_layer):
        layers.append(nn.Linear(width, hidden))
        if layernorm:
            layers.append(nn.LayerNorm(hidden))
        layers.append(ACTIVATIONS[activation]())
        width = hidden
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


@dataclass
class EmbeddingSettings:
    """The hyperparameters of the module (saved in its checkpoint)."""

    in_dim: int  # columns of the node-feature matrix (an [N, D] field counts D), measured on the first training event
    node_features: list[str] | None = (
        None  # the fields behind in_dim, named when inference finds other columns (None: older checkpoints)
    )
    emb_hidden: int = 256
    nb_layer: int = 3
    emb_dim: int = 12
    activation: str = "Tanh"
    layernorm: bool = True
    margin: float = 0.1
    r_train: float = 0.1
    knn: int = 50
    randomisation: float = 1.0
    points_per_batch: int = 100_000
    positive_weight: float = 1.0
    r_val: float = 0.1
    knn_val: int = 100
    val_efficiency: float = 0.95
    lr: float = 1e-3
    lr_step_epochs: int | None = None
    lr_factor: float = 0.7


class MetricLearningModule(L.LightningModule):
    """Embedding MLP + ACORN's hinge loss. A batch is a list of events (Data with x [N, F],
    track_edges [2, T], hit_particle_id [N] optional)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.settings = EmbeddingSettings(**settings)
        s = self.settings
        self.network = make_mlp(s.in_dim, s.emb_hidden, s.nb_layer, s.emb_dim, s.activation, s.layernorm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, emb_dim] unit vectors: on the sphere, distances are bounded, so one radius fits all events."""
        return nn.functional.normalize(self.network(x), dim=-1)

    # --------------------------------------------------------------------------------- pairs

    def training_pairs(self, event: Data, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """([2, P] pairs, [P] label: 1 truth edge, -1 negative), hard negatives from a radius kNN in the
        current embedding of up to points_per_batch query hits, random pairs, and the truth edges in
        both directions. Pairs of one particle that are not truth edges (hits two layers apart) are
        left out: they should be neither pulled together nor pushed apart."""
        s = self.settings
        n = emb.shape[0]
        device = emb.device
        query = torch.randperm(n, device=device)[: s.points_per_batch]
        knn = radius_knn(emb, s.r_train, s.knn, query)  # [2, E] hard negatives (and near positives)
        n_random = int(s.randomisation * query.numel())
        random = torch.stack(
            [
                query[torch.randint(0, query.numel(), (n_random,), device=device)],
                torch.randint(0, n, (n_random,), device=device),
            ]
        )
        truth = event.track_edges.to(device)
        pairs = torch.cat([knn, random, truth, truth.flip(0)], dim=1)
        keys = torch.unique(pairs[0] * n + pairs[1])  # [P] deduplicated through int64 keys (faster than unique(dim=1))
        pairs = torch.stack([keys // n, keys % n])
        keep = pairs[0] != pairs[1]
        pairs, keys = pairs[:, keep], keys[keep]
        truth_keys = torch.cat([truth[0] * n + truth[1], truth[1] * n + truth[0]])
        positive = torch.isin(keys, truth_keys)
        label = torch.where(positive, 1, -1)
        if "hit_particle_id" in event:
            pid = event.hit_particle_id.to(device)
            same = (pid[pairs[0]] == pid[pairs[1]]) & (pid[pairs[0]] != 0) & ~positive
            pairs, label = pairs[:, ~same], label[~same]
        return pairs, label

    def pair_loss(self, emb: torch.Tensor, pairs: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """ACORN's hinge loss: truth pairs pay d^2, negatives pay max(0, margin^2 - d^2)."""
        d2 = ((emb[pairs[0]] - emb[pairs[1]]) ** 2).sum(dim=1)  # [P]
        positive = label > 0
        zero = emb.sum() * 0.0  # keeps the graph when a batch has no pair of one kind
        pos_loss = d2[positive].mean() if positive.any() else zero
        neg_loss = torch.relu(self.settings.margin**2 - d2[~positive]).mean() if (~positive).any() else zero
        return neg_loss + self.settings.positive_weight * pos_loss

    def event_loss(self, event: Data) -> torch.Tensor:
        emb = self(event.x)
        pairs, label = self.training_pairs(event, emb)
        return self.pair_loss(emb, pairs, label)

    # --------------------------------------------------------------------------------- lightning

    def training_step(self, batch: list[Data], batch_idx: int) -> torch.Tensor:
        loss = torch.stack([self.event_loss(event) for event in batch]).mean()
        self.log("train/loss", loss, batch_size=len(batch), prog_bar=True)
        return loss

    def validation_step(self, batch: list[Data], batch_idx: int) -> None:
        """val/loss; the efficiency / purity / size of the radius graph (r_val, knn_val) on truth edges;
        and val/edges_at_efficiency, the size of the graph whose radius keeps val_efficiency of each
        event's truth edges: the operating point graphs are compared at, so the checkpoint to keep.
        (val/loss is not: its random negatives make it noisy, and a hinge loss that rises while the
        truth pairs tighten can still mean a smaller graph at the same efficiency.)"""
        s = self.settings
        losses, found, true, edges, true_edges, edges_at = [], 0, 0, 0, 0, 0
        for event in batch:
            losses.append(self.event_loss(event))
            emb = self(event.x)
            graph = radius_knn(emb, s.r_val, s.knn_val)
            _, edge_y, mapping = graph_truth(graph, event.track_edges.cpu(), event.hit_r2z2.cpu())
            counts = graph_counts(mapping, None, edge_y)
            found, true, edges, true_edges = (
                found + counts.n_found,
                true + counts.n_true,
                edges + counts.n_edges,
                true_edges + counts.n_true_edges,
            )
            edges_at += self.edges_at_efficiency(emb, event)
        n = len(batch)
        self.log("val/loss", torch.stack(losses).mean(), batch_size=n, prog_bar=True)
        self.log("val/efficiency", found / max(true, 1), batch_size=n, prog_bar=True)
        self.log("val/purity", true_edges / max(edges, 1), batch_size=n)
        self.log("val/edges", float(edges) / n, batch_size=n)
        self.log("val/edges_at_efficiency", float(edges_at) / n, batch_size=n, prog_bar=True)

    def edges_at_efficiency(self, emb: torch.Tensor, event: Data) -> int:
        """Edges of one event's graph (knn_val cap) at the smallest radius that keeps val_efficiency of its
        truth edges: the radius is the quantile of the truth edges' embedding distances."""
        truth = event.track_edges.to(emb.device)  # [2, T]
        if truth.shape[1] == 0:
            return 0
        distance = (emb[truth[0]] - emb[truth[1]]).norm(dim=1)  # [T]
        r = float(torch.quantile(distance.float(), self.settings.val_efficiency, interpolation="higher")) * (1 + 1e-6)
        graph = radius_knn(emb, r, self.settings.knn_val)  # [2, E] both directions
        edge_index, _, _ = graph_truth(graph, truth.cpu(), event.hit_r2z2.cpu())
        return int(edge_index.shape[1])

    def configure_optimizers(self):
        optimizer = adamw(self, self.parameters(), lr=self.settings.lr)
        if self.settings.lr_step_epochs is None:
            return optimizer
        scheduler = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=self.settings.lr_step_epochs, gamma=self.settings.lr_factor
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
