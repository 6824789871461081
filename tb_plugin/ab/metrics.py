"""Per-event metrics of one arm's test events, as (numerator, denominator) pairs.

The A/B statistics resample events, so every metric is kept per event in a form that pools the way the
stages pool it: a rate is sum(num) / sum(den) over any set of events (ACORN pools counts, not rates),
and a per-event mean (AUC, edges per event, TrackML score) has den = 1. An event where a metric is
undefined (no truth, one class) gets the empty cell 0 / 0, so every metric has one cell per event
and the two arms stay aligned event by event. The values come from the same
functions the stages' own `tb eval` uses, so the A/B numbers and the stage metrics agree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch_geometric.data import Data

from stages.edge_classifier.operating_point import cut_for_efficiency
from stages.graph_metrics import graph_counts, target_truth_mask
from tb_plugin.ab.operating_points import target_count, valset_arrays, valset_cut, valset_efficiency
from tb_plugin.ab.size_matched import PREFIX, SizeMatchedChain, filter_cells, size_matched_chain, track_matches
from tb_plugin.event_store import list_event_files, load_event
from tb_plugin.pretraining.metrics import roc_auc
from tb_plugin.stage import Stage

# (name, label, higher_is_better), in report order. "filter" is an edge_classifier stage before the last one
# (ACORN's Filter); "at95" / "at99" rows put each arm at the cut that keeps 95 % / 99 % of the target
# truth edges on its own valset; "matched" track rows build tracks at the GNN cut that gives each arm the
# baseline's valset target efficiency of the same seed; "size_matched" rows first cut each arm's filter to the
# baseline's valset edges per event (see collect_arm_events).
METRICS: list[tuple[str, str, bool]] = [
    ("graph_construction.target_efficiency", "graph: efficiency, pT > 1 GeV truth edges", True),
    ("graph_construction.efficiency", "graph: efficiency, all truth edges", True),
    ("graph_construction.purity", "graph: purity", True),
    ("graph_construction.edges_per_event", "graph: edges per event", False),
    ("graph_construction.at95.edges_per_event", "graph at 95 % valset efficiency: edges per event", False),
    ("graph_construction.at95.target_efficiency", "graph at 95 % valset efficiency: test efficiency, pT > 1 GeV", True),
    (
        "graph_construction.at_edges.target_efficiency",
        "graph at the baseline's valset edges per event: efficiency, pT > 1 GeV",
        True,
    ),
    ("edge_filter.target_efficiency", "filter: efficiency, pT > 1 GeV truth edges of its input graph", True),
    ("edge_filter.purity", "filter: purity, all true edges", True),
    ("edge_filter.edges_per_event", "filter: edges per event kept", False),
    ("edge_filter.at99.target_purity", "filter at 99 % valset efficiency: purity, pT > 1 GeV", True),
    ("edge_filter.at99.edges_per_event", "filter at 99 % valset efficiency: edges per event", False),
    ("edge_filter.at95.target_purity", "filter at 95 % valset efficiency: purity, pT > 1 GeV", True),
    ("edge_classifier.auc", "edges: ROC AUC (mean over events)", True),
    ("edge_classifier.target_efficiency", "edges: efficiency, pT > 1 GeV", True),
    ("edge_classifier.target_purity", "edges: purity, pT > 1 GeV", True),
    ("edge_classifier.efficiency", "edges: efficiency, all true edges", True),
    ("edge_classifier.purity", "edges: purity, all true edges", True),
    ("edge_classifier.at95.target_purity", "edges at 95 % valset efficiency: purity, pT > 1 GeV", True),
    ("edge_classifier.at95.target_efficiency", "edges at 95 % valset efficiency: test efficiency, pT > 1 GeV", True),
    ("edge_classifier.at99.target_purity", "edges at 99 % valset efficiency: purity, pT > 1 GeV", True),
    ("edge_classifier.at99.target_efficiency", "edges at 99 % valset efficiency: test efficiency, pT > 1 GeV", True),
    ("track_building.two_way.efficiency", "tracks: efficiency (two_way)", True),
    ("track_building.two_way.efficiency_pt1", "tracks: efficiency, pT > 1 GeV, >= 5 hits (two_way)", True),
    ("track_building.two_way.fake_rate", "tracks: fake rate (two_way)", False),
    ("track_building.two_way.duplicate_rate", "tracks: duplicate rate (two_way)", False),
    ("track_building.trackml_score", "tracks: TrackML score (mean over events)", True),
    ("track_building.matched.two_way.efficiency", "tracks at matched GNN efficiency: efficiency (two_way)", True),
    ("track_building.matched.two_way.efficiency_pt1", "tracks at matched GNN efficiency: efficiency, pT > 1 GeV", True),
    ("track_building.matched.two_way.fake_rate", "tracks at matched GNN efficiency: fake rate (two_way)", False),
    (
        "track_building.matched.two_way.duplicate_rate",
        "tracks at matched GNN efficiency: duplicate rate (two_way)",
        False,
    ),
    ("track_building.matched.trackml_score", "tracks at matched GNN efficiency: TrackML score", True),
    (
        "edge_filter.size_matched.edges_per_event",
        "filter cut to the baseline's valset graph size: test edges per event",
        False,
    ),
    (
        "edge_filter.size_matched.target_efficiency",
        "filter cut to the baseline's valset graph size: efficiency, pT > 1 GeV",
        True,
    ),
    (
        "track_building.size_matched.two_way.efficiency",
        "tracks at the baseline's graph size: efficiency (two_way)",
        True,
    ),
    (
        "track_building.size_matched.two_way.efficiency_pt1",
        "tracks at the baseline's graph size: efficiency, pT > 1 GeV",
        True,
    ),
    (
        "track_building.size_matched.two_way.fake_rate",
        "tracks at the baseline's graph size: fake rate (two_way)",
        False,
    ),
    (
        "track_building.size_matched.two_way.duplicate_rate",
        "tracks at the baseline's graph size: duplicate rate (two_way)",
        False,
    ),
    ("track_building.size_matched.trackml_score", "tracks at the baseline's graph size: TrackML score", True),
]
METRIC_NAMES = frozenset(name for name, _, _ in METRICS)
OPERATING_POINTS = {"at95": 0.95, "at99": 0.99}  # valset target efficiencies of the matched rows

TRACK_METRICS = (
    "two_way.efficiency",
    "two_way.efficiency_pt1",
    "two_way.fake_rate",
    "two_way.duplicate_rate",
    "trackml_score",
)
ROC_EDGES_PER_EVENT = 20_000  # edges per event kept for the ROC plot (a fixed random subset)


@dataclass
class ArmEvents:
    """Per-event (num, den) of every metric, plus what the plots need and the matched operating point."""

    event_ids: list[str] = field(default_factory=list)
    per_event: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    roc_scores: list[np.ndarray] = field(default_factory=list)
    roc_labels: list[np.ndarray] = field(default_factory=list)
    particle_pt_gev: list[np.ndarray] = field(default_factory=list)
    particle_reconstructed: list[np.ndarray] = field(default_factory=list)
    operating_points: dict[str, float] = field(default_factory=dict)  # name -> cut or valset efficiency

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


def edge_filter_stage(stages: list[Stage]) -> Stage | None:
    """An edge_classifier stage before the last one: the filter that prunes the graph for the GNN."""
    scoring = [s for s in stages if s.config.stage == "edge_classifier"]
    return scoring[-2] if len(scoring) > 1 else None


# ------------------------------------------------------------------------------------- collecting


@dataclass
class ArmStages:
    """The stages of an arm the metrics read, by role (None where the pipeline has none)."""

    graph: Stage | None
    edge_filter: Stage | None
    gnn: Stage | None
    tracks: Stage | None

    @classmethod
    def of(cls, stages: list[Stage]) -> ArmStages:
        return cls(
            stage_of_kind(stages, "graph_construction"),
            edge_filter_stage(stages),
            stage_of_kind(stages, "edge_classifier"),
            stage_of_kind(stages, "track_building"),
        )


def collect_arm_events(
    stages: list[Stage], split: str = "testset", reference: dict[str, float] | None = None
) -> ArmEvents:
    """Per-event metrics of the arm's graph construction, filter, edge classifier and track building outputs.

    `reference` is the baseline arm's `operating_points` of the same seed (None for the baseline arm
    itself). The matched track rows rebuild the tracks in memory at the GNN cut that keeps the
    baseline's valset target efficiency on this arm's valset, so the baseline's matched rows repeat its
    fixed-cut rows and every other arm is moved to the baseline's operating point. The size-matched rows
    (size_matched.py) first cut the arm's filter to the baseline's valset edges per event. A graph
    builder with an operating curve (metric learning's radius) is likewise compared at the baseline's
    valset edges per event, and at 95 % valset efficiency.
    """
    reference = reference or {}
    out = ArmEvents()
    arm = ArmStages.of(stages)
    last = arm.tracks or arm.gnn or arm.graph
    if last is None:
        raise ValueError("the A/B arm has no graph_construction, edge_classifier or track_building stage to measure")
    files = list_event_files(last.stage_dir, split)
    if not files:
        raise FileNotFoundError(f"no event files in {last.stage_dir / split}: the arm's stages have not run")
    val = {
        prefix: valset_arrays(stage)
        for prefix, stage in (("edge_filter", arm.edge_filter), ("edge_classifier", arm.gnn))
        if stage is not None
    }
    cuts = {}
    for prefix, arrays in val.items():
        for name, efficiency in OPERATING_POINTS.items():
            cuts[f"{prefix}.{name}"] = out.operating_points[f"{prefix}.{name}.cut"] = valset_cut(arrays, efficiency)
    curve = GraphCurve(arm.graph, reference, out.operating_points) if hasattr(arm.graph, "scored_graph") else None
    build, sized = matched_chains(out, arm, val.get("edge_classifier"), reference)
    rng = np.random.default_rng(0)
    for path in files:
        out.event_ids.append(_event_id(path))
        if arm.graph is not None:
            _graph_metrics(out, arm.graph, arm.graph.stage_dir / split / path.name)
        if curve is not None:
            curve.add(out, split, path.name)
        if arm.edge_filter is not None:
            _filter_metrics(out, arm.edge_filter, arm.edge_filter.stage_dir / split / path.name, cuts)
        if arm.gnn is not None:
            _edge_metrics(out, arm.gnn, arm.gnn.stage_dir / split / path.name, rng, cuts)
        if arm.tracks is not None:
            matches = arm.tracks.event_matches(arm.tracks.stage_dir / split / path.name)
            _track_metrics(out, "track_building", matches, plots=True)
        if build is not None:
            source = arm.gnn.stage_dir / split / path.name
            _track_metrics(out, "track_building.matched", arm.tracks.matches(build(load_event(source), source), source))
        if sized is not None:
            _size_matched_metrics(
                out, sized, arm.edge_filter, Path(arm.edge_filter.config.input_dir) / split / path.name
            )
    return out


def matched_chains(
    out: ArmEvents, arm: ArmStages, gnn_val: list[dict[str, Any]] | None, reference: dict[str, float]
) -> tuple[Callable[[Data, Path], Data] | None, SizeMatchedChain | None]:
    """The track builder at the matched GNN cut, and the size-matched chain when the arm has a filter;
    their operating points go into `out`. (None, None) without a GNN and track building, or when the
    baseline's GNN keeps no valset target edge at its cut (briefly trained, as in
    benchmarks/gpu_check.sh): there is no operating point to match, so the matched rows are left out."""
    if arm.tracks is None or arm.gnn is None:
        return None, None
    efficiency = reference.get("matched.reference_efficiency")
    if efficiency is None:  # the baseline arm: its own operating point
        efficiency = valset_efficiency(gnn_val)
    out.operating_points["matched.reference_efficiency"] = efficiency
    if not efficiency > 0:
        return None, None
    out.operating_points["matched.cut"] = valset_cut(gnn_val, efficiency)
    build = matched_builder(arm.tracks, out.operating_points["matched.cut"])
    sized = None
    if arm.edge_filter is not None:
        sized = size_matched_chain(arm.edge_filter, arm.gnn, arm.tracks, reference, efficiency)
        if sized is not None:
            out.operating_points.update(sized.points)
    return build, sized


def _size_matched_metrics(out: ArmEvents, chain: SizeMatchedChain, edge_filter: Stage, source: Path) -> None:
    data = chain.run(source)
    for metric, (num, den) in filter_cells(data, source, edge_filter).items():
        out.add(f"edge_filter.{PREFIX}.{metric}", num, den)
    _track_metrics(out, f"track_building.{PREFIX}", track_matches(chain, data, source))


class GraphCurve:
    """A graph builder's operating curve (metric learning: edges with embedding distance < r), read at
    radii chosen on its valset: the one keeping 95 % of target truth edges, and the one giving the
    baseline arm's valset edges per event at its configured radius."""

    def __init__(self, stage: Stage, reference: dict[str, float], points: dict[str, float]) -> None:
        self.stage = stage
        val = [self.scored("valset", path.name) for path in list_event_files(stage.stage_dir, "valset")]
        if not val:
            raise FileNotFoundError(
                f"no event files in {stage.stage_dir / 'valset'}: the graph's operating curve needs them"
            )
        distance = np.concatenate([g["distance"] for g in val])
        target = np.concatenate([g["distance"][g["target"]] for g in val])
        n_target = sum(g["n_target"] for g in val)
        own = int((distance < stage.config.r_infer).sum()) / len(val)  # edges per valset event at r_infer
        points["graph.valset_edges_per_event"] = own
        budget = reference.get("graph.valset_edges_per_event", own)
        self.radius = {
            "at95": -cut_for_efficiency(-target, 0.95, n_target),
            "at_edges": float(np.sort(distance)[min(int(budget * len(val)), len(distance) - 1)]),
        }
        points.update({f"graph.{k}.radius": v for k, v in self.radius.items()})

    def scored(self, split: str, name: str) -> dict[str, Any]:
        """Distances [E] of the event's graph at the curve's largest radius, its target edges [E], and
        the target truth edges of the event (those missing at every radius count against efficiency)."""
        path = Path(self.stage.config.input_dir) / split / name
        graph = self.stage.scored_graph(load_event(path), path)
        truth = target_truth_mask(graph, self.stage.config.target_tracks, str(path)).numpy()
        mapping = graph.track_to_edge_map.numpy()
        target = np.zeros(graph.edge_index.shape[1], dtype=bool)
        target[mapping[truth & (mapping >= 0)]] = True
        return {"distance": graph.edge_distance.numpy(), "target": target, "n_target": int(truth.sum())}

    def add(self, out: ArmEvents, split: str, name: str) -> None:
        g = self.scored(split, name)
        for point, radius in self.radius.items():
            kept = g["distance"] < radius
            for metric, num, den in (
                ("edges_per_event", kept.sum(), 1),
                ("target_efficiency", (kept & g["target"]).sum(), g["n_target"]),
            ):
                if f"graph_construction.{point}.{metric}" in METRIC_NAMES:
                    out.add(f"graph_construction.{point}.{metric}", num, den)


def matched_builder(tracks: Stage, cut: float) -> Callable[[Data, Path], Data]:
    """The track-building stage's per-event function with its score_cut replaced by `cut`."""
    stage = type(tracks)(dataclasses.replace(tracks.config, score_cut=float(cut)))
    return stage.event_processor()


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


def _matched_metrics(out: ArmEvents, prefix: str, a: dict[str, Any], cuts: dict[str, float]) -> None:
    """The rows at each valset-matched cut: purity, test efficiency and edges kept."""
    for name in OPERATING_POINTS:
        key = f"{prefix}.{name}"
        if key not in cuts:
            continue
        kept = a["scores"] > cuts[key]
        tgt, y = a["edge_target"], a["edge_y"]
        cells = {
            "target_purity": ((kept & tgt).sum(), (kept & (tgt | ~y)).sum()),
            "target_efficiency": ((kept & tgt).sum(), target_count(a)),
            "edges_per_event": (kept.sum(), 1),
        }
        for metric, (num, den) in cells.items():
            if f"{key}.{metric}" in METRIC_NAMES:
                out.add(f"{key}.{metric}", num, den)


def _filter_metrics(out: ArmEvents, stage: Stage, path: Path, cuts: dict[str, float]) -> None:
    a = stage.event_arrays(path)
    kept, y = a["kept"], a["edge_y"]
    out.add("edge_filter.target_efficiency", (kept & a["edge_target"]).sum(), target_count(a))
    out.add("edge_filter.purity", (kept & y).sum(), kept.sum())
    out.add("edge_filter.edges_per_event", kept.sum(), 1)
    _matched_metrics(out, "edge_filter", a, cuts)


def _edge_metrics(out: ArmEvents, stage: Stage, path: Path, rng: np.random.Generator, cuts: dict[str, float]) -> None:
    a = stage.event_arrays(path)
    kept, y, tgt, scores = a["kept"], a["edge_y"], a["edge_target"], a["scores"]
    defined = 0 < y.sum() < len(y)  # an event of one class has no AUC: an empty cell (0 / 0)
    out.add("edge_classifier.auc", roc_auc(scores, y) if defined else 0.0, 1 if defined else 0)
    out.add("edge_classifier.target_efficiency", a["truth_kept"].sum(), a["truth_in_graph"].sum())
    out.add("edge_classifier.target_purity", (kept & tgt).sum(), (kept & (tgt | ~y)).sum())
    out.add("edge_classifier.efficiency", (kept & y).sum(), y.sum())
    out.add("edge_classifier.purity", (kept & y).sum(), kept.sum())
    _matched_metrics(out, "edge_classifier", a, cuts)
    chosen = rng.permutation(len(y))[:ROC_EDGES_PER_EVENT]
    out.roc_scores.append(scores[chosen])
    out.roc_labels.append(y[chosen])


def _track_metrics(out: ArmEvents, prefix: str, matches: Any, plots: bool = False) -> None:
    """Track rows of one event from its EventMatches (None without truth: empty cells keep the arms aligned)."""
    if matches is None:
        for name in TRACK_METRICS:
            out.add(f"{prefix}.{name}", 0, 0)
        return
    two_way, two_way_pt1 = matches.counts["two_way"], matches.counts_pt1["two_way"]
    out.add(f"{prefix}.two_way.efficiency", two_way.n_reconstructed_particles, two_way.n_particles)
    out.add(f"{prefix}.two_way.efficiency_pt1", two_way_pt1.n_reconstructed_particles, two_way_pt1.n_particles)
    out.add(f"{prefix}.two_way.fake_rate", two_way.n_tracks - two_way.n_matched_tracks, two_way.n_tracks)
    out.add(f"{prefix}.two_way.duplicate_rate", two_way.n_duplicate_tracks, two_way.n_reconstructed_particles)
    score = matches.trackml_score
    out.add(f"{prefix}.trackml_score", score if score is not None else 0.0, 1 if score is not None else 0)
    if plots:
        out.particle_pt_gev.append(matches.particles["pt_gev"].to_numpy())
        out.particle_reconstructed.append(matches.particles["reconstructed_two_way"].to_numpy())


def metric_specs(present: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The report's rows in order; with `present`, only the metrics measured (a pipeline without a filter
    has no filter rows)."""
    keep = None if present is None else set(present)
    return [
        {"name": n, "label": label, "higher_is_better": better}
        for n, label, better in METRICS
        if keep is None or n in keep
    ]
