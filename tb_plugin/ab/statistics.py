"""Paired differences between A/B arms (an arm and its control), with bootstrap confidence intervals.

Every metric is a ratio of sums (ACORN pools counts, not rates), so a difference is always computed on
pooled values: sum(num) / sum(den) over the (seed, event) cells of each arm. Its uncertainty has two
sources, the training seed and the choice of test events, and the bootstrap resamples both. The arms
see the same events, so one event resample is shared by both (the pairing): event-to-event variation
that moves both arms alike cancels in the difference instead of widening its interval. Every
comparison of an A/B uses the same bootstrap seed, hence the same seed and event draws.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

ARMS = ("baseline", "trackingbert")  # the arms of a two-arm A/B: control and arm


def _cells(values: Any) -> np.ndarray:
    """Float array of the values; None (from JSON) becomes NaN."""
    return np.asarray(values, dtype=np.float64)


def _drop_missing(num: np.ndarray, den: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cells whose num or den is NaN/inf become (0, 0): a cell with no value adds nothing to a ratio of
    sums, which is how an event without a defined value (say, an AUC on one class) should count."""
    missing = ~(np.isfinite(num) & np.isfinite(den))
    if missing.any():
        num, den = np.where(missing, 0.0, num), np.where(missing, 0.0, den)
    return num, den


def pooled(num: Any, den: Any) -> float | None:
    """sum(num) / sum(den) over all cells; None when the denominators sum to 0 (the rate is undefined).

    Cells holding None or NaN are left out of both sums rather than poisoning the result.
    """
    n, d = _drop_missing(_cells(num), _cells(den))
    if n.shape != d.shape:
        raise ValueError(f"num has shape {n.shape} but den has shape {d.shape}; they must match")
    total = float(d.sum())
    return float(n.sum()) / total if total != 0 else None


def _nan_if_none(x: float | None) -> float:
    return math.nan if x is None else float(x)


def _none_if_nan(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


@dataclass(frozen=True)
class Difference:
    """arm - control of one metric, with its bootstrap percentile interval.

    `significant` is True only when the whole interval lies on one side of zero; an undefined estimate
    or interval (NaN) is never significant. `control_value` and `arm_value` are the pooled values the
    estimate is the difference of.
    """

    estimate: float
    ci_low: float
    ci_high: float
    confidence: float
    n_seeds: int
    n_events: int
    significant: bool
    control_value: float = math.nan
    arm_value: float = math.nan

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN becomes None."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = _none_if_nan(value) if isinstance(value, float) else value
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Difference:
        """Inverse of as_dict (None back to NaN), so a report can be rendered from results.json alone."""
        kwargs: dict[str, Any] = {}
        values = {LEGACY_NAMES.get(k, k): v for k, v in values.items()}
        for f in fields(cls):
            if f.name not in values:
                continue
            value = values[f.name]
            if f.name in ("n_seeds", "n_events"):
                kwargs[f.name] = int(value)
            elif f.name == "significant":
                kwargs[f.name] = bool(value)
            else:
                kwargs[f.name] = _nan_if_none(value)
        return cls(**kwargs)


LEGACY_NAMES = {"baseline": "control_value", "trackingbert": "arm_value"}  # a results.json of two-arm days


def _resample_counts(rng: np.random.Generator, n_boot: int, n: int) -> np.ndarray:
    """[n_boot, n] how often each of n items is drawn when n are drawn with replacement, per replicate.

    Counts rather than index arrays, so that a replicate's sums are one weighted matrix product.
    """
    draws = rng.integers(0, n, size=(n_boot, n))
    flat = (draws + n * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def _replicate_pooled(num: np.ndarray, den: np.ndarray, seed_w: np.ndarray, event_w: np.ndarray) -> np.ndarray:
    """[B] pooled value of each replicate; NaN where its denominators sum to 0."""
    n = ((seed_w @ num) * event_w).sum(axis=1)  # sum_s sum_e w_s[b, s] num[s, e] w_e[b, e]
    d = ((seed_w @ den) * event_w).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(d != 0, n / np.where(d != 0, d, 1.0), np.nan)


def paired_bootstrap(
    base_num: Any,
    base_den: Any,
    tb_num: Any,
    tb_den: Any,
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Difference:
    """pooled(tb) - pooled(base) over [S seeds, E events] cells, with a two-level paired bootstrap interval.

    Each replicate draws S seeds with replacement and, independently, E events with replacement; the
    event draw is shared by both arms (the pairing) and by every drawn seed, and the seed draw is shared
    by both arms. Both pooled values are recomputed on the replicate and differenced; the interval is
    the (1 - confidence) / 2 and (1 + confidence) / 2 percentiles of those differences. Resampling seeds
    too makes the interval cover training-seed variation, not only the choice of test events.

    With S = 1 there is nothing to resample among seeds, so only events are resampled and the interval
    says nothing about seed-to-seed variation. Replicates whose pooled value is undefined in either arm
    (all drawn denominators 0) are left out of the percentiles. Deterministic for a given `seed`.
    """
    arrays = {
        "base_num": _cells(base_num),
        "base_den": _cells(base_den),
        "tb_num": _cells(tb_num),
        "tb_den": _cells(tb_den),
    }
    shapes = {name: a.shape for name, a in arrays.items()}
    if len(set(shapes.values())) != 1 or arrays["base_num"].ndim != 2:
        described = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"paired_bootstrap needs four [seeds, events] arrays of one shape, got {described}")
    n_seeds, n_events = arrays["base_num"].shape
    if n_seeds == 0 or n_events == 0:
        raise ValueError(f"paired_bootstrap needs at least one seed and one event, got shape {(n_seeds, n_events)}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    bn, bd = _drop_missing(arrays["base_num"], arrays["base_den"])
    tn, td = _drop_missing(arrays["tb_num"], arrays["tb_den"])
    base, tb = _nan_if_none(pooled(bn, bd)), _nan_if_none(pooled(tn, td))

    rng = np.random.default_rng(seed)
    seed_w = _resample_counts(rng, n_boot, n_seeds)  # all ones when S = 1
    event_w = _resample_counts(rng, n_boot, n_events)
    diffs = _replicate_pooled(tn, td, seed_w, event_w) - _replicate_pooled(bn, bd, seed_w, event_w)
    diffs = diffs[np.isfinite(diffs)]
    alpha = (1.0 - confidence) / 2.0
    low, high = (float(q) for q in np.quantile(diffs, [alpha, 1.0 - alpha])) if len(diffs) else (math.nan, math.nan)
    return Difference(
        estimate=tb - base,
        ci_low=low,
        ci_high=high,
        confidence=float(confidence),
        n_seeds=int(n_seeds),
        n_events=int(n_events),
        significant=bool(low > 0.0 or high < 0.0),
        control_value=base,
        arm_value=tb,
    )


# ---------------------------------------------------------------------------- the results.json schema


def _arm_seeds(results: Mapping[str, Any], arm: str) -> list[Mapping[str, Any]]:
    """The arm's seed results, sorted by seed so that both arms pair seed with seed."""
    try:
        seeds = results["arms"][arm]["seeds"]
    except KeyError as err:
        raise ValueError(f"results have no arms.{arm}.seeds (missing key {err})") from None
    if not seeds:
        raise ValueError(f"results arm '{arm}' has no seeds")
    return sorted(seeds, key=lambda s: s["seed"])


def check_pairing(results: Mapping[str, Any], arms: Sequence[str] = ARMS) -> tuple[list[int], list[str]]:
    """(seeds, event_ids) shared by the arms; ValueError when their seeds or any seed's events differ.

    The paired bootstrap is only valid when cell (s, e) means the same seed and event in every arm.
    """
    reference = _arm_seeds(results, arms[0])
    event_ids = [str(e) for e in reference[0]["event_ids"]]
    seed_values = [int(s["seed"]) for s in reference]
    for arm in arms:
        seeds = _arm_seeds(results, arm)
        values = [int(s["seed"]) for s in seeds]
        if values != seed_values:
            raise ValueError(
                f"arm '{arm}' has seeds {values} but arm '{arms[0]}' has {seed_values}; "
                "the A/B needs the same seeds in every arm"
            )
        for s in seeds:
            ids = [str(e) for e in s["event_ids"]]
            if ids != event_ids:
                where = next(
                    (i for i, (a, b) in enumerate(zip(ids, event_ids)) if a != b), min(len(ids), len(event_ids))
                )
                raise ValueError(
                    f"arm '{arm}' seed {s['seed']} has {len(ids)} event_ids, {arms[0]} seed {seed_values[0]} has "
                    f"{len(event_ids)}; they first differ at position {where}: the arms must be scored on the same "
                    "events in the same order"
                )
    return seed_values, event_ids


def per_event_matrix(results: Mapping[str, Any], arm: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(num, den) as [seeds, events] arrays of one arm's metric, seeds sorted by value.

    ValueError when a seed lacks the metric or holds a different number of values than events: an event
    without a value must be stored as num = den = 0 (it then adds nothing), not left out, or the cells of
    the two arms would no longer pair up.
    """
    seeds = _arm_seeds(results, arm)
    rows_num, rows_den = [], []
    for s in seeds:
        entry = s.get("per_event", {}).get(metric)
        if entry is None:
            raise ValueError(f"arm '{arm}' seed {s['seed']} has no per_event values of '{metric}'")
        num, den, n_events = _cells(entry["num"]), _cells(entry["den"]), len(s["event_ids"])
        if num.shape != (n_events,) or den.shape != (n_events,):
            raise ValueError(
                f"arm '{arm}' seed {s['seed']} metric '{metric}': num has shape {num.shape} and den "
                f"{den.shape}, but there are {n_events} event_ids; store num = den = 0 for an event "
                "without a value"
            )
        rows_num.append(num)
        rows_den.append(den)
    return np.stack(rows_num), np.stack(rows_den)


def comparable_metrics(results: Mapping[str, Any], arms: Sequence[str] = ARMS) -> list[str]:
    """Metrics with per-event values in every seed of the arms: those of results['metrics'] in that
    (report) order, then any others alphabetically."""
    present = None
    for arm in arms:
        for s in _arm_seeds(results, arm):
            names = set(s.get("per_event", {}))
            present = names if present is None else present & names
    present = present or set()
    ordered = [m["name"] for m in results.get("metrics", []) if m["name"] in present]
    return ordered + sorted(present - set(ordered))


def compare(
    results: Mapping[str, Any], arm: str, control: str, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict[str, Difference]:
    """Paired bootstrap difference (arm - control) of every metric both have, in report order.

    Every metric uses the same bootstrap seed, hence the same seed and event draws: the intervals of
    different metrics then describe the same resampled worlds.
    """
    pair = (control, arm)
    check_pairing(results, pair)
    out = {}
    for metric in comparable_metrics(results, pair):
        base_num, base_den = per_event_matrix(results, control, metric)
        tb_num, tb_den = per_event_matrix(results, arm, metric)
        out[metric] = paired_bootstrap(
            base_num, base_den, tb_num, tb_den, n_boot=n_boot, confidence=confidence, seed=seed
        )
    return out


def compare_arms(
    results: Mapping[str, Any], n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict[str, Difference]:
    """The two-arm comparison: trackingbert - baseline (see `compare`)."""
    return compare(results, ARMS[1], ARMS[0], n_boot=n_boot, confidence=confidence, seed=seed)


def seed_summary(results: Mapping[str, Any], arm: str, metric: str) -> tuple[float, float]:
    """(mean, std with ddof = 1) over seeds of the arm's per-seed pooled value; std is 0 for one seed.

    Read from each seed's `metrics`, or pooled from its `per_event` when `metrics` lacks the entry.
    Seeds where the value is undefined are left out; (NaN, NaN) when no seed has one. This is the
    seed-to-seed spread a reader expects next to a mean, not the uncertainty of the difference.
    """
    values = []
    for s in _arm_seeds(results, arm):
        value = s.get("metrics", {}).get(metric)
        if value is None and metric in s.get("per_event", {}):
            value = pooled(s["per_event"][metric]["num"], s["per_event"][metric]["den"])
        if value is not None and math.isfinite(float(value)):
            values.append(float(value))
    if not values:
        return math.nan, math.nan
    if max(values) == min(values):  # one seed, or seeds that agree: exactly 0, not float-rounding noise
        return float(np.mean(values)), 0.0
    return float(np.mean(values)), float(np.std(values, ddof=1))


__all__: Sequence[str] = [
    "ARMS",
    "Difference",
    "pooled",
    "paired_bootstrap",
    "check_pairing",
    "per_event_matrix",
    "comparable_metrics",
    "compare",
    "compare_arms",
    "seed_summary",
]
