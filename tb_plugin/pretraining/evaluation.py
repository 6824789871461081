"""Honest evaluation of a pretrained TrackingBERT, next to the count baseline on the same positions.

Every test pair hides one module per track behind [MASK] (never left visible); TrackingBERT and the
n-gram count baseline are scored on exactly those positions, so the difference between the two
columns is what the transformer adds over counting.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from tb_plugin.geometry import Detector
from tb_plugin.model import CandidateSets, TrackingBERT
from tb_plugin.pretraining.count_baseline import BOUNDARY, CountBaseline
from tb_plugin.pretraining.datamodule import PairDataset
from tb_plugin.pretraining.masking import IGNORE
from tb_plugin.pretraining.metrics import mdm_metrics, ntp_metrics
from tb_plugin.pretraining.plots import plot_embedding_pca, plot_mdm_accuracy, plot_ntp_roc
from tb_plugin.pretraining.tracks import TrackSet
from tb_plugin.tokenizer import N_SPECIAL, PAD, ModuleTokenizer

TOP_K = 5


@dataclass
class MaskedPositions:
    """Where the evaluation hid a module, with its neighbours along the same track."""

    row: np.ndarray  # [Q] pair
    col: np.ndarray  # [Q] position in the sequence
    target: np.ndarray  # [Q] hidden token
    hit_position: np.ndarray  # [Q] index of the hit within its track
    left: np.ndarray  # [Q] token before it in the track, BOUNDARY at the start
    right: np.ndarray  # [Q] token after it in the track, BOUNDARY at the end


def masked_positions(dataset: PairDataset) -> MaskedPositions:
    labels = dataset.rows["mdm_labels"].numpy()  # [P, L]
    ids = dataset.rows["unmasked_ids"].numpy()  # [P, L]
    pos = dataset.rows["hit_position"].numpy()  # [P, L]
    row, col = np.nonzero(labels != IGNORE)
    has_left = pos[row, col] > 0
    next_col = np.minimum(col + 1, ids.shape[1] - 1)
    has_right = (col + 1 < ids.shape[1]) & (pos[row, next_col] == pos[row, col] + 1)
    return MaskedPositions(
        row=row,
        col=col,
        target=labels[row, col],
        hit_position=pos[row, col],
        left=np.where(has_left, ids[row, col - 1], BOUNDARY),
        right=np.where(has_right, ids[row, next_col], BOUNDARY),
    )


@torch.no_grad()
def predict(
    model: TrackingBERT, dataset: PairDataset, batch_size: int, candidates: CandidateSets
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k module tokens at every hidden position [Q, k] (pairs in order) over the whole vocabulary,
    the same among the hidden module's group only ([PAD] fills a group of fewer than k modules), and
    NTP logits [P]: one encoder pass serves both MDM scorings."""
    model.eval()
    topk, layer_topk, ntp = [], [], []
    rows = dataset.rows
    for start in tqdm(range(0, len(dataset), batch_size), desc="evaluate", unit="batch", leave=False):
        sl = slice(start, start + batch_size)
        h = model.encode(rows["input_ids"][sl], rows["segment_ids"][sl], rows["attention_mask"][sl])  # [B, L, C]
        labels = rows["mdm_labels"][sl]  # [B, L]
        hidden = labels != IGNORE  # [B, L]
        mdm_logits = model.mdm_head(h[hidden])  # [q, V] only where a module is hidden
        mdm_logits[:, :N_SPECIAL] = -torch.inf  # a special token is never an answer
        topk.append(mdm_logits.topk(TOP_K, dim=-1).indices.numpy())  # [q, k]
        layer_topk.append(restricted_topk(model, h[hidden], labels[hidden], candidates))
        ntp.append(model.ntp_head(h[:, 0]).float().numpy())  # [B]
    return np.concatenate(topk), np.concatenate(layer_topk), np.concatenate(ntp)


def restricted_topk(
    model: TrackingBERT, h: torch.Tensor, target: torch.Tensor, candidates: CandidateSets
) -> np.ndarray:
    """[q, k] best tokens of each hidden state h [q, C] among its target's group (the hit's layer)."""
    z = model.mdm_head.transform(h)  # [q, C]
    out = np.full((len(target), TOP_K), PAD, dtype=np.int64)
    for positions, tokens in candidates.per_group(target):
        logits = model.mdm_head.logits_over(z[positions], tokens)  # [n, S]
        best = logits.topk(min(TOP_K, len(tokens)), dim=-1).indices  # [n, min(k, S)]
        out[positions.numpy(), : best.shape[1]] = tokens[best].numpy()
    return out


def evaluate_pretraining(
    model: TrackingBERT,
    tokenizer: ModuleTokenizer,
    detector: Detector,
    train_tracks: TrackSet,
    test: PairDataset,
    out_dir: Path,
    batch_size: int,
) -> dict[str, Any]:
    """metrics.json content for TrackingBERT and the count baseline, plus the plots in out_dir.

    MDM is scored twice. `mdm`: the answer is any module of the vocabulary (the paper's task).
    `mdm_layer`: the answer is a module of the hidden hit's layer, which the geometry knows; the count
    baseline gets the same restriction. A model trained with mdm_candidates: layer is judged by the
    second; the first is reported for every model, so the two training options compare on both."""
    where = masked_positions(test)
    groups = tokenizer.layer_groups()  # [V]
    bert_topk, layer_topk, ntp_logits = predict(model, test, batch_size, CandidateSets(groups))
    baseline = CountBaseline().fit_padded(train_tracks.tokens, train_tracks.length)
    count_topk = baseline.predict_topk(where.left, where.right, k=TOP_K)
    layer_baseline = CountBaseline(token_group=groups).fit_padded(train_tracks.tokens, train_tracks.length)
    layer_count_topk = layer_baseline.predict_topk(where.left, where.right, k=TOP_K, group=groups[where.target])
    args = (where.target, where.hit_position, tokenizer, detector)
    results = {"trackingbert": mdm_metrics(bert_topk, *args), "count_baseline": mdm_metrics(count_topk, *args)}
    layer = {"trackingbert": mdm_metrics(layer_topk, *args), "count_baseline": mdm_metrics(layer_count_topk, *args)}
    labels = test.rows["ntp_labels"].numpy()
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_mdm_accuracy({"TrackingBERT": results["trackingbert"], "count baseline": results["count_baseline"]}, out_dir)
    plot_ntp_roc(ntp_logits, labels, out_dir / "ntp_roc.png")
    emb = model.module_embeddings().detach().float().numpy()[N_SPECIAL:]  # [K, D] module tokens
    ids = tokenizer.module_ids()
    plot_embedding_pca(emb, ids["volume_id"], ids["layer_id"], out_dir / "embedding_pca.png")
    return {
        "mdm": results,
        "mdm_layer": layer,
        "ntp": ntp_metrics(ntp_logits, labels),
        "n_params": model.num_params(),
        "n_eval_tracks": int(2 * len(test)),
        "n_train_tracks": int(len(train_tracks)),
    }


def summary_table(metrics: dict[str, Any]) -> str:
    """The figures a user looks at first, as a small text table."""
    auc = "n/a (one class)" if metrics["ntp"]["auc"] is None else f"{metrics['ntp']['auc']:.4f}"
    rows = [
        (f"{name}", key, "mdm") for name, key in (("top-1", "top1"), ("top-5", "top5"), ("within 20 mm", "within_20mm"))
    ]
    if "mdm_layer" in metrics:  # metrics.json written before the layer-restricted scores have none
        rows += [
            (f"{name}, within the layer", key, "mdm_layer") for name, key in (("top-1", "top1"), ("top-5", "top5"))
        ]
    lines = [
        f"{'MDM (one [MASK] per track)':30s} {'TrackingBERT':>13s} {'count baseline':>15s}",
        *(
            f"{name:30s} {metrics[task]['trackingbert'][key]:13.4f} {metrics[task]['count_baseline'][key]:15.4f}"
            for name, key, task in rows
        ),
        f"NTP (A has higher pT than B)   accuracy {metrics['ntp']['accuracy']:.4f}   ROC AUC {auc}",
        f"parameters {metrics['n_params']:,}   evaluated tracks {metrics['n_eval_tracks']:,}",
    ]
    return "\n".join(lines)
