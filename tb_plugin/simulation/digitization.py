"""From true module crossings to what the detector records: hits, noise and (optionally) cells.

* Measurement: the crossing point is smeared in the module plane by the binary resolution of the
  readout, pitch / sqrt(12) in u and in v, and kept inside the module (a cluster centre cannot lie
  outside the sensor). The hit stays on the mid-plane, w = 0.
* Inefficiency: each crossing is lost with a fixed probability (dead channels, thresholds), and a
  crossing at grazing incidence leaves no hit at all (``at_readable_incidence``).
* Noise: hits with no particle, on modules drawn with equal probability and at uniform points of
  them. Not uniform in space: a small pixel module gets as much noise as a long strip module, which
  is what the real event shows (see ``noise_hits``).
* Cells: the channels a particle crosses in the sensor thickness: the entry-to-exit segment of the
  track in local (u, v), widened by a little charge diffusion, binned by the pitches. Inclined tracks
  thus give long clusters, as in real silicon. Each cell's value is the length of track inside it in
  mm, TrackML's unit: the ACTS digitisation that made the TrackML files writes each cell's path length
  (``DigitizationCell(channel0, channel1, stepLength)``), so a cluster's values sum to the path through
  the sensor, thickness / cos(incidence), and a normal track through a 0.15 mm pixel sensor gives 0.15.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tb_plugin.geometry import Detector

DIFFUSION_MM = 0.005  # charge spread (sigma) added to each end of the track segment in the sensor
MAX_CELLS_PER_AXIS = 24  # a grazing track's cluster is truncated here, as a readout would limit it


def at_readable_incidence(
    detector: Detector, module: np.ndarray, momentum: np.ndarray, min_cos_incidence: float
) -> np.ndarray:
    """Bool [H]: the crossing meets its sensor at |cos(incidence)| >= `min_cos_incidence`.

    The TrackML production records no hit where a particle runs through a sensor nearly along its
    plane (its path inside longer than 1 / min_cos_incidence thicknesses). Replaying event 1001, the
    innermost pixel layer (volume 8, layer 2) shows it sharply: 97 % of the crossings by prompt
    particles above 0.5 GeV have a real hit within 1 mm where the track spans up to 25 pixels along
    v, 50 % at 26 pixels, 0-7 % beyond; 26 pixels of 0.0566 mm across 0.15 mm of silicon is
    cos(incidence) = 0.10. Without this the replay gave that layer 12 % more hits than the real event,
    at its ends: 703 particle hits against 140 real hits in its four outer rings (|z| >= 385 mm).
    """
    normal = detector.rotation[module, :, 2]  # [H, 3] module w axis
    norm = np.maximum(np.linalg.norm(momentum, axis=1), 1e-12)
    return np.abs(np.einsum("hi,hi->h", normal, momentum)) >= min_cos_incidence * norm


def smear_on_module(
    rng: np.random.Generator,
    detector: Detector,
    module: np.ndarray,
    position: np.ndarray,
    reported_by: Detector | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Measured global positions [H, 3] and their local (u, v, w) [H, 3] for true crossings on `module`.

    The crossings are measured in the frames of `detector`, where the modules are; `reported_by`
    (default `detector`) gives the frames the measurements are reported through: the nominal
    geometry of a misaligned detector, as reconstruction knows no better.
    """
    local = detector.to_local(module, position)  # [H, 3]
    local[:, 0] += rng.standard_normal(len(module)) * detector.pitch_u[module] / np.sqrt(12.0)
    local[:, 1] += rng.standard_normal(len(module)) * detector.pitch_v[module] / np.sqrt(12.0)
    local[:, 2] = 0.0
    reported_by = detector if reported_by is None else reported_by
    return reported_by.to_global(module, clip_to_module(detector, module, local)), local


def clip_to_module(detector: Detector, module: np.ndarray, local: np.ndarray) -> np.ndarray:
    """Local points moved onto the module's (trapezoid) area where they fall outside it."""
    hv = detector.hv[module]
    v = np.clip(local[:, 1], -hv, hv)
    half_u = detector.half_width_u(module, v)
    out = local.copy()
    out[:, 1] = v
    out[:, 0] = np.clip(local[:, 0], -half_u, half_u)
    return out


def noise_hits(rng: np.random.Generator, detector: Detector, n_noise: int) -> tuple[np.ndarray, np.ndarray]:
    """Modules [N] and global positions [N, 3] of `n_noise` noise hits: any module equally, any point of it.

    Equal per module, whatever its size or occupancy: in the real event 1001 the hits that no listed
    particle explains number about one per module in every volume (0.7 to 1.4), from the busy pixel
    layers to the long-strip barrel, where they outnumber the signal.
    """
    module = rng.integers(0, len(detector), n_noise)  # [N]
    return module, detector.to_global(module, uniform_on_module(rng, detector, module))


def uniform_on_module(rng: np.random.Generator, detector: Detector, module: np.ndarray) -> np.ndarray:
    """Local points [N, 3] uniform over each module's trapezoid (w = 0).

    The width 2 hu(v) grows linearly in v, so v is drawn from that linear density by inverting its
    quadratic CDF, then u uniformly across the width at v.
    """
    hv, lo, hi = detector.hv[module], detector.min_hu[module], detector.max_hu[module]
    slope = (hi - lo) / (2.0 * hv)  # d hu / d v
    # With y = v + hv in [0, 2 hv]: CDF ~ lo y + slope y^2 / 2.
    target = rng.random(len(module)) * (lo * 2 * hv + slope * 2 * hv * hv)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.where(slope > 1e-12, (-lo + np.sqrt(lo * lo + 2.0 * slope * target)) / slope, target / lo)
    v = y - hv
    half_u = lo + slope * y
    u = (2.0 * rng.random(len(module)) - 1.0) * half_u
    return np.stack([u, v, np.zeros_like(u)], axis=1)


def make_cells(
    rng: np.random.Generator,
    detector: Detector,
    module: np.ndarray,
    local: np.ndarray,
    global_direction: np.ndarray,
    hit_id: np.ndarray,
) -> pd.DataFrame:
    """Cells part: one row per channel of each hit (hit_id, ch0 from u, ch1 from v, value).

    ``local`` [H, 3] are the hits' local positions; ``global_direction`` [H, 3] the particle direction
    there (noise is given the module normal, so it makes a small cluster). The channels are those the
    track segment through the sensor thickness passes over, sampled densely along the segment, each
    sample also spread by the charge diffusion; an inclined track therefore gives a line of cells.
    """
    direction = np.einsum("hji,hj->hi", detector.rotation[module], global_direction)  # R^T d, [H, 3]
    dw = np.where(np.abs(direction[:, 2]) < 1e-3, 1e-3, np.abs(direction[:, 2]))
    half_t = detector.thickness[module] / 2.0
    pitch_u, pitch_v = detector.pitch_u[module], detector.pitch_v[module]
    # Half of the segment's projection on u and v, capped at MAX_CELLS_PER_AXIS / 2 channels.
    half_u = np.minimum(direction[:, 0] / dw * half_t, MAX_CELLS_PER_AXIS / 2 * pitch_u)  # signed [H]
    half_v = np.minimum(direction[:, 1] / dw * half_t, MAX_CELLS_PER_AXIS / 2 * pitch_v)
    half_u = np.maximum(half_u, -MAX_CELLS_PER_AXIS / 2 * pitch_u)
    half_v = np.maximum(half_v, -MAX_CELLS_PER_AXIS / 2 * pitch_v)
    channels = np.maximum(np.abs(half_u) / pitch_u, np.abs(half_v) / pitch_v)  # half length, in channels
    samples = (2 * np.ceil(2.0 * channels) + 1).astype(np.int64)  # [H] at least 4 per channel crossed

    of = np.repeat(np.arange(len(module)), samples)  # [S] hit of each sample
    k = np.arange(samples.sum()) - np.repeat(np.cumsum(samples) - samples, samples)
    along = (k + 0.5) / samples[of] * 2.0 - 1.0  # position along the segment, -1..1
    spread = rng.normal(0.0, DIFFUSION_MM, (len(of), 2))  # [S, 2]
    u = local[of, 0] + along * half_u[of] + spread[:, 0] + detector.max_hu[module[of]]  # from the module edge
    v = local[of, 1] + along * half_v[of] + spread[:, 1] + detector.hv[module[of]]
    ch0 = np.maximum(np.floor(u / pitch_u[of]), 0).astype(np.int64)
    ch1 = np.maximum(np.floor(v / pitch_v[of]), 0).astype(np.int64)
    # Distinct (hit, ch0, ch1), packed into one integer (channel numbers stay far below 2^20).
    packed = (of << 40) | (np.minimum(ch0, 2**20 - 1) << 20) | np.minimum(ch1, 2**20 - 1)  # [S]
    cell_key, samples_in_cell = np.unique(packed, return_counts=True)  # [C]
    of, ch0, ch1 = cell_key >> 40, (cell_key >> 20) & (2**20 - 1), cell_key & (2**20 - 1)

    # Value: the cell's share of the path through the sensor (mm), the samples being equally spaced.
    path = np.sqrt((2.0 * half_u) ** 2 + (2.0 * half_v) ** 2 + (2.0 * half_t) ** 2)  # [H]
    return pd.DataFrame(
        {
            "hit_id": hit_id[of].astype(np.int32),
            "ch0": ch0.astype(np.int32),
            "ch1": ch1.astype(np.int32),
            "value": (path[of] * samples_in_cell / samples[of]).astype(np.float32),
        }
    )
