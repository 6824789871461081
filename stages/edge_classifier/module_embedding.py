"""A trainable per-module vector inside an edge classifier, nanoGPT style: the A/B controls of TrackingBERT.

The TrackingBERT arm hands the edge classifiers a frozen per-module vector, `hit_tb_emb` [N, D],
written into the events by the tracking_bert stage. Whether the network gains from what pretraining
put into those vectors, or merely from having *some* per-module vector to learn module-specific
behaviour with, is what two control arms answer:

    learned    a vector of width D per module, trained from scratch with the edge classifier
               (`init: random`: rows N(0, 1), the scale of a `normalize: standard` table)
    finetune   the same, starting from the pretrained table (`init: table`, the tracking_bert stage's
               module_table.npz) and trained further with the edge classifier

Both are `ModuleVectors` around the unchanged network (gnn_model.InteractionNetwork or
filter_model.FilterNetwork): it looks each hit's vector up by its dense module index, appends it to
the node features and (with `similarity`) the cosine of the two hits' vectors to the edge features,
the learned twin of `tb_sim`, then runs the network on the wider inputs:

    x           [N, F]      scaled node features          -> [N, F + D]
    edge_index  [2, E]      src -> dst
    edge_attr   [E, F_e]    scaled edge features          -> [E, F_e + 1] with similarity
    hit_module  [N]         dense module index, 0..M-1 (the events' hit_module_index)

so the networks need no change: their config is built with node_dim = F + D and edge_dim = F_e (+1).
The rows are set when training starts (random ones from the stage's seed, or the table's) and are
then part of the checkpoint's state_dict: inference never needs the table again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tb_plugin.config import ConfigError
from tb_plugin.geometry import Detector, artifact_applies, refusal_reason
from tb_plugin.injection import load_module_table

INITS = ("random", "table")
MODULE_FIELD = "hit_module_index"  # the event field looked up: the detector's dense module index [N]
GRAPH_FIELD = "hit_module"  # its name in a training graph: PyG offsets attributes named *index* when batching

# ----------------------------------------------------------------------------------------------------
# Config


@dataclass(kw_only=True)
class ModuleEmbeddingConfig:
    """The stage key `module_embedding` (null: none): how wide the vectors are and where they start."""

    dim: int = 16  # D: width of each module's vector
    init: Literal["random", "table"] = "random"  # random: N(0, 1) rows from the seed; table: the rows of `table`
    table: Path | None = None  # module_table.npz of a tracking_bert stage (init: table only); its width must be dim
    similarity: bool = True  # also append cos(v_src, v_dst) as one more edge feature (the learned tb_sim)

    def __post_init__(self) -> None:
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"key 'module_embedding.dim' must be an integer >= 1, got {self.dim!r}")
        if self.init not in INITS:
            raise ValueError(f"key 'module_embedding.init' must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.init == "table" and self.table is None:
            raise ValueError(
                "key 'module_embedding.table' is required with init: table (the tracking_bert stage's module_table.npz)"
            )
        if self.init == "random" and self.table is not None:
            raise ValueError(
                f"key 'module_embedding.table' ({self.table}) is only read with init: table; remove it or set init: table"
            )

    def widths(self) -> tuple[int, int]:
        """(node, edge) columns the embedding adds to the network's inputs."""
        return self.dim, int(self.similarity)


@dataclass
class ModuleVectorsConfig:
    """What ModuleVectors is built from; stored in the checkpoint as the plain dict
    `module_embedding: {modules: M, dim: D, similarity: bool}` (EdgeClassifierModule's hyperparameter)."""

    modules: int  # M: the modules of the detector (rows of the table)
    dim: int  # D
    similarity: bool = True

    def __post_init__(self) -> None:
        for name in ("modules", "dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ModuleVectorsConfig.{name} must be a positive integer, got {value!r}")

    def widths(self) -> tuple[int, int]:
        return self.dim, int(self.similarity)


# ----------------------------------------------------------------------------------------------------
# The rows to start from


def load_table(path: Path, dim: int, detector: Detector, folder: str | Path) -> np.ndarray:
    """float32 [M, D] of a module table, checked as the pair prior checks it (rows are dense module
    indices, so the table must be of the detector of `folder`, the stage's input_dir) and against
    `dim`. Every refusal is one line naming the key and the file."""
    key = "key 'module_embedding.table'"
    try:
        table = load_module_table(path)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"{key}: {err}") from None
    if not artifact_applies(str(path), table.geometry_hash, table.ids_hash, detector):
        raise ConfigError(
            f"{key}: {path} was built for geometry {table.geometry_hash[:12]} ({refusal_reason(table.ids_hash)}), "
            f"but {folder} holds geometry {detector.geometry_hash()[:12]}; use the module table of a tracking_bert "
            f"stage run on this detector"
        )
    rows, width = table.table.shape
    if rows != len(detector):
        raise ConfigError(f"{key}: {path} has {rows} rows but the detector of {folder} has {len(detector)} modules")
    if width != dim:
        raise ConfigError(
            f"{key}: {path} holds vectors of width {width}, but key 'module_embedding.dim' is {dim}; set dim: {width}"
        )
    return table.table


def initial_rows(config: ModuleEmbeddingConfig, detector: Detector, folder: str | Path, seed: int) -> Tensor:
    """float32 [M, D]: the table's rows (init: table), else N(0, 1) rows drawn from `seed` alone, so
    the rows depend on the stage's seed and on nothing else that drew random numbers before."""
    if config.init == "table":
        return torch.from_numpy(load_table(Path(config.table), config.dim, detector, folder))
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(len(detector), config.dim, generator=generator)


# ----------------------------------------------------------------------------------------------------
# The model


@torch.compiler.disable  # a data-dependent check: run eagerly, so a compiled network is not split by it
def check_modules(hit_module: Tensor, n_hits: int, n_modules: int) -> None:
    """One-line errors for a module index that cannot be looked up."""
    if hit_module.shape != (n_hits,):
        raise ValueError(f"hit_module must be [{n_hits}] (one module index per hit), got {list(hit_module.shape)}")
    if n_hits and (int(hit_module.min()) < 0 or int(hit_module.max()) >= n_modules):
        raise ValueError(
            f"{MODULE_FIELD} holds module indices {int(hit_module.min())}..{int(hit_module.max())}, but the module "
            f"embedding has {n_modules} modules (0..{n_modules - 1}): the events come from another detector geometry "
            f"than the one the edge classifier was trained on"
        )


class ModuleVectors(nn.Module):
    """The wrapped edge network on [x, E[hit_module]] and [edge_attr, cos(E[src], E[dst])]."""

    def __init__(self, network: nn.Module, config: ModuleVectorsConfig) -> None:
        super().__init__()
        node_dim, edge_dim = network.config.node_dim, network.config.edge_dim
        extra_node, extra_edge = config.widths()
        if node_dim <= extra_node or edge_dim < extra_edge:
            raise ValueError(
                f"the network takes {node_dim} node and {edge_dim} edge columns, fewer than the module embedding "
                f"adds ({extra_node} and {extra_edge}) plus at least one node feature"
            )
        self.config = config
        self.network = network
        # Placeholder rows from a private generator: training sets the real ones (initial_rows) and a
        # checkpoint load overwrites them, and the global random state (data order, dropout) is left as
        # it would be without the embedding.
        placeholder = torch.randn(config.modules, config.dim, generator=torch.Generator().manual_seed(0))
        self.embedding = nn.Embedding(config.modules, config.dim, _weight=placeholder)  # [M, D]

    def set_rows(self, rows: Tensor) -> None:
        """Start from these rows [M, D] (the table, or seeded random ones)."""
        expected = (self.config.modules, self.config.dim)
        if tuple(rows.shape) != expected:
            raise ValueError(f"module embedding rows must be {list(expected)}, got {list(rows.shape)}")
        with torch.no_grad():
            self.embedding.weight.copy_(rows)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None, hit_module: Tensor) -> Tensor:
        """Edge logits [E] of the network on the widened inputs."""
        check_modules(hit_module, x.shape[0], self.config.modules)
        vectors = self.embedding(hit_module.long())  # [N, D]
        x = torch.cat([x, vectors.to(x.dtype)], dim=1)  # [N, F + D]
        if self.config.similarity:
            E = edge_index.shape[1]
            if edge_attr is None:
                edge_attr = x.new_zeros((E, 0))
            src, dst = edge_index  # [E] each
            similarity = F.cosine_similarity(vectors[src], vectors[dst], dim=1)  # [E]
            edge_attr = torch.cat([edge_attr, similarity[:, None].to(edge_attr.dtype)], dim=1)  # [E, F_e + 1]
        return self.network(x, edge_index, edge_attr)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
