"""Graph quality on truth edges, shared by graph construction and edge classification.

A graph is judged against the truth graph `track_edges` [2, T] through `track_to_edge_map` [T] (the
graph edge equal to each truth edge, -1 where the graph lacks it) and `edge_y` [E]:

    efficiency = target truth edges whose graph edge exists (and is kept) / target truth edges
    purity     = true kept edges / kept edges

`kept` [E] is the edge classifier's selection (edge_scores > score_cut); graph construction passes
None (every edge counts). Counts add up over events (`GraphCounts.__add__`), so a split's efficiency
is the ratio of its sums, not a mean of per-event ratios that would weight small events like big ones.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Data

from stages.data_reading.trackml_reader import SHORT_NAMES
from tb_plugin.conditions import Condition, parse_conditions, select
from tb_plugin.event_store import require_field

log = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor


def track_field(name: str) -> str:
    """ACORN's short particle names (pt, eta, ...) mean the truth-edge fields track_particle_*."""
    return f"track_particle_{name}" if name in SHORT_NAMES else name


def target_conditions(
    target_tracks: Mapping[str, Any] | Sequence[Condition] | None, where: str = "key 'target_tracks'"
) -> list[Condition]:
    """Parsed conditions on the track_* fields, from a YAML mapping or already parsed conditions."""
    if not target_tracks:
        return []
    if isinstance(target_tracks, Mapping):
        conditions = parse_conditions(target_tracks, where)
    else:
        conditions = list(target_tracks)
    return [Condition(track_field(c.field), c.op, c.value) for c in conditions]


def target_truth_mask(
    data: Data, conditions: Mapping[str, Any] | Sequence[Condition] | None, source: str = "event"
) -> torch.Tensor:
    """bool [T]: the truth edges whose particle passes `target_tracks` (ACORN syntax, pT in MeV).

    No conditions select every truth edge (ACORN's default). A condition on a field the event lacks
    raises MissingFieldError naming the field and `source`.
    """
    track_edges = require_field(data, "track_edges", source)
    n_truth = int(track_edges.shape[1])
    fields = {
        k: data[k]
        for k in data.keys()
        if k.startswith("track_")
        and k != "track_edges"
        and torch.is_tensor(data[k])
        and data[k].shape[:1] == (n_truth,)
    }
    return select(fields, target_conditions(conditions), n_truth, str(source))


def _np(x: ArrayLike | None) -> np.ndarray | None:
    if x is None:
        return None
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def truth_edge_found(track_to_edge_map: ArrayLike, kept: ArrayLike | None = None) -> np.ndarray:
    """bool [T]: the truth edge is in the graph (and its graph edge is kept, when `kept` [E] is given).

    Per truth edge, so efficiency can be binned in the particle's pT or eta (stages.plots).
    """
    mapping = _np(track_to_edge_map).astype(np.int64)  # [T]
    found = mapping >= 0
    if kept is not None:
        kept = _np(kept).astype(bool)  # [E]
        found[found] = kept[mapping[found]]
    return found


@dataclass
class GraphCounts:
    """Summable counts behind efficiency and purity."""

    n_true: int = 0  # target truth edges
    n_found: int = 0  # target truth edges whose graph edge exists (and is kept)
    n_edges: int = 0  # kept graph edges
    n_true_edges: int = 0  # kept graph edges with edge_y
    n_events: int = 0

    def __add__(self, other: GraphCounts) -> GraphCounts:
        return GraphCounts(
            self.n_true + other.n_true,
            self.n_found + other.n_found,
            self.n_edges + other.n_edges,
            self.n_true_edges + other.n_true_edges,
            self.n_events + other.n_events,
        )

    def rates(self) -> dict[str, Any]:
        """efficiency, purity (None where the denominator is 0) with the counts and edges per event."""
        return {
            "efficiency": self.n_found / self.n_true if self.n_true else None,
            "purity": self.n_true_edges / self.n_edges if self.n_edges else None,
            "n_true": self.n_true,
            "n_found": self.n_found,
            "n_edges": self.n_edges,
            "n_true_edges": self.n_true_edges,
            "n_events": self.n_events,
            "edges_per_event": self.n_edges / self.n_events if self.n_events else None,
        }


def graph_counts(
    track_to_edge_map: ArrayLike, target_mask: ArrayLike | None, edge_y: ArrayLike, kept: ArrayLike | None = None
) -> GraphCounts:
    """Counts of one event; `target_mask` [T] None means every truth edge is a target."""
    found = truth_edge_found(track_to_edge_map, kept)  # [T]
    target = np.ones_like(found) if target_mask is None else _np(target_mask).astype(bool)
    if target.shape != found.shape:
        raise ValueError(
            f"target_mask has shape {target.shape} but track_to_edge_map has shape {found.shape}; they must match"
        )
    edge_y = _np(edge_y).astype(bool)  # [E]
    if kept is not None:
        kept = _np(kept).astype(bool)
        if kept.shape != edge_y.shape:
            raise ValueError(f"kept has shape {kept.shape} but edge_y has shape {edge_y.shape}; they must match")
        edge_y = edge_y[kept]
    return GraphCounts(
        n_true=int(target.sum()),
        n_found=int((found & target).sum()),
        n_edges=int(edge_y.size),
        n_true_edges=int(edge_y.sum()),
        n_events=1,
    )


def graph_efficiency_purity(
    track_to_edge_map: ArrayLike, target_mask: ArrayLike | None, edge_y: ArrayLike, kept: ArrayLike | None = None
) -> dict[str, Any]:
    """efficiency, purity, n_true, n_found, n_edges, n_true_edges, ... of one event (see GraphCounts)."""
    return graph_counts(track_to_edge_map, target_mask, edge_y, kept).rates()


# ------------------------------------------------------------------------------------- a split

PT_BINS_GEV = np.logspace(-1, 2, 16)  # 0.1 .. 100 GeV
ETA_BINS = np.linspace(-4.0, 4.0, 21)
PT1_MEV = 1000.0


@dataclass
class GraphEvaluation:
    """Accumulates a split's graph counts (all truth edges, target truth edges) and per-truth-edge
    arrays for the efficiency plots; `kept` selects the edges that count (None: all)."""

    target_tracks: Mapping[str, Any] | Sequence[Condition] | None = None

    def __post_init__(self) -> None:
        self.all = GraphCounts()
        self.target = GraphCounts()
        self.pt_gev: list[np.ndarray] = []
        self.eta: list[np.ndarray] = []
        self.found: list[np.ndarray] = []
        self.is_target: list[np.ndarray] = []

    def add(self, data: Data, source: str, kept: ArrayLike | None = None) -> None:
        """One event with edge_index, edge_y, track_to_edge_map (and track_particle_pt / _eta for plots)."""
        mapping = require_field(data, "track_to_edge_map", source)
        edge_y = require_field(data, "edge_y", source)
        target = target_truth_mask(data, self.target_tracks, source)
        self.all = self.all + graph_counts(mapping, None, edge_y, kept)
        self.target = self.target + graph_counts(mapping, target, edge_y, kept)
        n = int(mapping.shape[0])
        self.found.append(truth_edge_found(mapping, kept))
        self.is_target.append(_np(target).astype(bool))
        nan = np.full(n, np.nan)
        self.pt_gev.append(
            _np(data.track_particle_pt).astype(np.float64) / 1000.0 if "track_particle_pt" in data else nan
        )
        self.eta.append(_np(data.track_particle_eta).astype(np.float64) if "track_particle_eta" in data else nan)

    def metrics(self) -> dict[str, Any]:
        """efficiency / purity over all truth edges, target_efficiency over target truth edges, graph size."""
        every, target = self.all.rates(), self.target.rates()
        return {
            "events": every["n_events"],
            "efficiency": every["efficiency"],
            "target_efficiency": target["efficiency"],
            "purity": every["purity"],
            "edges_per_event": every["edges_per_event"],
            "true_edges_per_event": every["n_true_edges"] / every["n_events"] if every["n_events"] else None,
            "n_truth_edges": every["n_true"],
            "n_target_truth_edges": target["n_true"],
            "n_target_found": target["n_found"],
            "n_edges": every["n_edges"],
            "n_true_edges": every["n_true_edges"],
        }

    def plot(self, out_dir: str | Path, prefix: str = "graph", title: str = "graph construction") -> list[Path]:
        """Efficiency of truth edges vs the particle's pT and eta: all truth edges and target ones."""
        from stages.plots import plot_efficiency_curves

        if not self.found:
            return []
        pt, eta = np.concatenate(self.pt_gev), np.concatenate(self.eta)
        found, target = np.concatenate(self.found), np.concatenate(self.is_target)
        out_dir = Path(out_dir)
        series_pt = {"all truth edges": (pt, found), "target truth edges": (pt[target], found[target])}
        series_eta = {"all truth edges": (eta, found), "target truth edges": (eta[target], found[target])}
        plots = [
            (series_pt, PT_BINS_GEV, "particle pT [GeV]", out_dir / f"{prefix}_efficiency_vs_pt.png", True),
            (series_eta, ETA_BINS, "particle eta", out_dir / f"{prefix}_efficiency_vs_eta.png", False),
        ]
        written = []
        for series, bins, xlabel, path, logx in plots:
            try:
                written.append(
                    plot_efficiency_curves(
                        series, bins, xlabel, path, logx=logx, title=f"{title}: truth edges in the graph"
                    )
                )
            except ValueError as err:  # a plot must never cost the metrics that are written after it
                log.warning("%s: plot not written: %s", path, err)
        return written
