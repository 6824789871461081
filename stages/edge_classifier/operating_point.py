"""Edge-score operating points: the cut that keeps a share of the target edges, and the rates at a cut.

One module for the arithmetic, so the stages' valset-chosen `edge_cut`, their `tb eval` summaries
and the A/B benchmark count the same way. Edges are kept when `score > cut` (ACORN's strict
comparison). Definitions, on one event or on arrays concatenated over events:

    target_efficiency    kept target true edges / n_target (default: the target true edges given)
    target_purity        kept target true edges / kept edges that are target true or fake (true
                         edges of other particles are neither right nor wrong for the target)
    acorn_target_purity  kept target true edges / all kept edges (ACORN's target purity)
    efficiency, purity   the same over every true edge

`n_target` lets the efficiency count edges that are no longer there: after a filter has pruned the
graph, the denominator is the target truth edges of the filter's INPUT graph. A rate whose
denominator is 0 is None (a metrics file must still be written; JSON has no NaN).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

KEEP_ALL = -math.inf  # the cut when an efficiency cannot be reached: every edge (every score > -inf) is kept


def required_kept(efficiency: float, n_target: int) -> int:
    """Edges that must be kept for `efficiency` of `n_target`; the product is rounded down by a hair
    first, because 0.99 * 100 is 99.00000000000001 in floating point and must ask for 99, not 100."""
    return math.ceil(efficiency * n_target * (1.0 - 1e-12))


def cut_for_efficiency(target_scores: np.ndarray, efficiency: float, n_target: int | None = None) -> float:
    """The largest cut c with (number of target_scores > c) / n_target >= efficiency.

    target_scores: the scores of the target truth edges still in the graph; n_target: how many target
    edges the efficiency counts (default len(target_scores); larger when some were removed upstream).
    The supremum is the k-th highest score, which itself would fail the strict `>`: the cut returned is
    the next value below it in the scores' own float type (float32 scores get a float32 cut, exact in
    both float32 and float64 comparisons, so a JSON round trip cannot move an edge across it).
    Returns KEEP_ALL (-inf, keep every edge) when the efficiency cannot be reached (too few target
    scores for n_target) or there is nothing to count (n_target == 0).
    """
    if not 0.0 < efficiency <= 1.0:
        raise ValueError(f"efficiency must be in (0, 1], got {efficiency}")
    scores = np.asarray(target_scores).reshape(-1)
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    scores = scores[~np.isnan(scores)]
    n_target = len(scores) if n_target is None else int(n_target)
    if n_target < len(scores):
        raise ValueError(f"n_target ({n_target}) is smaller than the number of target scores ({len(scores)})")
    k = required_kept(efficiency, n_target)
    if n_target == 0 or k > len(scores):
        return KEEP_ALL
    kth = np.sort(scores)[::-1][k - 1]  # the k-th highest score
    return float(np.nextafter(kth, scores.dtype.type(-np.inf)))


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def rates(kept: np.ndarray, edge_y: np.ndarray, edge_target: np.ndarray, n_target: int | None = None) -> dict[str, Any]:
    """Efficiencies and purities of a selection `kept` [E] (see the module docstring)."""
    kept, y, tgt = (np.asarray(a, dtype=bool) for a in (kept, edge_y, edge_target))
    if not kept.shape == y.shape == tgt.shape:
        raise ValueError(f"kept, edge_y and edge_target must have one shape, got {kept.shape}, {y.shape}, {tgt.shape}")
    n_target = int(tgt.sum()) if n_target is None else int(n_target)
    kept_target = int((kept & tgt).sum())
    n_kept = int(kept.sum())
    return {
        "target_efficiency": _ratio(kept_target, n_target),
        "target_purity": _ratio(kept_target, int((kept & (tgt | ~y)).sum())),
        "acorn_target_purity": _ratio(kept_target, n_kept),
        "efficiency": _ratio(int((kept & y).sum()), int(y.sum())),
        "purity": _ratio(int((kept & y).sum()), n_kept),
        "n_kept": n_kept,
        "n_target": n_target,
    }


def rates_at_cut(
    scores: np.ndarray, edge_y: np.ndarray, edge_target: np.ndarray, cut: float, n_target: int | None = None
) -> dict[str, Any]:
    """`rates` of the edges with score > cut: target_efficiency, target_purity, acorn_target_purity,
    efficiency, purity (None where undefined), n_kept and n_target."""
    return rates(np.asarray(scores) > cut, edge_y, edge_target, n_target)
