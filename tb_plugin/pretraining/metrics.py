"""Scores of the two pretraining tasks, as plain JSON-ready dicts.

MDM is scored like the paper (exact module, and "within 20 mm" of the true module's centre), and broken
down by detector volume and by the masked hit's position along the track, because an average hides
where a model fails: on simulated pixel tracks the count baseline's top-1 falls from 0.86 at the
first hit to 0.48 at the fourth. NTP is a binary decision per track pair, scored by accuracy
at logit 0 and by ROC AUC, which does not depend on that threshold.
"""

from __future__ import annotations

import numpy as np

from tb_plugin.geometry import Detector
from tb_plugin.tokenizer import ModuleTokenizer

WITHIN_MM = 20.0  # the paper's "close enough" distance between module centres


def mdm_metrics(
    pred_topk: np.ndarray, target: np.ndarray, position: np.ndarray, tokenizer: ModuleTokenizer, detector: Detector
) -> dict:
    """top1, top5, within_20mm, n_masked, by_volume and by_position of masked-module predictions.

    pred_topk [Q, k >= 5] tokens best first, target [Q] true tokens, position [Q] index of the masked
    hit in its track. A special-token prediction is a miss; a special-token target is an error, since
    it means padding or an out-of-vocabulary hit was scored as if it were a module.
    """
    pred_topk = np.asarray(pred_topk, dtype=np.int64)
    target = np.asarray(target, dtype=np.int64)
    position = np.asarray(position, dtype=np.int64)
    if pred_topk.ndim != 2 or pred_topk.shape[1] < 5:
        raise ValueError(f"pred_topk must be [Q, k] with k >= 5, got shape {pred_topk.shape}")
    if target.shape != (len(pred_topk),) or position.shape != target.shape:
        raise ValueError(
            f"target and position must be [Q] = [{len(pred_topk)}], got {target.shape} and {position.shape}"
        )
    if len(target) == 0:
        raise ValueError("no masked hits to score")
    true_module = tokenizer.module_of(target)  # [Q]
    if (true_module < 0).any():
        raise ValueError(f"{int((true_module < 0).sum())} targets are special tokens, not modules")

    top1 = pred_topk[:, 0] == target  # [Q]
    top5 = (pred_topk[:, :5] == target[:, None]).any(axis=1)
    within = _within(tokenizer.module_of(pred_topk[:, 0]), true_module, detector)
    volume = detector.volume_id[true_module]
    return {
        "top1": float(top1.mean()),
        "top5": float(top5.mean()),
        "within_20mm": float(within.mean()),
        "n_masked": int(len(target)),
        "by_volume": _grouped(volume, top1, top5, within),
        "by_position": _grouped(position, top1, top5, within),
    }


def _within(pred_module: np.ndarray, true_module: np.ndarray, detector: Detector) -> np.ndarray:
    """Whether the predicted module's centre lies within WITHIN_MM of the true one's; False for specials."""
    valid = pred_module >= 0
    out = np.zeros(len(pred_module), dtype=bool)
    distance = np.linalg.norm(detector.center[pred_module[valid]] - detector.center[true_module[valid]], axis=1)
    out[valid] = distance <= WITHIN_MM
    return out


def _grouped(group: np.ndarray, top1: np.ndarray, top5: np.ndarray, within: np.ndarray) -> dict[str, dict]:
    """The three fractions and the count per group value, keyed by str(value) in increasing order."""
    values, inverse, counts = np.unique(group, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    sums = {
        name: np.bincount(inverse, weights=hit.astype(np.float64), minlength=len(values))
        for name, hit in (("top1", top1), ("top5", top5), ("within_20mm", within))
    }
    return {
        str(int(v)): {**{name: float(s[i] / counts[i]) for name, s in sums.items()}, "n": int(counts[i])}
        for i, v in enumerate(values)
    }


# ---------------------------------------------------------------------------- binary scores


def _binary(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated float scores and boolean labels; ROC needs both classes present."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    raw = np.asarray(labels).ravel()
    if scores.shape != raw.shape:
        raise ValueError(f"scores and labels differ in size: {scores.size} and {raw.size}")
    if not np.isin(raw, (0, 1)).all():
        raise ValueError("labels must be 0/1 or boolean")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    labels = raw.astype(bool)
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == len(labels):
        raise ValueError(f"ROC needs both classes; got {n_pos} positives among {len(labels)} labels")
    return scores, labels


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    first = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # start of each tie group
    last = np.r_[first[1:], len(values)]  # one past its end
    mean_rank = (first + last + 1) / 2.0  # mean of ranks first+1 .. last
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(mean_rank, last - first)
    return ranks


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a random positive > that of a random negative), ties counting one half (Mann-Whitney U)."""
    scores, labels = _binary(scores, labels)
    ranks = _average_ranks(scores)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) from (0, 0) to (1, 1), one point per distinct score threshold, highest first."""
    scores, labels = _binary(scores, labels)
    order = np.argsort(-scores, kind="stable")
    ordered, hit = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(ordered[1:] != ordered[:-1]), len(ordered) - 1]
    tp = np.cumsum(hit)[last_of_tie]
    fp = np.cumsum(~hit)[last_of_tie]
    tpr = np.r_[0.0, tp / tp[-1]]
    fpr = np.r_[0.0, fp / fp[-1]]
    return fpr, tpr


def ntp_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
    """accuracy (logit > 0 means positive), auc, n_pairs and positive_fraction of NTP decisions.

    auc is None when the pairs hold only one class: a metrics dict should still be written then,
    while roc_auc itself refuses.
    """
    logits = np.asarray(logits, dtype=np.float64).ravel()
    raw = np.asarray(labels).ravel()
    if logits.shape != raw.shape:
        raise ValueError(f"logits and labels differ in size: {logits.size} and {raw.size}")
    if len(raw) == 0:
        raise ValueError("no pairs to score")
    if not np.isin(raw, (0, 1)).all():
        raise ValueError("labels must be 0/1 or boolean")
    labels = raw.astype(bool)
    both_classes = 0 < labels.sum() < len(labels)
    return {
        "accuracy": float(((logits > 0) == labels).mean()),
        "auc": roc_auc(logits, labels) if both_classes else None,
        "n_pairs": int(len(labels)),
        "positive_fraction": float(labels.mean()),
    }
