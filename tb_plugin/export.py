"""The module embedding table for other tools: one row per module token, readable without this package.

Columns: volume_id, layer_id, module_id, token, e0 .. e{D-1}; beside it the tokenizer vocabulary
(vocab.json, with the geometry hash the table belongs to).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from tb_plugin.atomic import atomic_path
from tb_plugin.tokenizer import N_SPECIAL, ModuleTokenizer

ExportFormat = Literal["csv", "npz", "pt"]
FORMATS: tuple[str, ...] = ("csv", "npz", "pt")


def embedding_table(token_embeddings: torch.Tensor, tokenizer: ModuleTokenizer) -> dict[str, np.ndarray]:
    ids = tokenizer.module_ids()
    tokens = np.arange(N_SPECIAL, tokenizer.vocab_size, dtype=np.int64)
    return {**ids, "token": tokens, "embedding": token_embeddings.detach().float().cpu().numpy()[tokens]}  # [K, D]


def export_embeddings(
    token_embeddings: torch.Tensor, tokenizer: ModuleTokenizer, out_dir: str | Path, fmt: ExportFormat
) -> list[Path]:
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format '{fmt}'. Allowed: {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    table = embedding_table(token_embeddings, tokenizer)
    target = out_dir / f"module_embeddings.{fmt}"
    with atomic_path(target) as tmp:
        if fmt == "csv":
            frame = pd.DataFrame({k: table[k] for k in ("volume_id", "layer_id", "module_id", "token")})
            emb = pd.DataFrame(table["embedding"], columns=[f"e{i}" for i in range(table["embedding"].shape[1])])
            pd.concat([frame, emb], axis=1).to_csv(tmp, index=False, float_format="%.8g")
        elif fmt == "npz":
            with open(tmp, "wb") as handle:
                np.savez(handle, **table)
        else:
            torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in table.items()}, tmp)
    vocab = out_dir / "vocab.json"
    tokenizer.save(vocab)
    return [target, vocab]
