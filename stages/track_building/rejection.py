"""Candidate scoring (key `reject` of every track builder): drop, or flag, candidates that do not look
like tracks.

A fake track is a candidate that holds no particle's majority: hits of several particles, or a piece
of one particle too short to count. Scoring asks of each final candidate (after stitching) whether
its hits look like one track, and the candidates scoring below a cut are dropped (their hits get
label -1, as a too-short candidate's do) or, with `reject_action: flag`, kept and marked:

- `geometry`: minus the chi2 per degree of freedom of a helix fit to all of the candidate's hits
  (stitching.helix_chi2, with `stitch_hit_sigma`), the control that knows only the positions;
- `tb`: the masked-module (MDM) pseudo-log-likelihood of the candidate's module sequence under a
  pretrained TrackingBERT (TrackingBERTScorer.candidate_scores): each of its first max_hits modules
  in the vocabulary is masked in its own copy and the mean log-probability of the true module is the
  score. A candidate with fewer than two modules in the vocabulary gets no score (nan): the model
  cannot judge it, so it is never rejected (a pixel-only vocabulary cannot judge strip-only pieces).

The cut. `reject_min_score` sets it by hand. Without it the cut is chosen on the valset (the stage's
`train`): the candidates the builder makes there, with stitching, are scored and matched to the truth,
and the cut is the largest score that keeps at least `reject_keep` of the true candidates (two_way
matched: the fake rate's definition) that have a score. It is written to `stage_dir/reject_cut.json`
with the valset counts, and the score distributions to `stage_dir/reject_scores_valset.png`.

Each event gets `hit_candidate_score` (float32 [N], the score of the hit's candidate, nan for hits in
no track or an unscored candidate) and `reject_below_cut` (candidates under the cut); with flag,
`hit_candidate_rejected` (bool [N]) as well.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from torch_geometric.data import Data

from stages.graph_construction.truth import hit_order
from stages.track_building.stitching import Fragments, alone, helix_chi2, hit_positions
from tb_plugin.pretraining.metrics import roc_auc

Reject = Literal["none", "geometry", "tb"]
RejectAction = Literal["drop", "flag"]
CUT_FILE = "reject_cut.json"
SCORES_PLOT = "reject_scores_valset.png"
SCORE_FIELD = "hit_candidate_score"  # float32 [N]: the score of each hit's candidate (nan: none)
FLAG_FIELD = "hit_candidate_rejected"  # bool [N], reject_action: flag
BELOW_FIELD = "reject_below_cut"  # per event: candidates scoring under the cut (dropped or flagged)

# float64 [F]: one score per candidate, higher = more track-like, nan = cannot be judged.
CandidateScore = Callable[[Data, Fragments, str], np.ndarray]


def check_reject_keys(config) -> None:
    """The reject_* keys of a TrackBuildingConfig; one-line errors naming the key."""
    if config.reject == "tb" and config.tracking_bert_dir is None:
        raise ValueError(
            "key 'tracking_bert_dir' is required with reject: tb (the stage_dir of a trained tracking_bert stage)"
        )
    if not 0.0 < config.reject_keep <= 1.0:
        raise ValueError(
            f"key 'reject_keep' must be in (0, 1] (a fraction of true candidates), got {config.reject_keep}"
        )
    if config.reject_min_score is not None and math.isnan(config.reject_min_score):
        raise ValueError("key 'reject_min_score' must be a number or null (chosen on the valset), got nan")


def candidates(data: Data, labels: np.ndarray, source: str) -> tuple[Fragments, np.ndarray]:
    """The candidates of per-hit labels as Fragments (hits inner -> outer), and the hit positions."""
    xyz = hit_positions(data, source)  # [N, 3]
    if xyz.shape[0] != labels.shape[0]:
        raise ValueError(f"{source}: {xyz.shape[0]} hit positions for {labels.shape[0]} hits")
    return Fragments.from_labels(labels, hit_order((xyz**2).sum(axis=1))), xyz


def geometry_candidate_score(sigma: float) -> CandidateScore:
    """-chi2/ndof of a helix fit to each candidate (candidates of fewer than 3 hits: nan)."""

    def score(data: Data, fragments: Fragments, source: str) -> np.ndarray:
        chi2 = helix_chi2(alone(fragments), hit_positions(data, source), sigma)
        return np.where(fragments.length >= 3, -chi2, np.nan)

    return score


@dataclass
class Rejector:
    """Scores one event's candidates and applies the cut (None: score only, to choose the cut)."""

    score: CandidateScore
    cut: float | None
    action: RejectAction = "drop"

    def __call__(self, data: Data, labels: np.ndarray, source: str | Path) -> tuple[np.ndarray, np.ndarray, int]:
        """(grouping int64 [N] (-1 = no track; not yet numbered), score float32 [N], candidates below the cut)."""
        labels = np.asarray(labels, dtype=np.int64)
        per_hit = np.full(labels.shape[0], np.nan, dtype=np.float32)
        if not (labels >= 0).any():
            return labels, per_hit, 0
        fragments, _ = candidates(data, labels, str(source))
        score = self.score(data, fragments, str(source))  # [F]
        per_hit[fragments.hits] = score[fragments.owner()]
        if self.cut is None:
            return labels, per_hit, 0
        below = score < self.cut  # nan: never below
        if self.action == "drop":
            labels = labels.copy()
            labels[fragments.hits[below[fragments.owner()]]] = -1
        return labels, per_hit, int(below.sum())


def track_scores(labels: np.ndarray, per_hit: np.ndarray) -> np.ndarray:
    """float64 [K]: the score of each track label 0..K-1 from the per-hit field."""
    labels = np.asarray(labels, dtype=np.int64)
    out = np.full(int(labels.max()) + 1 if (labels >= 0).any() else 0, np.nan)
    tracked = labels >= 0
    out[labels[tracked]] = per_hit[tracked]
    return out


def choose_cut(true_scores: np.ndarray, keep: float) -> float:
    """The largest cut that keeps at least `keep` of the scored true candidates (score >= cut kept)."""
    scores = np.sort(np.asarray(true_scores, dtype=np.float64)[np.isfinite(true_scores)])
    if scores.size == 0:
        raise ValueError("no true candidate on the valset has a score: the cut cannot be chosen")
    return float(scores[int(math.floor((1.0 - keep) * scores.size + 1e-9))])  # + 1e-9: (1 - 0.9) * 100 is 9.99..


def cut_record(cut: float, keep: float, true_scores: np.ndarray, fake_scores: np.ndarray, events: int) -> dict:
    """What reject_cut.json says about the chosen cut: the counts it was chosen from and what it does there."""
    true_scores, fake_scores = np.asarray(true_scores), np.asarray(fake_scores)

    def below(s: np.ndarray) -> int:
        return int((s[np.isfinite(s)] < cut).sum())

    t, f = true_scores[np.isfinite(true_scores)], fake_scores[np.isfinite(fake_scores)]
    auc = roc_auc(np.r_[t, f], np.r_[np.ones(t.size, bool), np.zeros(f.size, bool)]) if t.size and f.size else None
    return {
        "cut": cut,
        "reject_keep": keep,
        "valset_events": events,
        "true_candidates": int(true_scores.size),
        "true_unscored": int((~np.isfinite(true_scores)).sum()),
        "true_below_cut": below(true_scores),
        "fake_candidates": int(fake_scores.size),
        "fake_unscored": int((~np.isfinite(fake_scores)).sum()),
        "fake_below_cut": below(fake_scores),
        "auc_scored": auc,  # P(a true candidate scores above a fake one), scored candidates only
    }


def read_cut(stage_dir: Path) -> float:
    """The cut `train` chose, from stage_dir/reject_cut.json; a one-line error when it is missing."""
    path = Path(stage_dir) / CUT_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no reject cut; run `tb train` on this track_building config first (it chooses the cut on "
            "the valset), or set key 'reject_min_score'"
        )
    try:
        return float(json.loads(path.read_text())["cut"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a reject cut file (expected a JSON object with a number 'cut')") from err
