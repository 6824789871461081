"""The ModuleMap's module-pair prior (`prior:` in its config): fills coverage holes and prunes rare pairs.

A map learned from few events misses module pairs that tracks do cross: a pair never seen in the
training events gives no edge. The prior scores module pairs and, when the map is learned,

    propose  adds the unseen *candidate* pairs whose score is at least the `propose_quantile` of the
             seen pairs' scores (they get count 0 and are kept whatever min_count says);
    prune    removes the pairs seen at most `prune_max_count` times whose score is below the
             `prune_quantile` of the seen pairs' scores.

The quantiles are taken per layer pair by default (`threshold: layer_pair`): cosines of barrel and
endcap vectors, or centralities in windows of different widths, need not compare across layer pairs.

Candidate pairs: for every layer pair the map knows (and whose dphi / z0 window is bounded in at least
one feature), the module pairs (a on its inner layer, b on its outer one) whose centres' dphi and z0
(module_map.doublet_values) lie inside the layer pair's window (widened by window_margin, as at
inference) further widened by the two modules' own extent: dphi by the modules' half-extents in phi,
z0 by the first-order spread of z0 over the modules' half-extents in r and z (unbounded when the two
modules' radial ranges overlap, where z0 says nothing). Modules of a layer are one slice of the dense
index, the outer layer's modules are sorted by phi, and each inner module only looks at the outer
modules inside its dphi range (searchsorted), so the whole detector takes seconds. A proposed pair
belongs to its layer pair and gets that layer pair's window at inference.

Scores (`scorer` x `head`):

    tb, none          cosine of the two modules' TrackingBERT vectors (the module table)
    geometry, none    the control without TrackingBERT: 1 - max over features of |f - centre| /
                      (half-width + extent), how central the centres' dphi / z0 sit in the layer
                      pair's window (0 at the candidate boundary); where z0 is undefined (radially
                      overlapping modules), the centres' distance over the modules' reach instead
    *, bilinear/mlp   a small head on frozen per-module vectors (tb: the table, L2-normalised;
                      geometry: r, z, cos phi, sin phi of the centre), trained with the seen pairs as
                      positives and the unseen candidates as negatives (balanced batches, seeded);
                      cross-fitted: the pairs are split by inner module into head_folds folds and each
                      is scored by the head trained on the others, so an unseen pair is never scored
                      by a head that learned it (or its inner module's pairs) as a negative

Only pairs with both modules in scope are proposed, pruned or used for thresholds: modules of
`volumes` (all by default) and, for the tb scorer, in TrackingBERT's vocabulary (in_vocab).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from stages.graph_construction.doublets import PAIR_SHIFT, doublet_values
from tb_plugin.geometry import Detector, artifact_applies, detector_for, refusal_reason
from tb_plugin.injection import MODULE_TABLE_FILE, load_module_table

__all__ = [
    "PairPriorConfig",
    "ModuleShapes",
    "module_shapes",
    "candidate_pairs",
    "pair_geometry",
    "apply_pair_prior",
    "load_prior_table",
]


PRIOR_SCORERS = ("tb", "geometry")
PRIOR_HEADS = ("none", "bilinear", "mlp")


@dataclass(kw_only=True)
class PairPriorConfig:
    """ModuleMap key `prior:`: score module pairs to fill the map's coverage holes and prune rare pairs
    (stages/graph_construction/pair_prior.py does the work)."""

    # tb: TrackingBERT's per-module vectors (the module table); geometry: the control without them.
    scorer: Literal["tb", "geometry"] = "tb"
    # none: cosine of the two vectors (tb) or how central the centres' dphi / z0 sit in the layer pair's
    # window (geometry); bilinear / mlp: a small head on the frozen per-module vectors, trained with the
    # pairs the map saw as positives and the candidate pairs it did not see as negatives.
    head: Literal["none", "bilinear", "mlp"] = "none"
    # Add unseen candidate pairs whose score is at least the propose_quantile of the seen pairs' scores.
    propose: bool = True
    propose_quantile: float = 0.5
    # Remove pairs seen at most prune_max_count times whose score is below the prune_quantile of the seen pairs'.
    prune: bool = False
    prune_max_count: int = 1
    prune_quantile: float = 0.1
    # The module table (tb_plugin.injection.save_module_table); null = input_dir/module_table.npz.
    table: Path | None = None
    # Only pairs with both modules in these volumes are proposed or pruned; null = every volume (the tb
    # scorer also leaves modules outside TrackingBERT's vocabulary alone).
    volumes: list[int] | None = None
    # Learned heads: optimiser steps, learning rate, pairs per step (half positive, half negative), MLP width.
    head_steps: int = 300
    head_lr: float = 0.01
    head_batch: int = 2048
    head_hidden: int = 64
    # Quantiles of the seen pairs' scores taken per layer pair (scores of different layer pairs need not
    # compare: barrel and endcap vectors, window widths) or over all seen pairs at once.
    threshold: Literal["layer_pair", "global"] = "layer_pair"
    # Learned heads are cross-fitted: pairs split by inner module into head_folds folds, each scored by
    # the head trained on the other folds (1 = one head trained on, and scoring, every pair).
    head_folds: int = 3
    # Module pairs checked at a time while looking for candidates (bounds the temporaries).
    chunk_pairs: int = 2_000_000

    def __post_init__(self) -> None:
        if not (self.propose or self.prune):
            raise ValueError(
                "key 'prior': set 'propose' or 'prune' (or both) to true, or 'prior: null' to turn the prior off"
            )
        for key in ("propose_quantile", "prune_quantile"):
            value = getattr(self, key)
            if not (0.0 <= value <= 1.0):
                raise ValueError(f"key 'prior.{key}' must be in [0, 1], got {value}")
        if self.prune_max_count < 1:
            raise ValueError(f"key 'prior.prune_max_count' must be at least 1, got {self.prune_max_count}")
        for key in ("head_steps", "head_batch", "head_hidden", "head_folds", "chunk_pairs"):
            if getattr(self, key) < 1:
                raise ValueError(f"key 'prior.{key}' must be at least 1, got {getattr(self, key)}")
        if not (self.head_lr > 0 and math.isfinite(self.head_lr)):
            raise ValueError(f"key 'prior.head_lr' must be a finite number > 0, got {self.head_lr}")
        if self.scorer not in PRIOR_SCORERS:  # typed configs are checked by build(); this guards direct construction
            raise ValueError(f"key 'prior.scorer' has value {self.scorer!r}; choices: {', '.join(PRIOR_SCORERS)}")
        if self.head not in PRIOR_HEADS:
            raise ValueError(f"key 'prior.head' has value {self.head!r}; choices: {', '.join(PRIOR_HEADS)}")
        if self.volumes is not None and not self.volumes:
            raise ValueError("key 'prior.volumes' must list at least one volume id, or be null (every volume)")


log = logging.getLogger(__name__)

SCORE_CHUNK = 1_000_000  # pairs scored at a time


# ------------------------------------------------------------------------------------- geometry


@dataclass
class ModuleShapes:
    """Per module [M] (dense index): centre phi, r, z; half-extents over the module surface in phi, r, z;
    layer key volume_id * 1000 + layer_id (non-decreasing: a layer's modules are one slice); reach, the
    largest distance from the centre to a point of the module (mm)."""

    phi: np.ndarray
    r: np.ndarray
    z: np.ndarray
    ext_phi: np.ndarray
    ext_r: np.ndarray
    ext_z: np.ndarray
    layer: np.ndarray
    reach: np.ndarray

    def __len__(self) -> int:
        return len(self.phi)


def module_shapes(detector: Detector) -> ModuleShapes:
    """Centres and extents from a 3 x 3 grid of points on each module (corners, edge midpoints, centre)."""
    s_v = np.repeat([-1.0, 0.0, 1.0], 3)  # [9]
    s_u = np.tile([-1.0, 0.0, 1.0], 3)  # [9]
    v = detector.hv[:, None] * s_v  # [M, 9]
    hv = detector.hv[:, None]
    half_u = detector.min_hu[:, None] + (detector.max_hu - detector.min_hu)[:, None] * (v + hv) / (2 * hv)  # [M, 9]
    local = np.stack([half_u * s_u, v, np.zeros_like(v)], axis=2)  # [M, 9, 3]
    points = detector.center[:, None, :] + np.einsum("mij,mkj->mki", detector.rotation, local)  # [M, 9, 3]
    cx, cy, cz = detector.center.T  # [M] each
    phi, r = np.arctan2(cy, cx), np.hypot(cx, cy)
    p_phi = np.arctan2(points[..., 1], points[..., 0])  # [M, 9]
    p_r = np.hypot(points[..., 0], points[..., 1])
    ext_phi = np.abs(np.remainder(p_phi - phi[:, None] + np.pi, 2 * np.pi) - np.pi).max(axis=1)
    layer = detector.volume_id.astype(np.int64) * 1000 + detector.layer_id.astype(np.int64)
    reach = np.linalg.norm(points - detector.center[:, None, :], axis=2).max(axis=1)
    return ModuleShapes(
        phi,
        r,
        cz.copy(),
        ext_phi,
        np.abs(p_r - r[:, None]).max(axis=1),
        np.abs(points[..., 2] - cz[:, None]).max(axis=1),
        layer,
        reach,
    )


def widened_windows(low: np.ndarray, high: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) [L, F] per layer pair, widened by margin x width on each side (as at inference)."""
    width = np.where(np.isfinite(high - low), high - low, 0.0)
    return low - margin * width, high + margin * width


def pair_geometry(
    shapes: ModuleShapes, a: np.ndarray, b: np.ndarray, low: np.ndarray, high: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(inside bool [C], score float [C]) of module pairs a -> b [C] against their windows low / high [C, F].

    inside: the centres' dphi / z0 lie in the window widened by the modules' extent. score: 1 - max
    over bounded features of |f - window centre| / (half-width + extent), >= 0 when inside (features
    with an unbounded window or extent do not count). Where the two modules' radial ranges
    overlap (an overlap in one layer, two disks' rings), z0 says nothing, and the distance of the centres
    over the modules' reach takes its place in the score (not in `inside`): modules that touch score
    >= 0, far ones below, so the score does not rank every pair of such a layer pair alike.
    """
    centres = (shapes.phi[a], shapes.r[a], shapes.z[a], shapes.phi[b], shapes.r[b], shapes.z[b])
    features = doublet_values(*(torch.from_numpy(np.asarray(v, dtype=np.float64)) for v in centres)).T.numpy()  # [C, 2]
    ext_dphi = shapes.ext_phi[a] + shapes.ext_phi[b]
    r_a, r_b = shapes.r[a], shapes.r[b]
    d_r = r_b - r_a
    with np.errstate(divide="ignore", invalid="ignore"):
        # first-order spread of z0 = (z_a r_b - z_b r_a) / (r_b - r_a) over the modules' extents
        ext_z0 = (np.abs(r_b) * shapes.ext_z[a] + np.abs(r_a) * shapes.ext_z[b]) / np.abs(d_r) + (
            np.abs(r_b) * shapes.ext_r[a] + np.abs(r_a) * shapes.ext_r[b]
        ) * np.abs(shapes.z[a] - shapes.z[b]) / d_r**2
    ext_z0 = np.where(np.abs(d_r) <= shapes.ext_r[a] + shapes.ext_r[b], np.inf, ext_z0)  # radial ranges overlap
    extent = np.stack([ext_dphi, ext_z0], axis=1)  # [C, 2]
    with np.errstate(invalid="ignore"):
        inside = ((features >= low - extent) & (features <= high + extent)).all(axis=1)
        bounded = np.isfinite(low) & np.isfinite(high) & np.isfinite(extent)
        centre, half = (low + high) / 2, (high - low) / 2
        term = np.where(bounded, np.abs(features - centre) / (half + extent), 0.0)  # [C, 2]
    term = np.where(np.isnan(term), np.inf, term)  # an infinite feature in a bounded window
    overlap = ~np.isfinite(ext_z0)  # [C]
    if overlap.any():
        ia, ib = a[overlap], b[overlap]
        gap = np.linalg.norm(_centres(shapes, ib) - _centres(shapes, ia), axis=1) / (
            shapes.reach[ia] + shapes.reach[ib]
        )
        term[overlap, 1] = np.maximum(term[overlap, 1], gap)
    return inside, 1.0 - term.max(axis=1)


def _centres(shapes: ModuleShapes, modules: np.ndarray) -> np.ndarray:
    """[K, 3] x, y, z of module centres."""
    r, phi = shapes.r[modules], shapes.phi[modules]
    return np.stack([r * np.cos(phi), r * np.sin(phi), shapes.z[modules]], axis=1)


def candidate_pairs(
    shapes: ModuleShapes,
    layer_pairs: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    scope: np.ndarray | None = None,
    chunk_pairs: int = 2_000_000,
) -> tuple[np.ndarray, np.ndarray]:
    """(pairs int64 [C, 2], window int64 [C]): per layer pair l (layer keys layer_pairs[l] = (inner, outer)),
    the module pairs a -> b (a != b, both in `scope` [M]) that pair_geometry finds inside the window
    low[l] / high[l] [F]; sorted by pair key. Layer pairs unbounded in every feature give none."""
    n = len(shapes)
    scope = np.ones(n, dtype=bool) if scope is None else np.asarray(scope, dtype=bool)
    found_pairs, found_window = [], []
    for row, (key_in, key_out) in enumerate(np.asarray(layer_pairs, dtype=np.int64)):
        lo, hi = low[row], high[row]  # [F]
        if not (np.isfinite(lo) | np.isfinite(hi)).any():
            continue
        inner = _layer_modules(shapes, key_in, scope)
        outer = _layer_modules(shapes, key_out, scope)
        if inner.size == 0 or outer.size == 0:
            continue
        outer = outer[np.argsort(shapes.phi[outer], kind="stable")]  # by phi
        phi_out = shapes.phi[outer]
        reach = shapes.ext_phi[inner] + shapes.ext_phi[outer].max()  # [A] phi widening
        span = hi[0] - lo[0] + 2 * reach  # [A]
        if np.isfinite(lo[0]) and np.isfinite(hi[0]) and span.max() < 2 * np.pi:
            ring_phi = np.concatenate(
                [phi_out - 2 * np.pi, phi_out, phi_out + 2 * np.pi]
            )  # sorted, one turn either side
            ring = np.tile(outer, 3)
            start = np.searchsorted(ring_phi, shapes.phi[inner] + lo[0] - reach, side="left")  # [A]
            count = np.searchsorted(ring_phi, shapes.phi[inner] + hi[0] + reach, side="right") - start  # [A]
        else:  # no usable dphi bound: every outer module
            ring = outer
            start, count = np.zeros(inner.size, dtype=np.int64), np.full(inner.size, outer.size, dtype=np.int64)
        end = np.cumsum(count)
        first = 0
        while first < inner.size:  # blocks of inner modules of at most chunk_pairs pairs (one module at least)
            done = end[first - 1] if first else 0
            last = max(int(np.searchsorted(end, done + chunk_pairs, side="right")), first + 1)
            size = count[first:last]
            a = np.repeat(inner[first:last], size)  # [K]
            k = np.arange(a.size) - np.repeat(np.cumsum(size) - size, size)
            b = ring[np.repeat(start[first:last], size) + k]
            rows = np.full(a.size, row, dtype=np.int64)
            inside, _ = pair_geometry(shapes, a, b, lo[None, :], hi[None, :])
            keep = inside & (a != b)
            found_pairs.append(np.stack([a[keep], b[keep]], axis=1))
            found_window.append(rows[keep])
            first = last
    if not found_pairs:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64)
    pairs, window = np.concatenate(found_pairs), np.concatenate(found_window)
    order = np.argsort(pairs[:, 0] * PAIR_SHIFT + pairs[:, 1], kind="stable")
    return pairs[order], window[order]


def _layer_modules(shapes: ModuleShapes, key: int, scope: np.ndarray) -> np.ndarray:
    first, last = np.searchsorted(shapes.layer, key, side="left"), np.searchsorted(shapes.layer, key, side="right")
    index = np.arange(first, last)
    return index[scope[first:last]]


# ------------------------------------------------------------------------------------- the table


def load_prior_table(path: Path, detector: Detector, folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(table float32 [M, D], in_vocab bool [M]) from a module table, checked against the detector of
    `folder` (the map's input_dir): rows are dense module indices, so the table applies to a detector with
    the same module ids (artifact_applies); errors are one line naming the file."""
    table = load_module_table(path)
    if not artifact_applies(str(path), table.geometry_hash, table.ids_hash, detector):
        ids = refusal_reason(table.ids_hash)
        raise ValueError(
            f"{path}: module table built for geometry {table.geometry_hash[:12]} ({ids}), but {folder} holds "
            f"geometry {detector.geometry_hash()[:12]}; use the table of a tracking_bert stage trained on this detector"
        )
    if table.table.shape[0] != len(detector):
        raise ValueError(
            f"{path}: module table has {table.table.shape[0]} rows but the detector of {folder} has {len(detector)} modules"
        )
    return table.table, table.in_vocab


# ------------------------------------------------------------------------------------- learned heads


class BilinearHead(nn.Module):
    """score = v_a^T W v_b + bias, W [D, D] starting at the identity (the cosine of unit vectors)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.eye(dim))
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, v_a: torch.Tensor, v_b: torch.Tensor) -> torch.Tensor:
        return ((v_a @ self.weight) * v_b).sum(dim=1) + self.bias  # [B]


class MLPHead(nn.Module):
    """score = MLP([v_a, v_b, v_a * v_b]), one hidden ReLU layer."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, v_a: torch.Tensor, v_b: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([v_a, v_b, v_a * v_b], dim=1)).squeeze(1)  # [B]


def train_head(
    kind: str, vectors: np.ndarray, positives: np.ndarray, negatives: np.ndarray, config: PairPriorConfig, seed: int
) -> tuple[nn.Module, float]:
    """A head trained on the frozen vectors [M, D]: positives / negatives [*, 2] module pairs, balanced
    batches of head_batch pairs, head_steps AdamW steps; (head in eval mode, mean loss of the last 10% of steps)."""
    table = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    pos, neg = torch.from_numpy(positives), torch.from_numpy(negatives)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = BilinearHead(table.shape[1]) if kind == "bilinear" else MLPHead(table.shape[1], config.head_hidden)
    optimiser = torch.optim.AdamW(head.parameters(), lr=config.head_lr, weight_decay=1e-4)
    half = max(config.head_batch // 2, 1)
    target = torch.cat([torch.ones(half), torch.zeros(half)])
    losses = []
    head.train()
    for _ in range(config.head_steps):
        batch = torch.cat(
            [
                pos[torch.randint(len(pos), (half,), generator=generator)],
                neg[torch.randint(len(neg), (half,), generator=generator)],
            ]
        )  # [2h, 2]
        logits = head(table[batch[:, 0]], table[batch[:, 1]])
        loss = nn.functional.binary_cross_entropy_with_logits(logits, target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    head.eval()
    tail = max(len(losses) // 10, 1)
    return head, float(np.mean(losses[-tail:]))


def head_scores(head: nn.Module, vectors: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    table = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    out = []
    with torch.no_grad():
        for first in range(0, len(pairs), SCORE_CHUNK):
            chunk = torch.from_numpy(pairs[first : first + SCORE_CHUNK])
            out.append(head(table[chunk[:, 0]], table[chunk[:, 1]]).numpy().astype(np.float64))
    return np.concatenate(out) if out else np.zeros(0)


def cosine_scores(unit: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    out = [
        np.einsum("ij,ij->i", unit[pairs[f : f + SCORE_CHUNK, 0]], unit[pairs[f : f + SCORE_CHUNK, 1]]).astype(
            np.float64
        )
        for f in range(0, len(pairs), SCORE_CHUNK)
    ]
    return np.concatenate(out) if out else np.zeros(0)


def geometry_vectors(shapes: ModuleShapes) -> np.ndarray:
    """float32 [M, 4]: r / r_max, z / |z|_max, cos phi, sin phi of each module centre (the geometry control's
    per-module vector for a learned head)."""
    r_scale = max(float(shapes.r.max()), 1e-9)
    z_scale = max(float(np.abs(shapes.z).max()), 1e-9)
    return np.stack([shapes.r / r_scale, shapes.z / z_scale, np.cos(shapes.phi), np.sin(shapes.phi)], axis=1).astype(
        np.float32
    )


def _unit_rows(table: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(table, axis=1, keepdims=True)
    return (table / np.maximum(norm, 1e-12)).astype(np.float32)


# ------------------------------------------------------------------------------------- the prior


def _quantile(values: np.ndarray, q: float) -> float:
    """The q-quantile of values as one of them (no interpolation, so -inf scores do not give nan)."""
    return float(np.quantile(values, q, method="inverted_cdf")) if q > 0 else float(values.min())


def _ties(threshold: np.ndarray) -> np.ndarray:
    """Rounding slack for comparisons with thresholds: pairs of the same geometry score alike up to float error."""
    return np.where(np.isfinite(threshold), 1e-9 * np.maximum(1.0, np.abs(threshold)), 0.0)


def cross_fitted_head_scores(
    config: PairPriorConfig, vectors: np.ndarray, positives: np.ndarray, negatives: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """(positive scores, negative scores, mean final loss) from head_folds heads: the pairs are split
    by their inner module into folds, and each pair is scored by the head trained without its fold's
    modules, so no pair's score comes from a head that learned that module's pairs as seen or unseen
    (a head on one vector per module could otherwise simply remember which modules were hit)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(
        1
    )  # batches of a few thousand pairs: more threads only add overhead (15x slower measured on 2 busy cores)
    try:
        return _cross_fitted_head_scores(config, vectors, positives, negatives, seed)
    finally:
        torch.set_num_threads(threads)


def _cross_fitted_head_scores(
    config: PairPriorConfig, vectors: np.ndarray, positives: np.ndarray, negatives: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, float]:
    folds = config.head_folds
    fold_of = np.random.default_rng(seed).permutation(len(vectors)) % folds  # [M] fold of each inner module
    pos_fold, neg_fold = fold_of[positives[:, 0]], fold_of[negatives[:, 0]]
    pos_scores, neg_scores = np.zeros(len(positives)), np.zeros(len(negatives))
    losses = []
    for k in range(folds):
        train_pos, train_neg = positives[pos_fold != k], negatives[neg_fold != k]
        if folds == 1 or len(train_pos) == 0 or len(train_neg) == 0:  # nothing to hold out from: learn from all
            train_pos, train_neg = positives, negatives
        head, loss = train_head(config.head, vectors, train_pos, train_neg, config, seed + k)
        losses.append(loss)
        pos_scores[pos_fold == k] = head_scores(head, vectors, positives[pos_fold == k])
        neg_scores[neg_fold == k] = head_scores(head, vectors, negatives[neg_fold == k])
    return pos_scores, neg_scores, float(np.mean(losses))


def thresholds(scores: np.ndarray, rows: np.ndarray, n_rows: int, q: float, per_layer_pair: bool) -> np.ndarray:
    """float [n_rows]: the q-quantile (inverted cdf, one of the scores) of the seen pairs' scores, per
    layer pair (rows [P]) or one for all; +inf for a layer pair without seen pairs in scope."""
    if not per_layer_pair:
        return np.full(n_rows, _quantile(scores, q))
    order = np.lexsort((scores, rows))
    sorted_scores = scores[order]
    count = np.bincount(rows, minlength=n_rows)  # [L]
    first = np.cumsum(count) - count
    pick = first + np.clip(np.ceil(q * count).astype(np.int64) - 1, 0, None)  # inverted cdf: smallest x with F(x) >= q
    out = np.full(n_rows, np.inf)
    has = count > 0
    out[has] = sorted_scores[pick[has]]
    return out


def prior_vectors(
    config: PairPriorConfig, input_dir: str | Path, detector: Detector, shapes: ModuleShapes
) -> tuple[np.ndarray, np.ndarray, Path | None]:
    """(vectors [M, D] the scores compare, modules in scope bool [M], the table read or None): the unit
    TrackingBERT rows (scope: in the vocabulary) or the geometry vectors of the control."""
    scope = np.ones(len(detector), dtype=bool)
    if config.volumes is not None:
        scope &= detector.volume_mask(config.volumes)
    if config.scorer != "tb":
        return geometry_vectors(shapes), scope, None
    table_path = Path(config.table) if config.table is not None else Path(input_dir) / MODULE_TABLE_FILE
    table, in_vocab = load_prior_table(table_path, detector, input_dir)
    return _unit_rows(table), scope & in_vocab, table_path


def pair_scores(
    config: PairPriorConfig,
    vectors: np.ndarray,
    shapes: ModuleShapes,
    seen: tuple[np.ndarray, np.ndarray],
    new: tuple[np.ndarray, np.ndarray],
    windows: tuple[np.ndarray, np.ndarray],
    seed: int,
) -> tuple[np.ndarray, np.ndarray, float | None]:
    """(scores of the seen pairs, of the unseen candidates, the head's loss or None); seen and new are
    (pairs [P, 2], window row [P]), windows the widened (low, high) [L, F]."""
    (seen_pairs, seen_window), (new_pairs, new_window), (low, high) = seen, new, windows
    if config.head != "none":
        if len(new_pairs) == 0:
            raise ValueError(
                f"key 'prior.head' {config.head!r} learns from the candidate pairs the map did not see, "
                "and there are none; use head: none"
            )
        return cross_fitted_head_scores(config, vectors, seen_pairs, new_pairs, seed)
    if config.scorer == "tb":
        return cosine_scores(vectors, seen_pairs), cosine_scores(vectors, new_pairs), None
    seen_scores = pair_geometry(shapes, seen_pairs[:, 0], seen_pairs[:, 1], low[seen_window], high[seen_window])[1]
    new_scores = pair_geometry(shapes, new_pairs[:, 0], new_pairs[:, 1], low[new_window], high[new_window])[1]
    return seen_scores, new_scores, None


def apply_pair_prior(
    arrays: dict[str, np.ndarray], config: PairPriorConfig, input_dir: str | Path, window_margin: float, seed: int
) -> dict[str, np.ndarray]:
    """The map's arrays (MapLearner.arrays) after the prior: pairs, counts, window rewritten (sorted by
    pair key), plus proposed bool [P] and prior (a JSON record of what it did); prints one line."""
    started = time.perf_counter()
    detector = detector_for(input_dir)
    shapes = module_shapes(detector)
    pairs, counts, window = arrays["pairs"], arrays["counts"], arrays["window"]
    if pairs.size and int(pairs.max()) >= len(detector):
        raise ValueError(
            f"the module map refers to module {int(pairs.max())}, but the detector of {input_dir} has "
            f"{len(detector)} modules; the events were read with another geometry"
        )
    vectors, scope, table_path = prior_vectors(config, input_dir, detector, shapes)
    low, high = widened_windows(arrays["low"], arrays["high"], window_margin)  # [L, F]
    candidates, cand_window = candidate_pairs(shapes, arrays["layer_pairs"], low, high, scope, config.chunk_pairs)
    seen_keys = pairs[:, 0] * PAIR_SHIFT + pairs[:, 1]
    unseen = ~np.isin(candidates[:, 0] * PAIR_SHIFT + candidates[:, 1], seen_keys)
    new_pairs, new_window = candidates[unseen], cand_window[unseen]
    in_scope = scope[pairs[:, 0]] & scope[pairs[:, 1]]  # [P]
    if not in_scope.any():
        raise ValueError(
            f"key 'prior': none of the map's {len(pairs):,} module pairs has both modules in scope "
            f"(volumes {config.volumes}{', in the table vocabulary' if config.scorer == 'tb' else ''}); nothing to score"
        )
    seen_scores, new_scores, head_loss = pair_scores(
        config, vectors, shapes, (pairs[in_scope], window[in_scope]), (new_pairs, new_window), (low, high), seed
    )
    seen_window = window[in_scope]

    per_layer_pair = config.threshold == "layer_pair"
    n_rows = len(arrays["layer_pairs"])
    record: dict = {
        "scorer": config.scorer,
        "head": config.head,
        "table": None if table_path is None else str(table_path),
        "volumes": config.volumes,
        "threshold": config.threshold,
        "seed": seed,
        "modules_in_scope": int(scope.sum()),
        "seen_pairs": int(len(pairs)),
        "seen_pairs_in_scope": int(in_scope.sum()),
        "candidates": int(len(candidates)),
        "candidates_unseen": int(len(new_pairs)),
        "head_loss": head_loss,
        "propose": config.propose,
        "propose_quantile": config.propose_quantile,
        "propose_threshold": None,
        "proposed": 0,
        "prune": config.prune,
        "prune_quantile": config.prune_quantile,
        "prune_max_count": config.prune_max_count,
        "prune_threshold": None,
        "prunable": 0,
        "pruned": 0,
    }
    add = np.zeros(len(new_pairs), dtype=bool)
    if config.propose:
        threshold = thresholds(seen_scores, seen_window, n_rows, config.propose_quantile, per_layer_pair)  # [L]
        add = new_scores >= threshold[new_window] - _ties(threshold[new_window])
        record.update(propose_threshold=_median_finite(threshold), proposed=int(add.sum()))
    drop = np.zeros(len(pairs), dtype=bool)
    if config.prune:
        threshold = thresholds(seen_scores, seen_window, n_rows, config.prune_quantile, per_layer_pair)
        rare = counts[in_scope] <= config.prune_max_count
        drop[np.flatnonzero(in_scope)] = rare & (seen_scores < threshold[seen_window] - _ties(threshold[seen_window]))
        record.update(prune_threshold=_median_finite(threshold), prunable=int(rare.sum()), pruned=int(drop.sum()))

    keep = ~drop
    out_pairs = np.concatenate([pairs[keep], new_pairs[add]])
    order = np.argsort(out_pairs[:, 0] * PAIR_SHIFT + out_pairs[:, 1], kind="stable")
    record["seconds"] = round(time.perf_counter() - started, 3)
    result = dict(arrays)
    result.update(
        pairs=out_pairs[order],
        counts=np.concatenate([counts[keep], np.zeros(int(add.sum()), dtype=np.int64)])[order],
        window=np.concatenate([window[keep], new_window[add]])[order],
        proposed=np.concatenate([np.zeros(int(keep.sum()), dtype=bool), np.ones(int(add.sum()), dtype=bool)])[order],
        prior=np.array(json.dumps(record)),
    )
    print(prior_summary(record))
    return result


def _median_finite(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else None


def prior_summary(record: dict) -> str:
    """One line: what the prior did."""

    def fmt(x: float | None) -> str:
        return "n/a" if x is None or not math.isfinite(x) else f"{x:.4g}"

    what = f"pair prior ({record['scorer']}, head {record['head']}"
    what += f", table {record['table']})" if record["table"] else ")"
    where = "per layer pair, median" if record["threshold"] == "layer_pair" else "overall"
    parts = [f"{record['candidates']:,} candidate pairs, {record['candidates_unseen']:,} unseen"]
    if record["propose"]:
        parts.append(
            f"proposed {record['proposed']:,} (score >= the {record['propose_quantile']:g} quantile of the "
            f"{record['seen_pairs_in_scope']:,} seen pairs' scores {where}: {fmt(record['propose_threshold'])})"
        )
    if record["prune"]:
        parts.append(
            f"pruned {record['pruned']:,} of {record['prunable']:,} pairs seen <= {record['prune_max_count']} times "
            f"(score < the {record['prune_quantile']:g} quantile {where}: {fmt(record['prune_threshold'])})"
        )
    return f"{what}: " + "; ".join(parts) + f"; {record['seconds']:.1f} s"
