"""Module embeddings as node features: a PyG transform that looks up each hit's module vector.

TrackingBERT learns one vector per detector module; injecting it is a table look-up by the hit's
dense module index, so the downstream stages pay almost nothing for it at inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from tb_plugin.atomic import atomic_path
from tb_plugin.event_store import MissingFieldError
from tb_plugin.tokenizer import ModuleTokenizer


class ModuleEmbedding(BaseTransform):
    """Adds `key` [N, D] = table[hit_module_index] and, with `flat_columns`, `key_0 .. key_{D-1}` [N].

    ACORN stacks 1-D node features only, so a host like it needs the flat columns, each listed in its
    `node_features` with its own `node_scales` entry.
    """

    def __init__(self, table: torch.Tensor, flat_columns: bool = False, key: str = "hit_tb_emb",
                 index_key: str = "hit_module_index") -> None:
        if table.dim() != 2:
            raise ValueError(f"the embedding table must be [modules, dim], got shape {tuple(table.shape)}")
        self.table = table.detach().float().cpu()  # [M, D]
        self.flat_columns, self.key, self.index_key = flat_columns, key, index_key

    @classmethod
    def from_token_embeddings(cls, token_embeddings: torch.Tensor, tokenizer: ModuleTokenizer, **kwargs) -> "ModuleEmbedding":
        """Per-module table from the model's token table; modules outside the vocabulary get [UNK]'s vector."""
        tokens = torch.from_numpy(tokenizer.module_to_token)  # [M] token of every detector module (UNK if outside)
        return cls(token_embeddings.detach()[tokens], **kwargs)

    @property
    def dim(self) -> int:
        return self.table.shape[1]

    def forward(self, data: Data) -> Data:
        if self.index_key not in data:
            raise MissingFieldError(f"event {getattr(data, 'event_id', '?')}: no field '{self.index_key}' to look up module embeddings")
        index = data[self.index_key]  # [N]
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= len(self.table)):
            raise ValueError(f"event {getattr(data, 'event_id', '?')}: '{self.index_key}' holds module indices outside "
                             f"0..{len(self.table) - 1}; was the event read with another detector geometry?")
        emb = self.table[index]  # [N, D]
        data[self.key] = emb
        if self.flat_columns:
            for i in range(self.dim):
                data[f"{self.key}_{i}"] = emb[:, i].contiguous()  # [N]
        return data

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(modules={len(self.table)}, dim={self.dim}, key='{self.key}', "
                f"index_key='{self.index_key}', flat_columns={self.flat_columns})")



# ------------------------------------------------------------------------------------- the table on disk

MODULE_TABLE_FILE = "module_table.npz"


def save_module_table(path: str | Path, table: torch.Tensor, in_vocab: np.ndarray, geometry_hash: str) -> Path:
    """The injected per-module table [M, D] (rows by dense module index) with in_vocab bool [M] and the
    geometry hash, written atomically. The tracking_bert stage writes it beside its events, so a later
    stage (the module map's pair prior) finds the vectors of every module, also those no event hit."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, table=table.detach().float().cpu().numpy(), in_vocab=np.asarray(in_vocab, dtype=bool),
                 geometry_hash=np.array(geometry_hash))
    return path


@dataclass
class ModuleTable:
    """table float32 [M, D] by dense module index; in_vocab bool [M] (False: the module has [UNK]'s vector)."""

    table: np.ndarray
    in_vocab: np.ndarray
    geometry_hash: str


def load_module_table(path: str | Path) -> ModuleTable:
    """The table written by save_module_table; errors name the file and what to run."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no module embedding table; run 'tb infer' on the tracking_bert stage that writes it")
    with np.load(path, allow_pickle=False) as npz:
        missing = [k for k in ("table", "in_vocab", "geometry_hash") if k not in npz.files]
        if missing:
            raise ValueError(f"{path}: not a module embedding table (missing {', '.join(missing)})")
        table = ModuleTable(npz["table"].astype(np.float32), npz["in_vocab"].astype(bool), str(npz["geometry_hash"]))
    if table.table.ndim != 2 or table.in_vocab.shape != (table.table.shape[0],):
        raise ValueError(f"{path}: table {table.table.shape} and in_vocab {table.in_vocab.shape} do not fit [M, D] and [M]")
    return table
