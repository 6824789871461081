"""The module embedding table for other tools: one row per module token, readable without this package.

Columns: volume_id, layer_id, module_id, token, e0 .. e{D-1} (or the names given, e.g. the geometry
source's descriptors, which npz and pt then also store as `columns`); beside it the tokenizer
vocabulary (vocab.json, with the geometry hash the table belongs to).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from tb_plugin.atomic import atomic_path
from tb_plugin.tokenizer import N_SPECIAL, ModuleTokenizer

ExportFormat = Literal["csv", "npz", "pt"]
FORMATS: tuple[str, ...] = ("csv", "npz", "pt")
ID_COLUMNS: tuple[str, ...] = ("volume_id", "layer_id", "module_id", "token")


def embedding_table(token_embeddings: torch.Tensor, tokenizer: ModuleTokenizer) -> dict[str, np.ndarray]:
    ids = tokenizer.module_ids()
    tokens = np.arange(N_SPECIAL, tokenizer.vocab_size, dtype=np.int64)
    return {**ids, "token": tokens, "embedding": token_embeddings.detach().float().cpu().numpy()[tokens]}  # [K, D]


def export_embeddings(
    token_embeddings: torch.Tensor,
    tokenizer: ModuleTokenizer,
    out_dir: str | Path,
    fmt: ExportFormat,
    columns: Sequence[str] | None = None,
) -> list[Path]:
    """`columns`: names of the D embedding columns; None: e0 .. e{D-1}, and no `columns` entry."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format '{fmt}'. Allowed: {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    table = embedding_table(token_embeddings, tokenizer)
    width = table["embedding"].shape[1]
    if columns is not None and (len(columns) != width or set(columns) & set(ID_COLUMNS)):
        raise ValueError(f"{width} column names other than {', '.join(ID_COLUMNS)} needed, got {list(columns)}")
    names = list(columns) if columns is not None else [f"e{i}" for i in range(width)]
    target = out_dir / f"module_embeddings.{fmt}"
    with atomic_path(target) as tmp:
        if fmt == "csv":
            frame = pd.DataFrame({k: table[k] for k in ID_COLUMNS})
            emb = pd.DataFrame(table["embedding"], columns=names)
            pd.concat([frame, emb], axis=1).to_csv(tmp, index=False, float_format="%.8g")
        elif fmt == "npz":
            with open(tmp, "wb") as handle:
                np.savez(handle, **table, **({} if columns is None else {"columns": np.array(names)}))
        else:
            arrays = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in table.items()}
            torch.save({**arrays, **({} if columns is None else {"columns": names})}, tmp)
    vocab = out_dir / "vocab.json"
    tokenizer.save(vocab)
    return [target, vocab]
