"""What a trained stage saw of the run conditions, checked at inference without truth.

Why: the module map's module pairs and z0 windows, and the edge classifiers' scores, are learned from
the training events' luminous region and occupancy. Applied to events from another beam spot (a
longer luminous region, a moved centre) or another pile-up, they lose efficiency in silence: the demo
pipeline applied to events with a 50 mm vertex spread kept a quarter of its tracks and said nothing.

So a stage that trains records the profile of its training events, and inference compares each event
with it. Both statistics need no truth, so they work on real data:
- hits per event;
- where the interactions lie along the beam: the z0 (the line's z at r = 0) of hit triplets of the
  three innermost barrel layers, at nearly equal phi and collinear in r-z, grouped into vertex
  candidates. The profile keeps the training events' luminous region, the median of their vertex
  candidates +- 3 sigma; an event (or a run, pooled) with many of its candidates outside it comes
  from another luminous region.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from torch_geometric.data import Data

from tb_plugin.atomic import write_text
from tb_plugin.event_store import load_event

log = logging.getLogger(__name__)

PROFILE_FILE = "run_conditions.json"
LAYER_FIELDS = ("hit_volume_id", "hit_layer_id", "hit_r", "hit_z", "hit_phi")
MAX_DPHI = 0.01  # rad: the pairs of stiff tracks (pT above about 1 GeV) between the first two barrel layers
MAX_ABS_Z0 = 500.0  # mm: farther lines are random combinations, not vertices
MAX_RESIDUAL = 0.5  # mm: the third hit's distance in z from the line through the first two
MAX_INNER_HITS = 2000  # above this (pile-up 200: ~7,000), one phi sector of the detector is searched, so the
SECTOR_MARGIN = 0.1  # rad  check costs ~the same at any pile-up; outer layers reach this far past the sector
MAX_BEND_CHANGE = 1e-4  # rad/mm: dphi/dr may change this much from the first segment to the second
# With both cuts about 99 % of the triplets of the demo's events are single particles' hits.
EVENT_HIT_RATIO = 2.0  # an event with hits outside [min / 2, max * 2] of the training events' is flagged
RUN_HIT_RATIO = 1.5  # so is a run whose median hits per event differ from training's by more than x1.5


def barrel_layers(data: Data) -> list[tuple[int, int]]:
    """The (volume, layer) of the four innermost barrel layers among the event's hits (layers whose
    hits spread less in r than in z), by median radius; fewer when the event has fewer, none when it
    lacks the fields (then only its hits are checked)."""
    if any(name not in data for name in LAYER_FIELDS):
        return []
    volume, layer = data.hit_volume_id.numpy(), data.hit_layer_id.numpy()
    r, z = data.hit_r.numpy().astype(np.float64), data.hit_z.numpy().astype(np.float64)
    keys = volume.astype(np.int64) * 100_000 + layer
    barrel = []
    for key in np.unique(keys):
        at = keys == key
        if at.sum() >= 2 and np.ptp(r[at]) < 0.2 * np.ptp(z[at]):
            barrel.append((float(np.median(r[at])), int(key // 100_000), int(key % 100_000)))
    return [(v, lay) for _, v, lay in sorted(barrel)[:4]]


def near_in_phi(phi: np.ndarray, inner: np.ndarray, outer: np.ndarray, window: float) -> tuple[np.ndarray, np.ndarray]:
    """int64 [K] each: the (inner, outer) hit pairs at |dphi| < window (pairs across phi = +-pi are left
    out: a sliver, the same in every event)."""
    outer = outer[np.argsort(phi[outer])]
    begin = np.searchsorted(phi[outer], phi[inner] - window)
    count = np.searchsorted(phi[outer], phi[inner] + window) - begin
    first = np.cumsum(count) - count  # where each inner hit's pairs start
    return np.repeat(inner, count), outer[np.repeat(begin - first, count) + np.arange(count.sum())]


def extend(
    chain: list[np.ndarray], nxt: tuple[np.ndarray, np.ndarray], coords: tuple[np.ndarray, ...]
) -> list[np.ndarray]:
    """The chains (hit index arrays [K] per layer) extended by every pair (last hit, next hit) of `nxt`,
    keeping those whose new hit lies on the straight r-z line of the first two hits (within
    MAX_RESIDUAL) and bends like the previous segment in r-phi (within MAX_BEND_CHANGE)."""
    r, z, phi = coords
    last, following = nxt
    order = np.argsort(last, kind="stable")
    last, following = last[order], following[order]
    begin = np.searchsorted(last, chain[-1])
    count = np.searchsorted(last, chain[-1], side="right") - begin
    first = np.cumsum(count) - count
    pick = np.repeat(begin - first, count) + np.arange(count.sum())
    chain = [np.repeat(h, count) for h in chain] + [following[pick]]
    a, b, p, c = chain[0], chain[1], chain[-2], chain[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = (z[b] - z[a]) / (r[b] - r[a])
        residual = z[c] - (z[a] + slope * (r[c] - r[a]))
        bend = (phi[c] - phi[p]) / (r[c] - r[p]) - (phi[b] - phi[a]) / (r[b] - r[a])
    keep = np.isfinite(residual) & (np.abs(residual) < MAX_RESIDUAL) & (np.abs(bend) < MAX_BEND_CHANGE)
    return [h[keep] for h in chain]


def vertex_z0(data: Data) -> np.ndarray:
    """float64 [K] z0 (mm) of the straight r-z lines through one hit in each of the innermost barrel
    layers (four where there are four, else three), at nearly equal phi, collinear in r-z within
    MAX_RESIDUAL and bending evenly in r-phi: nearly only real tracks, even at pile-up 200, where
    random three-hit combinations still pass in numbers and four-hit ones do not."""
    layers = barrel_layers(data)
    if len(layers) < 3:
        return np.zeros(0)
    volume, layer = data.hit_volume_id.numpy(), data.hit_layer_id.numpy()
    coords = tuple(data[k].numpy().astype(np.float64) for k in ("hit_r", "hit_z", "hit_phi"))
    hits = [np.flatnonzero((volume == v) & (layer == lay)) for v, lay in layers]
    if len(hits[0]) > MAX_INNER_HITS:  # a phi sector is enough: the luminous region is the same in every one
        edge = -np.pi + 2 * np.pi * MAX_INNER_HITS / len(hits[0])  # [-pi, edge) holds about MAX_INNER_HITS
        hits = [h[coords[2][h] < edge + (SECTOR_MARGIN if i else 0.0)] for i, h in enumerate(hits)]
    chain = list(near_in_phi(coords[2], hits[0], hits[1], MAX_DPHI))
    for inner, outer in zip(hits[1:-1], hits[2:]):
        chain = extend(chain, near_in_phi(coords[2], inner, outer, MAX_DPHI * 2), coords)
    r, z = coords[0], coords[1]
    a, b = chain[0], chain[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        z0 = z[a] - r[a] * (z[b] - z[a]) / (r[b] - r[a])
    keep = np.isfinite(z0) & (np.abs(z0) < MAX_ABS_Z0)
    return z0[keep]


CLUSTER_GAP = 1.0  # mm: triplets closer than this along z belong to one vertex candidate
MIN_CLUSTER = 3  # triplets of a vertex candidate
CORE_SIGMAS = 3.0  # the training's luminous region: median +- 3 sigma (from the MAD) of all its triplets' z0
EVENT_OUTSIDE = 0.5  # an event with more of its vertex candidates outside that region than this is flagged
RUN_OUTSIDE = 0.1  # so is a run whose vertex candidates, pooled, lie outside it more often (training: ~0.01)
MIN_VERTICES = 10  # vertex candidates a training profile needs


def vertex_candidates(z0: np.ndarray) -> np.ndarray:
    """float64 [V] z (mm) of the event's vertex candidates: runs of at least MIN_CLUSTER triplet z0 with
    gaps under CLUSTER_GAP, each at its median. Counting vertices, not triplets, keeps a busy hard
    scatter from standing for the whole luminous region."""
    z0 = np.sort(z0)
    if len(z0) < MIN_CLUSTER:
        return np.zeros(0)
    starts = np.flatnonzero(np.diff(z0, prepend=-np.inf) > CLUSTER_GAP)
    ends = np.append(starts[1:], len(z0))
    return np.array([np.median(z0[a:b]) for a, b in zip(starts, ends) if b - a >= MIN_CLUSTER])


def event_vertices(data: Data) -> np.ndarray:
    return vertex_candidates(vertex_z0(data))


@dataclass(frozen=True)
class RunConditions:
    """The training events' hits per event (min, median, max) and luminous region (of their vertex
    candidates)."""

    events: int
    hits: tuple[int, int, int]
    z0_core: tuple[float, float] | None  # mm: median +- CORE_SIGMAS sigma of the vertex candidates; None: too few

    @classmethod
    def of_events(cls, hits: list[int], vertices: list[np.ndarray]) -> RunConditions:
        """Median and MAD of the vertex candidates: robust to the odd fake triplet cluster far out."""
        pooled = np.concatenate(vertices) if vertices else np.zeros(0)
        core = None
        if len(pooled) >= MIN_VERTICES:
            centre = float(np.median(pooled))
            sigma = max(1.4826 * float(np.median(np.abs(pooled - centre))), 1.0)
            core = (centre - CORE_SIGMAS * sigma, centre + CORE_SIGMAS * sigma)
        counts = (min(hits), int(np.median(hits)), max(hits)) if hits else (0, 0, 0)
        return cls(events=len(hits), hits=counts, z0_core=core)

    def outside(self, vertices: np.ndarray) -> int:
        """How many of these vertex candidates lie outside the training's luminous region."""
        if self.z0_core is None:
            return 0
        return int(((vertices < self.z0_core[0]) | (vertices > self.z0_core[1])).sum())

    def disagreements(self, hits: int, vertices: np.ndarray) -> list[str]:
        """What in this event lies outside the training range, in words; [] when nothing does. An event
        is flagged for its vertices when at least two, and most, lie outside the region."""
        out = []
        if self.events and not self.hits[0] / EVENT_HIT_RATIO <= hits <= self.hits[2] * EVENT_HIT_RATIO:
            out.append(f"{hits} hits against {self.hits[0]}-{self.hits[2]} per training event (another pile-up?)")
        n_out = self.outside(vertices)
        if n_out >= 2 and n_out > EVENT_OUTSIDE * len(vertices):
            out.append(
                f"{n_out} of its {len(vertices)} vertex candidates lie outside the training events' luminous "
                f"region [{self.z0_core[0]:+.1f}, {self.z0_core[1]:+.1f}] mm (median {np.median(vertices):+.1f} mm: "
                f"a moved or longer beam spot?)"
            )
        return out

    def save(self, path: Path) -> None:
        write_text(path, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> RunConditions | None:
        """The profile a training run saved; None for artifacts trained before profiles existed."""
        if not path.is_file():
            return None
        values = json.loads(path.read_text())
        core = values.get("z0_core")
        return cls(events=int(values["events"]), hits=tuple(values["hits"]), z0_core=tuple(core) if core else None)


def profile_files(files: list[Path], limit: int = 100) -> RunConditions:
    """The profile of (at most `limit` of) the training event files."""
    events = [load_event(path) for path in files[:limit]]
    return RunConditions.of_events([int(e.num_nodes) for e in events], [event_vertices(e) for e in events])


class ConditionsCheck:
    """Checks each event against a stage's training profile: warns at the first event that disagrees,
    naming the stage, the training range and the event's value; `summary` then judges the run as a
    whole (pooled, so a shift too small to flag single events still shows)."""

    def __init__(self, stage: str, profile: RunConditions | None) -> None:
        self.stage, self.profile = stage, profile
        self.checked = self.flagged = self.vertices = self.vertices_outside = 0
        self.hits: list[int] = []

    def __call__(self, data: Data, source: str | Path) -> None:
        if self.profile is None:
            return
        vertices = event_vertices(data)
        self.checked += 1
        self.hits.append(int(data.num_nodes))
        self.vertices += len(vertices)
        self.vertices_outside += self.profile.outside(vertices)
        found = self.profile.disagreements(int(data.num_nodes), vertices)
        if found:
            self.flagged += 1
        if found and self.flagged == 1:
            log.warning(
                "%s: %s lies outside the run conditions it was trained on: %s. Its efficiency may fall "
                "(README, 'Run conditions'); train it on events like these",
                self.stage,
                source,
                "; ".join(found),
            )

    def run_outside(self) -> float:
        return self.vertices_outside / self.vertices if self.vertices else 0.0

    def summary(self) -> bool:
        """Log the run's verdict; True when it lies outside what the stage was trained on."""
        if self.profile is None or not self.checked:
            return False
        pooled = self.vertices >= MIN_CLUSTER and self.run_outside() > RUN_OUTSIDE
        if pooled:
            log.warning(
                "%s: %.0f%% of the vertex candidates of these %d events lie outside the luminous region of its "
                "training events [%+.1f, %+.1f] mm (under 1%% of theirs do): the beam spot moved or is "
                "longer; efficiency may fall (README, 'Run conditions')",
                self.stage,
                100 * self.run_outside(),
                self.checked,
                *self.profile.z0_core,
            )
        median = float(np.median(self.hits))
        busier = not self.profile.hits[1] / RUN_HIT_RATIO <= median <= self.profile.hits[1] * RUN_HIT_RATIO
        if busier:
            log.warning(
                "%s: these %d events have %.0f hits each (median) against %d in its training events: another "
                "pile-up; efficiency and fake rate may differ (README, 'Run conditions')",
                self.stage,
                self.checked,
                median,
                self.profile.hits[1],
            )
        if self.flagged:
            log.warning(
                "%s: %d of %d events lie outside the run conditions it was trained on",
                self.stage,
                self.flagged,
                self.checked,
            )
        return pooled or busier or self.flagged > 0


def save_profile(artifacts: Path, files: list[Path]) -> None:
    """What a training run keeps of its events' run conditions, beside its model."""
    profile_files(files).save(Path(artifacts) / PROFILE_FILE)


def check_for(stage: str, artifacts: Path) -> ConditionsCheck:
    """The check of a trained stage's inference, against the profile its training saved (none for
    artifacts trained before profiles existed: then nothing is checked)."""
    return ConditionsCheck(stage, RunConditions.load(Path(artifacts) / PROFILE_FILE))
