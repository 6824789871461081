"""Fragment stitching (key `stitch` of every track builder): join track fragments that are one track.

A builder's tracks break where the graph misses an edge or the edge score falls below the cut: one
particle then becomes two fragments, an inner and an outer one, and neither may be matched. Stitching
works on the builder's per-hit labels, after `hit_labels` (which then keeps fragments from
min(`stitch_min_fragment_length`, `min_track_length`) hits, so short pieces can be joined;
`min_track_length` applies to the stitched tracks), so both builders share it:

1. Candidates. Fragment A's outermost hit must lie before fragment B's innermost hit (the rank of
   r^2 + z^2 that orients the graph, stages/graph_construction/truth.py), and the junction must pass
   loose windows: |phi(A's outer hit) - phi(B's inner hit)| <= `stitch_max_dphi`, the 3D distance of
   the two hits <= `stitch_max_gap`, and B's inner hit within `stitch_max_dz` in z of the straight
   line in (r, z) fitted to A's hits. The B ends are sorted by phi once and each A end looks only at
   the window around its own phi (searchsorted), so the work grows with the candidates, not with the
   square of the fragments; each A keeps its `stitch_max_candidates` nearest B (3D distance).
2. Scores of the joined hit sequence A + B:
   - `geometry`: a helix fit, a circle in the transverse plane (algebraic Kasa fit) and a straight
     line z(s) in the arc length s along it, with one hit resolution `stitch_hit_sigma` for both
     residuals; the score is chi2 per degree of freedom (2n - 5), merged when <= `stitch_max_chi2`.
   - `tb`: the pseudo-log-likelihood of the junction under a pretrained TrackingBERT (TrackingBERTScorer).
3. Merging, best first: candidates sorted by score, each accepted while A's outer end and B's inner
   end are both still free (an end joins at most one other fragment), so a fragment end compatible
   with two candidates joins the better. Accepted pairs are unioned (union-find), so chains A + B + C
   are one track. The builder then numbers the tracks again (number_tracks).

The windows are deliberately loose: the scorer decides, the windows only keep its work small. The
window defaults are set from the TrackML-like detector (2 T field, pixel and strip layers up to ~1 m);
the thresholds `stitch_max_chi2` and `stitch_min_score` were looked at on a few demo valset events
only (TrackBuildingConfig's comments): choose them on the valset of the data at hand.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch_geometric.data import Data

from stages.graph_construction.truth import hit_order
from tb_plugin.tokenizer import N_SPECIAL, PAD, UNK

Stitch = Literal["none", "geometry", "tb"]
MERGES_FIELD = "stitch_merges"  # per event: how many fragment pairs stitching joined (an int)


# ------------------------------------------------------------------------------------- config checks


def check_stitch_keys(config) -> None:
    """The stitch_* keys of a TrackBuildingConfig; one-line errors naming the key."""
    if config.stitch == "tb" and config.tracking_bert_dir is None:
        raise ValueError(
            "key 'tracking_bert_dir' is required with stitch: tb (the stage_dir of a trained tracking_bert stage)"
        )
    if not 0 < config.stitch_max_dphi <= np.pi:  # a wider window would find a fragment twice
        raise ValueError(f"key 'stitch_max_dphi' must be in (0, pi] (radians), got {config.stitch_max_dphi}")
    for key in ("stitch_max_dz", "stitch_max_gap", "stitch_hit_sigma"):
        value = getattr(config, key)
        if not value > 0:  # also refuses nan
            raise ValueError(f"key '{key}' must be a positive number, got {value}")
    if np.isnan(config.stitch_max_chi2) or np.isnan(config.stitch_min_score):
        raise ValueError("keys 'stitch_max_chi2' and 'stitch_min_score' must be numbers, got nan")
    if config.stitch_min_fragment_length < 2:
        raise ValueError(
            f"key 'stitch_min_fragment_length' must be at least 2 (a fragment needs an edge), "
            f"got {config.stitch_min_fragment_length}"
        )
    for key in ("stitch_junction_hits", "stitch_max_candidates", "stitch_batch_size"):
        if getattr(config, key) < 1:
            raise ValueError(f"key '{key}' must be at least 1, got {getattr(config, key)}")


# ------------------------------------------------------------------------------------- fragments


@dataclass
class Fragments:
    """The builder's tracks as CSR over their hits, each fragment's hits inner -> outer."""

    hits: np.ndarray  # int64 [H] hit indices, grouped by fragment, inner -> outer within each
    start: np.ndarray  # int64 [F + 1] fragment f holds hits[start[f] : start[f + 1]]
    label: np.ndarray  # int64 [F] the builder's label of each fragment

    @classmethod
    def from_labels(cls, labels: np.ndarray, rank: np.ndarray) -> Fragments:
        in_track = np.flatnonzero(labels >= 0)
        hits = in_track[np.lexsort((rank[in_track], labels[in_track]))]  # [H] by label, then rank
        label, counts = np.unique(labels[hits], return_counts=True)
        start = np.zeros(label.size + 1, dtype=np.int64)
        np.cumsum(counts, out=start[1:])
        return cls(hits=hits.astype(np.int64), start=start, label=label.astype(np.int64))

    def __len__(self) -> int:
        return self.label.size

    @property
    def length(self) -> np.ndarray:
        return np.diff(self.start)  # [F]

    @property
    def inner(self) -> np.ndarray:
        return self.hits[self.start[:-1]]  # [F] innermost hit

    @property
    def outer(self) -> np.ndarray:
        return self.hits[self.start[1:] - 1]  # [F] outermost hit

    def owner(self) -> np.ndarray:
        return np.repeat(np.arange(len(self)), self.length)  # [H] fragment of each entry of hits


@dataclass
class Joined:
    """The hit sequences A + B of many candidate pairs, concatenated (A's hits, then B's)."""

    hits: np.ndarray  # int64 [T] hit indices
    pair: np.ndarray  # int64 [T] the candidate pair of each entry
    position: np.ndarray  # int64 [T] index within the joined sequence
    len_a: np.ndarray  # int64 [C] hits of A per pair
    n_pairs: int

    @property
    def from_a(self) -> np.ndarray:
        return self.position < self.len_a[self.pair]  # [T]


def join(fragments: Fragments, a: np.ndarray, b: np.ndarray) -> Joined:
    """Joined sequences of the pairs (a[c], b[c]), built without a loop over pairs."""
    len_a, len_b = fragments.length[a], fragments.length[b]  # [C]
    total = len_a + len_b
    pair = np.repeat(np.arange(a.size), total)  # [T]
    offset = np.zeros(a.size + 1, dtype=np.int64)
    np.cumsum(total, out=offset[1:])
    position = np.arange(pair.size) - offset[pair]  # [T]
    from_a = position < len_a[pair]
    source = np.where(from_a, fragments.start[a][pair] + position, fragments.start[b][pair] + position - len_a[pair])
    return Joined(fragments.hits[source], pair, position, len_a, a.size)


def alone(fragments: Fragments) -> Joined:
    """Each fragment as a sequence of its own (the Joined layout with nothing after it): what candidate
    scoring (rejection.py) scores."""
    owner = fragments.owner()  # [H]
    position = np.arange(owner.size) - fragments.start[owner]
    return Joined(fragments.hits, owner, position, fragments.length, len(fragments))


def hit_positions(data: Data, source: str | Path) -> np.ndarray:
    """float64 [N, 3] x, y, z of each hit: hit_x, hit_y, hit_z, else from hit_r, hit_phi, hit_z."""
    if all(k in data for k in ("hit_x", "hit_y", "hit_z")):
        cols = [data[k].double().numpy() for k in ("hit_x", "hit_y", "hit_z")]
    elif all(k in data for k in ("hit_r", "hit_phi", "hit_z")):
        r, phi = data.hit_r.double().numpy(), data.hit_phi.double().numpy()
        cols = [r * np.cos(phi), r * np.sin(phi), data.hit_z.double().numpy()]
    else:
        raise ValueError(f"{source}: stitching needs hit positions (hit_x, hit_y, hit_z or hit_r, hit_phi, hit_z)")
    return np.stack(cols, axis=1)


def segment_sum(values: np.ndarray, segment: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(segment, weights=values, minlength=n)


# ------------------------------------------------------------------------------------- candidates


@dataclass(frozen=True)
class JunctionWindows:
    max_dphi: float
    max_dz: float
    max_gap: float
    max_candidates: int


def line_rz(fragments: Fragments, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(z0, slope) [F] of the least-squares line z = z0 + slope * r through each fragment's hits; a
    fragment with no spread in r (all on one disk radius) gets slope 0 through its mean z."""
    owner, n = fragments.owner(), len(fragments)
    r = np.hypot(xyz[fragments.hits, 0], xyz[fragments.hits, 1])  # [H]
    z = xyz[fragments.hits, 2]
    count = fragments.length.astype(np.float64)
    mean_r, mean_z = segment_sum(r, owner, n) / count, segment_sum(z, owner, n) / count
    dr = r - mean_r[owner]
    srr = segment_sum(dr * dr, owner, n)
    srz = segment_sum(dr * (z - mean_z[owner]), owner, n)
    slope = np.divide(srz, srr, out=np.zeros(n), where=srr > 1e-9)
    return mean_z - slope * mean_r, slope


def candidate_pairs(
    fragments: Fragments, xyz: np.ndarray, rank: np.ndarray, windows: JunctionWindows
) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) int64 [C]: pairs whose junction A.outer -> B.inner passes the windows (module docstring).

    The inner ends are sorted by phi and repeated at phi -+ 2 pi, so a searchsorted window around each
    outer end's phi finds its neighbours across the +-pi seam too.
    """
    outer, inner = fragments.outer, fragments.inner
    phi_out = np.arctan2(xyz[outer, 1], xyz[outer, 0])  # [F]
    phi_in = np.arctan2(xyz[inner, 1], xyz[inner, 0])
    order = np.argsort(phi_in, kind="stable")
    ring = np.concatenate([phi_in[order] - 2 * np.pi, phi_in[order], phi_in[order] + 2 * np.pi])  # [3F]
    ring_frag = np.tile(order, 3)
    lo = np.searchsorted(ring, phi_out - windows.max_dphi, side="left")
    hi = np.searchsorted(ring, phi_out + windows.max_dphi, side="right")
    a = np.repeat(np.arange(len(fragments)), hi - lo)
    offset = np.zeros(len(fragments) + 1, dtype=np.int64)
    np.cumsum(hi - lo, out=offset[1:])
    b = ring_frag[lo[a] + np.arange(a.size) - offset[a]]
    keep = (a != b) & (rank[outer[a]] < rank[inner[b]])
    a, b = a[keep], b[keep]
    gap = np.linalg.norm(xyz[inner[b]] - xyz[outer[a]], axis=1)  # [C]
    z0, slope = line_rz(fragments, xyz)
    z_pred = z0[a] + slope[a] * np.hypot(xyz[inner[b], 0], xyz[inner[b], 1])
    keep = (gap <= windows.max_gap) & (np.abs(xyz[inner[b], 2] - z_pred) <= windows.max_dz)
    a, b, gap = a[keep], b[keep], gap[keep]
    nearest = np.lexsort((b, gap, a))  # per A, nearest first (ties by fragment)
    a, b = a[nearest], b[nearest]
    first = np.searchsorted(a, a, side="left")  # index of each A's first candidate
    keep = np.arange(a.size) - first < windows.max_candidates
    return a[keep], b[keep]


# ------------------------------------------------------------------------------------- geometry


def helix_chi2(joined: Joined, xyz: np.ndarray, sigma: float) -> np.ndarray:
    """float64 [C]: chi2 per degree of freedom (2n - 5) of a helix fit to each joined sequence.

    Transverse: the algebraic circle fit (Kasa) x^2 + y^2 + A x + B y + C = 0 on coordinates centred
    per sequence, solved for all sequences at once (batched pseudo-inverse), residual = distance to
    the circle. Longitudinal: a straight line z(s), s the arc length from the first hit. Both residuals
    are divided by the one hit resolution `sigma`. A degenerate fit scores inf (never merged).
    """
    seg, n = joined.pair, joined.n_pairs
    x, y, z = (xyz[joined.hits, i] for i in range(3))  # [T] each
    count = np.bincount(seg, minlength=n).astype(np.float64)  # [C]
    u = x - (segment_sum(x, seg, n) / count)[seg]
    v = y - (segment_sum(y, seg, n) / count)[seg]
    w = u * u + v * v
    moments = [segment_sum(p, seg, n) for p in (u * u, u * v, v * v, u, v, u * w, v * w, w)]
    suu, suv, svv, su, sv, suw, svw, sw = moments
    matrix = np.stack(
        [np.stack([suu, suv, su], -1), np.stack([suv, svv, sv], -1), np.stack([su, sv, count], -1)], axis=1
    )  # [C, 3, 3]
    coef = np.einsum("cij,cj->ci", np.linalg.pinv(matrix), -np.stack([suw, svw, sw], -1))  # [C, 3]
    cx, cy = -coef[:, 0] / 2, -coef[:, 1] / 2
    radius2 = cx * cx + cy * cy - coef[:, 2]
    radius = np.sqrt(np.where(radius2 > 0, radius2, np.nan))  # [C]
    du, dv = u - cx[seg], v - cy[seg]
    transverse = np.hypot(du, dv) - radius[seg]  # [T]
    angle = np.arctan2(dv, du)
    first = np.flatnonzero(joined.position == 0)[seg]  # [T] the first hit of each sequence
    turned = np.angle(np.exp(1j * (angle - angle[first])))  # wrapped to (-pi, pi]
    s = radius[seg] * turned  # [T] signed arc length
    longitudinal = line_residuals(s, z, seg, n, count)
    chi2 = segment_sum(transverse**2 + longitudinal**2, seg, n) / sigma**2
    ndof = np.maximum(2 * count - 5, 1)
    return np.where(np.isfinite(chi2), chi2 / ndof, np.inf)


def line_residuals(s: np.ndarray, z: np.ndarray, seg: np.ndarray, n: int, count: np.ndarray) -> np.ndarray:
    """[T] residuals of the least-squares line z = z0 + t s fitted per segment."""
    mean_s, mean_z = segment_sum(s, seg, n) / count, segment_sum(z, seg, n) / count
    ds, dz = s - mean_s[seg], z - mean_z[seg]
    sss, ssz = segment_sum(ds * ds, seg, n), segment_sum(ds * dz, seg, n)
    slope = np.divide(ssz, sss, out=np.zeros(n), where=sss > 1e-12)
    return dz - slope[seg] * ds


# ------------------------------------------------------------------------------------- merging


def greedy_merge(
    n_fragments: int, a: np.ndarray, b: np.ndarray, score: np.ndarray, accept: np.ndarray
) -> tuple[np.ndarray, int]:
    """(root int64 [F], merges): union-find over the accepted pairs taken best first (highest score;
    ties by a, then b), each fragment's outer end and inner end used at most once."""
    parent = np.arange(n_fragments)

    def find(f: int) -> int:
        while parent[f] != f:
            parent[f] = parent[parent[f]]
            f = parent[f]
        return f

    outer_used = np.zeros(n_fragments, dtype=bool)
    inner_used = np.zeros(n_fragments, dtype=bool)
    merges = 0
    order = np.lexsort((b, a, -score))
    for c in order[accept[order]]:
        fa, fb = int(a[c]), int(b[c])
        if outer_used[fa] or inner_used[fb]:
            continue
        ra, rb = find(fa), find(fb)
        if ra == rb:  # would close a loop (only possible with ties in rank; kept as a guard)
            continue
        parent[rb] = ra
        outer_used[fa] = inner_used[fb] = True
        merges += 1
    return np.array([find(f) for f in range(n_fragments)], dtype=np.int64), merges


# ------------------------------------------------------------------------------------- the stitcher

Scorer = Callable[[Data, Fragments, Joined, str], tuple[np.ndarray, np.ndarray]]  # (score, accept) [C]


class Stitcher:
    """Stitches one event's labels: candidates, the chosen scorer, best-first merge."""

    def __init__(self, windows: JunctionWindows, scorer: Scorer) -> None:
        self.windows = windows
        self.scorer = scorer

    def __call__(self, data: Data, labels: np.ndarray, source: str | Path) -> tuple[np.ndarray, int]:
        """(grouping int64 [N] (-1 = no track; not yet numbered), merges made)."""
        labels = np.asarray(labels, dtype=np.int64)
        if not (labels >= 0).any():
            return labels, 0
        xyz = hit_positions(data, source)  # [N, 3]
        if xyz.shape[0] != labels.shape[0]:
            raise ValueError(f"{source}: {xyz.shape[0]} hit positions for {labels.shape[0]} hits")
        rank = hit_order((xyz**2).sum(axis=1))  # [N] the graph contract's inner -> outer order
        fragments = Fragments.from_labels(labels, rank)
        a, b = candidate_pairs(fragments, xyz, rank, self.windows)
        if a.size == 0:
            return labels, 0
        score, accept = self.scorer(data, fragments, join(fragments, a, b), str(source))
        root, merges = greedy_merge(len(fragments), a, b, score, accept)
        fragment_of_label = np.full(int(labels.max()) + 1, -1, dtype=np.int64)
        fragment_of_label[fragments.label] = np.arange(len(fragments))
        grouped = labels >= 0
        out = labels.copy()
        out[grouped] = root[fragment_of_label[labels[grouped]]]
        return out, merges


def geometry_scorer(sigma: float, max_chi2: float) -> Scorer:
    """Score = -chi2/ndof (higher is better, for the best-first sort); accepted when chi2/ndof <= max_chi2."""

    def score(data: Data, fragments: Fragments, joined: Joined, source: str) -> tuple[np.ndarray, np.ndarray]:
        chi2 = helix_chi2(joined, hit_positions(data, source), sigma)
        return -chi2, chi2 <= max_chi2

    return score


def make_stitcher(config, data_dir: Path | None, tb: TrackingBERTScorer | None = None) -> Stitcher | None:
    """The stitcher a TrackBuildingConfig asks for (None for stitch: none). stitch: tb uses `tb` when the
    builder has loaded the model already (it may score candidates too), else loads it here; `data_dir`
    is the builder's input_dir, for the geometry check."""
    if config.stitch == "none":
        return None
    windows = JunctionWindows(
        config.stitch_max_dphi, config.stitch_max_dz, config.stitch_max_gap, config.stitch_max_candidates
    )
    if config.stitch == "geometry":
        return Stitcher(windows, geometry_scorer(config.stitch_hit_sigma, config.stitch_max_chi2))
    tb = tb or TrackingBERTScorer.from_stage_dir(
        config.tracking_bert_dir, data_dir, config.stitch_junction_hits, config.stitch_batch_size
    )
    return Stitcher(windows, tb.scorer(config.stitch_min_score))


# ------------------------------------------------------------------------------------- TrackingBERT


class TrackingBERTScorer:
    """The `tb` score of a junction: the masked-module (MDM) pseudo-log-likelihood of its modules.

    Each of the last k hits of A and the first k of B (k = `stitch_junction_hits`) is hidden behind
    [MASK] one at a time, in its own copy of the joined sequence, and the model's log-probability of
    the true module there (special tokens excluded, as in the pretraining evaluation) is averaged over
    those positions: the mean, not the sum, so pairs with different numbers of scorable positions
    compare. A true continuation makes B's first modules predictable from A's last ones and back.

    Layout. Pretraining only ever saw pairs `[CLS] A [SEP] B [SEP]` (pairs.py), with B another
    track of the event. The joined sequence is laid out as track A of such a pair with an empty B,
    `[CLS] J [SEP] [SEP]` (layout_pairs with a track of length 0), so every module of J has the
    token, position and segment embeddings it had in pretraining; a real partner track as B would
    make the score depend on which partner was drawn. J is a window of at most max_hits hits around
    the junction (the model's length): A's last hits and B's first, half each when both have enough,
    a short side leaving the rest to the other.

    Modules outside the vocabulary ([UNK], e.g. strip hits for a pixel-only vocabulary) carry no
    information the model was trained on and were never in a pretraining sentence (the volume cut
    drops them): they are left out of J and never scored. A pair whose J has no hit of A or none of
    B, or no scorable junction position, gets no score (nan) and is never merged.
    """

    def __init__(
        self, model, tokenizer, detector, junction_hits: int, batch_size: int, mdm_candidates: str = "all"
    ) -> None:
        self.model = model.eval()  # deterministic: no dropout
        self.tokenizer = tokenizer
        # a model pretrained with the layer softmax is scored as it learned: among the true module's layer
        self.token_group = torch.from_numpy(tokenizer.layer_groups()) if mdm_candidates == "layer" else None
        self.detector = detector
        self.junction_hits = junction_hits
        self.batch_size = batch_size
        self.max_hits = (model.config.max_len - 3) // 2  # max_len = 2 * max_hits + 3 (pairs.sequence_length)

    @classmethod
    def from_stage_dir(
        cls, stage_dir: Path, data_dir: Path | None, junction_hits: int, batch_size: int
    ) -> TrackingBERTScorer:
        """Load through the tracking_bert stage's own `trained()`, with its vocabulary, geometry and
        model-key checks. The stage_dir keeps no config, so the model keys are the checkpoint's and
        the geometry is the data's: `data_dir/detectors.csv` when the track builder's input has one,
        else the one `tb infer` wrote into the tracking_bert stage_dir, else the built-in (with
        detector_for's warning)."""
        from tb_plugin.pretraining.stage import TrackingBERTStage, TrackingBERTStageConfig
        from tb_plugin.training import CheckpointError, read_checkpoint, trained_checkpoint

        path = trained_checkpoint(stage_dir, "TrackingBERT")
        saved = read_checkpoint(path).get("hyper_parameters", {}).get("model")
        if not isinstance(saved, dict) or not all(
            k in saved for k in ("n_embd", "n_head", "n_layer", "d_ff", "max_len")
        ):
            raise CheckpointError(f"{path}: not a TrackingBERT checkpoint (no model hyperparameters)")
        max_hits = (saved["max_len"] - 3) // 2
        geometry = [Path(d) / "detectors.csv" for d in (data_dir, stage_dir) if d is not None]
        config = TrackingBERTStageConfig(
            stage="tracking_bert",
            model="TrackingBERT",
            stage_dir=Path(stage_dir),
            input_dir=data_dir,
            detector=next((g for g in geometry if g.is_file()), None),
            max_hits=max_hits,
            min_hits=min(4, max_hits),
            **{k: saved[k] for k in ("n_embd", "n_head", "n_layer", "d_ff")},
        )
        module, tokenizer, detector = TrackingBERTStage(config).trained()
        candidates = module.hparams.get("mdm_candidates", "all")
        return cls(module.model, tokenizer, detector, junction_hits, batch_size, candidates)

    def scorer(self, min_score: float) -> Scorer:
        def score(data: Data, fragments: Fragments, joined: Joined, source: str) -> tuple[np.ndarray, np.ndarray]:
            value = self.scores(data, joined, source)
            accept = ~np.isnan(value) & (value >= min_score)  # no scorable position (nan): never merged
            return np.where(np.isnan(value), -np.inf, value), accept

        return score

    def scores(self, data: Data, joined: Joined, source: str) -> np.ndarray:
        """float64 [C]: mean log-probability of the true module over each pair's scorable junction
        positions; nan where a pair has none (class docstring)."""
        tokens = self.tokens(data, joined, source)
        return self.mean_log_prob(self.windows(joined, tokens), joined, tokens)

    def candidate_scores(self, data: Data, fragments: Fragments, source: str) -> np.ndarray:
        """float64 [F]: the MDM pseudo-log-likelihood of each whole candidate (rejection.py): its first
        max_hits in-vocabulary modules, each masked in its own copy, the mean log-probability of the true
        module; nan for a candidate with fewer than two modules in the vocabulary (nothing to judge)."""
        joined = alone(fragments)
        tokens = self.tokens(data, joined, source)
        n, pair = joined.n_pairs, joined.pair
        known = tokens != UNK  # [T]
        seen = known & (count_within(known, pair, n) <= self.max_hits)
        judged = np.bincount(pair[seen], minlength=n) >= 2  # [F]
        seen &= judged[pair]
        window = ModelInput(np.flatnonzero(judged), seen, count_within(seen, pair, n), seen)
        return self.mean_log_prob(window, joined, tokens)

    def tokens(self, data: Data, joined: Joined, source: str) -> np.ndarray:
        """int64 [T]: the token of each hit of the joined sequences ([UNK] outside the vocabulary)."""
        from tb_plugin.pretraining.tracks import hit_module_index

        return self.tokenizer.encode(hit_module_index(data, self.detector, source))[joined.hits]

    def mean_log_prob(self, window: ModelInput, joined: Joined, tokens: np.ndarray) -> np.ndarray:
        """float64 [C]: per sequence, the mean over its scorable entries of the log-probability of the true
        module, each masked in its own copy of the sequence's row; nan for a sequence with none."""
        from tb_plugin.pretraining.masking import mask_for_eval

        layout = self.layout(window, joined, tokens)  # [R, L] each
        q = np.flatnonzero(window.scorable)  # entries scored, one masked copy each
        row_of_q = np.searchsorted(window.row_pair, joined.pair[q])  # [Q] row of each copy
        chosen = np.zeros((q.size, layout["input_ids"].shape[1]), dtype=bool)  # [Q, L]
        chosen[np.arange(q.size), window.column[q]] = True
        masked, _ = mask_for_eval(layout["input_ids"][row_of_q], chosen)
        logp = self.log_probs(
            masked, layout["segment_ids"][row_of_q], layout["attention_mask"][row_of_q], window.column[q], tokens[q]
        )
        total = np.bincount(joined.pair[q], weights=logp, minlength=joined.n_pairs)
        count = np.bincount(joined.pair[q], minlength=joined.n_pairs)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)

    def windows(self, joined: Joined, tokens: np.ndarray) -> ModelInput:
        """Which hits of each joined sequence the model sees (J) and which it scores (class docstring).

        Of the in-vocabulary hits, A's last and B's first: half of max_hits each when both have enough,
        a short side leaving the rest to the other.
        """
        n, pair, from_a = joined.n_pairs, joined.pair, joined.from_a
        known = tokens != UNK  # [T]
        ka = np.bincount(pair[known & from_a], minlength=n)  # [C] in-vocabulary hits of A
        kb = np.bincount(pair[known & ~from_a], minlength=n)
        wb = np.minimum(kb, np.maximum(self.max_hits // 2, self.max_hits - ka))  # [C]
        wa = np.minimum(ka, self.max_hits - wb)
        from_end_a = ka[pair] - count_within(known & from_a, pair, n)  # [T] 0 = A's last known hit
        index_b = count_within(known & ~from_a, pair, n) - 1  # [T] 0 = B's first known hit
        seen = known & np.where(from_a, from_end_a < wa[pair], index_b < wb[pair])
        k = self.junction_hits
        junction = np.where(from_a, joined.position >= joined.len_a[pair] - k, joined.position - joined.len_a[pair] < k)
        scorable = junction & seen & ((wa >= 1) & (wb >= 1))[pair]
        row_pair = np.unique(pair[scorable])  # [R] pairs that get a score
        seen &= np.isin(pair, row_pair)
        return ModelInput(row_pair, seen, count_within(seen, pair, n), scorable)

    def layout(self, window: ModelInput, joined: Joined, tokens: np.ndarray) -> dict[str, np.ndarray]:
        """layout_pairs of every row: J as track A, an empty track (the last one) as B."""
        from tb_plugin.pretraining.pairs import PairSet, layout_pairs
        from tb_plugin.pretraining.tracks import TrackSet

        n_rows = window.row_pair.size
        row = np.searchsorted(window.row_pair, joined.pair[window.seen])  # [S]
        padded = np.full((n_rows + 1, self.max_hits), PAD, dtype=np.int64)  # [R + 1, max_hits]
        padded[row, window.column[window.seen] - 1] = tokens[window.seen]
        zeros = np.zeros(n_rows + 1, dtype=np.int64)
        tracks = TrackSet(padded, np.bincount(row, minlength=n_rows + 1), zeros.astype(np.float32), zeros, zeros)
        pairs = PairSet(np.arange(n_rows), np.full(n_rows, n_rows), np.zeros(n_rows, dtype=np.float32))
        return layout_pairs(tracks, pairs)

    def log_probs(
        self, input_ids: np.ndarray, segment_ids: np.ndarray, attention_mask: np.ndarray, column, target
    ) -> np.ndarray:
        """float64 [Q]: log-probability of `target` at `column` of each masked row, batch_size rows per
        forward pass; special tokens are never an answer (as in the pretraining evaluation)."""
        device = next(self.model.parameters()).device
        out = []
        with torch.inference_mode():
            for start in range(0, input_ids.shape[0], self.batch_size):
                sl = slice(start, start + self.batch_size)
                # trailing columns that are padding in every row change nothing (masked out of attention,
                # positions are absolute) and cost as much as the rest: a candidate fills 11 of 19
                width = int(np.flatnonzero(attention_mask[sl].any(axis=0)).max()) + 1
                ids, seg, att = (
                    torch.from_numpy(x[sl, :width]).to(device) for x in (input_ids, segment_ids, attention_mask)
                )
                h = self.model.encode(ids, seg, att)  # [B, L, C]
                at = torch.from_numpy(column[sl]).to(device)
                logits = self.model.mdm_head(h[torch.arange(ids.shape[0], device=device), at]).float()  # [B, V]
                logits[:, :N_SPECIAL] = -torch.inf
                true = torch.from_numpy(target[sl]).to(device)
                if self.token_group is not None:  # the softmax over the true module's layer only
                    group = self.token_group.to(device)
                    logits = logits.masked_fill(group[None, :] != group[true][:, None], -torch.inf)
                logp = torch.log_softmax(logits, dim=-1)  # [B, V]
                out.append(logp.gather(1, true[:, None])[:, 0].double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)


@dataclass
class ModelInput:
    """What the model sees of each joined sequence: the rows (pairs scored) and, per entry of Joined,
    whether it is in its row's J, its column there ([CLS] = 0) and whether it is scored."""

    row_pair: np.ndarray  # int64 [R] pairs with at least one scorable position, ascending
    seen: np.ndarray  # bool [T] in J (only for pairs in row_pair)
    column: np.ndarray  # int64 [T] 1 + index within J (meaningful where seen)
    scorable: np.ndarray  # bool [T]


def count_within(flag: np.ndarray, pair: np.ndarray, n: int) -> np.ndarray:
    """int64 [T]: how many entries of the same pair up to and including this one have `flag` (entries
    grouped by pair, in order)."""
    before = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(pair[flag], minlength=n), out=before[1:])
    return np.cumsum(flag) - before[pair]
