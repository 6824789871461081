"""Masked detector modules (MDM): which positions are hidden, and what the model sees there.

Training follows BERT: each module position is chosen with probability `rate` (0.5 in the paper);
a chosen token becomes [MASK] 80 % of the time, a random module 10 %, and stays itself 10 %.
Evaluation hides one module per track and ALWAYS replaces it by [MASK]: the public code's
evaluation left the token in place, so the model could read the answer.
"""

from __future__ import annotations

import numpy as np
import torch

from tb_plugin.tokenizer import MASK, N_SPECIAL

IGNORE = -100  # label of positions that are not scored (cross-entropy's ignore_index)


def mask_for_training(
    input_ids: torch.Tensor,
    hit_position: torch.Tensor,
    rate: float,
    vocab_size: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked input_ids, mdm_labels), both [B, L]; labels hold the original token where scored."""
    maskable = hit_position >= 0  # [B, L] module tokens only
    chosen = maskable & (torch.rand(input_ids.shape, generator=generator) < rate)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))
    action = torch.rand(input_ids.shape, generator=generator)  # [B, L]
    to_mask = chosen & (action < 0.8)
    to_random = chosen & (action >= 0.8) & (action < 0.9)
    random_modules = torch.randint(N_SPECIAL, vocab_size, input_ids.shape, generator=generator)
    masked = torch.where(to_mask, torch.full_like(input_ids, MASK), input_ids)
    masked = torch.where(to_random, random_modules, masked)
    return masked, labels


def eval_mask_positions(segment_ids: np.ndarray, hit_position: np.ndarray, seed: int) -> np.ndarray:
    """Bool [P, L]: one module per track (A and B of every pair), chosen uniformly with a fixed seed."""
    rng = np.random.default_rng(seed)
    chosen = np.zeros(hit_position.shape, dtype=bool)
    for segment in (0, 1):
        track = (hit_position >= 0) & (segment_ids == segment)  # [P, L]
        n_hits = track.sum(axis=1)  # [P]
        pick = np.floor(rng.random(len(n_hits)) * n_hits).astype(np.int64)  # [P] which hit of the track
        rank = np.cumsum(track, axis=1) - 1  # [P, L] hit counter along the row
        chosen |= track & (rank == pick[:, None])
    return chosen


def mask_for_eval(input_ids: np.ndarray, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids with every chosen position set to [MASK], labels with the hidden tokens)."""
    labels = np.where(chosen, input_ids, IGNORE)
    return np.where(chosen, MASK, input_ids), labels
