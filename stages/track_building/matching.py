"""Matching reconstructed tracks to truth particles, in ACORN's three styles.

Everything is computed from two per-hit arrays of one event: the track label of each hit (-1 = in
no track) and its truth particle (0 = noise). The unit of matching is a (track, particle) pair that
shares hits, with

    purity            = shared hits / track hits       (ACORN: purity_reco)
    particle_fraction = shared hits / particle's hits   (ACORN: eff_true; all of the particle's hits
                                                         in the event, tracked or not)

and a matching fraction f >= 0.5. The styles, as ACORN's track building defines them
(acorn/stages/track_building/utils.py, evaluate_labelled_graph):

    style     a track is matched to the particle if      the particle is reconstructed by the track if
    atlas     purity >= f                                 purity >= f
    one_way   purity >= f                                 particle_fraction >= f
    two_way   purity >= f and particle_fraction >= f      (the same: double majority)

So one_way differs from atlas on the particle side only: a particle counts as found when one track
holds at least f of its hits, however impure that track is. At f = 0.5 the comparison is strict
(ACORN adds 1e-6 to f "to avoid double-matched tracks"): exactly half is not a majority. Above 0.5
it is >=, as in ACORN. The comparison is done on the exact ratio, so 3 of 5 hits passes f = 0.6.

Deliberate difference from ACORN: noise (particle 0) is never a particle to match. ACORN matches it
like any particle, so a track made of noise hits counts as "matched" there and is not a fake.

Rates (ACORN's track_building_stage.tracking_efficiency, pooled over events):
    efficiency     = target particles reconstructed by at least one track / target particles
    fake_rate      = 1 - tracks matched to some (real) particle / tracks
    duplicate_rate = (reconstructing tracks of target particles - reconstructed target particles)
                     / reconstructed target particles
A track matched to a particle outside the target selection is matched (not a fake): it found a real
particle, just not one the efficiency counts.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

STYLES = ("two_way", "one_way", "atlas")
NOISE = 0


def check_matching_fraction(matching_fraction: float) -> None:
    """ACORN refuses f < 0.5: below a majority a track could match two particles."""
    if not 0.5 <= matching_fraction <= 1.0:
        raise ValueError(f"key 'matching_fraction' must be in [0.5, 1] (a majority), got {matching_fraction}")


def check_style(style: str) -> None:
    if style not in STYLES:
        raise ValueError(f"unknown matching style '{style}'; expected one of {', '.join(STYLES)}")


def fraction_passes(shared: np.ndarray, total: np.ndarray, matching_fraction: float) -> np.ndarray:
    """shared / total >= f, strictly greater at f = 0.5 (ACORN's boundary); False where total is 0."""
    shared = np.asarray(shared, dtype=np.float64)
    total = np.asarray(total, dtype=np.float64)
    ratio = np.divide(shared, total, out=np.zeros_like(shared), where=total > 0)
    if matching_fraction == 0.5:
        return (ratio > 0.5) & (total > 0)
    return (ratio >= matching_fraction) & (total > 0)


def pair_table(track_labels: np.ndarray, hit_particle_id: np.ndarray) -> pd.DataFrame:
    """One row per (track, particle) pair sharing at least one hit, sorted by track then particle.

    Columns: track_id, particle_id, n_shared, track_nhits, particle_nhits, purity, particle_fraction.
    Hits labelled -1 belong to no track; they still count in their particle's particle_nhits.
    """
    labels = np.asarray(track_labels, dtype=np.int64)
    pid = np.asarray(hit_particle_id, dtype=np.int64)
    if labels.shape != pid.shape or labels.ndim != 1:
        raise ValueError(f"track labels {labels.shape} and hit particle ids {pid.shape} must be 1-D of one length")
    particle_ids, particle_code, particle_nhits = np.unique(pid, return_inverse=True, return_counts=True)
    in_track = labels >= 0
    track_ids, track_code, track_nhits = np.unique(labels[in_track], return_inverse=True, return_counts=True)
    n_particles = max(len(particle_ids), 1)
    keys, n_shared = np.unique(track_code * n_particles + particle_code[in_track], return_counts=True)
    t, p = np.divmod(keys, n_particles)
    frame = pd.DataFrame(
        {
            "track_id": track_ids[t],
            "particle_id": particle_ids[p],
            "n_shared": n_shared,
            "track_nhits": track_nhits[t],
            "particle_nhits": particle_nhits[p],
        }
    )
    frame["purity"] = frame.n_shared / frame.track_nhits
    frame["particle_fraction"] = frame.n_shared / frame.particle_nhits
    return frame


def pair_flags(pairs: pd.DataFrame, matching_fraction: float, style: str) -> tuple[np.ndarray, np.ndarray]:
    """(track matched to the pair's particle, particle reconstructed by the pair's track) per pair."""
    check_style(style)
    pure = fraction_passes(pairs.n_shared.to_numpy(), pairs.track_nhits.to_numpy(), matching_fraction)
    complete = fraction_passes(pairs.n_shared.to_numpy(), pairs.particle_nhits.to_numpy(), matching_fraction)
    real = pairs.particle_id.to_numpy() != NOISE
    if style == "atlas":
        matched = reconstructed = pure
    elif style == "one_way":
        matched, reconstructed = pure, complete
    else:
        matched = reconstructed = pure & complete
    return matched & real, reconstructed & real


def track_table(pairs: pd.DataFrame, matching_fraction: float) -> pd.DataFrame:
    """One row per track: its majority particle (most shared hits, ties to the smaller particle_id),
    n_hits, n_shared, purity, and `matched_<style>` for each style."""
    order = np.lexsort((pairs.particle_id.to_numpy(), -pairs.n_shared.to_numpy(), pairs.track_id.to_numpy()))
    ranked = pairs.iloc[order]
    first = np.diff(ranked.track_id.to_numpy(), prepend=-1) != 0  # track ids are >= 0
    majority = ranked[first]
    tracks = pd.DataFrame(
        {
            "track_id": majority.track_id.to_numpy(),
            "n_hits": majority.track_nhits.to_numpy(),
            "particle_id": majority.particle_id.to_numpy(),
            "n_shared": majority.n_shared.to_numpy(),
            "purity": majority.purity.to_numpy(),
        }
    )
    track_code = np.searchsorted(tracks.track_id.to_numpy(), pairs.track_id.to_numpy())
    for style in STYLES:
        matched, _ = pair_flags(pairs, matching_fraction, style)
        tracks[f"matched_{style}"] = np.bincount(track_code[matched], minlength=len(tracks)) > 0
    return tracks


def particle_table(pairs: pd.DataFrame, hit_particle_id: np.ndarray, matching_fraction: float) -> pd.DataFrame:
    """One row per real particle with hits in the event (noise left out): n_hits, and per style
    `n_tracks_<style>` (how many tracks reconstruct it) and `reconstructed_<style>`."""
    particle_ids, n_hits = np.unique(np.asarray(hit_particle_id, dtype=np.int64), return_counts=True)
    real = particle_ids != NOISE
    particles = pd.DataFrame({"particle_id": particle_ids[real], "n_hits": n_hits[real]})
    code = np.searchsorted(particles.particle_id.to_numpy(), pairs.particle_id.to_numpy())
    for style in STYLES:
        _, reconstructed = pair_flags(pairs, matching_fraction, style)
        count = np.bincount(code[reconstructed], minlength=len(particles))
        particles[f"n_tracks_{style}"] = count
        particles[f"reconstructed_{style}"] = count > 0
    return particles


def match_event(
    track_labels: np.ndarray, hit_particle_id: np.ndarray, matching_fraction: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(tracks, particles) tables of one event."""
    check_matching_fraction(matching_fraction)
    pairs = pair_table(track_labels, hit_particle_id)
    return track_table(pairs, matching_fraction), particle_table(pairs, hit_particle_id, matching_fraction)


FAKE_KINDS = ("fragment_of_a_found_particle", "fragment_of_a_lost_particle", "no_majority")


def fake_kinds(tracks: pd.DataFrame, particles: pd.DataFrame, matching_fraction: float) -> dict[str, int]:
    """The two_way fakes of one event by what they are, so that a fix can aim at the right kind:

    - fragment_of_a_found_particle: most hits (>= f) from one particle, which another track reconstructs
      (a broken-off piece beside the found track);
    - fragment_of_a_lost_particle: most hits from one particle that no track reconstructs (the particle
      was cut into pieces none of which holds f of its hits);
    - no_majority: no particle holds f of the track's hits (hits of several particles, or noise).
    """
    fakes = tracks[~tracks.matched_two_way.to_numpy()]
    majority = fraction_passes(fakes.n_shared.to_numpy(), fakes.n_hits.to_numpy(), matching_fraction)
    majority &= fakes.particle_id.to_numpy() != NOISE
    found = particles.particle_id.to_numpy()[particles.reconstructed_two_way.to_numpy()]
    of_found = np.isin(fakes.particle_id.to_numpy(), found)
    return {
        FAKE_KINDS[0]: int((majority & of_found).sum()),
        FAKE_KINDS[1]: int((majority & ~of_found).sum()),
        FAKE_KINDS[2]: int((~majority).sum()),
    }


@dataclass
class MatchCounts:
    """Counts that add up over events; the rates are taken from the pooled counts, as ACORN does."""

    n_particles: int = 0
    n_reconstructed_particles: int = 0
    n_duplicate_tracks: int = 0
    n_tracks: int = 0
    n_matched_tracks: int = 0

    def __add__(self, other: MatchCounts) -> MatchCounts:
        return MatchCounts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def rates(self) -> dict[str, Any]:
        """efficiency, fake_rate and duplicate_rate (None where the denominator is 0) plus the counts."""

        def ratio(num: int, den: int) -> float | None:
            return num / den if den else None

        fake = ratio(self.n_tracks - self.n_matched_tracks, self.n_tracks)
        return {
            "efficiency": ratio(self.n_reconstructed_particles, self.n_particles),
            "fake_rate": fake,
            "duplicate_rate": ratio(self.n_duplicate_tracks, self.n_reconstructed_particles),
            **{f.name: int(getattr(self, f.name)) for f in fields(self)},
        }


def count_matches(tracks: pd.DataFrame, particles: pd.DataFrame, target: np.ndarray, style: str) -> MatchCounts:
    """Counts of one event for one style; `target` selects the rows of `particles` in the denominator."""
    check_style(style)
    target = np.asarray(target, dtype=bool)
    if target.shape != (len(particles),):
        raise ValueError(f"target mask has shape {target.shape}, expected ({len(particles)},)")
    n_tracks = particles[f"n_tracks_{style}"].to_numpy()[target]
    return MatchCounts(
        n_particles=int(target.sum()),
        n_reconstructed_particles=int((n_tracks > 0).sum()),
        n_duplicate_tracks=int(np.clip(n_tracks - 1, 0, None).sum()),
        n_tracks=len(tracks),
        n_matched_tracks=int(tracks[f"matched_{style}"].sum()),
    )
