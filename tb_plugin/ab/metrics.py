"""Per-event metrics of one arm's test events, as (numerator, denominator) pairs.

The A/B statistics resample events, so every metric is kept per event in a form that pools the way the
stages pool it: a rate is sum(num) / sum(den) over any set of events (ACORN pools counts, not rates),
and a per-event mean (AUC, edges per event, TrackML score) has den = 1. An event where a metric is
undefined (no truth, one class) gets the empty cell 0 / 0, so every metric has one cell per event
and the two arms stay aligned event by event. The values come from the same
functions the stages' own `tb eval` uses, so the A/B numbers and the stage metrics agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stages.edge_classifier.interaction_gnn import InteractionGNN
from stages.graph_metrics import graph_counts, target_truth_mask
from stages.track_building.connected_components import ConnectedComponents
from tb_plugin.event_store import list_event_files, load_event
from tb_plugin.pretraining.metrics import roc_auc
from tb_plugin.stage import Stage

# (name, label, higher_is_better), in report order
METRICS: list[tuple[str, str, bool]] = [
    ("graph_construction.target_efficiency", "graph: efficiency, pT > 1 GeV truth edges", True),
    ("graph_construction.efficiency", "graph: efficiency, all truth edges", True),
    ("graph_construction.purity", "graph: purity", True),
    ("graph_construction.edges_per_event", "graph: edges per event", False),
    ("edge_classifier.auc", "edges: ROC AUC (mean over events)", True),
    ("edge_classifier.target_efficiency", "edges: efficiency, pT > 1 GeV", True),
    ("edge_classifier.target_purity", "edges: purity, pT > 1 GeV", True),
    ("edge_classifier.efficiency", "edges: efficiency, all true edges", True),
    ("edge_classifier.purity", "edges: purity, all true edges", True),
    ("track_building.two_way.efficiency", "tracks: efficiency (two_way)", True),
    ("track_building.two_way.efficiency_pt1", "tracks: efficiency, pT > 1 GeV, >= 5 hits (two_way)", True),
    ("track_building.two_way.fake_rate", "tracks: fake rate (two_way)", False),
    ("track_building.two_way.duplicate_rate", "tracks: duplicate rate (two_way)", False),
    ("track_building.trackml_score", "tracks: TrackML score (mean over events)", True),
]

TRACK_METRICS = [name for name, _, _ in METRICS if name.startswith("track_building.")]
ROC_EDGES_PER_EVENT = 20_000  # edges per event kept for the ROC plot (a fixed random subset)


@dataclass
class ArmEvents:
    """Per-event (num, den) of every metric, plus what the plots need."""

    event_ids: list[str] = field(default_factory=list)
    per_event: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    roc_scores: list[np.ndarray] = field(default_factory=list)
    roc_labels: list[np.ndarray] = field(default_factory=list)
    particle_pt_gev: list[np.ndarray] = field(default_factory=list)
    particle_reconstructed: list[np.ndarray] = field(default_factory=list)

    def add(self, name: str, num: float, den: float) -> None:
        entry = self.per_event.setdefault(name, {"num": [], "den": []})
        entry["num"].append(float(num))
        entry["den"].append(float(den))

    def pooled(self) -> dict[str, float | None]:
        out = {}
        for name, entry in self.per_event.items():
            den = float(np.sum(entry["den"]))
            out[name] = float(np.sum(entry["num"])) / den if den else None
        return out


def _event_id(path: Path) -> str:
    return path.stem.removeprefix("event")


def stage_of_kind(stages: list[Stage], kind: str) -> Stage | None:
    """The last stage of this kind (`stage:` key) in an arm."""
    found = [s for s in stages if s.config.stage == kind]
    return found[-1] if found else None


def collect_arm_events(stages: list[Stage], split: str = "testset") -> ArmEvents:
    """Per-event metrics of the arm's graph construction, edge classifier and track building outputs."""
    out = ArmEvents()
    graph = stage_of_kind(stages, "graph_construction")
    gnn = stage_of_kind(stages, "edge_classifier")
    tracks = stage_of_kind(stages, "track_building")
    last = tracks or gnn or graph
    if last is None:
        raise ValueError("the A/B arm has no graph_construction, edge_classifier or track_building stage to measure")
    files = list_event_files(last.stage_dir, split)
    if not files:
        raise FileNotFoundError(f"no event files in {last.stage_dir / split}: the arm's stages have not run")
    rng = np.random.default_rng(0)
    for path in files:
        out.event_ids.append(_event_id(path))
        if graph is not None:
            _graph_metrics(out, graph, graph.stage_dir / split / path.name)
        if gnn is not None:
            _edge_metrics(out, gnn, gnn.stage_dir / split / path.name, rng)
        if tracks is not None:
            _track_metrics(out, tracks, tracks.stage_dir / split / path.name)
    return out


def _graph_metrics(out: ArmEvents, stage: Stage, path: Path) -> None:
    data = load_event(path)
    mapping, edge_y = data.track_to_edge_map, data.edge_y
    target = target_truth_mask(data, stage.config.target_tracks, str(path))
    every = graph_counts(mapping, None, edge_y)
    targeted = graph_counts(mapping, target, edge_y)
    out.add("graph_construction.target_efficiency", targeted.n_found, targeted.n_true)
    out.add("graph_construction.efficiency", every.n_found, every.n_true)
    out.add("graph_construction.purity", every.n_true_edges, every.n_edges)
    out.add("graph_construction.edges_per_event", every.n_edges, 1)


def _edge_metrics(out: ArmEvents, stage: InteractionGNN, path: Path, rng: np.random.Generator) -> None:
    a = stage.event_arrays(path)
    kept, y, tgt, scores = a["kept"], a["edge_y"], a["edge_target"], a["scores"]
    defined = 0 < y.sum() < len(y)  # an event of one class has no AUC: an empty cell (0 / 0)
    out.add("edge_classifier.auc", roc_auc(scores, y) if defined else 0.0, 1 if defined else 0)
    out.add("edge_classifier.target_efficiency", a["truth_kept"].sum(), a["truth_in_graph"].sum())
    out.add("edge_classifier.target_purity", (kept & tgt).sum(), (kept & (tgt | ~y)).sum())
    out.add("edge_classifier.efficiency", (kept & y).sum(), y.sum())
    out.add("edge_classifier.purity", (kept & y).sum(), kept.sum())
    chosen = rng.permutation(len(y))[:ROC_EDGES_PER_EVENT]
    out.roc_scores.append(scores[chosen])
    out.roc_labels.append(y[chosen])


def _track_metrics(out: ArmEvents, stage: ConnectedComponents, path: Path) -> None:
    matches = stage.event_matches(path)
    if matches is None:  # no truth: empty cells keep the events of both arms aligned
        for name in TRACK_METRICS:
            out.add(name, 0, 0)
        return
    two_way, two_way_pt1 = matches.counts["two_way"], matches.counts_pt1["two_way"]
    out.add("track_building.two_way.efficiency", two_way.n_reconstructed_particles, two_way.n_particles)
    out.add("track_building.two_way.efficiency_pt1", two_way_pt1.n_reconstructed_particles, two_way_pt1.n_particles)
    out.add("track_building.two_way.fake_rate", two_way.n_tracks - two_way.n_matched_tracks, two_way.n_tracks)
    out.add("track_building.two_way.duplicate_rate", two_way.n_duplicate_tracks, two_way.n_reconstructed_particles)
    score = matches.trackml_score
    out.add("track_building.trackml_score", score if score is not None else 0.0, 1 if score is not None else 0)
    out.particle_pt_gev.append(matches.particles["pt_gev"].to_numpy())
    out.particle_reconstructed.append(matches.particles["reconstructed_two_way"].to_numpy())


def metric_specs() -> list[dict[str, Any]]:
    return [{"name": n, "label": label, "higher_is_better": better} for n, label, better in METRICS]
