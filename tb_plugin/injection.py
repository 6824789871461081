"""Module embeddings as node features: a PyG transform that looks up each hit's module vector.

TrackingBERT learns one vector per detector module; injecting it is a table look-up by the hit's
dense module index, so the downstream stages pay almost nothing for it at inference.

The table can be conditioned once, when the transform is built (never per event): `normalize:
standard` standardises each dimension over the modules in the vocabulary (the raw token table has a
std of about 0.02 at initialisation, next to node inputs of order 1), and `dim: k` keeps the first k
principal components of the (normalised) table, so the host's first layer grows by k inputs, not D.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from tb_plugin.atomic import atomic_path
from tb_plugin.event_store import MissingFieldError
from tb_plugin.geometry import Detector
from tb_plugin.tokenizer import UNK, ModuleTokenizer

Normalize = Literal["none", "standard"]
NORMALIZE: tuple[str, ...] = ("none", "standard")


def check_table_options(normalize: str, dim: int | None, width: int, width_name: str = "the table width") -> None:
    """The injection options against a table `width` wide; one-line errors naming the config key."""
    if normalize not in NORMALIZE:
        raise ValueError(f"key 'normalize' has value {normalize!r}. Allowed: {', '.join(NORMALIZE)}")
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= width):
        raise ValueError(f"key 'dim' must be null or an integer from 1 to {width_name} = {width}, got {dim!r}")


@dataclass(frozen=True)
class TableFit:
    """What conditioning learns from a table's in-vocabulary rows: kept apart from the table so that
    another table (a fine-tuned copy, `init_from`) can be expressed in the same coordinates, which the
    downstream stages trained on. None: that step is off."""

    mean: np.ndarray | None = None  # [D] normalize standard
    std: np.ndarray | None = None  # [D], 1 where the dimension is flat
    flat: np.ndarray | None = None  # [D] bool: zero spread over the vocabulary, mapped to 0
    centre: np.ndarray | None = None  # [D] dim k: the PCA centre (after normalisation)
    components: np.ndarray | None = None  # [k, D]


def fit_conditioning(table: torch.Tensor, in_vocab: np.ndarray, normalize: str, dim: int | None) -> TableFit:
    """The statistics of `fit_table`, fitted on the rows of `in_vocab` of `table` [M, D]."""
    check_table_options(normalize, dim, table.shape[1])
    if normalize == "none" and dim is None:
        return TableFit()
    in_vocab = np.asarray(in_vocab, dtype=bool)
    if in_vocab.shape != (table.shape[0],):
        raise ValueError(f"in_vocab has shape {in_vocab.shape}, expected ({table.shape[0]},), one flag per table row")
    if not in_vocab.any():
        raise ValueError("no module of the table is in the vocabulary: nothing to fit normalize/dim on")
    rows = table.detach().float().cpu().numpy().astype(np.float64)[in_vocab]  # [K, D]
    fit: dict[str, np.ndarray] = {}
    if normalize == "standard":
        flat = np.ptp(rows, axis=0) == 0  # zero spread: the dimension carries nothing, it becomes 0
        fit.update(mean=rows.mean(axis=0), std=np.where(flat, 1.0, rows.std(axis=0)), flat=flat)
        rows = np.where(flat, 0.0, (rows - fit["mean"]) / fit["std"])
    if dim is not None:
        centre = rows.mean(axis=0)  # [D]
        # full V also when there are fewer rows than dimensions (then U is only [K, K]), so k may reach D
        _, _, vt = np.linalg.svd(rows - centre, full_matrices=rows.shape[0] < rows.shape[1])  # vt [D, D]
        components = vt[:dim]  # [k, D], by decreasing singular value
        peak = components[np.arange(dim), np.abs(components).argmax(axis=1)]  # [k]
        fit.update(centre=centre, components=components * np.where(peak < 0, -1.0, 1.0)[:, None])
    return TableFit(**fit)


def apply_conditioning(fit: TableFit, table: torch.Tensor) -> torch.Tensor:
    """`table` [M, D] in the coordinates of `fit`: [M, k] with a PCA, else [M, D]."""
    table = table.detach().float().cpu()
    if fit.mean is None and fit.components is None:
        return table
    x = table.numpy().astype(np.float64)  # [M, D]
    if fit.mean is not None:
        x = np.where(fit.flat, 0.0, (x - fit.mean) / fit.std)
    if fit.components is not None:
        x = (x - fit.centre) @ fit.components.T  # [M, k]
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def fit_table(
    table: torch.Tensor,
    in_vocab: np.ndarray,
    normalize: str = "none",
    dim: int | None = None,
    reference: torch.Tensor | None = None,
) -> torch.Tensor:
    """The per-module table [M, D] conditioned for injection, fitted on the rows of `in_vocab` [M] only
    (modules outside the vocabulary share [UNK]'s row and would skew the statistics), applied to all.

    normalize 'standard': per dimension (x - mean) / std (population std); a dimension with zero spread
    over the vocabulary becomes 0 for every row. dim k: the first k principal components, by SVD of the
    centred in-vocabulary rows, in decreasing variance, each with its largest-magnitude loading positive
    (so the same table always gives the same output). Defaults return the table unchanged. `reference`
    [M, D]: fit on it instead and apply to `table`, so a fine-tuned table keeps the coordinates of the
    table it started from (a downstream stage trained on those can read it without retraining).
    """
    fitted_on = table if reference is None else reference
    if reference is not None and reference.shape != table.shape:
        raise ValueError(f"the reference table has shape {tuple(reference.shape)}, the table {tuple(table.shape)}")
    return apply_conditioning(fit_conditioning(fitted_on, in_vocab, normalize, dim), table)


class ModuleEmbedding(BaseTransform):
    """Adds `key` [N, D] = table[hit_module_index] and, with `flat_columns`, `key_0 .. key_{D-1}` [N].

    ACORN stacks 1-D node features only, so a host like it needs the flat columns, each listed in its
    `node_features` with its own `node_scales` entry. `normalize` and `pca_dim` only record how the
    table was fitted (see `from_table` / `from_token_embeddings`); the constructor takes the table as it is.
    """

    def __init__(
        self,
        table: torch.Tensor,
        flat_columns: bool = False,
        key: str = "hit_tb_emb",
        index_key: str = "hit_module_index",
        normalize: str = "none",
        pca_dim: int | None = None,
    ) -> None:
        if table.dim() != 2:
            raise ValueError(f"the embedding table must be [modules, dim], got shape {tuple(table.shape)}")
        self.table = table.detach().float().cpu()  # [M, D]
        self.flat_columns, self.key, self.index_key = flat_columns, key, index_key
        self.normalize, self.pca_dim = normalize, pca_dim

    @classmethod
    def from_table(
        cls,
        table: torch.Tensor,
        in_vocab: np.ndarray,
        normalize: str = "none",
        dim: int | None = None,
        reference: torch.Tensor | None = None,
        **kwargs,
    ) -> ModuleEmbedding:
        """The transform of `fit_table(table, in_vocab, normalize, dim, reference)`: fitted here, once."""
        fitted = fit_table(table, in_vocab, normalize, dim, reference)
        return cls(fitted, normalize=normalize, pca_dim=dim, **kwargs)

    @classmethod
    def from_token_embeddings(
        cls,
        token_embeddings: torch.Tensor,
        tokenizer: ModuleTokenizer,
        normalize: str = "none",
        dim: int | None = None,
        reference_embeddings: torch.Tensor | None = None,
        **kwargs,
    ) -> ModuleEmbedding:
        """Per-module table from the model's token table; modules outside the vocabulary get [UNK]'s vector.
        normalize / dim are fitted on the modules in the vocabulary (see `fit_table`), of
        `reference_embeddings` [V, D] (the token table a fine-tuned one started from) when given."""
        tokens = torch.from_numpy(tokenizer.module_to_token)  # [M] token of every detector module (UNK if outside)
        reference = None if reference_embeddings is None else reference_embeddings.detach()[tokens]
        in_vocab = tokenizer.module_to_token != UNK
        return cls.from_table(token_embeddings.detach()[tokens], in_vocab, normalize, dim, reference, **kwargs)

    @property
    def dim(self) -> int:
        return self.table.shape[1]

    def forward(self, data: Data) -> Data:
        if self.index_key not in data:
            raise MissingFieldError(
                f"event {getattr(data, 'event_id', '?')}: no field '{self.index_key}' to look up module embeddings"
            )
        index = data[self.index_key]  # [N]
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= len(self.table)):
            raise ValueError(
                f"event {getattr(data, 'event_id', '?')}: '{self.index_key}' holds module indices outside "
                f"0..{len(self.table) - 1}; was the event read with another detector geometry?"
            )
        emb = self.table[index]  # [N, D]
        data[self.key] = emb
        if self.flat_columns:
            for i in range(self.dim):
                data[f"{self.key}_{i}"] = emb[:, i].contiguous()  # [N]
        return data

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(modules={len(self.table)}, dim={self.dim}, normalize='{self.normalize}', "
            f"pca_dim={self.pca_dim}, key='{self.key}', index_key='{self.index_key}', flat_columns={self.flat_columns})"
        )


# ------------------------------------------------------------------------------------- the table on disk

MODULE_TABLE_FILE = "module_table.npz"


def save_module_table(path: str | Path, table: torch.Tensor, in_vocab: np.ndarray, detector: Detector) -> Path:
    """The injected per-module table [M, D] (rows by dense module index) with in_vocab bool [M] and the
    geometry and module-ids hashes of `detector`, written atomically. The tracking_bert stage writes it
    beside its events, so a later stage (the module map's pair prior) finds the vectors of every module,
    also those no event hit; the ids hash lets it serve a detector with the same ids (artifact_applies)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(
            handle,
            table=table.detach().float().cpu().numpy(),
            in_vocab=np.asarray(in_vocab, dtype=bool),
            geometry_hash=np.array(detector.geometry_hash()),
            ids_hash=np.array(detector.ids_hash()),
        )
    return path


@dataclass
class ModuleTable:
    """table float32 [M, D] by dense module index; in_vocab bool [M] (False: the module has [UNK]'s vector);
    ids_hash None for a table saved before module-ids hashes were recorded."""

    table: np.ndarray
    in_vocab: np.ndarray
    geometry_hash: str
    ids_hash: str | None


def load_module_table(path: str | Path) -> ModuleTable:
    """The table written by save_module_table; errors name the file and what to run."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no module embedding table; run 'tb infer' on the tracking_bert stage that writes it"
        )
    with np.load(path, allow_pickle=False) as npz:
        missing = [k for k in ("table", "in_vocab", "geometry_hash") if k not in npz.files]
        if missing:
            raise ValueError(f"{path}: not a module embedding table (missing {', '.join(missing)})")
        ids_hash = str(npz["ids_hash"]) if "ids_hash" in npz.files else None
        table = ModuleTable(
            npz["table"].astype(np.float32), npz["in_vocab"].astype(bool), str(npz["geometry_hash"]), ids_hash
        )
    if table.table.ndim != 2 or table.in_vocab.shape != (table.table.shape[0],):
        raise ValueError(
            f"{path}: table {table.table.shape} and in_vocab {table.in_vocab.shape} do not fit [M, D] and [M]"
        )
    return table
