"""`stage: track_building, model: ConnectedComponents`: scored graphs -> track candidates.

Infer keeps the edges with `edge_scores > score_cut` (ACORN's key and comparison), runs undirected
connected components on them (scipy) and writes every event again into
`stage_dir/{trainset,valset,testset}/` with one new field:

    hit_track_labels  int64 [N]  the track of each hit, 0..K-1; -1 = in no track

ACORN's ConnectedComponents stores the same per-hit labels under the name `edge_track_labels`
(older ACORN: `labels`), although the field is per hit, not per edge: `hit_track_labels` here is
ACORN's `edge_track_labels`. Hits in no kept edge, and components with fewer than
`min_track_length` hits, are in no track (-1), as isolated hits are in ACORN.

Each event also gets a TrackML submission, `stage_dir/submissions/{split}/event{ID:09d}-submission.csv`
(event_id, hit_id, track_id). A submission must list every hit exactly once, so each hit labelled
-1 becomes a track of its own there (track ids K, K+1, ... after the real tracks); the per-hit
labels keep -1, so the matching metrics never count those singletons as tracks.

Evaluate matches the tracks of the `dataset` split (testset by default, ACORN's key) to the truth
particles in the three styles of `matching.py` and writes `stage_dir/eval/metrics.json`, the TrackML
score of the submissions, and efficiency plots vs pT and eta. The truth per hit is `hit_particle_id`;
events written by ACORN have none, and their hits take the particle of the truth edges
(`track_edges`, `track_particle_id`) they lie on, hits on no truth edge being noise. Events with
no truth at all are skipped with a warning.

Particles (the efficiency denominator) are the real particles with hits in the event that have at
least `min_particle_hits` hits there and pass `target_tracks` (ACORN conditions on the particle
fields `track_particle_*`, short names like `pt` allowed, pT in MeV, plus `n_true_hits`, the
particle's hit count in the event). `efficiency_pt1` has a fixed denominator, independent of those
keys so it compares across configs: particles with pT > 1 GeV and at least 5 hits in the event.

Stitching (key `stitch`: none, geometry or tb; stitching.py) joins the fragments a builder made
when they continue each other, for every builder alike: the builder keeps fragments from
min(`stitch_min_fragment_length`, `min_track_length`) hits, stitching merges pairs best first, and `min_track_length` applies
to the result. Each event then carries `stitch_merges` (pairs joined), and metrics.json their total.

Candidate scoring (key `reject`: none, geometry or tb; rejection.py) follows stitching: each final
candidate is scored and those under a cut are dropped (or flagged). The cut is `reject_min_score`, or
is chosen on the valset by `train`, which makes the stage trainable only then (stage_dir/reject_cut.json).

Everything but the labelling lives in `TrackBuilder` and `TrackBuildingConfig`, which every track
builder shares: `model: Walkthrough` (walkthrough.py) differs from this model only in `hit_labels`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sps
import torch
from torch_geometric.data import Data
from tqdm import tqdm

from stages.data_reading.trackml_reader import SHORT_NAMES
from stages.plots import plot_efficiency_curves, plot_histograms
from stages.track_building.matching import (
    FAKE_KINDS,
    STYLES,
    MatchCounts,
    check_matching_fraction,
    count_matches,
    fake_kinds,
    match_event,
)
from stages.track_building.rejection import (
    BELOW_FIELD,
    CUT_FILE,
    FLAG_FIELD,
    SCORE_FIELD,
    SCORES_PLOT,
    Reject,
    RejectAction,
    Rejector,
    check_reject_keys,
    choose_cut,
    cut_record,
    geometry_candidate_score,
    read_cut,
    track_scores,
)
from stages.track_building.stitching import MERGES_FIELD, Stitch, TrackingBERTScorer, check_stitch_keys, make_stitcher
from tb_plugin.atomic import atomic_path, write_text
from tb_plugin.conditions import Condition, parse_conditions, select
from tb_plugin.config import to_record
from tb_plugin.event_store import (
    EVENT_FILE,
    SPLITS,
    SplitError,
    append_config,
    list_event_files,
    load_event,
    require_field,
    save_event,
)
from tb_plugin.stage import EventProcessor, NoTruthError, Stage, StageConfig
from tb_plugin.trackml import score_event

log = logging.getLogger(__name__)

LABELS_FIELD = "hit_track_labels"  # ACORN: edge_track_labels (a per-hit field despite the name)
PT1_MEV = 1000.0
PT1_MIN_HITS = 5
PT_BINS_GEV = np.logspace(-1, 2, 16)  # 0.1 .. 100 GeV
ETA_BINS = np.linspace(-4.0, 4.0, 21)


@dataclass
class EventMatches:
    """One event's matching outcome (see TrackBuilder.event_matches)."""

    counts: dict[str, MatchCounts]  # per style, the target particles
    counts_pt1: dict[str, MatchCounts]  # per style, particles with pT > 1 GeV and >= 5 hits
    trackml_score: float | None  # None without hit weights
    particles: pd.DataFrame  # the target particles, with pt_gev, eta and reconstructed_<style>
    stitch_merges: int = 0  # fragment pairs stitching joined in the event (stitching.py)
    reject_below: int = 0  # candidates under the reject cut in the event (rejection.py)
    fake_kinds: dict[str, int] = field(default_factory=dict)  # the two_way fakes by kind (matching.fake_kinds)


@dataclass(kw_only=True)
class TrackBuildingConfig(StageConfig):
    """The keys every track builder of this module's contract shares (ConnectedComponents, Walkthrough)."""

    # The scored graphs (edge_index, edge_scores), usually the GNN stage's stage_dir.
    input_dir: Path = field()
    # Edges with edge_scores > score_cut are kept (ACORN's name and strict comparison).
    score_cut: float = 0.5
    # Track candidates with fewer hits are not tracks (their hits get label -1).
    min_track_length: int = 3
    # f of the matching styles, in [0.5, 1]; strict at 0.5 (see matching.py).
    matching_fraction: float = 0.5
    # ACORN conditions on particles for the efficiency denominator (pT in MeV).
    target_tracks: dict[str, Any] = field(default_factory=dict)
    # A particle with fewer hits in the event is never in the efficiency denominator.
    min_particle_hits: int = 5
    # Write a TrackML submission CSV per event.
    write_submission: bool = True
    # The split that evaluate reads (ACORN's key).
    dataset: Literal["trainset", "valset", "testset"] = "testset"
    # Fragment stitching after the builder (stitching.py): none, geometry (helix chi2) or tb (TrackingBERT).
    stitch: Stitch = "none"
    # With stitching, the builder keeps fragments from min(this, min_track_length) hits, so that a particle
    # broken into short pieces can be joined; min_track_length then applies to the stitched tracks
    # (unjoined short fragments are dropped as before). 4: on 8 demo valset events (min_track_length 6,
    # geometry), 4 raised the two_way efficiency (0.258 -> 0.266) and lowered the fake rate (0.060 ->
    # 0.040); 3 gained more efficiency (0.284) but the 3-hit pieces pushed the fake rate to 0.095.
    stitch_min_fragment_length: int = 4
    # Junction windows of a candidate pair: A's outer hit -> B's inner hit (phi in rad, lengths in mm).
    # Loose on purpose (the scorer decides): 0.3 rad is a 0.5 GeV track's turn over ~400 mm in 2 T.
    stitch_max_dphi: float = 0.3
    # |z of B's inner hit - A's straight r-z line there|.
    stitch_max_dz: float = 100.0
    # 3D distance of the two hits: a missing layer or two of the strips.
    stitch_max_gap: float = 500.0
    # Each A end keeps its nearest candidates (3D distance): bounds the scorer's work in dense events.
    stitch_max_candidates: int = 5
    # geometry: one hit resolution (mm) for both helix residuals, loose for strips and scattering ...
    stitch_hit_sigma: float = 1.0
    # ... and the largest chi2 per degree of freedom that merges. On 6 demo valset events, candidate pairs
    # of one particle had chi2/ndof median 0.07 and 95 % below 3.5; <= 3 kept 94 % of them with 85 %
    # of the accepted pairs right (10: 97 %, 67 %). Tune on the valset.
    stitch_max_chi2: float = 3.0
    # tb: junction modules scored on each side (A's last k, B's first k), each masked in its own copy.
    stitch_junction_hits: int = 2
    # tb: the smallest mean log-probability of the true junction modules that merges (-2: ~14 % per
    # module, far above chance, 1/V). On 6 demo valset events with the demo A/B's model, -2 accepted 58 %
    # of the candidate pairs (53 % of them right), -5 accepted 87 % (48 % right): -5 barely cuts. The
    # scale depends on the model and its vocabulary: choose it on the valset.
    stitch_min_score: float = -2.0
    # tb: masked copies per forward pass (also for reject: tb).
    stitch_batch_size: int = 1024
    # Candidate scoring after stitching (rejection.py): none, geometry (helix chi2) or tb (TrackingBERT).
    reject: Reject = "none"
    # drop the candidates scoring under the cut (their hits get -1), or flag them (hit_candidate_rejected).
    reject_action: RejectAction = "drop"
    # The cut, chosen by `train` on the valset: the largest score keeping this fraction of the true
    # (two_way matched) candidates that have a score. 0.99 is the example; not tuned.
    reject_keep: float = 0.99
    # A cut set by hand instead (no valset pass): candidates scoring under it are rejected.
    reject_min_score: float | None = None
    # stitch: tb and reject: tb: the stage_dir of a trained tracking_bert stage (artifacts/best.ckpt or
    # last.ckpt, vocab.json). The A/B sets it to its own tracking_bert stage when left out.
    tracking_bert_dir: Path | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if math.isnan(self.score_cut):
            raise ValueError("key 'score_cut' must be a number, got nan")
        if self.min_track_length < 2:
            raise ValueError(
                f"key 'min_track_length' must be at least 2 (a track needs an edge), got {self.min_track_length}"
            )
        if self.min_particle_hits < 1:
            raise ValueError(f"key 'min_particle_hits' must be at least 1, got {self.min_particle_hits}")
        check_matching_fraction(self.matching_fraction)
        check_stitch_keys(self)
        check_reject_keys(self)
        parse_conditions(self.target_tracks, "key 'target_tracks'")

    @property
    def target_conditions(self) -> list[Condition]:
        conditions = parse_conditions(self.target_tracks, "key 'target_tracks'")
        return [Condition(particle_field(c.field), c.op, c.value) for c in conditions]


@dataclass(kw_only=True)
class ConnectedComponentsConfig(TrackBuildingConfig):
    # Keep at each hit only its best edge inwards and outwards (both ends must agree) before taking the
    # components, so that one wrong edge above score_cut cannot merge two tracks (best_chain_edges).
    chains: bool = False


def particle_field(name: str) -> str:
    return f"track_particle_{name}" if name in SHORT_NAMES else name


# ------------------------------------------------------------------------------------- building


def best_chain_edges(edge_index: np.ndarray, edge_scores: np.ndarray) -> np.ndarray:
    """bool [E]: edges that are both the highest-scoring edge out of their inner hit and the highest-
    scoring edge into their outer hit.

    Keeping only those makes every component a chain (one hit after another), which is what a track
    is: a single wrong edge above the cut no longer merges two tracks at a junction, it loses to the
    right edge of the same hit. Ties go to the lower edge index, so the result is reproducible.
    """
    E = edge_index.shape[1]
    keep = np.zeros(E, dtype=bool)
    if E == 0:
        return keep
    order = np.lexsort((np.arange(E), -edge_scores))  # best first, ties by index
    best_out = np.zeros(E, dtype=bool)
    best_in = np.zeros(E, dtype=bool)
    _, first_out = np.unique(edge_index[0, order], return_index=True)
    _, first_in = np.unique(edge_index[1, order], return_index=True)
    best_out[order[first_out]] = True
    best_in[order[first_in]] = True
    return best_out & best_in


def track_labels(
    edge_index: np.ndarray,
    edge_scores: np.ndarray,
    num_nodes: int,
    score_cut: float,
    min_track_length: int,
    chains: bool = False,
) -> np.ndarray:
    """Per-hit track label (0..K-1, -1 = no track) from the connected components of the kept edges
    (with `chains`, of the kept edges that best_chain_edges keeps).

    Labels are numbered in the order of each track's lowest hit index, so they are reproducible.
    """
    above = edge_scores > score_cut
    kept = edge_index[:, above]
    if chains:
        kept = kept[:, best_chain_edges(kept, edge_scores[above])]
    return number_tracks(undirected_components(kept, num_nodes), min_track_length)


def undirected_components(edges: np.ndarray, num_nodes: int) -> np.ndarray:
    """int [N]: the connected component of each hit, the edges [2, E] taken as undirected (scipy)."""
    graph = sps.coo_matrix((np.ones(edges.shape[1], dtype=np.int8), (edges[0], edges[1])), shape=(num_nodes, num_nodes))
    _, component = sps.csgraph.connected_components(graph, directed=False, return_labels=True)
    return component


def number_tracks(group: np.ndarray, min_track_length: int) -> np.ndarray:
    """Per-hit track label (0..K-1, -1 = no track) from any grouping of hits (`group` [N], -1 = none):
    groups of at least `min_track_length` hits become tracks, numbered in the order of their lowest
    hit index, so the labels do not depend on how a builder happened to number its groups."""
    group = np.asarray(group, dtype=np.int64)
    labels = np.full(group.shape[0], -1, dtype=np.int64)
    grouped = np.flatnonzero(group >= 0)
    _, first, inverse, size = np.unique(group[grouped], return_index=True, return_inverse=True, return_counts=True)
    is_track = size >= min_track_length
    tracks_by_first_hit = np.flatnonzero(is_track)[np.argsort(first[is_track], kind="stable")]
    label_of_group = np.full(size.shape[0], -1, dtype=np.int64)
    label_of_group[tracks_by_first_hit] = np.arange(tracks_by_first_hit.size)
    labels[grouped] = label_of_group[inverse.reshape(-1)]
    return labels


def graph_arrays(data: Data, source: str | Path) -> tuple[np.ndarray, np.ndarray, int]:
    """edge_index [2, E], edge_scores [E] and the hit count, checked against each other."""
    edge_index = require_field(data, "edge_index", source)
    edge_scores = require_field(data, "edge_scores", source)
    num_nodes = data.num_nodes
    if num_nodes is None:
        raise ValueError(f"{source}: cannot tell the number of hits (no hit_* fields)")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"{source}: edge_index must have shape [2, E], got {list(edge_index.shape)}")
    if edge_scores.shape != (edge_index.shape[1],):
        raise ValueError(
            f"{source}: edge_scores has shape {list(edge_scores.shape)}, expected [{edge_index.shape[1]}] (one per edge)"
        )
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
        raise ValueError(f"{source}: edge_index refers to hits outside 0..{num_nodes - 1}")
    return edge_index.numpy().astype(np.int64), edge_scores.float().numpy(), int(num_nodes)


def submission_frame(event_id: int, hit_id: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """TrackML submission: every hit once; hits in no track become singleton tracks after the real ones."""
    labels = np.asarray(labels, dtype=np.int64)
    alone = labels < 0
    track_id = labels.copy()
    first_free = int(labels.max()) + 1 if labels.size and labels.max() >= 0 else 0
    track_id[alone] = first_free + np.arange(int(alone.sum()))
    return pd.DataFrame(
        {
            "event_id": np.full(len(labels), int(event_id), dtype=np.int64),
            "hit_id": np.asarray(hit_id, dtype=np.int64),
            "track_id": track_id,
        }
    )


def check_submission(frame: pd.DataFrame, hit_id: np.ndarray, source: str | Path) -> None:
    """Every hit of the event exactly once, each with a track: what the TrackML scorer demands."""
    ids = frame.hit_id.to_numpy()
    if len(ids) != len(hit_id) or not np.array_equal(np.sort(ids), np.sort(hit_id)):
        raise ValueError(f"{source}: the submission does not list the event's {len(hit_id)} hits")
    if np.unique(ids).size != len(ids):
        raise ValueError(f"{source}: the event's hit_id values repeat, so no submission can list every hit once")
    if frame.track_id.isna().any():
        raise ValueError(f"{source}: submission has hits without a track")


def submission_path(stage_dir: Path, split: str, event_id: int) -> Path:
    return stage_dir / "submissions" / split / f"event{event_id:09d}-submission.csv"


def file_event_id(path: Path) -> int:
    match = EVENT_FILE.match(path.name)
    if match is None:
        raise ValueError(f"{path}: not an event file name (event<ID>.pyg)")
    return int(match.group(1))


# ------------------------------------------------------------------------------------- truth


def hit_particle_ids(data: Data) -> np.ndarray | None:
    """The truth particle of each hit (0 = noise), or None for an event without truth.

    ACORN's files carry no per-hit particle: there each hit takes the particle of the truth edges it
    is an end of, and a hit on no truth edge (noise, or a particle's only hit) counts as noise.
    """
    if "hit_particle_id" in data:
        return data.hit_particle_id.numpy().astype(np.int64)
    if "track_edges" not in data or "track_particle_id" not in data:
        return None
    pid = np.zeros(int(data.num_nodes), dtype=np.int64)
    edges = data.track_edges.numpy()
    particle = data.track_particle_id.numpy().astype(np.int64)
    pid[edges[0]] = particle
    pid[edges[1]] = particle
    return pid


def particle_features(data: Data, particle_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Every `track_particle_*` field per particle (float64; NaN for a particle with no truth edge)."""
    if "track_particle_id" not in data:
        return {}
    edge_pid = data.track_particle_id.numpy().astype(np.int64)
    known, first = np.unique(edge_pid, return_index=True)
    row = pd.Index(known).get_indexer(np.asarray(particle_ids, dtype=np.int64))
    found = row >= 0
    features = {}
    for key in data.keys():
        value = data[key]
        if key.startswith("track_particle_") and torch.is_tensor(value) and value.shape == edge_pid.shape:
            per_particle = np.full(len(row), np.nan)
            per_particle[found] = value.numpy().astype(np.float64)[first][row[found]]
            features[key] = per_particle
    return features


# ------------------------------------------------------------------------------------- the stage


class TrackBuilder(Stage):
    """What the track builders share: infer (labels, submissions, events) and evaluate (matching in the
    three styles, TrackML score, plots), as the module docstring describes. Subclasses set
    `config_class` (a TrackBuildingConfig) and implement `hit_labels`, the per-hit track labels of one
    scored event."""

    config_class = TrackBuildingConfig
    config: TrackBuildingConfig

    def hit_labels(self, data: Data, source: Path) -> np.ndarray:
        """int64 [N]: the track of each hit of one scored event, 0..K-1, -1 = no track; tracks of at
        least `self.fragment_length` hits."""
        raise NotImplementedError

    @property
    def fragment_length(self) -> int:
        """The fewest hits of a track that hit_labels keeps: min_track_length, or with stitching
        min(stitch_min_fragment_length, min_track_length) (the stitched tracks get min_track_length after)."""
        if self.config.stitch == "none":
            return self.config.min_track_length
        return min(self.config.stitch_min_fragment_length, self.config.min_track_length)

    def input_files(self, split: str) -> list[Path]:
        """Sorted event files of a split; data_split, when given, takes the first n of each."""
        files = list_event_files(self.config.input_dir, split)
        if self.config.data_split is not None:
            files = files[: self.config.data_split[SPLITS.index(split)]]
        return files

    @property
    def trainable(self) -> bool:  # type: ignore[override]  # a class constant elsewhere: here the config decides
        """Only a reject cut chosen on the valset needs a pass before infer (`train`)."""
        return self.config.reject != "none" and self.config.reject_min_score is None

    def tracking_bert(self) -> TrackingBERTScorer | None:
        """The pretrained model, loaded once for stitch: tb and reject: tb alike (None when neither asks)."""
        c = self.config
        if "tb" not in (c.stitch, c.reject):
            return None
        return TrackingBERTScorer.from_stage_dir(
            c.tracking_bert_dir, c.input_dir, c.stitch_junction_hits, c.stitch_batch_size
        )

    def rejector(self, tb: TrackingBERTScorer | None, choosing_cut: bool) -> Rejector | None:
        """The candidate scorer `reject` asks for, with its cut (reject_min_score, else the one `train`
        chose); while the cut is being chosen, scores only."""
        c = self.config
        if c.reject == "none":
            return None
        score = geometry_candidate_score(c.stitch_hit_sigma) if c.reject == "geometry" else tb.candidate_scores
        if choosing_cut:
            return Rejector(score, None, c.reject_action)
        cut = c.reject_min_score if c.reject_min_score is not None else read_cut(self.stage_dir)
        return Rejector(score, cut, c.reject_action)

    def event_processor(self, choosing_cut: bool = False) -> EventProcessor:
        """Load the stitcher and the candidate scorer the keys ask for (the TrackingBERT model once); the
        function adds hit_track_labels to one scored event (no file is written: `infer` writes the
        submission from these labels). With stitching the event also gets `stitch_merges`, the pairs it
        joined; with candidate scoring `hit_candidate_score` and `reject_below_cut` (rejection.py)."""
        tb = self.tracking_bert()
        stitcher = make_stitcher(self.config, self.config.input_dir, tb)
        rejector = self.rejector(tb, choosing_cut)

        def add_labels(data: Data, source: Path) -> Data:
            labels = self.hit_labels(data, source)
            if stitcher is not None:
                grouping, merges = stitcher(data, labels, source)
                labels = number_tracks(grouping, self.config.min_track_length)
                data[MERGES_FIELD] = merges
            if rejector is not None:
                kept, score, below = rejector(data, labels, source)
                if self.config.reject_action == "flag" and rejector.cut is not None:
                    data[FLAG_FIELD] = torch.from_numpy(score < rejector.cut)  # nan (no score): not flagged
                labels = number_tracks(kept, self.config.min_track_length)
                score[labels < 0] = np.nan  # dropped candidates are no tracks
                data[SCORE_FIELD] = torch.from_numpy(score)
                data[BELOW_FIELD] = below
            data[LABELS_FIELD] = torch.from_numpy(labels)
            return data

        return add_labels

    def train(self, checkpoint: Path | None = None) -> None:
        """Choose the reject cut on the valset (rejection.py): build, stitch and score the valset
        candidates, match them to the truth, keep `reject_keep` of the true ones; writes
        stage_dir/reject_cut.json and the score distributions (PNG)."""
        if not self.trainable:
            super().train(checkpoint)
        source = Path(self.config.input_dir) / "valset"
        files = self.input_files("valset")
        if not files:
            raise FileNotFoundError(f"no event files in {source}: the reject cut is chosen on the valset")
        process = self.event_processor(choosing_cut=True)
        true, fake = [], []
        for path in tqdm(files, desc="track_building reject cut (valset)", unit="event", leave=False):
            data = process(load_event(path), path)
            pid = hit_particle_ids(data)
            if pid is None:
                continue
            labels = data[LABELS_FIELD].numpy()
            tracks, _ = match_event(labels, pid, self.config.matching_fraction)
            scores = track_scores(labels, data[SCORE_FIELD].numpy())[tracks.track_id.to_numpy()]
            matched = tracks.matched_two_way.to_numpy()
            true.append(scores[matched])
            fake.append(scores[~matched])
        if not true:
            raise ValueError(f"{source}: none of the {len(files)} events has truth, so the reject cut cannot be chosen")
        events, true, fake = len(true), np.concatenate(true), np.concatenate(fake)
        try:
            cut = choose_cut(true, self.config.reject_keep)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None
        self.write_cut(
            cut_record(cut, self.config.reject_keep, true, fake, events) | {"reject": self.config.reject}, true, fake
        )

    def write_cut(self, record: dict[str, Any], true: np.ndarray, fake: np.ndarray) -> None:
        """reject_cut.json and the score histograms; a warning when a different cut replaces one that
        events were already built with (infer keeps finished events unless --overwrite)."""
        path = self.stage_dir / CUT_FILE
        previous = read_cut(self.stage_dir) if path.is_file() else record["cut"]
        if previous != record["cut"] and any(list_event_files(self.stage_dir, split) for split in SPLITS):
            log.warning(
                "%s: the reject cut changes from %.6g to %.6g; events already built keep the old one: rerun "
                "infer with --overwrite",
                path,
                previous,
                record["cut"],
            )
        plot_histograms(
            {"true candidates (two_way matched)": true, "fake candidates": fake},
            50,
            f"candidate score ({self.config.reject})",
            self.stage_dir / SCORES_PLOT,
            title=f"valset candidates; cut {record['cut']:.4g} keeps {self.config.reject_keep:g} of the true ones",
            logy=True,
        )
        write_text(
            self.stage_dir / CUT_FILE, json.dumps(record | {"config": to_record(self.config)}, indent=2, default=str)
        )
        print(
            f"track_building reject cut ({self.config.reject}, valset, {record['valset_events']} events): {record['cut']:.4g}; "
            f"below it {record['true_below_cut']} of {record['true_candidates']} true and {record['fake_below_cut']} of "
            f"{record['fake_candidates']} fake candidates\n  -> {self.stage_dir / CUT_FILE}"
        )

    def infer(self, overwrite: bool = False) -> None:
        process = self.event_processor()
        self.prepare_outputs(overwrite)
        total = 0
        for split in SPLITS:
            total += len(self.input_files(split))
            files = self.inference_files(split)  # under --shard K/N, the shard's share
            if not files:
                continue
            written = skipped = 0
            for path in tqdm(files, desc=f"track_building {split}", unit="event", leave=False):
                target = self.stage_dir / split / path.name
                submission = submission_path(self.stage_dir, split, file_event_id(path))
                done = target.exists() and (submission.exists() or not self.config.write_submission)
                if done and not overwrite:
                    skipped += 1
                    continue
                self.build_event(path, split, process)
                written += 1
            log.info("track_building %s: %d events written, %d already there", split, written, skipped)
        if total == 0:
            raise FileNotFoundError(
                f"no event files in {self.config.input_dir}/{{{','.join(SPLITS)}}}: nothing to build tracks on"
            )

    def prepare_outputs(self, overwrite: bool) -> None:
        """The event files' split check (Stage.prepare_outputs), then the same for the submission CSVs:
        one whose event the input no longer holds in that split would be scored with the wrong split."""
        super().prepare_outputs(overwrite)
        stale = [
            path
            for split in SPLITS
            for path in sorted((self.stage_dir / "submissions" / split).glob("event*-submission.csv"))
            if not (Path(self.config.input_dir) / split / f"{path.name.split('-')[0]}.pyg").exists()
        ]
        if not stale or not any(self.input_files(split) for split in SPLITS):
            return
        if not overwrite:
            raise SplitError(
                f"{self.stage_dir}: {len(stale)} submission file(s) are of events the input no longer holds in "
                f"that split (e.g. submissions/{stale[0].parent.name}/{stale[0].name}); rerun with --overwrite "
                f"to rewrite this stage, or delete {self.stage_dir}"
            )
        for path in stale:
            path.unlink(missing_ok=True)  # another shard may have removed it first
        log.info("track_building: removed %d submission files of events that moved or went away", len(stale))

    def build_event(self, path: Path, split: str, process: EventProcessor) -> Data:
        """Label one event's hits (`process`, from event_processor) and write its submission, then the
        event (its existence marks it done)."""
        data = process(load_event(path), path)
        labels = data[LABELS_FIELD].numpy()
        num_nodes = labels.shape[0]
        if self.config.write_submission:
            hit_id = require_field(data, "hit_id", path).numpy()
            if hit_id.shape != (num_nodes,):
                raise ValueError(f"{path}: hit_id has shape {list(hit_id.shape)}, expected [{num_nodes}] (one per hit)")
            frame = submission_frame(file_event_id(path), hit_id, labels)
            check_submission(frame, hit_id, path)
            with atomic_path(submission_path(self.stage_dir, split, file_event_id(path))) as tmp:
                frame.to_csv(tmp, index=False, lineterminator="\n")
        append_config(data, self.config_record())
        save_event(data, self.stage_dir / split / path.name)
        return data

    # --------------------------------------------------------------------------------- evaluate

    def evaluate(self) -> dict[str, Any]:
        split = self.config.dataset
        files = list_event_files(self.stage_dir, split)
        if not files:
            raise FileNotFoundError(f"no event files in {self.stage_dir / split}: run infer first")
        counts = {style: MatchCounts() for style in STYLES}
        counts_pt1 = {style: MatchCounts() for style in STYLES}
        scores: list[float] = []
        plotted: list[pd.DataFrame] = []
        without_truth = merges = below = 0
        kinds = dict.fromkeys(FAKE_KINDS, 0)
        for path in tqdm(files, desc=f"track_building eval {split}", unit="event", leave=False):
            matches = self.event_matches(path)
            merges += 0 if matches is None else matches.stitch_merges
            below += 0 if matches is None else matches.reject_below
            if matches is None:
                log.warning("%s: no truth (hit_particle_id or track_edges + track_particle_id); skipped", path)
                without_truth += 1
                continue
            kinds = {k: kinds[k] + matches.fake_kinds.get(k, 0) for k in FAKE_KINDS}
            for style in STYLES:
                counts[style] = counts[style] + matches.counts[style]
                counts_pt1[style] = counts_pt1[style] + matches.counts_pt1[style]
            plotted.append(matches.particles)
            if matches.trackml_score is not None:
                scores.append(matches.trackml_score)
        if without_truth == len(files):
            raise NoTruthError(
                f"none of the {len(files)} events in {self.stage_dir / split} has truth "
                "(hit_particle_id, or track_edges with track_particle_id): nothing to evaluate"
            )
        metrics = self.summarise(counts, counts_pt1, scores, len(files) - without_truth, without_truth)
        metrics["two_way"]["fake_kinds"] = kinds
        if self.config.stitch != "none":
            metrics |= {"stitch": self.config.stitch, "stitch_merges": merges}  # over the events with truth
        if self.config.reject != "none":
            cut = self.config.reject_min_score if self.config.reject_min_score is not None else read_cut(self.stage_dir)
            metrics |= {"reject": self.config.reject, "reject_cut": cut, "reject_below_cut": below}
        self.plot_efficiency(pd.concat(plotted, ignore_index=True))
        path = self.write_metrics(metrics)
        two_way = metrics["two_way"]
        print(
            f"track_building ({split}, {metrics['events']} events, f={self.config.matching_fraction}): "
            f"two_way efficiency {_fmt(two_way['efficiency'])} (pT>1 GeV {_fmt(two_way['efficiency_pt1'])}), "
            f"fake {_fmt(two_way['fake_rate'])}, duplicate {_fmt(two_way['duplicate_rate'])}; "
            f"TrackML score {_fmt(metrics['trackml_score'])}\n  -> {path}"
        )
        return metrics

    def event_matches(self, path: Path) -> EventMatches | None:
        """Match counts of one labelled event (every style; target and pT > 1 GeV particles), its TrackML
        score and its target particles; None for an event without truth. Pooled by `evaluate`, and
        kept per event by the A/B statistics."""
        return self.matches(load_event(path), path)

    def matches(self, data: Data, source: Path) -> EventMatches | None:
        """event_matches of an event in memory (the A/B rebuilds tracks at other cuts without writing them)."""
        labels = require_field(data, LABELS_FIELD, source).numpy()
        pid = hit_particle_ids(data)
        if pid is None:
            return None
        tracks, particles = match_event(labels, pid, self.config.matching_fraction)
        features = particle_features(data, particles.particle_id.to_numpy())
        target, pt1 = self.particle_selections(particles, features, source)
        return EventMatches(
            counts={style: count_matches(tracks, particles, target, style) for style in STYLES},
            counts_pt1={style: count_matches(tracks, particles, pt1, style) for style in STYLES},
            trackml_score=self.trackml_score(data, labels, pid, source) if "hit_weight" in data else None,
            particles=particles.assign(
                pt_gev=features.get("track_particle_pt", np.full(len(particles), np.nan)) / 1000.0,
                eta=features.get("track_particle_eta", np.full(len(particles), np.nan)),
            )[target],
            stitch_merges=int(data[MERGES_FIELD]) if MERGES_FIELD in data else 0,
            reject_below=int(data[BELOW_FIELD]) if BELOW_FIELD in data else 0,
            fake_kinds=fake_kinds(tracks, particles, self.config.matching_fraction),
        )

    def particle_selections(
        self, particles: pd.DataFrame, features: dict[str, np.ndarray], source: Path
    ) -> tuple[np.ndarray, np.ndarray]:
        """(target, pT > 1 GeV and >= 5 hits) masks over the rows of `particles`."""
        n_hits = particles.n_hits.to_numpy()
        fields = {k: torch.from_numpy(v) for k, v in features.items()}
        fields["n_true_hits"] = torch.from_numpy(n_hits.astype(np.float64))
        target = select(fields, self.config.target_conditions, len(particles), str(source)).numpy()
        target &= n_hits >= self.config.min_particle_hits
        if "track_particle_pt" in features:
            pt1 = (features["track_particle_pt"] > PT1_MEV) & (n_hits >= PT1_MIN_HITS)
        else:
            pt1 = np.zeros(len(particles), dtype=bool)
        return target, pt1

    @staticmethod
    def trackml_score(data: Data, labels: np.ndarray, pid: np.ndarray, source: Path) -> float:
        hit_id = require_field(data, "hit_id", source).numpy()
        truth = pd.DataFrame({"hit_id": hit_id, "particle_id": pid, "weight": data.hit_weight.numpy()})
        return score_event(truth, submission_frame(file_event_id(source), hit_id, labels))

    def summarise(
        self,
        counts: dict[str, MatchCounts],
        counts_pt1: dict[str, MatchCounts],
        scores: list[float],
        events: int,
        without_truth: int,
    ) -> dict[str, Any]:
        metrics: dict[str, Any] = {
            "dataset": self.config.dataset,
            "events": events,
            "events_without_truth": without_truth,
            "matching_fraction": self.config.matching_fraction,
            "score_cut": self.config.score_cut,
        }
        for style in STYLES:
            pt1 = counts_pt1[style].rates()
            metrics[style] = counts[style].rates() | {
                "efficiency_pt1": pt1["efficiency"],
                "n_particles_pt1": pt1["n_particles"],
                "n_reconstructed_particles_pt1": pt1["n_reconstructed_particles"],
            }
        metrics["trackml_score"] = float(np.mean(scores)) if scores else None
        metrics["trackml_score_events"] = len(scores)
        return metrics

    def plot_efficiency(self, particles: pd.DataFrame) -> list[Path]:
        """Efficiency of the target particles vs pT and eta, the three styles overlaid."""
        out = self.stage_dir / "eval"
        curves = [
            ("pt_gev", PT_BINS_GEV, "particle pT [GeV]", True, "track_efficiency_vs_pt.png"),
            ("eta", ETA_BINS, "particle eta", False, "track_efficiency_vs_eta.png"),
        ]
        written = []
        for column, bins, xlabel, logx, name in curves:
            series = {
                style: (particles[column].to_numpy(), particles[f"reconstructed_{style}"].to_numpy())
                for style in STYLES
            }
            written.append(
                plot_efficiency_curves(
                    series,
                    bins,
                    xlabel,
                    out / name,
                    logx=logx,
                    title=f"track efficiency, target particles (f = {self.config.matching_fraction})",
                )
            )
        return written


class ConnectedComponents(TrackBuilder):
    config_class = ConnectedComponentsConfig
    config: ConnectedComponentsConfig

    def hit_labels(self, data: Data, source: Path) -> np.ndarray:
        """The connected components of the kept edges (track_labels)."""
        edge_index, edge_scores, num_nodes = graph_arrays(data, source)
        return track_labels(
            edge_index, edge_scores, num_nodes, self.config.score_cut, self.fragment_length, chains=self.config.chains
        )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
