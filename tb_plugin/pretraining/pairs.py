"""Track pairs `[CLS] A [SEP] B [SEP]` and the NTP label "does A have higher pT than B".

Pairs are drawn within an event, like the paper's. Labels are balanced exactly by choosing which
track goes first (the public code trained a different, 30 %-positive task under the NTP name).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tb_plugin.pretraining.tracks import TrackSet
from tb_plugin.tokenizer import CLS, PAD, SEP


@dataclass
class PairSet:
    a: np.ndarray  # [P] index of track A in its TrackSet
    b: np.ndarray  # [P] index of track B
    label: np.ndarray  # [P] float32, 1.0 when pt[A] > pt[B]

    def __len__(self) -> int:
        return len(self.a)


def make_pairs(tracks: TrackSet, seed: int) -> PairSet:
    """One pair per track: its partner is its successor in a seeded shuffle of the event's tracks.

    Pairs of equal pT carry no label and are dropped; the order of the others is set so that exactly
    half of the labels (rounded down) are positive.
    """
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(tracks)), tracks.event_id))  # shuffled within each event
    event = tracks.event_id[order]
    last = np.r_[event[1:] != event[:-1], True]  # last track of each event
    first_index = np.maximum.accumulate(np.where(np.r_[True, event[1:] != event[:-1]], np.arange(len(order)), 0))
    successor = np.where(last, first_index, np.arange(len(order)) + 1)  # cyclic within the event
    a, b = order, order[successor]
    keep = (a != b) & (tracks.pt[a] != tracks.pt[b])
    a, b = a[keep], b[keep]
    want_positive = rng.permutation(len(a)) < len(a) // 2
    swap = (tracks.pt[a] > tracks.pt[b]) != want_positive
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    return PairSet(a=a, b=b, label=(tracks.pt[a] > tracks.pt[b]).astype(np.float32))


def sequence_length(max_hits: int) -> int:
    return 2 * max_hits + 3


def layout_pairs(tracks: TrackSet, pairs: PairSet) -> dict[str, np.ndarray]:
    """Token layout of every pair, packed left: `[CLS] A [SEP] B [SEP] [PAD]...`.

    Returns input_ids, segment_ids [P, L] int64, attention_mask [P, L] bool, and hit_position
    [P, L] int64 (index of the hit within its track, -1 on special tokens) for masking and metrics.
    """
    n, max_hits = len(pairs), tracks.max_hits
    length = sequence_length(max_hits)
    len_a, len_b = tracks.length[pairs.a], tracks.length[pairs.b]  # [P]
    col = np.arange(length)[None, :]  # [1, L]
    sep_a, sep_b = (len_a + 1)[:, None], (len_a + len_b + 2)[:, None]  # [P, 1]
    in_a = (col >= 1) & (col < sep_a)  # [P, L]
    in_b = (col > sep_a) & (col < sep_b)
    rows = np.broadcast_to(np.arange(n)[:, None], (n, length))

    input_ids = np.full((n, length), PAD, dtype=np.int64)  # [P, L]
    input_ids[:, 0] = CLS
    input_ids[in_a] = tracks.tokens[pairs.a[rows[in_a]], (col - 1).repeat(n, 0)[in_a]]
    input_ids[in_b] = tracks.tokens[pairs.b[rows[in_b]], (col - sep_a - 1)[in_b]]
    input_ids[col == sep_a] = SEP
    input_ids[col == sep_b] = SEP

    hit_position = np.full((n, length), -1, dtype=np.int64)
    hit_position[in_a] = (col - 1).repeat(n, 0)[in_a]
    hit_position[in_b] = (col - sep_a - 1)[in_b]
    segment_ids = ((col > sep_a) & (col <= sep_b)).astype(np.int64)
    return {
        "input_ids": input_ids,
        "segment_ids": segment_ids,
        "attention_mask": col <= sep_b,
        "hit_position": hit_position,
    }
