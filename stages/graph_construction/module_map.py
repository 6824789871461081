"""`stage: graph_construction, model: ModuleMap`: candidate edges between hits on module pairs that
truth tracks have connected before.

    tb train   learns the map: every (module of the inner hit, module of the outer hit) pair of the
               trainset's truth edges `track_edges` (those passing `map_tracks`), with how often it
               was seen, and per layer pair the window of dphi and z0 of those truth edges; saved
               atomically to stage_dir/artifacts/module_map.npz
    tb infer   every event again with edge_index, edge_y, track_to_edge_map (stages.graph_construction.truth)
    tb eval    graph efficiency (all and target truth edges), purity and size on `dataset`

Building runs in torch on the `accelerator`'s device (CUDA or the CPU, the same graph on each),
vectorised over all module pairs, with no loop over pairs or hits. Hits are sorted by module and by
phi within a module, each listed twice (at phi and phi + 2 pi), so the hits of module b inside a dphi
window are one run of that order even across phi = +-pi. For each hit on the inner module a of a pair
(a, b), a binary search finds the run of b's hits inside the pair's dphi window; only those hit pairs
are made (about a tenth of the n_a x n_b at pile-up 200), and cut exactly on dphi and z0. The search is
a little wider than the window, so the graph is exactly the hit pairs whose features lie in the
windows, as enumerating every n_a x n_b combination would give. At most `chunk_edges` searches and
then `chunk_edges` candidates are made at a time, so peak memory stays bounded on 100k-hit events; an
event whose graph would still exceed `max_edges` keeps its shortest edges (with a warning) instead of
exhausting memory.

Doublet cuts, as ACORN's module map applies per module pair: a candidate is kept when its dphi and
z0 (see doublet_features) lie in the window of its layer pair: the central `window_coverage`
of that layer pair's truth edges (from histograms, so learning needs no memory per edge), widened by
`window_margin` of its width on each side. A min/max range would be set by the rare loopers and
secondaries, and cut nothing. Ranges are learned per layer pair rather than per
module pair: a module pair is seen a handful of times in a training set of reasonable size, too few
to know its range, while a layer pair is seen thousands of times. `doublet_cuts: false` turns them off.

The map lives in `hit_module_index` space (the detector's dense module index), so it only applies to
data read with the same detector. Its coverage grows with the training events: a module pair never
seen in the trainset gives no edge, so the map wants many training events (they are cheap to simulate).

`prior:` (off by default) scores module pairs when the map is learned, from TrackingBERT's per-module
vectors or, as the control, from geometry alone, to propose pairs the trainset never showed and to
prune rarely seen ones (stages/graph_construction/pair_prior.py); the saved map then holds the final
pairs, proposed ones with count 0, and a record of what the prior did.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch_geometric.data import Data
from tqdm import tqdm

from stages.graph_construction.doublets import PAIR_SHIFT, doublet_features, doublet_values, layer_key
from stages.graph_construction.pair_prior import PairPriorConfig, apply_pair_prior
from stages.graph_construction.truth import GraphBuilderStage
from stages.graph_metrics import target_conditions, target_truth_mask
from stages.run_conditions import PROFILE_FILE, RunConditions, save_profile
from tb_plugin.atomic import atomic_path
from tb_plugin.config import ConfigError, build
from tb_plugin.event_store import list_event_files, load_event, require_field
from tb_plugin.stage import StageConfig, TrainedArtifactsConfig

log = logging.getLogger(__name__)

MAP_FILE = "module_map.npz"
WINDOW_NAMES = ("dphi", "z0")


def _default_target() -> dict[str, Any]:
    return {"track_particle_pt": [1000.0, math.inf]}  # pT > 1 GeV, in MeV


def _default_window_tracks() -> dict[str, Any]:
    return {"track_particle_pt": [500.0, math.inf]}


ACCELERATORS = ("cpu", "gpu", "cuda", "auto")


@dataclass(kw_only=True)
class ModuleMapConfig(StageConfig, TrainedArtifactsConfig):
    # The feature store (data reading or tracking_bert output) with hit_module_index and track_edges.
    input_dir: Path = field()
    # ACORN conditions on the truth edges that teach the map (pT in MeV); {} = all truth edges.
    map_tracks: dict[str, Any] = field(default_factory=dict)
    # A module pair seen fewer times in the trainset is left out of the graph.
    min_count: int = 1
    # Cut candidates on the dphi / z0 range of their layer pair's truth edges.
    doublet_cuts: bool = True
    # ACORN conditions on the truth edges whose dphi / z0 set the windows (pT in MeV); the default
    # keeps the loopers and soft secondaries of a few hundred MeV from opening every window wide.
    window_tracks: dict[str, Any] = field(default_factory=_default_window_tracks)
    # Fraction of a layer pair's truth edges (map_tracks and window_tracks) inside its dphi / z0 window.
    window_coverage: float = 0.99
    # Each window is widened by this fraction of its width on both sides.
    window_margin: float = 0.1
    # Hit pairs inside the dphi windows (and phi searches) made at a time: bounds the temporaries.
    chunk_edges: int = 4_000_000
    # Largest graph of one event; a bigger one keeps its shortest edges, with a warning.
    max_edges: int = 20_000_000
    # Trainset events the map learns from (default: those data_split selects). Larger than data_split's
    # first entry, it lets the map see many events while graphs are written only for the events the
    # next stages use: the map is cheap to learn and wants coverage, the GNN does not need 1000 graphs.
    map_events: int | None = None
    # ACORN conditions on particles for target_efficiency (pT in MeV); default pT > 1 GeV.
    target_tracks: dict[str, Any] = field(default_factory=_default_target)
    # The split that evaluate reads (ACORN's key).
    dataset: Literal["trainset", "valset", "testset"] = "testset"
    # Module-pair prior applied when the map is learned (PairPriorConfig); null = off.
    prior: PairPriorConfig | None = None
    # Where graphs are built (the learning stages' key): gpu / cuda = the CUDA device (the CPU, with a
    # warning, when there is none), auto = CUDA when present, else the CPU. The graph is the same on each.
    accelerator: Literal["cpu", "gpu", "cuda", "auto"] = "auto"
    # [z_min, z_max] (mm) of the luminous region the map will meet, when it reaches past the training
    # events': every z0 window is widened by how far it does (past the region of run_conditions.json,
    # saved at training). Inference only: the module pairs stay those the training events crossed, so
    # a map trained on the target runs' vertex spread does better (README, "Run conditions").
    beam_spot: list[float] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beam_spot is not None and not (
            len(self.beam_spot) == 2
            and all(math.isfinite(z) for z in self.beam_spot)
            and self.beam_spot[0] < self.beam_spot[1]
        ):
            raise ValueError(f"key 'beam_spot' must be [z_min, z_max] in mm with z_min < z_max, got {self.beam_spot}")
        if self.map_events is not None and self.map_events < 1:
            raise ValueError(
                f"key 'map_events' must be at least 1 or null (the events data_split selects), got {self.map_events}"
            )
        for key in ("min_count", "chunk_edges", "max_edges"):
            if getattr(self, key) < 1:
                raise ValueError(f"key '{key}' must be at least 1, got {getattr(self, key)}")
        if not (self.window_margin >= 0 and math.isfinite(self.window_margin)):
            raise ValueError(f"key 'window_margin' must be a finite number >= 0, got {self.window_margin}")
        if not 0.0 < self.window_coverage <= 1.0:
            raise ValueError(f"key 'window_coverage' must be in (0, 1], got {self.window_coverage}")
        # typed configs are checked by build(); this guards direct construction
        if self.accelerator not in ACCELERATORS:
            raise ValueError(f"key 'accelerator' has value {self.accelerator!r}; choices: {', '.join(ACCELERATORS)}")
        target_conditions(self.target_tracks)
        target_conditions(self.map_tracks, "key 'map_tracks'")
        target_conditions(self.window_tracks, "key 'window_tracks'")
        if isinstance(self.prior, dict):
            self.prior = build(PairPriorConfig, self.prior, "key 'prior'")


# ------------------------------------------------------------------------------------- the map


# Histogram binning of the doublet features, for the per-layer-pair quantile windows.
FEATURE_RANGE = np.array([[-np.pi, np.pi], [-3000.0, 3000.0]])  # [F, 2] dphi (rad), z0 (mm)
N_BINS = 4000


def feature_bins(features: np.ndarray) -> np.ndarray:
    """int64 [E, F]: the histogram bin of each feature value (out of range values go to the edge bins)."""
    lo, hi = FEATURE_RANGE[:, 0], FEATURE_RANGE[:, 1]
    position = np.clip(
        (features - lo) / (hi - lo) * N_BINS, 0, N_BINS - 1
    )  # clipped before the cast: +-inf stay in range
    return position.astype(np.int64)


def _empty_int() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


def _empty_hist() -> np.ndarray:
    return np.zeros((0, len(WINDOW_NAMES), N_BINS), dtype=np.int64)


@dataclass
class MapLearner:
    """Running module-pair counts and per-layer-pair feature histograms over the training events;
    memory follows the map's size, not the number of truth edges read."""

    pair_keys: np.ndarray = field(default_factory=_empty_int)  # [P] sorted module-pair keys
    pair_counts: np.ndarray = field(default_factory=_empty_int)  # [P]
    pair_layer: np.ndarray = field(default_factory=_empty_int)  # [P] layer-pair key of each module pair
    layer_keys: np.ndarray = field(default_factory=_empty_int)  # [L] sorted layer-pair keys
    hist: np.ndarray = field(default_factory=_empty_hist)  # [L, F, B] truth edges per feature bin
    n_events: int = 0

    def add(self, data: Data, keep: np.ndarray, in_window: np.ndarray, source: str | Path) -> None:
        """One event's truth edges: those with `keep` [T] teach the pairs, those with keep & in_window
        [T] the windows."""
        edges = require_field(data, "track_edges", source).numpy().astype(np.int64)[:, keep]  # [2, T']
        in_window = in_window[keep]  # [T']
        module = require_field(data, "hit_module_index", source).numpy().astype(np.int64)  # [N]
        layer = layer_key(data, source)  # [N]
        pairs = module[edges[0]] * PAIR_SHIFT + module[edges[1]]  # [T']
        layers = layer[edges[0]] * PAIR_SHIFT + layer[edges[1]]  # [T']

        keys = np.concatenate([self.pair_keys, pairs])
        unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        weights = np.concatenate([self.pair_counts, np.ones(pairs.size, dtype=np.int64)])
        self.pair_counts = np.bincount(inverse, weights=weights, minlength=unique.size).astype(np.int64)
        self.pair_layer = np.concatenate([self.pair_layer, layers])[first]
        self.pair_keys = unique

        unique, inverse = np.unique(np.concatenate([self.layer_keys, layers]), return_inverse=True)
        hist = np.zeros((unique.size, len(WINDOW_NAMES), N_BINS), dtype=np.int64)
        hist[inverse[: self.layer_keys.size]] = self.hist
        row = inverse[self.layer_keys.size :][in_window]  # [T''] layer-pair row of each windowing truth edge
        bins = feature_bins(doublet_features(data, edges[:, in_window], source))  # [T'', F]
        for f in range(len(WINDOW_NAMES)):
            np.add.at(hist[:, f, :], (row, bins[:, f]), 1)
        self.layer_keys, self.hist = unique, hist
        self.n_events += 1

    def windows(self, coverage: float) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) [L, F]: the central `coverage` of each layer pair's truth edges, per feature
        (bin edges, so a window is never narrower than one bin)."""
        cumulative = np.cumsum(self.hist, axis=2)  # [L, F, B]
        total = cumulative[:, :, -1:]
        tail = (1.0 - coverage) / 2.0
        first = (cumulative <= tail * total).sum(axis=2)  # [L, F] first bin holding the window's low end
        last = (cumulative < (1.0 - tail) * total).sum(axis=2)  # [L, F] bin holding its high end
        lo, hi = FEATURE_RANGE[:, 0], FEATURE_RANGE[:, 1]
        width = (hi - lo) / N_BINS
        low, high = lo + first * width, lo + (last + 1) * width
        # values beyond the histogram's range were clipped into the edge bins; a layer pair without
        # windowing truth edges (only soft particles seen there) is not cut
        low = np.where((first == 0) | (total[:, :, 0] == 0), -np.inf, low)
        high = np.where((last >= N_BINS - 1) | (total[:, :, 0] == 0), np.inf, high)
        return low, high

    def arrays(self, coverage: float) -> dict[str, np.ndarray]:
        """The map's arrays as saved: pairs [P, 2], counts [P], window [P] (row of the pair's layer pair),
        layer_pairs [L, 2], low / high [L, F], window_names [F], n_events."""
        window = np.searchsorted(self.layer_keys, self.pair_layer)
        low, high = self.windows(coverage)
        return {
            "pairs": np.stack([self.pair_keys // PAIR_SHIFT, self.pair_keys % PAIR_SHIFT], axis=1),
            "counts": self.pair_counts,
            "window": window.astype(np.int64),
            "layer_pairs": np.stack([self.layer_keys // PAIR_SHIFT, self.layer_keys % PAIR_SHIFT], axis=1),
            "low": low,
            "high": high,
            "window_names": np.array(WINDOW_NAMES),
            "n_events": np.int64(self.n_events),
        }

    def save(self, path: Path, coverage: float) -> None:
        """The map as npz (see arrays), written atomically."""
        save_map(path, self.arrays(coverage))


def save_map(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write a map's arrays (MapLearner.arrays, plus proposed [P] and prior when a prior ran) atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


@dataclass
class ModuleMapTable:
    """A learned map: pairs int64 [P, 2] with counts [P], and per pair the row `window` [P] of its
    layer pair's feature window in low / high [L, F]."""

    pairs: np.ndarray
    counts: np.ndarray
    window: np.ndarray
    low: np.ndarray
    high: np.ndarray
    proposed: np.ndarray | None = None  # bool [P]: added by the pair prior (count 0); None: none was

    @classmethod
    def load(cls, path: Path) -> ModuleMapTable:
        if not path.is_file():
            raise FileNotFoundError(f"no module map at {path}; run 'tb train' on this config first")
        names = ("pairs", "counts", "window", "low", "high")
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in names if k not in npz.files]
            if missing:
                raise ValueError(
                    f"{path}: not a module map of this version (missing {', '.join(missing)}); run 'tb train' again"
                )
            table = cls(
                *(npz[k] for k in names), proposed=npz["proposed"].astype(bool) if "proposed" in npz.files else None
            )
        if table.pairs.ndim != 2 or table.pairs.shape[1] != 2 or table.counts.shape != (len(table.pairs),):
            raise ValueError(f"{path}: not a module map (pairs {table.pairs.shape}, counts {table.counts.shape})")
        return table

    def select(self, min_count: int) -> ModuleMapTable:
        """The pairs seen at least min_count times, and those the pair prior proposed."""
        keep = self.counts >= min_count
        if self.proposed is not None:
            keep |= self.proposed
        return ModuleMapTable(
            self.pairs[keep],
            self.counts[keep],
            self.window[keep],
            self.low,
            self.high,
            None if self.proposed is None else self.proposed[keep],
        )

    def windows(self, margin: float) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) [P, F] per pair: its layer pair's window widened by margin x width on each side."""
        width = np.where(np.isfinite(self.high - self.low), self.high - self.low, 0.0)
        return (self.low - margin * width)[self.window], (self.high + margin * width)[self.window]


# ------------------------------------------------------------------------------------- building


# Search keys of PhiSortedHits: module * KEY_SPAN + KEY_OFFSET + phi, with phi in [-pi, 3 pi): the
# keys of one module lie in (module * KEY_SPAN, (module + 1) * KEY_SPAN), so modules never mix.
KEY_SPAN, KEY_OFFSET = 16.0, 4.0
# The phi search runs this much (rad) wider than a window on each side, far above the rounding of the
# search (about 1e-15), so it never loses an edge that the exact cut keeps.
SEARCH_SLACK = 1e-9
FULL_TURN = 2 * math.pi - 1e-6  # a dphi window at least this wide takes every hit of the outer module

Windows = tuple[torch.Tensor, torch.Tensor]  # (low, high) [F, P]: each module pair's window of each doublet feature


@dataclass
class EventHits:
    """One event's hits on the building device: module int64 [N], and phi, r, z as rows of coords
    float64 [3, N], the order doublet_values takes them in (one gather fetches all three)."""

    module: torch.Tensor
    coords: torch.Tensor

    @classmethod
    def from_data(cls, data: Data, source: str | Path, device: torch.device) -> EventHits:
        module = require_field(data, "hit_module_index", source).to(device, torch.int64)
        coords = torch.stack([require_field(data, k, source) for k in ("hit_phi", "hit_r", "hit_z")])
        return cls(module, coords.to(device, torch.float64))


@dataclass
class PhiSortedHits:
    """The hits ordered by module and by phi within a module, each listed twice: at phi (wrapped to
    [-pi, pi)), then at phi + 2 pi. The hits of a module inside a phi window narrower than 2 pi are then
    one run of consecutive positions, even when the window crosses phi = +-pi, which a binary search on
    `key` finds: hit pairs outside the dphi window are never made. Candidates are handled as positions
    in this order (their hits' coordinates are then read from nearby memory) and turned into hit ids
    once cut."""

    hit: torch.Tensor  # [2N] the hit at each position
    coords: torch.Tensor  # [3, 2N] float64 phi, r, z (EventHits.coords) of the hit at each position
    key: torch.Tensor  # [2N] float64, increasing: module * KEY_SPAN + KEY_OFFSET + phi (+ 2 pi in the second copy)
    start: torch.Tensor  # [M] first position of each module; its first copy is start .. start + count
    count: torch.Tensor  # [M] hits on each module


def sort_hits(hits: EventHits, n_modules: int) -> PhiSortedHits:
    """PhiSortedHits of one event's hits, for modules 0 .. n_modules - 1."""
    n = len(hits.module)
    wrapped = torch.remainder(hits.coords[0] + math.pi, 2 * math.pi) - math.pi  # [N] in [-pi, pi)
    base = hits.module.to(torch.float64) * KEY_SPAN + KEY_OFFSET  # [N]
    key = torch.cat([base + wrapped, base + (wrapped + 2 * math.pi)])  # [2N] the two copies
    # stable: should rounding tie a first copy (phi < pi) with a second (phi + 2 pi >= pi), the first
    # comes first, so each module's first `count` positions hold every hit once
    order = torch.argsort(key, stable=True)  # [2N]
    count = torch.bincount(hits.module, minlength=n_modules)  # [M]
    start = 2 * (torch.cumsum(count, 0) - count)  # [M]
    hit = torch.remainder(order, max(n, 1))  # [2N]
    return PhiSortedHits(hit, hits.coords[:, hit], key[order], start, count)


def chunks(size: np.ndarray, limit: int) -> list[np.ndarray]:
    """Indices of the non-zero sizes [K], in consecutive chunks whose sizes add up to at most `limit` (a
    bigger item goes alone): what bounds the temporaries on a 100k-hit event."""
    rows = np.flatnonzero(size > 0)
    end = np.cumsum(size[rows])  # [K'] size up to and including each of them
    found, first = [], 0
    while first < len(rows):
        done = end[first - 1] if first else 0
        last = max(int(np.searchsorted(end, done + limit, side="right")), first + 1)
        found.append(rows[first:last])
        first = last
    return found


def inner_hits(hits: PhiSortedHits, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(place [G], position [G]): each hit on the inner module of each pair (a [P'] holds those
    modules), as its position in `hits`, with the pair's place in `a`."""
    n_a = hits.count[a]  # [P']
    total = int(n_a.sum())
    place = torch.repeat_interleave(torch.arange(len(a), device=a.device), n_a, output_size=total)  # [G]
    first = (hits.start[a] - (torch.cumsum(n_a, 0) - n_a)).index_select(0, place)  # [G]
    return place, torch.arange(total, device=a.device) + first


def outer_runs(
    hits: PhiSortedHits, phi_in: torch.Tensor, b: torch.Tensor, dphi_window: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(begin [G], end [G]): the positions of the hits on module b [G] whose phi lies in
    phi_in + [low, high] (dphi_window, [G] each, widened by SEARCH_SLACK); every hit of b when the
    window spans a full turn or is None."""
    every_begin = hits.start.index_select(0, b)  # [G]
    every_end = every_begin + hits.count.index_select(0, b)
    if dphi_window is None:
        return every_begin, every_end
    low, high = dphi_window
    width = high - low + 2 * SEARCH_SLACK  # [G] inf for an open window
    full = width >= FULL_TURN  # [G]
    # the run starts in the first copy, phi in [-pi, pi), and ends at most a turn later, in the second
    lo = torch.remainder(phi_in + low - SEARCH_SLACK + math.pi, 2 * math.pi) - math.pi  # [G]
    base = b.to(torch.float64) * KEY_SPAN + KEY_OFFSET  # [G]
    begin = torch.searchsorted(hits.key, base + torch.where(full, 0.0, lo))  # first key >= the window's low end
    end = torch.searchsorted(hits.key, base + torch.where(full, 0.0, lo + width), right=True)  # past its high end
    return torch.where(full, every_begin, begin), torch.where(full, every_end, end)


def expand_runs(begin: torch.Tensor, end: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(run [C], position [C]): every position of the runs begin .. end [G], with the run it belongs to."""
    size = end - begin  # [G]
    total = int(size.sum())
    run = torch.repeat_interleave(torch.arange(len(size), device=size.device), size, output_size=total)  # [C]
    first = (begin - (torch.cumsum(size, 0) - size)).index_select(0, run)  # [C]
    return run, torch.arange(total, device=size.device) + first


Runs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # (inner position, pair, begin, end) [G]

# The [G] and [C] gathers below use index_select: the same as [], several times faster on the CPU,
# where they are most of the time.


def searched_runs(by_phi: PhiSortedHits, pairs: torch.Tensor, rows: torch.Tensor, windows: Windows | None) -> Runs:
    """(inner, pair, begin, end) [G]: each hit on the inner module of the module pairs `rows` [P'] of
    `pairs` (its position in by_phi), its pair's row, and the run of positions of the outer module's
    hits inside the pair's dphi window (every hit of that module without cuts)."""
    place, inner = inner_hits(by_phi, pairs[rows, 0])  # [G]
    pair = rows.index_select(0, place)  # [G]
    dphi_window = (
        None if windows is None else (windows[0][0].index_select(0, pair), windows[1][0].index_select(0, pair))
    )
    phi_in = by_phi.coords[0].index_select(0, inner)  # [G]
    begin, end = outer_runs(by_phi, phi_in, pairs[:, 1].index_select(0, pair), dphi_window)
    return inner, pair, begin, end


def cut_runs(by_phi: PhiSortedHits, runs: Runs, windows: Windows | None) -> torch.Tensor:
    """[2, E'] hit pairs (inner hit, each hit of its run) of runs (inner, pair, begin, end) [G] whose
    doublet features (doublet_values, every feature, exactly) lie in their pair's windows."""
    inner, pair, begin, end = runs
    run, outer = expand_runs(begin, end)  # [C]
    if windows is not None:
        inner_coords = [c.index_select(0, inner).index_select(0, run) for c in by_phi.coords]  # 3 x [C]
        features = doublet_values(*inner_coords, *(c.index_select(0, outer) for c in by_phi.coords))  # [F, C]
        pair = pair.index_select(0, run)  # [C]
        low, high = windows[0].index_select(1, pair), windows[1].index_select(1, pair)  # [F, C]
        keep = torch.nonzero(((features >= low) & (features <= high)).all(dim=0)).squeeze(1)  # [E']
        run, outer = run.index_select(0, keep), outer.index_select(0, keep)
    return torch.stack([by_phi.hit.index_select(0, inner.index_select(0, run)), by_phi.hit.index_select(0, outer)])


def build_module_map_edges(
    hits: EventHits, pairs: torch.Tensor, windows: Windows | None, chunk_edges: int
) -> torch.Tensor:
    """int64 [2, E] edges of one event (on the hits' device): the hit pairs on the map's module pairs
    [P, 2] whose doublet features lie in the pair's windows (low, high) [F, P] (None: no cuts).

    At most chunk_edges searches, then at most chunk_edges candidates, are made at a time, so the
    temporaries stay bounded on 100k-hit events. Edges come grouped by module pair, not in hit order;
    pairs ordered by outer module make consecutive searches read neighbouring keys (several times faster).
    """
    device = pairs.device
    n_modules = int(max(hits.module.max() if len(hits.module) else -1, pairs.max() if len(pairs) else -1)) + 1
    by_phi = sort_hits(hits, n_modules)
    searches = by_phi.count[pairs[:, 0]] * (by_phi.count[pairs[:, 1]] > 0)  # [P] inner hits facing an outer one
    edges = []
    for rows in chunks(searches.cpu().numpy(), chunk_edges):
        runs = searched_runs(by_phi, pairs, torch.from_numpy(rows).to(device), windows)  # [G] each
        size = runs[3] - runs[2]  # [G] candidates of each search
        if int(size.sum()) <= chunk_edges:  # all at once (the usual case): no copy
            edges.append(cut_runs(by_phi, runs, windows))
            continue
        for part in chunks(size.cpu().numpy(), chunk_edges):
            part = torch.from_numpy(part).to(device)
            edges.append(cut_runs(by_phi, tuple(x[part] for x in runs), windows))
    return torch.cat(edges, dim=1) if edges else torch.zeros((2, 0), dtype=torch.int64, device=device)


def cap_edges(edges: np.ndarray, position: np.ndarray, max_edges: int, source: str | Path) -> np.ndarray:
    """At most max_edges edges: the shortest ones (a graph too big for memory is worse than a short one)."""
    if edges.shape[1] <= max_edges:
        return edges
    edges = edges[:, np.argsort(edges[0] * np.int64(len(position)) + edges[1])]  # hit order: ties at the cut do not
    # depend on the order the builder found the edges in
    length = np.linalg.norm(position[edges[1]] - position[edges[0]], axis=1)  # [E]
    keep = np.argpartition(length, max_edges - 1)[:max_edges]
    log.warning(
        "%s: %d candidate edges exceed max_edges = %d; the %d shortest are kept",
        source,
        edges.shape[1],
        max_edges,
        max_edges,
    )
    return edges[:, np.sort(keep)]


# ------------------------------------------------------------------------------------- the stage


class ModuleMap(GraphBuilderStage):
    config_class = ModuleMapConfig
    config: ModuleMapConfig

    def __init__(self, config: ModuleMapConfig) -> None:
        super().__init__(config)
        self.table: ModuleMapTable | None = None
        self.device = torch.device("cpu")
        self.pairs = torch.zeros((0, 2), dtype=torch.int64)
        self.windows: Windows | None = None

    @property
    def map_file(self) -> Path:
        return self.trained_dir / "artifacts" / MAP_FILE

    def train(self, checkpoint: Path | None = None) -> None:
        """Learn the map from the trainset truth; a rerun rebuilds it (it is deterministic and fast)."""
        if checkpoint is not None:
            log.warning("ModuleMap: the map is rebuilt from the trainset; checkpoint %s is not used", checkpoint)
        learner, files = self.learn()
        arrays = self.with_prior(learner.arrays(self.config.window_coverage))
        save_map(self.map_file, arrays)
        save_profile(self.map_file.parent, files)  # the run conditions inference checks events against
        print(
            f"module map: {len(arrays['pairs']):,} module pairs ({len(learner.layer_keys)} layer pairs) from "
            f"{int(learner.pair_counts.sum()):,} truth edges in {len(files)} events -> {self.map_file}"
        )

    def learn(self) -> tuple[MapLearner, list[Path]]:
        """Pair counts and window histograms from the map's training events (and those files)."""
        files = self.map_training_files()
        learner = MapLearner()
        for path in tqdm(files, desc="module map trainset", unit="event", leave=False):
            data = load_event(path)
            learner.add(
                data,
                target_truth_mask(data, self.config.map_tracks, str(path)).numpy(),
                target_truth_mask(data, self.config.window_tracks, str(path)).numpy(),
                path,
            )
        return learner, files

    def with_prior(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The learned map's arrays after the pair prior (unchanged when `prior` is null)."""
        if self.config.prior is None:
            return arrays
        return apply_pair_prior(
            arrays, self.config.prior, self.config.input_dir, self.config.window_margin, self.config.seed
        )

    def input_paths(self) -> list[Path]:
        return self.input_paths_learning_from(self.config.map_events)

    def map_training_files(self) -> list[Path]:
        """The first map_events trainset events, else those data_split selects."""
        if self.config.map_events is None:
            files = self.input_files("trainset")
        else:
            files = list_event_files(self.config.input_dir, "trainset")
            if len(files) < self.config.map_events:
                raise FileNotFoundError(
                    f"key 'map_events' asks for {self.config.map_events} events, but "
                    f"{Path(self.config.input_dir) / 'trainset'} holds {len(files)}"
                )
            files = files[: self.config.map_events]
        if not files:
            raise FileNotFoundError(
                f"no event files in {Path(self.config.input_dir) / 'trainset'}: nothing to learn the module map from"
            )
        return files

    def prepare_inference(self) -> None:
        """The map's pairs and windows, once, on the device the graphs are built on."""
        from tb_plugin.training import inference_device  # imports lightning: only once graphs are built

        self.table = ModuleMapTable.load(self.map_file).select(self.config.min_count)
        self.device = inference_device(self.config.accelerator)
        # by outer module, then inner: see build_module_map_edges
        order = np.lexsort((self.table.pairs[:, 0], self.table.pairs[:, 1]))  # [P]
        self.pairs = torch.from_numpy(self.table.pairs[order]).to(self.device)  # [P, 2]
        self.windows = None
        if self.config.doublet_cuts:
            low, high = self.table.windows(self.config.window_margin)  # [P, F] each
            low, high = self.widened_for_beam_spot(low, high)
            low, high = (torch.from_numpy(w[order].T.copy()).to(self.device) for w in (low, high))  # [F, P] each
            self.windows = (low, high)

    def widened_for_beam_spot(self, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The z0 windows [P] widened by how far `beam_spot` reaches past the training's luminous region."""
        if self.config.beam_spot is None:
            return low, high
        profile = self.map_file.parent / PROFILE_FILE
        trained = RunConditions.load(profile)
        if trained is None:
            raise FileNotFoundError(
                f"key 'beam_spot': {profile} is missing (a map trained before profiles existed): retrain the "
                f"map ('tb train ... --overwrite') to widen its windows"
            )
        if trained.z0_core is None:
            raise ConfigError(
                f"key 'beam_spot': the map's training events held too few vertex candidates to measure their "
                f"luminous region ({profile}); train it on more events, or drop beam_spot"
            )
        z0 = WINDOW_NAMES.index("z0")
        low, high = low.copy(), high.copy()
        low[:, z0] -= max(0.0, trained.z0_core[0] - self.config.beam_spot[0])
        high[:, z0] += max(0.0, self.config.beam_spot[1] - trained.z0_core[1])
        return low, high

    def build_edges(self, data: Data, source: Path) -> np.ndarray:
        if self.table is None:
            self.prepare_inference()
        hits = EventHits.from_data(data, source, self.device)
        edges = build_module_map_edges(hits, self.pairs, self.windows, self.config.chunk_edges).cpu().numpy()
        if edges.shape[1] > self.config.max_edges:
            position = torch.stack([data.hit_x, data.hit_y, data.hit_z], dim=1).numpy()  # [N, 3]
            edges = cap_edges(edges, position, self.config.max_edges, source)
        return edges
