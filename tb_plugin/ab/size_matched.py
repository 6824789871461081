"""Tracks with every arm's filter cut set to the same graph size: the control for an operating point that
moved.

Each arm's filter is cut where it keeps 99 % of target edges on its own valset, but two filters cut so
can keep graphs of different sizes, and a larger graph alone buys the GNN and the track builder more
true edges. So every arm is also measured with its filter cut to keep the baseline's valset edges per
event (chosen on the arm's own valset, never the test events), its GNN run on that graph, the GNN cut
where the arm keeps the baseline's valset target efficiency (the matched rows' reference), and the
tracks rebuilt. Everything runs in memory from the filter's input events with the stages' own event
processors; nothing is written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Data

from stages.edge_classifier.edge_stage import edge_target_mask
from stages.graph_metrics import target_truth_mask
from tb_plugin.ab.operating_points import valset_cut
from tb_plugin.event_store import list_event_files, load_event, require_field
from tb_plugin.stage import Stage

PREFIX = "size_matched"


def filter_scores(stage: Stage, split: str) -> list[tuple[Path, np.ndarray]]:
    """(input event, float [E] filter scores of its whole input graph) for each event of the split."""
    module = stage.inference_module()
    out = []
    for path in list_event_files(stage.config.input_dir, split):
        with torch.inference_mode():
            out.append((path, stage.score(module, load_event(path), path).numpy()))
    return out


def cut_for_edges(scored: list[tuple[Path, np.ndarray]], edges_per_event: float) -> float:
    """The score cut that keeps `edges_per_event` edges per event on average over these events (edges
    are kept when their score is above the cut)."""
    scores = np.sort(np.concatenate([s for _, s in scored]))[::-1]  # descending
    keep = int(round(edges_per_event * len(scored)))
    if keep <= 0 or len(scores) == 0:
        return 1.0
    if keep >= len(scores):
        return 0.0 if scores[-1] > 0 else float(np.nextafter(0.0, -1.0))
    return float(scores[keep])  # strictly above it: the `keep` highest scores (ties aside)


def mean_kept(scored: list[tuple[Path, np.ndarray]], cut: float) -> float:
    return float(np.mean([(s > cut).sum() for _, s in scored])) if scored else float("nan")


def with_cut(stage: Stage, key: str, cut: float) -> Stage:
    """A copy of the stage with one cut key set to a number (its event processor then uses it)."""
    return type(stage)(dataclasses.replace(stage.config, **{key: float(cut)}))


@dataclasses.dataclass
class SizeMatchedChain:
    """Filter at a fixed cut -> GNN -> track building at a fixed cut, one event at a time in memory."""

    points: dict[str, float]
    run: Callable[[Path], Data]  # the filter's input event -> filtered, scored
    build: Callable[[Data, Path], Data]  # the track builder's event processor at the GNN cut
    tracks: Stage


def size_matched_chain(
    edge_filter: Stage, gnn: Stage, tracks: Stage, reference: dict[str, float], efficiency: float
) -> SizeMatchedChain | None:
    """The chain at the baseline's graph size (`reference`'s valset filter edges per event; the arm's own
    for the baseline) and the GNN cut keeping `efficiency` of the valset target truth edges; None when
    the valset leaves nothing to match (no target edge after the filter)."""
    val = filter_scores(edge_filter, "valset")
    own = mean_kept(val, edge_filter.operating_cut())
    budget = reference.get(f"{PREFIX}.valset_edges_per_event", own)
    cut = cut_for_edges(val, budget)
    filter_event = with_cut(edge_filter, "edge_cut", cut).event_processor()
    score_event = gnn.event_processor()

    def run(path: Path) -> Data:
        with torch.inference_mode():
            return score_event(filter_event(load_event(path), path), path)

    arrays = [gnn.scored_arrays(data, path, 0.5) for path, data in ((p, run(p)) for p, _ in val)]
    if not any(a["edge_target"].any() for a in arrays):
        return None
    gnn_cut = valset_cut(arrays, efficiency)
    points = {
        f"{PREFIX}.valset_edges_per_event": budget,
        f"{PREFIX}.own_valset_edges_per_event": own,
        f"{PREFIX}.filter_cut": cut,
        f"{PREFIX}.kept_valset_edges_per_event": mean_kept(val, cut),
        f"{PREFIX}.gnn_cut": gnn_cut,
    }
    builder = with_cut(tracks, "score_cut", gnn_cut)
    return SizeMatchedChain(points, run, builder.event_processor(), builder)


def filter_cells(data: Data, source: Path, edge_filter: Stage) -> dict[str, tuple[float, float]]:
    """Edges kept and target efficiency (relative to the input graph's target truth edges) of one event
    after the size-matched filter: the pruned graph's track_to_edge_map says which truth edges survived."""
    mapping = require_field(data, "track_to_edge_map", source).long()
    target = target_truth_mask(data, edge_filter.config.target_conditions(), source)
    n_edges = int(require_field(data, "edge_index", source).shape[1])
    kept_targets = int(edge_target_mask(mapping, target, n_edges).sum())
    original = load_event(source)
    before = require_field(original, "track_to_edge_map", source).long()
    n_target = int(((before >= 0) & target_truth_mask(original, edge_filter.config.target_conditions(), source)).sum())
    return {"edges_per_event": (n_edges, 1), "target_efficiency": (kept_targets, n_target)}


def track_matches(chain: SizeMatchedChain, data: Data, source: Path) -> Any:
    """The EventMatches of the tracks rebuilt at the chain's GNN cut (None without truth)."""
    return chain.tracks.matches(chain.build(data, source), source)
