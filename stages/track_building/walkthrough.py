"""`stage: track_building, model: Walkthrough`: ACORN's walkthrough track builder.

Connected components (connected_components.py) make one track of everything the kept edges join, so
a single wrong edge above the cut merges two tracks. The walkthrough keeps the components that are
already tracks and walks through the rest, so that at every junction a track follows its best edge:

1. Keep the edges with `edge_scores > score_cut` (ACORN's key and strict comparison) and orient each
   from its inner hit to its outer hit.
2. Weakly connected components of the kept edges that are simple chains (every hit at most one kept
   edge in and one out, no cycle) are tracks as they are.
3. The other components are walked. Every hit with no kept edge in from a free (not yet walked) hit
   starts a walk; each walk steps along the highest-scoring edge out of its last hit to a free hit,
   and a walked hit is taken. When those walks end, the free hits that now have no free hit before
   them start the next round, until no hit is free. So a branch that loses a junction is walked later
   from its first free hit and becomes a track of its own if it is long enough.
4. Chains and walks with fewer than `min_track_length` hits are not tracks (label -1).

Orientation. The graph contract (stages/graph_construction/truth.py) already writes every edge inner
-> outer by the rank of r^2 + z^2 (ties by hit index), which is what the module map and metric
learning store. Files from elsewhere need not follow it (ACORN's GNN files may hold both directions),
so the walk orients again by that same rank when the event has the positions (hit_x, hit_y, hit_z or
hit_r, hit_z; hit_r alone if that is all there is): a no-op on contract graphs, a fix on the others.
As the rank is a strict order, the oriented graph has no cycle and every round has a start. An event
without positions is walked as its edge_index points; should that hold a cycle, the lowest-index free
hit starts a walk when no hit is free of free predecessors, so the walk still ends.

The walks run in lock-step, vectorised with numpy: each step, every walk proposes its best edge to a
free hit (the out-edges of each hit are sorted once by score, CSR, and a per-hit cursor skips taken
targets, so every edge is looked at once); when walks propose the same hit, the highest-scoring
edge wins, and the losers try their next-best edge at the next step. So who gets a contested hit is
decided by the edge scores, not by which walk happened to go first. Ties (equal scores) go to the
lower hit index: the lower target for a walk's choice, the lower walking hit for a contested target.
Duplicate edges (both directions of a pair, once oriented) are harmless: they only make the
component look branched, and the walk steps over the taken copy.

Outputs, submissions, metrics and plots are those of ConnectedComponents (TrackBuilder): per hit
`hit_track_labels` (0..K-1 in order of each track's lowest hit, -1 = no track), TrackML submissions,
the three matching styles, efficiency_pt1 and the TrackML score.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch_geometric.data import Data

from stages.graph_construction.truth import hit_order, hit_r2z2
from stages.track_building.connected_components import (
    TrackBuilder,
    TrackBuildingConfig,
    graph_arrays,
    number_tracks,
    undirected_components,
)

NO_EDGE = -1


@dataclass(kw_only=True)
class WalkthroughConfig(TrackBuildingConfig):
    """The keys of ConnectedComponents that apply to a walk: input_dir, score_cut, min_track_length,
    matching_fraction, target_tracks, min_particle_hits, write_submission, dataset (checked as there).
    `chains` has no meaning here: the walk always makes chains."""


# ------------------------------------------------------------------------------------- the graph


def event_hit_rank(data: Data, num_nodes: int, source: str | Path) -> np.ndarray | None:
    """int64 [N] inner-to-outer rank of each hit (r^2 + z^2, else r; ties by index), as the graph
    contract orients edges; None when the event has no hit positions."""
    if all(k in data for k in ("hit_x", "hit_y", "hit_z")) or all(k in data for k in ("hit_r", "hit_z")):
        radius, name = hit_r2z2(data), "hit positions"
    elif "hit_r" in data:
        radius, name = data.hit_r, "hit_r"
    else:
        return None
    if tuple(radius.shape) != (num_nodes,):
        raise ValueError(f"{source}: {name} give shape {list(radius.shape)}, expected [{num_nodes}] (one per hit)")
    return hit_order(radius)


def kept_oriented_edges(
    edge_index: np.ndarray, edge_scores: np.ndarray, score_cut: float, hit_rank: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(src, dst, score) [E'] of the edges above the cut, inner -> outer by `hit_rank` (as written when
    None), self loops dropped: a hit before itself would never be free to start a walk."""
    above = edge_scores > score_cut
    src, dst, score = edge_index[0, above], edge_index[1, above], edge_scores[above]
    if hit_rank is not None:
        flip = hit_rank[src] > hit_rank[dst]
        src, dst = np.where(flip, dst, src), np.where(flip, src, dst)
    loop = src == dst
    if loop.any():
        src, dst, score = src[~loop], dst[~loop], score[~loop]
    return src, dst, score


def chain_groups(src: np.ndarray, dst: np.ndarray, num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """(group int64 [N], walk bool [N]): hits of components that are simple chains get their component
    as group (a track as it is), the others -1 and walk True.

    A component is a chain when no hit has two kept edges in or two out and it has one edge fewer
    than hits (so no cycle). An isolated hit is a chain of one, which min_track_length then drops.
    """
    component = undirected_components(np.stack([src, dst]), num_nodes)
    n_components = int(component.max()) + 1 if num_nodes else 0
    size = np.bincount(component, minlength=n_components)
    n_edges = np.bincount(component[src], minlength=n_components)
    branching = (np.bincount(src, minlength=num_nodes) > 1) | (np.bincount(dst, minlength=num_nodes) > 1)
    branched = np.bincount(component[branching], minlength=n_components) > 0
    is_chain = ~branched & (n_edges == size - 1)
    on_chain = is_chain[component]
    return np.where(on_chain, component, -1).astype(np.int64), ~on_chain


# ------------------------------------------------------------------------------------- the walk


@dataclass
class WalkState:
    """The out-edges of the walked hits as CSR, best first, and the walk's progress per hit."""

    indptr: np.ndarray  # int64 [N + 1] out-edges of hit h: positions indptr[h] .. indptr[h + 1] - 1
    target: np.ndarray  # int64 [E'] the outer hit of each sorted edge
    score: np.ndarray  # [E'] its score
    cursor: np.ndarray  # int64 [N] the next out-edge of each hit to try
    taken: np.ndarray  # bool [N] walked (hits outside the walk are taken from the start)
    group: np.ndarray  # int64 [N] the walk of each hit, -1 = none yet
    next_group: int  # the id of the next walk

    @classmethod
    def build(
        cls, src: np.ndarray, dst: np.ndarray, score: np.ndarray, walk: np.ndarray, group: np.ndarray
    ) -> WalkState:
        """Sort the edges once by (src, score descending, dst): the tie-break is the lower target."""
        num_nodes = walk.shape[0]
        order = np.lexsort((dst, -score, src))
        indptr = np.zeros(num_nodes + 1, dtype=np.int64)
        np.cumsum(np.bincount(src, minlength=num_nodes), out=indptr[1:])
        return cls(
            indptr=indptr,
            target=dst[order],
            score=score[order],
            cursor=indptr[:-1].copy(),
            taken=~walk,
            group=group,
            next_group=max(num_nodes, 1),
        )

    def best_free_edges(self, heads: np.ndarray) -> np.ndarray:
        """Per head, the position of its best out-edge to a free hit, NO_EDGE when none is left. The
        cursors only move forward, so over the whole walk each edge is skipped at most once."""
        pos = self.cursor[heads]
        end = self.indptr[heads + 1]
        todo = np.flatnonzero(pos < end)
        while todo.size:
            todo = todo[self.taken[self.target[pos[todo]]]]
            pos[todo] += 1
            todo = todo[pos[todo] < end[todo]]
        self.cursor[heads] = pos
        return np.where(pos < end, pos, NO_EDGE)

    def walk_from(self, starts: np.ndarray) -> None:
        """Walk from every start at once until no walk can step to a free hit. A hit proposed by
        several walks goes to the highest-scoring edge (ties: the lower walking hit); the others
        stay where they are and try their next-best edge at the next step."""
        self.taken[starts] = True
        self.group[starts] = self.next_group + np.arange(starts.size)
        self.next_group += starts.size
        heads = starts
        while heads.size:
            pos = self.best_free_edges(heads)
            moving = pos != NO_EDGE
            heads, pos = heads[moving], pos[moving]
            to = self.target[pos]
            order = np.lexsort((heads, -self.score[pos], to))
            first = np.ones(order.size, dtype=bool)
            first[1:] = to[order[1:]] != to[order[:-1]]
            won = order[first]
            self.taken[to[won]] = True
            self.group[to[won]] = self.group[heads[won]]
            lost = np.ones(heads.size, dtype=bool)
            lost[won] = False
            heads = np.concatenate([to[won], heads[lost]])


def walk_groups(src: np.ndarray, dst: np.ndarray, score: np.ndarray, walk: np.ndarray, group: np.ndarray) -> np.ndarray:
    """`group` with every hit of `walk` put on a walk (ids from N up, after the components').

    Rounds: the free hits with no free hit before them start walks; the edges that touch a taken hit
    are dropped before the next round, so each round costs the edges still live.
    """
    state = WalkState.build(src, dst, score, walk, group.copy())
    while True:
        live = ~state.taken[src] & ~state.taken[dst]
        src, dst = src[live], dst[live]
        free = ~state.taken
        if not free.any():
            return state.group
        has_free_before = np.zeros(walk.shape[0], dtype=bool)
        has_free_before[dst] = True
        starts = np.flatnonzero(free & ~has_free_before)
        if starts.size == 0:  # only a cycle is left (edges not oriented): break it at its lowest hit
            starts = np.flatnonzero(free)[:1]
        state.walk_from(starts)


def walkthrough_labels(
    edge_index: np.ndarray,
    edge_scores: np.ndarray,
    num_nodes: int,
    score_cut: float,
    min_track_length: int,
    hit_rank: np.ndarray | None = None,
) -> np.ndarray:
    """Per-hit track label (0..K-1 in order of each track's lowest hit, -1 = no track): the simple
    chains of the kept edges, then the walks through the rest (module docstring). `hit_rank` [N]
    orients the edges inner -> outer (event_hit_rank); None takes edge_index's direction as it is."""
    src, dst, score = kept_oriented_edges(edge_index, edge_scores, score_cut, hit_rank)
    group, walk = chain_groups(src, dst, num_nodes)
    if walk.any():
        on_walk = walk[src]
        group = walk_groups(src[on_walk], dst[on_walk], score[on_walk], walk, group)
    return number_tracks(group, min_track_length)


# ------------------------------------------------------------------------------------- the stage


class Walkthrough(TrackBuilder):
    """Infer, evaluate and submissions as ConnectedComponents; the labels come from walkthrough_labels."""

    config_class = WalkthroughConfig
    config: WalkthroughConfig

    def hit_labels(self, data: Data, source: Path) -> np.ndarray:
        edge_index, edge_scores, num_nodes = graph_arrays(data, source)
        return walkthrough_labels(
            edge_index,
            edge_scores,
            num_nodes,
            self.config.score_cut,
            self.fragment_length,
            hit_rank=event_hit_rank(data, num_nodes, source),
        )
