"""Node and edge features of the learned host stages, written once for all of them.

`node_features` names event fields, each [N] or [N, D]; they are concatenated in order, each divided
by its `node_scales` entry (ACORN's keys). `edge_features` names quantities computed per edge from
the two hits: the usual geometric differences and `tb_sim`, the cosine similarity of the two hits'
TrackingBERT embeddings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch_geometric.data import Data

from tb_plugin.event_store import MissingFieldError, hit_count, require_field

EDGE_FEATURES = ("dr", "dphi", "dz", "deta", "phislope", "rphislope", "tb_sim")


def check_feature_config(
    node_features: Sequence[str], node_scales: Sequence[float] | None, edge_features: Sequence[str]
) -> None:
    """Config-time checks, so a typo is reported when the YAML is loaded, not mid-training."""
    if not node_features:
        raise ValueError("key 'node_features' must list at least one event field, e.g. [hit_r, hit_phi, hit_z]")
    if node_scales is not None:
        if len(node_scales) != len(node_features):
            raise ValueError(
                f"key 'node_scales' has {len(node_scales)} entries but 'node_features' has {len(node_features)}; "
                f"give one scale per feature"
            )
        bad = [s for s in node_scales if not s or not math.isfinite(s)]
        if bad:
            raise ValueError(f"key 'node_scales' must hold finite non-zero numbers, got {bad}")
    unknown = [f for f in edge_features if f not in EDGE_FEATURES]
    if unknown:
        raise ValueError(f"key 'edge_features' has unknown feature(s) {unknown}. Allowed: {', '.join(EDGE_FEATURES)}")


def node_feature_matrix(
    data: Data, names: Sequence[str], scales: Sequence[float] | None, source: str | Path
) -> torch.Tensor:
    """[N, F]: the listed fields, scaled, side by side (an [N, D] field contributes D columns)."""
    columns = []
    n = hit_count(data)
    for i, name in enumerate(names):
        value = require_field(data, name, source).float()
        if value.shape[0] != n or value.dim() > 2:
            raise ValueError(
                f"{source}: node feature '{name}' has shape {tuple(value.shape)}, expected [{n}] or [{n}, D]"
            )
        scale = 1.0 if scales is None else float(scales[i])
        columns.append((value if value.dim() == 2 else value[:, None]) / scale)  # [N, d]
    return torch.cat(columns, dim=1)  # [N, F]


def _wrap(dphi: torch.Tensor) -> torch.Tensor:
    return torch.remainder(dphi + math.pi, 2 * math.pi) - math.pi


def edge_feature_matrix(data: Data, edge_index: torch.Tensor, names: Sequence[str], source: str | Path) -> torch.Tensor:
    """[E, F] geometric (and TrackingBERT) quantities of each edge src -> dst."""
    src, dst = edge_index  # [E] each
    if not names:
        return torch.zeros((edge_index.shape[1], 0))

    def hit(field: str) -> torch.Tensor:
        return require_field(data, field, source).float()

    columns = []
    for name in names:
        if name in ("dr", "phislope", "rphislope"):
            r = hit("hit_r")
            dr = r[dst] - r[src]  # [E]
        if name in ("dphi", "phislope", "rphislope"):
            phi = hit("hit_phi")
            dphi = _wrap(phi[dst] - phi[src])  # [E]
        if name == "dr":
            columns.append(dr)
        elif name == "dphi":
            columns.append(dphi)
        elif name == "dz":
            z = hit("hit_z")
            columns.append(z[dst] - z[src])
        elif name == "deta":
            eta = hit("hit_eta")
            columns.append(eta[dst] - eta[src])
        elif name in ("phislope", "rphislope"):
            usable = dr.abs() > 1e-6  # hits at the same radius (endcap disks) have no slope
            slope = torch.where(usable, dphi / torch.where(usable, dr, torch.ones_like(dr)), torch.zeros_like(dphi))
            columns.append(slope if name == "phislope" else slope * 0.5 * (r[src] + r[dst]))
        elif name == "tb_sim":
            if "hit_tb_emb" not in data:
                raise MissingFieldError(
                    f"{source}: edge feature 'tb_sim' needs the field 'hit_tb_emb' (run the tracking_bert stage first)"
                )
            emb = data.hit_tb_emb.float()  # [N, D]
            columns.append(torch.nn.functional.cosine_similarity(emb[src], emb[dst], dim=1))
        else:
            raise ValueError(f"unknown edge feature '{name}'. Allowed: {', '.join(EDGE_FEATURES)}")
    return torch.stack(columns, dim=1)  # [E, F]
