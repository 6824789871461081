"""Tracks as sentences of module tokens: truth tracks of feature-store events, or the candidates of a
track-building stage (`candidate_tracks`, for data without truth).

A track is the module tokens of one particle's hits ordered along its trajectory, i.e. by distance
from its production vertex (the public code kept hit_id order, which is not trajectory order). Only
what ACORN-style files carry is used: `track_edges` say which hits belong to a particle, the
`track_particle_*` fields give its vertex and pT, so events written by ACORN's own reader work too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from torch_geometric.data import Data

from tb_plugin.atomic import atomic_path
from tb_plugin.event_store import MissingFieldError, require_field
from tb_plugin.geometry import Detector
from tb_plugin.tokenizer import PAD, ModuleTokenizer

LongTracks = Literal["truncate", "split"]
CANDIDATE_LABELS = "hit_track_labels"  # what a track-building stage writes: the candidate of each hit, -1 for none
FIELD_TESLA = 2.0  # the solenoid's central field, for a candidate's pT from its radius of curvature


@dataclass
class TrackSet:
    """Padded token sequences of many tracks with what the tasks need about each."""

    tokens: np.ndarray  # [K, max_hits] int64, PAD after the end
    length: np.ndarray  # [K] int64
    pt: np.ndarray  # [K] float32, MeV
    event_id: np.ndarray  # [K] int64
    particle_id: np.ndarray  # [K] int64

    def __len__(self) -> int:
        return len(self.length)

    @property
    def max_hits(self) -> int:
        return self.tokens.shape[1]

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **self.__dict__)

    @classmethod
    def load(cls, path: str | Path) -> TrackSet:
        with np.load(path) as arrays:
            return cls(**{k: arrays[k] for k in ("tokens", "length", "pt", "event_id", "particle_id")})

    @classmethod
    def concat(cls, sets: list[TrackSet], max_hits: int) -> TrackSet:
        if not sets:
            return cls(
                np.zeros((0, max_hits), np.int64), *(np.zeros(0, t) for t in (np.int64, np.float32, np.int64, np.int64))
            )
        return cls(
            *(
                np.concatenate([getattr(s, k) for s in sets])
                for k in ("tokens", "length", "pt", "event_id", "particle_id")
            )
        )


def particle_hits(data: Data, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(hit, particle_id, vertex [3], pt) per hit that belongs to a truth edge, one row per hit."""
    edges = require_field(data, "track_edges", source).numpy()  # [2, T]
    pid = require_field(data, "track_particle_id", source).numpy()  # [T]
    pt = require_field(data, "track_particle_pt", source).numpy()  # [T]
    if "track_particle_vx" in data:
        vertex = np.stack([data[f"track_particle_v{c}"].numpy() for c in "xyz"], axis=1)  # [T, 3]
    else:  # ACORN files without vertices: order from the origin, exact for prompt particles
        vertex = np.zeros((len(pid), 3), np.float32)
    hit = np.concatenate([edges[0], edges[1]])  # [2T]
    rows = np.concatenate([np.arange(len(pid))] * 2)  # [2T] the edge each endpoint came from
    hit, first = np.unique(hit, return_index=True)
    rows = rows[first]
    return hit, pid[rows], vertex[rows], pt[rows]


def circle_pt(x: np.ndarray, y: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """float64 [n] pT (MeV) of each candidate from the circle through its hits in x-y (the algebraic
    least-squares fit, per candidate): pT = 0.3 B R, with R in mm giving MeV. A candidate with fewer
    than three hits, or on a straight line, gets +inf (stiffer than any)."""
    pt = np.full(n, np.inf)
    for k in range(n):
        at = owner == k
        if at.sum() < 3:
            continue
        a = np.stack([x[at], y[at], np.ones(int(at.sum()))], axis=1)  # [h, 3]
        b = x[at] ** 2 + y[at] ** 2  # [h]
        (c0, c1, c2), _, rank, _ = np.linalg.lstsq(a, b, rcond=None)
        radius2 = c2 + (c0 / 2) ** 2 + (c1 / 2) ** 2
        if rank == 3 and np.isfinite(radius2) and radius2 > 0:
            pt[k] = 0.3 * FIELD_TESLA * float(np.sqrt(radius2))
    return pt


def candidate_tracks(
    data: Data, tokenizer: ModuleTokenizer, min_hits: int, max_hits: int, long_tracks: LongTracks, source: str
) -> TrackSet:
    """The track candidates a track-building stage reconstructed (`hit_track_labels`), as sentences: no
    truth needed, so pretraining can learn from real data. Hits are ordered by distance from the
    origin (no vertex is known) and pT comes from a circle fit (circle_pt), for the NTP task. The
    `particle_id` of a candidate is its label."""
    labels = require_field(data, CANDIDATE_LABELS, source).numpy()  # [N]
    hit = np.flatnonzero(labels >= 0)
    module = hit_module_index(data, tokenizer.detector, source)[hit]
    if tokenizer.volumes is not None:
        inside = np.isin(require_field(data, "hit_volume_id", source).numpy()[hit], tokenizer.volumes)
        hit, module = hit[inside], module[inside]
    label = labels[hit]
    x, y, z = (data[f"hit_{c}"].numpy().astype(np.float64)[hit] for c in "xyz")
    ids, owner = np.unique(label, return_inverse=True)
    pt = circle_pt(x, y, owner, len(ids))[owner]  # [H]
    position = np.stack([x, y, z], axis=1)  # [H, 3] from the origin
    return sentences(label, pt, module, position, tokenizer, min_hits, max_hits, long_tracks, data)


def hit_module_index(data: Data, detector: Detector, source: str) -> np.ndarray:
    """[N] dense module index of every hit: `hit_module_index` where the file has it (our reader),
    else from the TrackML ids, which is what ACORN's TrackML reader writes (hit_volume_id, hit_layer_id,
    hit_module_id)."""
    if "hit_module_index" in data:
        return data.hit_module_index.numpy()
    names = ("hit_volume_id", "hit_layer_id", "hit_module_id")
    missing = [n for n in names if n not in data]
    if missing:
        raise MissingFieldError(
            f"{source}: needs 'hit_module_index' or the fields {', '.join(names)} (missing: {', '.join(missing)})"
        )
    return np.asarray(detector.index_strict(*(data[n].numpy() for n in names)), dtype=np.int64)


def event_tracks(
    data: Data, tokenizer: ModuleTokenizer, min_hits: int, max_hits: int, long_tracks: LongTracks, source: str
) -> TrackSet:
    """All tracks of one event with min_hits..max_hits hits inside the tokenizer's volumes."""
    hit, pid, vertex, pt = particle_hits(data, source)
    module = hit_module_index(data, tokenizer.detector, source)[hit]  # [H]
    if tokenizer.volumes is not None:  # e.g. the paper's pixel-only tracks
        inside = np.isin(require_field(data, "hit_volume_id", source).numpy()[hit], tokenizer.volumes)
        hit, pid, vertex, pt, module = hit[inside], pid[inside], vertex[inside], pt[inside], module[inside]
    pos = np.stack([data.hit_x.numpy()[hit], data.hit_y.numpy()[hit], data.hit_z.numpy()[hit]], axis=1)  # [H, 3]
    return sentences(pid, pt, module, pos - vertex, tokenizer, min_hits, max_hits, long_tracks, data)


def sentences(
    pid: np.ndarray,
    pt: np.ndarray,
    module: np.ndarray,
    from_vertex: np.ndarray,
    tokenizer: ModuleTokenizer,
    min_hits: int,
    max_hits: int,
    long_tracks: LongTracks,
    data: Data,
) -> TrackSet:
    """Tracks of one event as padded token rows: hits [H] grouped by pid, ordered by their distance
    from the vertex (`from_vertex` [H, 3]), cut to max_hits (or split), those under min_hits dropped."""
    distance = np.linalg.norm(from_vertex, axis=1)  # [H]
    order = np.lexsort((distance, pid))
    pid, pt, tokens = pid[order], pt[order], tokenizer.encode(module[order])

    starts = np.flatnonzero(np.r_[True, pid[1:] != pid[:-1]])  # first hit of each particle
    lengths = np.diff(np.r_[starts, len(pid)])
    if long_tracks == "split":  # chunks of max_hits; a short last chunk is kept if it is long enough
        n_chunks = -(-lengths // max_hits)  # [P] ceil
        owner = np.repeat(np.arange(len(starts)), n_chunks)  # [C] particle of each chunk
        nth = np.arange(len(owner)) - np.repeat(np.cumsum(n_chunks) - n_chunks, n_chunks)  # [C]
        starts, lengths = starts[owner] + nth * max_hits, lengths[owner] - nth * max_hits
    lengths = np.minimum(lengths, max_hits)
    keep = lengths >= min_hits
    starts, lengths = starts[keep], lengths[keep]

    padded = np.full((len(starts), max_hits), PAD, dtype=np.int64)  # [K, max_hits]
    column = np.arange(max_hits)
    inside = column[None, :] < lengths[:, None]  # [K, max_hits]
    padded[inside] = tokens[(starts[:, None] + column[None, :])[inside]]
    event_id = event_number(data)
    return TrackSet(
        tokens=padded,
        length=lengths.astype(np.int64),
        pt=pt[starts].astype(np.float32),
        event_id=np.full(len(starts), event_id, dtype=np.int64),
        particle_id=pid[starts].astype(np.int64),
    )


def event_number(data: Data) -> int:
    """ACORN stores the id as a zero-padded string, and as a one-element list after GNN inference."""
    event_id = getattr(data, "event_id", -1)
    if isinstance(event_id, (list, tuple)):
        event_id = event_id[0]
    return int(event_id)
