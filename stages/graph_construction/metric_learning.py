"""`stage: graph_construction, model: MetricLearning`: graphs from a learned embedding of the hits.

    tb train   trains the embedding (stages.graph_construction.embedding_model) on the first
               `train_events` of input_dir/trainset, validating on valset; best.ckpt is the epoch with
               the fewest validation edges at `val_efficiency`; checkpoints in
               stage_dir/artifacts/{best,last}.ckpt, resumed from last.ckpt (refused in one line when
               the node features changed width); CSV (or TensorBoard) logs in stage_dir/logs
    tb infer   embeds every event's hits and joins each hit to its at most `knn_infer` nearest
               neighbours closer than `r_infer` (cKDTree on CPU, blocked cdist + topk on GPU), then
               writes the event again with edge_index, edge_y, track_to_edge_map
    tb eval    graph efficiency (all and target truth edges), purity and size on `dataset`

The operating curve: `MetricLearning.scored_graph` builds one event's graph once, at a radius r_max
above r_infer, and gives each edge its embedding distance; `graph_at_radius` then cuts it to any
r <= r_max without a new neighbour search. Efficiency at a fixed graph size, or size at a fixed
efficiency, is arithmetic on those distances (e.g. stages.graph_metrics.graph_counts with
kept = edge_distance < r).

Node features are `node_features` / `node_scales` (stages.features.node_feature_matrix): the same
function builds them in training and inference, so the two cannot drift apart. TrackingBERT module
embeddings enter by listing `hit_tb_emb` (or its flat columns) among the node features.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch_geometric.data import Data

from stages.features import check_feature_config, node_feature_matrix
from stages.graph_construction.embedding_model import EmbeddingSettings, MetricLearningModule, edge_lengths, radius_knn
from stages.graph_construction.truth import GraphBuilderStage, hit_r2z2
from stages.graph_metrics import target_conditions, target_truth_mask
from stages.run_conditions import save_profile
from tb_plugin.event_store import list_event_files, load_event, require_field
from tb_plugin.stage import StageConfig
from tb_plugin.training import (
    CheckpointError,
    TrainerConfig,
    TrainingLoader,
    inference_device,
    last_checkpoint,
    load_module,
    make_trainer,
    read_checkpoint,
    trained_checkpoint,
)

log = logging.getLogger(__name__)

CURVE_R_FACTOR = 2.0  # scored_graph's default r_max, in units of r_infer


def _default_target() -> dict[str, Any]:
    return {"track_particle_pt": [1000.0, math.inf]}  # pT > 1 GeV, in MeV


@dataclass(kw_only=True)
class MetricLearningConfig(StageConfig, TrainerConfig):
    # The feature store (data reading or tracking_bert output).
    input_dir: Path = field()
    # node features: event fields, each divided by its scale (ACORN keys)
    node_features: list[str] = field(default_factory=lambda: ["hit_r", "hit_phi", "hit_z"])
    node_scales: list[float] | None = field(default_factory=lambda: [1000.0, 3.14159, 1000.0])
    # the embedding network (ACORN names)
    emb_hidden: int = 256
    nb_layer: int = 3
    emb_dim: int = 12
    activation: Literal["Tanh", "ReLU", "SiLU", "GELU"] = "Tanh"
    layernorm: bool = True
    # the loss: truth pairs pulled together, other pairs pushed beyond `margin`
    margin: float = 0.1
    r_train: float = 0.1  # hard-negative search radius in the embedding
    knn: int = 50  # hard negatives per query hit
    randomisation: float = 1.0  # random pairs per query hit
    points_per_batch: int = 100_000  # query hits per event
    positive_weight: float = 1.0  # weight of the truth-pair term
    # ACORN conditions on the truth edges training pulls together (pT in MeV); null = every truth edge.
    # The others (soft loopers, whose hits spread over the detector) are left out of the loss, neither
    # pulled nor pushed, so the embedding spends itself on the particles the graph is judged on.
    # val/efficiency counts the truth edges these conditions select.
    train_tracks: dict[str, Any] | None = None
    # Trainset events the embedding learns from (default: those data_split selects). Larger than
    # data_split's first entry, it lets the embedding see many events while graphs are written only for
    # the events the next stages use (the module map's map_events).
    train_events: int | None = None
    # optimisation
    lr: float = 1e-3
    lr_step_epochs: int | None = None  # StepLR: lr *= lr_factor every lr_step_epochs; None = constant
    lr_factor: float = 0.7
    max_epochs: int = 10
    batch_size: int = 1  # events per step
    gradient_clip_val: float | None = None
    # validation graph: at r_infer, and at the radius that keeps val_efficiency of the truth edges
    # (train_tracks) of each validation event; the size of the latter picks the checkpoint
    knn_val: int = 100
    val_efficiency: float = 0.95
    metric_to_monitor: str = "val/edges_at_efficiency"
    metric_mode: Literal["min", "max"] = "min"
    # inference graph
    r_infer: float = 0.1
    knn_infer: int = 100
    # trainer keys (accelerator, devices, strategy, precision, ...): TrainerConfig
    # evaluation
    target_tracks: dict[str, Any] = field(default_factory=_default_target)
    dataset: Literal["trainset", "valset", "testset"] = "testset"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_feature_config(self.node_features, self.node_scales, [])
        for key in (
            "emb_hidden",
            "emb_dim",
            "knn",
            "points_per_batch",
            "max_epochs",
            "batch_size",
            "knn_val",
            "knn_infer",
            "num_nodes",
        ):
            if getattr(self, key) < 1:
                raise ValueError(f"key '{key}' must be at least 1, got {getattr(self, key)}")
        if self.nb_layer < 0:
            raise ValueError(f"key 'nb_layer' must be at least 0, got {self.nb_layer}")
        for key in ("margin", "r_train", "r_infer", "lr"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"key '{key}' must be a positive number, got {value}")
        for key in ("randomisation", "positive_weight"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"key '{key}' must be a number >= 0, got {value}")
        if not 0 < self.val_efficiency < 1:
            raise ValueError(f"key 'val_efficiency' must be in (0, 1), got {self.val_efficiency}")
        if self.train_events is not None and self.train_events < 1:
            raise ValueError(
                f"key 'train_events' must be at least 1 or null (the events data_split selects), got {self.train_events}"
            )
        if self.lr_step_epochs is not None and self.lr_step_epochs < 1:
            raise ValueError(f"key 'lr_step_epochs' must be at least 1 or null, got {self.lr_step_epochs}")
        if not 0 < self.lr_factor <= 1:
            raise ValueError(f"key 'lr_factor' must be in (0, 1], got {self.lr_factor}")
        target_conditions(self.target_tracks)
        target_conditions(self.train_tracks, "key 'train_tracks'")

    def settings(self, in_dim: int) -> EmbeddingSettings:
        return EmbeddingSettings(
            in_dim=in_dim,
            node_features=list(self.node_features),
            emb_hidden=self.emb_hidden,
            nb_layer=self.nb_layer,
            emb_dim=self.emb_dim,
            activation=self.activation,
            layernorm=self.layernorm,
            margin=self.margin,
            r_train=self.r_train,
            knn=self.knn,
            randomisation=self.randomisation,
            points_per_batch=self.points_per_batch,
            positive_weight=self.positive_weight,
            r_val=self.r_infer,
            knn_val=self.knn_val,
            val_efficiency=self.val_efficiency,
            lr=self.lr,
            lr_step_epochs=self.lr_step_epochs,
            lr_factor=self.lr_factor,
        )


# ------------------------------------------------------------------------------------- data


def training_event(
    path: Path, node_features: list[str], node_scales: list[float] | None, train_tracks: dict[str, Any] | None = None
) -> Data:
    """The slice of an event that training needs: x [N, F], track_edges [2, T'] (the truth edges
    train_tracks selects), hit_particle_id [N] (when present) and hit_r2z2 [N] (to orient the
    validation graphs)."""
    data = load_event(path)
    track_edges = require_field(data, "track_edges", path).long()  # [2, T]
    if train_tracks:
        track_edges = track_edges[:, target_truth_mask(data, train_tracks, str(path))]
    event = Data(
        x=node_feature_matrix(data, node_features, node_scales, path), track_edges=track_edges, hit_r2z2=hit_r2z2(data)
    )
    if "hit_particle_id" in data:
        event.hit_particle_id = data.hit_particle_id.long()
    return event


class EventDataset(Dataset):
    """The events of one split, read from disk on access (an epoch never holds them all)."""

    def __init__(
        self,
        files: list[Path],
        node_features: list[str],
        node_scales: list[float] | None,
        train_tracks: dict[str, Any] | None = None,
    ) -> None:
        self.files, self.node_features, self.node_scales, self.train_tracks = (
            files,
            node_features,
            node_scales,
            train_tracks,
        )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Data:
        return training_event(self.files[i], self.node_features, self.node_scales, self.train_tracks)


def _as_list(batch: list[Data]) -> list[Data]:
    return batch


class MetricLearningData(L.LightningDataModule):
    def __init__(self, train: list[Path], val: list[Path], config: MetricLearningConfig) -> None:
        super().__init__()
        self.train_files, self.val_files, self.config = train, val, config

    def _loader(self, files: list[Path], shuffle: bool) -> DataLoader:
        c = self.config
        return (TrainingLoader if shuffle else DataLoader)(
            EventDataset(files, c.node_features, c.node_scales, c.train_tracks),
            batch_size=c.batch_size,
            shuffle=shuffle,
            collate_fn=_as_list,
            num_workers=c.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_files, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_files, shuffle=False)


# ------------------------------------------------------------------------------------- the stage


class MetricLearning(GraphBuilderStage):
    config_class = MetricLearningConfig
    config: MetricLearningConfig

    def __init__(self, config: MetricLearningConfig) -> None:
        super().__init__(config)
        self.module: MetricLearningModule | None = None
        self.device = torch.device("cpu")

    @property
    def artifacts(self) -> Path:
        return self.stage_dir / "artifacts"

    # --------------------------------------------------------------------------------- train

    def train(self, checkpoint: Path | None = None) -> None:
        L.seed_everything(self.config.seed, workers=True, verbose=False)
        if checkpoint is not None and not Path(checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint {checkpoint} not found")
        train, val = self.training_files(), self.input_files("valset")
        if not train:
            raise FileNotFoundError(
                f"no event files in {Path(self.config.input_dir) / 'trainset'}: nothing to train on"
            )
        if not val:
            raise FileNotFoundError(
                f"no event files in {Path(self.config.input_dir) / 'valset'}: metric learning validates on valset"
            )
        in_dim = training_event(train[0], self.config.node_features, self.config.node_scales).x.shape[1]
        module = MetricLearningModule(asdict(self.config.settings(in_dim)))
        resume = checkpoint or last_checkpoint(self.stage_dir)
        if resume:
            self.check_resume_width(Path(resume), in_dim)
        log.info(
            "metric learning: %d training events, %d validation events, %d input columns", len(train), len(val), in_dim
        )
        save_profile(self.stage_dir / "artifacts", train)  # the run conditions inference checks events against
        make_trainer(self.config, self.stage_dir).fit(
            module, datamodule=MetricLearningData(train, val, self.config), ckpt_path=str(resume) if resume else None
        )

    def check_resume_width(self, path: Path, in_dim: int) -> None:
        """A checkpoint trained on other node features (hit_tb_emb added, removed, or of another width)
        cannot be resumed: say so in one line instead of Lightning's state-dict size mismatch."""
        settings = read_checkpoint(path)["hyper_parameters"].get("settings") or {}
        trained = settings.get("in_dim")
        if trained is not None and trained != in_dim:
            names = f" ({', '.join(settings['node_features'])})" if settings.get("node_features") else ""
            raise CheckpointError(
                f"key 'node_features' ({', '.join(self.config.node_features)}) gives {in_dim} columns but {path} "
                f"was trained on {trained}{names}; use another stage_dir or delete the checkpoint to start afresh"
            )

    def input_paths(self) -> list[Path]:
        return self.input_paths_learning_from(self.config.train_events)

    def training_files(self) -> list[Path]:
        """The first train_events trainset events, else those data_split selects."""
        if self.config.train_events is None:
            return self.input_files("trainset")
        files = list_event_files(self.config.input_dir, "trainset")
        if len(files) < self.config.train_events:
            raise FileNotFoundError(
                f"key 'train_events' asks for {self.config.train_events} events, but "
                f"{Path(self.config.input_dir) / 'trainset'} has {len(files)}"
            )
        return files[: self.config.train_events]

    # --------------------------------------------------------------------------------- infer

    def trained(self) -> MetricLearningModule:
        """The best checkpoint, else the last."""
        path = trained_checkpoint(self.stage_dir, "metric-learning model")
        return load_module(MetricLearningModule, path)

    def prepare_inference(self) -> None:
        self.device = inference_device(self.config.accelerator)
        self.module = self.trained().to(self.device)

    def embed(self, data: Data, source: Path) -> torch.Tensor:
        """[N, emb_dim] embedding of one event's hits."""
        if self.module is None:
            self.prepare_inference()
        x = node_feature_matrix(data, self.config.node_features, self.config.node_scales, source)  # [N, F]
        settings = self.module.settings
        if x.shape[1] != settings.in_dim:
            # e.g. hit_tb_emb of another TrackingBERT width, or listed in training but not now
            trained = f" ({', '.join(settings.node_features)})" if settings.node_features else ""
            raise ValueError(
                f"{source}: key 'node_features' ({', '.join(self.config.node_features)}) gives {x.shape[1]} columns "
                f"but the model in {self.stage_dir / 'artifacts'} was trained on {settings.in_dim}{trained}; "
                f"node_features must match the training config"
            )
        with torch.no_grad():
            return self.module(x.to(self.device))

    def build_edges(self, data: Data, source: Path) -> np.ndarray:
        emb = self.embed(data, source)
        return radius_knn(emb, self.config.r_infer, self.config.knn_infer).cpu().numpy()

    def scored_graph(self, data: Data, source: Path, r_max: float | None = None) -> Data:
        """A shallow copy of `data` with the graph at radius r_max (default CURVE_R_FACTOR * r_infer) in the
        graph contract (edge_index [2, E] oriented and deduplicated, edge_y [E], track_to_edge_map [T]
        with truth) and edge_distance float64 [E], each edge's distance in the embedding.

        One neighbour search serves a whole operating curve: graph_at_radius(graph, r) for r <= r_max
        is the graph build_edges gives with r_infer = r. The search uses the same knn_infer cap, and
        capping commutes with the radius cut (a hit's k nearest within r are its k nearest within
        r_max that lie closer than r), so the equality holds also where the cap binds; what the curve
        does not show is the uncapped radius graph: where a hit has more than knn_infer neighbours
        within r_max, edges that a larger knn_infer would add are missing at every r. Equal up to
        floating-point rounding of distances at the boundary itself (GPU searches round in float32).
        """
        r_max = self.config.r_infer * CURVE_R_FACTOR if r_max is None else float(r_max)
        if not (math.isfinite(r_max) and r_max > 0):
            raise ValueError(f"scored_graph: r_max must be a positive number, got {r_max}")
        emb = self.embed(data, source)  # [N, emb_dim]
        edges = radius_knn(emb, r_max, self.config.knn_infer).cpu().numpy()  # [2, E0] directed, duplicated
        graph = self.add_graph(copy.copy(data), edges, source)  # the copy keeps the caller's event as it was
        graph.edge_distance = torch.from_numpy(edge_lengths(emb, graph.edge_index))  # [E]
        return graph


def graph_at_radius(graph: Data, r: float) -> Data:
    """A shallow copy of a scored_graph output cut to the edges with edge_distance < r, still in the
    graph contract: edge_y and edge_distance follow their edges, track_to_edge_map points into the
    kept edges (-1 for truth edges cut away)."""
    distance = graph.edge_distance  # [E]
    keep = distance < r  # [E]
    out = copy.copy(graph)
    out.edge_index, out.edge_y, out.edge_distance = graph.edge_index[:, keep], graph.edge_y[keep], distance[keep]
    if "track_to_edge_map" in graph:
        new_position = torch.cumsum(keep.long(), 0) - 1  # [E] index among the kept edges
        mapping = graph.track_to_edge_map  # [T]
        found = mapping >= 0
        kept = torch.zeros_like(found)
        kept[found] = keep[mapping[found]]
        out.track_to_edge_map = torch.where(kept, new_position[mapping.clamp(min=0)], torch.full_like(mapping, -1))
    return out
