"""Figures of the pretraining evaluation: MDM accuracy per volume and position, NTP ROC, embedding PCA.

Figures are drawn on an explicit Agg canvas (no pyplot), so plotting neither switches the backend of
a notebook that imports this module nor leaves open figures behind in a long training process, and
each file is written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from tb_plugin.atomic import atomic_path
from tb_plugin.pretraining.metrics import roc_auc, roc_curve

DPI = 100
_COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


# ---------------------------------------------------------------------------- MDM accuracy


def plot_mdm_accuracy(results: dict[str, dict], out_dir: Path) -> list[Path]:
    """mdm_accuracy_by_volume.png and mdm_accuracy_by_position.png comparing models (mdm_metrics dicts).

    Each model has one bar per category: solid top-1 in front of a light, hatched top-5 (top-5 >= top-1).
    """
    out_dir = Path(out_dir)
    if not results:
        raise ValueError("no models to plot")
    written = []
    for breakdown, label, name in (
        ("by_volume", "detector volume of the masked hit", "mdm_accuracy_by_volume.png"),
        ("by_position", "position of the masked hit in its track (0 = first)", "mdm_accuracy_by_position.png"),
    ):
        written.append(_save(_accuracy_bars(results, breakdown, label), out_dir / name))
    return written


def _accuracy_bars(results: dict[str, dict], breakdown: str, xlabel: str) -> Figure:
    categories = sorted({key for r in results.values() for key in r[breakdown]}, key=int)
    models = list(results)
    n_models = len(models)
    width = 0.8 / n_models
    x = np.arange(len(categories))
    fig = Figure(figsize=(max(6.0, 1.0 + 0.9 * len(categories) * max(1, n_models / 2)), 4.5))
    ax = fig.add_subplot()
    for i, model in enumerate(models):
        colour = _COLOURS[i % len(_COLOURS)]
        groups = results[model][breakdown]
        top1 = np.array([groups[c]["top1"] if c in groups else np.nan for c in categories])
        top5 = np.array([groups[c]["top5"] if c in groups else np.nan for c in categories])
        offset = x - 0.4 + width * (i + 0.5)
        ax.bar(offset, top5, width * 0.9, color=colour, alpha=0.35, hatch="//", edgecolor=colour, linewidth=0.5)
        ax.bar(offset, top1, width * 0.9, color=colour)
    n_of = _category_counts(results, breakdown)
    ax.set_xticks(x, [f"{c}\nn={n_of[c]}" for c in categories])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of masked hits recovered")
    ax.set_ylim(0.0, 1.3)  # room above 1 for the legend, which would otherwise hide bars
    ax.set_yticks(np.linspace(0.0, 1.0, 6))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    handles = [Patch(color=_COLOURS[i % len(_COLOURS)], label=f"{m}: top-1") for i, m in enumerate(models)]
    handles += [
        Patch(
            facecolor=_COLOURS[i % len(_COLOURS)],
            alpha=0.35,
            hatch="//",
            edgecolor=_COLOURS[i % len(_COLOURS)],
            label=f"{m}: top-5",
        )
        for i, m in enumerate(models)
    ]
    ax.legend(handles=handles, loc="upper center", fontsize="small", ncol=2, framealpha=0.9)
    ax.set_title(f"Masked-module prediction {breakdown.replace('_', ' ')}")
    fig.tight_layout()
    return fig


def _category_counts(results: dict[str, dict], breakdown: str) -> dict[str, str]:
    """n per category for the tick labels: one number when all models saw the same hits, else a range."""
    counts: dict[str, set[int]] = {}
    for r in results.values():
        for key, group in r[breakdown].items():
            counts.setdefault(key, set()).add(int(group["n"]))
    return {k: str(min(v)) if len(v) == 1 else f"{min(v)}-{max(v)}" for k, v in counts.items()}


# ---------------------------------------------------------------------------- NTP ROC


def plot_ntp_roc(logits: np.ndarray, labels: np.ndarray, out_path: Path, model: str = "TrackingBERT") -> Path:
    """ROC curve of the NTP decisions with its AUC and the chance diagonal."""
    fpr, tpr = roc_curve(logits, labels)
    auc = roc_auc(logits, labels)
    labels = np.asarray(labels).ravel()
    fig = Figure(figsize=(5.0, 5.0))
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, color=_COLOURS[0], label=f"{model} (AUC = {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"Track-pair (NTP) ROC, {len(labels)} pairs, {labels.mean():.0%} positive")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, out_path)


# ---------------------------------------------------------------------------- embeddings


def pca_project(x: np.ndarray, n_components: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Projection [K, n] onto the leading principal axes and each axis's fraction of the total variance.

    Each axis's sign is fixed so that its largest-magnitude loading is positive: the same embeddings
    then always give the same picture, not a randomly mirrored one.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need at least two embeddings as [K, D], got shape {x.shape}")
    if n_components > min(x.shape):
        raise ValueError(f"n_components {n_components} exceeds min(K, D) = {min(x.shape)}")
    centred = x - x.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)  # vt [r, D], rows = principal axes
    axes = vt[:n_components]
    sign = np.sign(axes[np.arange(n_components), np.abs(axes).argmax(axis=1)])
    axes = axes * np.where(sign == 0, 1.0, sign)[:, None]
    variance = singular**2
    total = variance.sum()
    ratio = variance[:n_components] / total if total > 0 else np.zeros(n_components)
    return centred @ axes.T, ratio


def plot_embedding_pca(embeddings: np.ndarray, volume_id: np.ndarray, layer_id: np.ndarray, out_path: Path) -> Path:
    """2-D PCA of module-token embeddings [K, D], coloured by volume (left) and by layer (right).

    Modules of one layer sit at one radius (barrel) or one z (endcap); if the model has learnt the
    geometry, volumes and layers form visible clusters or bands here.
    """
    embeddings = np.asarray(embeddings)
    volume_id = np.asarray(volume_id).ravel()
    layer_id = np.asarray(layer_id).ravel()
    if volume_id.shape != (len(embeddings),) or layer_id.shape != volume_id.shape:
        raise ValueError(
            f"volume_id and layer_id must be [K] = [{len(embeddings)}], got {volume_id.shape} and {layer_id.shape}"
        )
    proj, ratio = pca_project(embeddings, 2)
    fig = Figure(figsize=(12.0, 5.2))
    left, right = fig.subplots(1, 2)
    marker = dict(s=float(np.clip(20000.0 / len(proj), 3.0, 16.0)), linewidths=0)
    for i, volume in enumerate(np.unique(volume_id)):
        sel = volume_id == volume
        left.scatter(
            proj[sel, 0], proj[sel, 1], color=_COLOURS[i % len(_COLOURS)], label=f"volume {volume}", alpha=0.7, **marker
        )
    left.legend(markerscale=max(1.0, (40.0 / marker["s"]) ** 0.5), fontsize="small", title="volume_id")
    layers = np.unique(layer_id)
    cmap = ListedColormap(colormaps["viridis"](np.linspace(0.0, 0.95, len(layers))))  # ordered, unlike volumes
    code = np.searchsorted(layers, layer_id)
    points = right.scatter(
        proj[:, 0], proj[:, 1], c=code, cmap=cmap, vmin=-0.5, vmax=len(layers) - 0.5, alpha=0.7, **marker
    )
    bar = fig.colorbar(points, ax=right, ticks=np.arange(len(layers)))
    bar.ax.set_yticklabels([str(v) for v in layers])
    bar.set_label("layer_id")
    for ax, what in ((left, "volume"), (right, "layer")):
        ax.set_xlabel(f"PC1 ({ratio[0]:.1%} of variance)")
        ax.set_ylabel(f"PC2 ({ratio[1]:.1%} of variance)")
        ax.set_title(f"Module embeddings by {what}")
        ax.grid(alpha=0.3)
    fig.suptitle(f"PCA of {len(proj)} module-token embeddings ({embeddings.shape[1]} dimensions)")
    fig.tight_layout()
    return _save(fig, out_path)
