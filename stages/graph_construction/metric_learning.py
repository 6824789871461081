"""`stage: graph_construction, model: MetricLearning`: graphs from a learned embedding of the hits.

    tb train   trains the embedding (stages.graph_construction.embedding_model) on input_dir/trainset,
               validating on valset; checkpoints in stage_dir/artifacts/{best,last}.ckpt, resumed
               from last.ckpt; CSV (or TensorBoard) logs in stage_dir/logs
    tb infer   embeds every event's hits and joins each hit to its at most `knn_infer` nearest
               neighbours closer than `r_infer` (cKDTree on CPU, blocked cdist + topk on GPU), then
               writes the event again with edge_index, edge_y, track_to_edge_map
    tb eval    graph efficiency (all and target truth edges), purity and size on `dataset`

Node features are `node_features` / `node_scales` (stages.features.node_feature_matrix): the same
function builds them in training and inference, so the two cannot drift apart. TrackingBERT module
embeddings enter by listing `hit_tb_emb` (or its flat columns) among the node features.
"""

from __future__ import annotations

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
from stages.graph_construction.embedding_model import EmbeddingSettings, MetricLearningModule, radius_knn
from stages.graph_construction.truth import GraphBuilderStage, hit_r2z2
from stages.graph_metrics import target_conditions
from tb_plugin.training import TrainerConfig, inference_device, last_checkpoint, make_trainer, trained_checkpoint
from tb_plugin.event_store import load_event, require_field
from tb_plugin.stage import StageConfig

log = logging.getLogger(__name__)

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
    # optimisation
    lr: float = 1e-3
    lr_step_epochs: int | None = None  # StepLR: lr *= lr_factor every lr_step_epochs; None = constant
    lr_factor: float = 0.7
    max_epochs: int = 10
    batch_size: int = 1  # events per step
    gradient_clip_val: float | None = None
    # validation graph
    knn_val: int = 100
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
        for key in ("emb_hidden", "emb_dim", "knn", "points_per_batch", "max_epochs", "batch_size", "knn_val", "knn_infer", "num_nodes"):
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
        if self.lr_step_epochs is not None and self.lr_step_epochs < 1:
            raise ValueError(f"key 'lr_step_epochs' must be at least 1 or null, got {self.lr_step_epochs}")
        if not 0 < self.lr_factor <= 1:
            raise ValueError(f"key 'lr_factor' must be in (0, 1], got {self.lr_factor}")
        target_conditions(self.target_tracks)

    def settings(self, in_dim: int) -> EmbeddingSettings:
        return EmbeddingSettings(
            in_dim=in_dim, emb_hidden=self.emb_hidden, nb_layer=self.nb_layer, emb_dim=self.emb_dim,
            activation=self.activation, layernorm=self.layernorm, margin=self.margin, r_train=self.r_train,
            knn=self.knn, randomisation=self.randomisation, points_per_batch=self.points_per_batch,
            positive_weight=self.positive_weight, r_val=self.r_infer, knn_val=self.knn_val, lr=self.lr,
            lr_step_epochs=self.lr_step_epochs, lr_factor=self.lr_factor,
        )


# ------------------------------------------------------------------------------------- data


def training_event(path: Path, node_features: list[str], node_scales: list[float] | None) -> Data:
    """The slice of an event that training needs: x [N, F], track_edges [2, T], hit_particle_id [N]
    (when present) and hit_r2z2 [N] (to orient the validation graphs)."""
    data = load_event(path)
    event = Data(x=node_feature_matrix(data, node_features, node_scales, path),
                 track_edges=require_field(data, "track_edges", path).long(), hit_r2z2=hit_r2z2(data))
    if "hit_particle_id" in data:
        event.hit_particle_id = data.hit_particle_id.long()
    return event


class EventDataset(Dataset):
    """The events of one split, read from disk on access (an epoch never holds them all)."""

    def __init__(self, files: list[Path], node_features: list[str], node_scales: list[float] | None) -> None:
        self.files, self.node_features, self.node_scales = files, node_features, node_scales

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Data:
        return training_event(self.files[i], self.node_features, self.node_scales)


def _as_list(batch: list[Data]) -> list[Data]:
    return batch


class MetricLearningData(L.LightningDataModule):
    def __init__(self, train: list[Path], val: list[Path], config: MetricLearningConfig) -> None:
        super().__init__()
        self.train_files, self.val_files, self.config = train, val, config

    def _loader(self, files: list[Path], shuffle: bool) -> DataLoader:
        c = self.config
        return DataLoader(EventDataset(files, c.node_features, c.node_scales), batch_size=c.batch_size, shuffle=shuffle,
                          collate_fn=_as_list, num_workers=c.num_workers)

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
        train, val = self.input_files("trainset"), self.input_files("valset")
        if not train:
            raise FileNotFoundError(f"no event files in {Path(self.config.input_dir) / 'trainset'}: nothing to train on")
        if not val:
            raise FileNotFoundError(f"no event files in {Path(self.config.input_dir) / 'valset'}: metric learning validates on valset")
        in_dim = training_event(train[0], self.config.node_features, self.config.node_scales).x.shape[1]
        module = MetricLearningModule(asdict(self.config.settings(in_dim)))
        resume = checkpoint or last_checkpoint(self.stage_dir)
        make_trainer(self.config, self.stage_dir).fit(module, datamodule=MetricLearningData(train, val, self.config), ckpt_path=str(resume) if resume else None)

    # --------------------------------------------------------------------------------- infer

    def trained(self) -> MetricLearningModule:
        """The best checkpoint, else the last."""
        path = trained_checkpoint(self.stage_dir, "metric-learning model")
        module = MetricLearningModule.load_from_checkpoint(path, map_location="cpu")
        module.eval()
        return module

    def prepare_inference(self) -> None:
        self.device = inference_device(self.config.accelerator)
        self.module = self.trained().to(self.device)

    def embed(self, data: Data, source: Path) -> torch.Tensor:
        """[N, emb_dim] embedding of one event's hits."""
        if self.module is None:
            self.prepare_inference()
        x = node_feature_matrix(data, self.config.node_features, self.config.node_scales, source)  # [N, F]
        if x.shape[1] != self.module.settings.in_dim:
            raise ValueError(f"{source}: the node features give {x.shape[1]} columns but the model was trained on "
                             f"{self.module.settings.in_dim}; node_features must match the training config")
        with torch.no_grad():
            return self.module(x.to(self.device))

    def build_edges(self, data: Data, source: Path) -> np.ndarray:
        emb = self.embed(data, source)
        return radius_knn(emb, self.config.r_infer, self.config.knn_infer).cpu().numpy()
