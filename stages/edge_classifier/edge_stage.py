"""What the edge classifiers (InteractionGNN, Filter) share: config keys, training graphs, the stage.

Both score every edge of a constructed graph with a network trained by the same weighted BCE on the
same graphs; they differ only in the network (`EdgeClassifierStage.architecture`) and in what
inference writes (the GNN adds `edge_scores`; the filter also prunes the graph). So this module holds
the keys, conditions, training graphs, Trainer, scoring, cut choice, evaluation arrays, summaries
and plots once, and interaction_gnn.py / filter.py are small subclasses.

    tb train   fit on input_dir/trainset, validate on valset, one event per batch (ACORN); checkpoints
               stage_dir/artifacts/{best,last}.ckpt, resumes from last.ckpt; with
               `edge_cut: {target_efficiency: e}`, then picks the cut on the valset (below)
    tb infer   every event again with `edge_scores` float32 [E] (the sigmoid of the logits)
    tb eval    efficiency, purity and ROC AUC on the `dataset` split, stage_dir/eval/metrics.json + PNGs

Truth conventions are ACORN's (REFERENCE §3): `edge_y` [E], `track_edges` [2, T] with the particle
fields `track_particle_*` [T] (pT in MeV), and `track_to_edge_map` [T] (the graph edge of each truth
edge, -1 if absent).

Weighting (the loss), as in ACORN: every edge starts with weight 1; the `weighting` entries are applied
in order, each setting the weight of the edges that pass all its conditions, so a later entry overrides
an earlier one. Conditions on `edge_*` fields read the edge itself; conditions on `track_*` fields
(short particle names like `pt` allowed) read the particle of the edge's truth edge through
`track_to_edge_map`, so they hold on true graph edges only, never on fakes. A weight of 0 leaves an
edge out of the loss; a negative weight trains it as a fake with |weight|.

`hard_cuts` (ACORN): conditions on particles. In training and validation only the edges between hits
of truth edges that pass them are kept (ACORN drops the other hits); inference always scores the whole
graph. Evaluation's target truth edges pass both `hard_cuts` and `target_tracks`.

`edge_cut`: kept edges have edge_scores > edge_cut. A number is used as it is; a mapping
`{target_efficiency: e}` asks for the cut that keeps the share e of the target truth edges in the
graph, measured on the valset events of input_dir (whole events, no hard cuts) with the trained
checkpoint. It is chosen after training and saved to stage_dir/artifacts/edge_cut.json with the
checkpoint it belongs to; inference and evaluation read it, and choose it again when it is missing
or stale (another checkpoint or target, a checkpoint newer than the file).

`max_train_edges`: a training event with more edges is trained on a random phi sector of it holding
exactly that many edges (edges sorted by the phi of their inner hit, a window from a random start,
wrapping around; the events need `hit_phi`), with all nodes kept. A sector rather than a uniform
sample of edges because it keeps each hit's neighbourhood whole except at the sector's two borders:
thinning the edges uniformly would change every hit's degree, and with it what the summed messages
look like, between training and inference. Validation and inference always see whole events.

`module_embedding` (null by default): a trainable vector per detector module inside the model, looked
up by the events' `hit_module_index` (module_embedding.py: the `learned` and `finetune` controls of the
frozen TrackingBERT feature `hit_tb_emb`). Its rows number the modules of input_dir's detector
(input_dir/detectors.csv, which every stage that rewrites events keeps beside its output); they are
set when training starts and saved in the checkpoint, so inference reads neither table nor detector.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import lightning as L
import numpy as np
import torch
from matplotlib.figure import Figure
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader
from tqdm import tqdm

from stages.edge_classifier.gnn_model import ACTIVATIONS, EdgeClassifierModule, OptimConfig
from stages.edge_classifier.module_embedding import (
    GRAPH_FIELD,
    MODULE_FIELD,
    ModuleEmbeddingConfig,
    ModuleVectorsConfig,
    initial_rows,
)
from stages.edge_classifier.operating_point import KEEP_ALL, cut_for_efficiency, rates
from stages.features import check_feature_config, edge_feature_matrix, node_feature_matrix
from stages.graph_metrics import ETA_BINS, PT_BINS_GEV, graph_counts, target_truth_mask, track_field, truth_edge_found
from stages.plots import plot_efficiency_curves, plot_histograms, save_figure
from stages.run_conditions import ConditionsCheck, check_for, save_profile
from tb_plugin.atomic import write_text
from tb_plugin.conditions import Condition, parse_conditions
from tb_plugin.config import ConfigError
from tb_plugin.event_store import list_event_files, load_event, require_field
from tb_plugin.geometry import detector_for
from tb_plugin.model_export import DEPLOY_PACKAGES, missing_deploy_package
from tb_plugin.pretraining.metrics import roc_auc, roc_curve
from tb_plugin.stage import EventProcessor, NoTruthError, Stage, StageConfig, TrainedArtifactsConfig
from tb_plugin.training import (
    CheckpointError,
    EveryRankSampler,
    RestoresRandomState,
    TrainerConfig,
    inference_autocast,
    inference_device,
    last_checkpoint,
    launched_as_rank_zero,
    load_module,
    make_trainer,
    read_checkpoint,
    trained_checkpoint,
)

if TYPE_CHECKING:
    from stages.edge_classifier.onnx_runtime import OnnxEdgeScorer

log = logging.getLogger(__name__)

SCORES_FIELD = "edge_scores"
EDGE_CUT_FILE = "edge_cut.json"
ONNX_DIR = "onnx"  # artifacts/onnx: the export that `runtime: onnx` scores with (onnx_runtime.py)
ONNX_ACCELERATORS = ("cpu", "auto")  # onnxruntime scores on the CPU here
ONNX_PRECISIONS = ("32-true", "32")  # the exported network is float32, with no autocast


class GraphTrainingLoader(RestoresRandomState, DataLoader):
    """PyG's DataLoader for the training graphs, resuming exactly (tb_plugin.training)."""


# ------------------------------------------------------------------------------------- config


@dataclass(kw_only=True)
class WeightSpec:
    """One `weighting` entry: the edges passing every condition get this weight."""

    weight: float
    conditions: dict[str, Any] = field(default_factory=dict)


def default_weighting() -> list[WeightSpec]:
    """Every edge 1 (true edges trained as true, fakes as fakes); true edges of pT > 1 GeV particles 2,
    because those are the tracks the pipeline is judged on and edge losses cost them most."""
    return [
        WeightSpec(weight=1.0),
        WeightSpec(weight=2.0, conditions={"edge_y": True, "track_particle_pt": [1000.0, math.inf]}),
    ]


@dataclass(kw_only=True)
class TargetEfficiency:
    """`edge_cut: {target_efficiency: e}`: the cut that keeps the share e of the target truth edges in
    the graph, chosen on the valset after training (see the module docstring)."""

    target_efficiency: float

    def __post_init__(self) -> None:
        if not 0.0 < self.target_efficiency <= 1.0:
            raise ValueError(f"key 'edge_cut.target_efficiency' must be in (0, 1], got {self.target_efficiency}")


@dataclass(kw_only=True)
class EdgeClassifierConfig(StageConfig, TrainerConfig, TrainedArtifactsConfig):
    """The keys both edge classifiers understand (ACORN names); subclasses add their model's keys."""

    input_dir: Path = field()  # graphs with edge_index, edge_y, track_to_edge_map (graph construction's stage_dir)
    # features
    node_features: list[str] = field(default_factory=lambda: ["hit_r", "hit_phi", "hit_z"])
    node_scales: list[float] | None = field(default_factory=lambda: [1000.0, 3.14159, 1000.0])
    edge_features: list[str] = field(default_factory=list)  # stages.features.EDGE_FEATURES, e.g. [dr, dphi, dz, tb_sim]
    edge_scales: list[float] | None = None  # each edge feature is divided by its scale (dr, dz in mm want ~100)
    # a trainable per-module vector appended to the node features (module_embedding.py); null: none
    module_embedding: ModuleEmbeddingConfig | None = None
    # the MLPs of either model (ACORN names)
    layernorm: bool = True
    hidden_activation: str = "SiLU"
    dropout: float = 0.0
    # truth, weighting and targets (ACORN conditions; pT in MeV)
    weighting: list[WeightSpec] = field(default_factory=default_weighting)
    hard_cuts: dict[str, Any] = field(default_factory=dict)
    target_tracks: dict[str, Any] = field(default_factory=lambda: {"track_particle_pt": [1000.0, math.inf]})
    edge_cut: float | TargetEfficiency = 0.5  # kept edges: edge_scores > edge_cut; or {target_efficiency: e}
    max_train_edges: int | None = 1_000_000  # larger training events are trained on a phi sector of this many edges
    # optimisation
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_epochs: int = 20
    batch_size: int = 1  # events per batch (ACORN: 1)
    gradient_clip_val: float | None = 1.0
    # trainer keys (accelerator, devices, strategy, precision, ...): TrainerConfig
    # evaluation
    dataset: Literal["trainset", "valset", "testset"] = "testset"
    # inference: torch.compile the network (dynamic shapes, so one compile serves every event size). On the
    # 2-core CPU it made the pile-up-200 GNN forward 9.0 -> 6.5 s after a one-off compile of about 36 s per
    # process: worth it for many or large events, not for a demo's small ones.
    compile_inference: bool = False
    # inference: which runtime scores the edges. onnx: onnxruntime on an ONNX export of the checkpoint,
    # made once into artifacts/onnx and made again when the checkpoint changes (onnx_runtime.py); the
    # scores equal PyTorch's within 1e-4. On 2 CPU cores at pile-up 200 it scored the filter about 2.5x
    # faster (1.4-1.7 s against 3.2-4.1 s per event) and the Interaction GNN slower (4.2 s against 2.7 s),
    # so torch by default (benchmarks/onnx_chain.py). Needs the `deploy` extra (tb-plugin[deploy]).
    runtime: Literal["torch", "onnx"] = "torch"

    positive_keys: ClassVar[tuple[str, ...]] = ("max_epochs", "batch_size", "num_nodes")  # subclasses add their model's

    def __post_init__(self) -> None:
        """Every key checked where the YAML is loaded, so a typo fails before training, naming the key."""
        super().__post_init__()
        check_feature_config(self.node_features, self.node_scales, self.edge_features)
        if self.edge_scales is not None:
            if len(self.edge_scales) != len(self.edge_features):
                raise ValueError(
                    f"key 'edge_scales' has {len(self.edge_scales)} entries but 'edge_features' has "
                    f"{len(self.edge_features)}; give one scale per feature"
                )
            if any(not s or not math.isfinite(s) for s in self.edge_scales):
                raise ValueError(f"key 'edge_scales' must hold finite non-zero numbers, got {self.edge_scales}")
        for key in self.positive_keys:
            if getattr(self, key) < 1:
                raise ValueError(f"key '{key}' must be at least 1, got {getattr(self, key)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"key 'lr' must be a finite number > 0, got {self.lr}")
        if self.hidden_activation not in ACTIVATIONS:
            raise ValueError(
                f"key 'hidden_activation' must be one of {', '.join(ACTIVATIONS)}, got {self.hidden_activation!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"key 'dropout' must be in [0, 1), got {self.dropout}")
        self.check_edge_cut()
        self.check_runtime()
        if self.max_train_edges is not None and self.max_train_edges < 1:
            raise ValueError(f"key 'max_train_edges' must be at least 1 or null (no cap), got {self.max_train_edges}")
        self.optim_config_checks()
        self.weight_conditions()
        self.cut_conditions()
        self.target_conditions()

    def check_edge_cut(self) -> None:
        """A number in [0, 1) (scores are sigmoids) or a TargetEfficiency (which checks itself)."""
        cut = self.edge_cut
        if isinstance(cut, TargetEfficiency):
            return
        if isinstance(cut, bool) or not isinstance(cut, (int, float)):
            raise ValueError(
                f"key 'edge_cut' must be a number in [0, 1) or a mapping {{target_efficiency: e}} with e in (0, 1], got {cut!r}"
            )
        if not 0.0 <= cut < 1.0:
            raise ValueError(
                f"key 'edge_cut' must be in [0, 1) (edges with a score above it are kept), or a mapping "
                f"{{target_efficiency: e}}, got {cut}"
            )

    def check_runtime(self) -> None:
        """`runtime: onnx` only where it can work: the first conflict (onnx_conflicts) or a missing deploy
        package is one line."""
        if self.runtime != "onnx":
            return
        conflicts = self.onnx_conflicts()
        if conflicts:
            raise ValueError(f"key 'runtime' is onnx, {conflicts[0]}; or use runtime: torch")
        missing = missing_deploy_package()
        if missing is not None:
            raise ValueError(
                f"key 'runtime' is onnx, which needs the packages {' and '.join(DEPLOY_PACKAGES)} ({missing} is "
                f"missing): pip install 'tb-plugin[deploy]', or use runtime: torch"
            )

    def onnx_conflicts(self) -> list[str]:
        """Why `runtime: onnx` cannot score with these keys (subclasses add their model's reasons), each
        ending in what to change."""
        out = []
        if self.accelerator not in ONNX_ACCELERATORS:
            out.append(
                f"which scores on the CPU, but key 'accelerator' is {self.accelerator}: "
                f"use accelerator {' or '.join(ONNX_ACCELERATORS)}"
            )
        if str(self.precision) not in ONNX_PRECISIONS:
            out.append(
                f"which scores in float32, but key 'precision' is {self.precision}: "
                f"use precision {' or '.join(ONNX_PRECISIONS)}"
            )
        if self.compile_inference:
            out.append(
                "which does not run the PyTorch network that 'compile_inference' compiles: set compile_inference false"
            )
        return out

    def optim_config_checks(self) -> None:
        """lr, weight_decay, warmup_steps and the weighting weights: numbers the optimiser and loss can use."""
        if not self.lr > 0:
            raise ValueError(f"key 'lr' must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError(
                f"keys 'weight_decay' and 'warmup_steps' must be >= 0, got {self.weight_decay} and {self.warmup_steps}"
            )
        for i, spec in enumerate(self.weighting):
            if not math.isfinite(spec.weight):
                raise ValueError(f"key 'weighting[{i}].weight' must be a finite number, got {spec.weight}")

    def weight_conditions(self) -> list[tuple[float, list[Condition]]]:
        return parse_weighting(self.weighting)

    def cut_conditions(self) -> list[Condition]:
        return track_conditions(self.hard_cuts, "key 'hard_cuts'")

    def target_conditions(self) -> list[Condition]:
        """Target truth edges pass both hard_cuts and target_tracks."""
        return self.cut_conditions() + track_conditions(self.target_tracks, "key 'target_tracks'")

    def model_config(self, node_dim: int, edge_dim: int) -> Any:
        """The network's config dataclass (GNNConfig, FilterNetworkConfig) for these input widths."""
        raise NotImplementedError

    def optim_config(self) -> OptimConfig:
        return OptimConfig(lr=self.lr, weight_decay=self.weight_decay, warmup_steps=self.warmup_steps)


# ------------------------------------------------------------------------------------- conditions


def condition_field(name: str) -> str:
    """Field a condition reads: ACORN's old `y` is `edge_y`, short particle names are `track_particle_*`."""
    return "edge_y" if name == "y" else track_field(name)


def edge_conditions(specs: dict[str, Any] | None, where: str) -> list[Condition]:
    """Parsed conditions on edge_* or track_* fields (checked at config load, naming the key)."""
    conditions = [Condition(condition_field(c.field), c.op, c.value) for c in parse_conditions(specs, where)]
    for c in conditions:
        if not c.field.startswith(("edge_", "track_")):
            raise ConfigError(
                f"{where}.{c.field}: conditions here read edge_* or track_* fields (or ACORN's short "
                f"particle names such as pt), got '{c.field}'"
            )
    return conditions


def track_conditions(specs: dict[str, Any] | None, where: str) -> list[Condition]:
    conditions = edge_conditions(specs, where)
    for c in conditions:
        if not c.field.startswith("track_"):
            raise ConfigError(
                f"{where}.{c.field}: conditions here select particles: use track_* fields, got '{c.field}'"
            )
    return conditions


def _edge_count(data: Data, source: str | Path) -> int:
    edge_index = require_field(data, "edge_index", source)
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"{source}: edge_index must have shape [2, E], got {list(edge_index.shape)}")
    return int(edge_index.shape[1])


def edge_condition_mask(data: Data, conditions: list[Condition], source: str | Path) -> torch.Tensor:
    """bool [E]: edges passing every condition. A track_* condition holds only on graph edges that are
    some truth edge (through track_to_edge_map), with that truth edge's particle values."""
    E = _edge_count(data, source)
    mask = torch.ones(E, dtype=torch.bool)
    for c in conditions:
        values = require_field(data, c.field, source)
        if c.field.startswith("track_"):
            mapping = require_field(data, "track_to_edge_map", source).long()  # [T]
            if values.shape[:1] != mapping.shape:
                raise ValueError(
                    f"{source}: '{c.field}' has shape {list(values.shape)}, expected [{mapping.shape[0]}] like track_to_edge_map"
                )
            matched = mapping >= 0
            passing = torch.zeros(E, dtype=torch.bool)
            passing[mapping[matched]] = c.mask(values[matched])  # [E], False off the truth graph
            mask &= passing
        else:
            if values.shape[:1] != (E,):
                raise ValueError(f"{source}: '{c.field}' has shape {list(values.shape)}, expected [{E}] (one per edge)")
            mask &= c.mask(values)
    return mask


Weighting = list[tuple[float, list[Condition]]]


def parse_weighting(
    weighting: list[WeightSpec] | list[dict[str, Any]] | Weighting, key: str = "weighting"
) -> Weighting:
    """(weight, conditions) pairs from WeightSpecs, YAML-style mappings or pairs already parsed."""
    parsed = []
    for i, entry in enumerate(weighting):
        if isinstance(entry, tuple):
            parsed.append(entry)
            continue
        spec = entry if isinstance(entry, WeightSpec) else WeightSpec(**entry)
        parsed.append((float(spec.weight), edge_conditions(spec.conditions, f"key '{key}[{i}].conditions'")))
    return parsed


def edge_weights(
    data: Data, weighting: list[WeightSpec] | list[dict[str, Any]] | Weighting, source: str | Path = "event"
) -> torch.Tensor:
    """float [E] loss weights: 1 everywhere, then each `weighting` entry in order, a later one
    overriding an earlier one on the edges both select (ACORN)."""
    weights = torch.ones(_edge_count(data, source))
    for weight, conditions in parse_weighting(weighting):
        weights[edge_condition_mask(data, conditions, source)] = weight
    return weights


def hard_cut_mask(data: Data, conditions: list[Condition], source: str | Path) -> torch.Tensor:
    """bool [E]: edges whose two hits both lie on truth edges of particles passing hard_cuts (ACORN)."""
    E = _edge_count(data, source)
    if not conditions:
        return torch.ones(E, dtype=torch.bool)
    passing = target_truth_mask(data, conditions, source)  # [T]
    kept_hits = torch.zeros(data.num_nodes, dtype=torch.bool)
    kept_hits[data.track_edges[:, passing].reshape(-1)] = True
    return kept_hits[data.edge_index].all(dim=0)  # [E]


def edge_target_mask(track_to_edge_map: torch.Tensor, target: torch.Tensor, n_edges: int) -> np.ndarray:
    """bool [E]: the graph edges that are target truth edges (target [T] through track_to_edge_map [T])."""
    mapping, target = track_to_edge_map.long().numpy(), target.bool().numpy()
    edge_target = np.zeros(n_edges, dtype=bool)
    edge_target[mapping[(mapping >= 0) & target]] = True
    return edge_target


def sector_edges(edge_phi: torch.Tensor, max_edges: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """long [min(E, max_edges)]: the edges of a random phi sector holding exactly max_edges edges."""
    E = edge_phi.shape[0]
    if max_edges >= E:
        return torch.arange(E)
    order = torch.argsort(edge_phi)  # [E]
    start = int(torch.randint(E, (1,), generator=generator))
    return order[(start + torch.arange(max_edges)) % E]  # [max_edges], wraps around at phi = +-pi


# ------------------------------------------------------------------------------------- graphs


def edge_inputs(data: Data, edge_index: torch.Tensor, config: EdgeClassifierConfig, source: str | Path) -> torch.Tensor:
    """edge_attr [E', F_e]: the configured edge features of these edges, scaled."""
    edge_attr = edge_feature_matrix(data, edge_index, config.edge_features, source)  # [E', F_e]
    if config.edge_scales is not None:
        edge_attr = edge_attr / torch.tensor(config.edge_scales, dtype=edge_attr.dtype)  # [E', F_e]
    return edge_attr


def model_inputs(
    data: Data, config: EdgeClassifierConfig, source: str | Path, edges: torch.Tensor | None = None
) -> Data:
    """x [N, F], edge_index [2, E'], edge_attr [E, F_e] of the event (of the `edges` subset if given)."""
    edge_index = require_field(data, "edge_index", source).long()
    if edges is not None:
        edge_index = edge_index[:, edges]
    x = node_feature_matrix(data, config.node_features, config.node_scales, source)  # [N, F]
    edge_attr = edge_inputs(data, edge_index, config, source)  # [E', F_e]
    graph = Data(x=x, edge_index=edge_index, edge_attr=edge_attr, num_nodes=x.shape[0])
    if config.module_embedding is not None:
        graph[GRAPH_FIELD] = hit_modules(data, source)  # [N]
    return graph


def hit_modules(data: Data, source: str | Path) -> torch.Tensor:
    """int64 [N]: each hit's dense module index, the row of the module embedding it reads."""
    return require_field(data, MODULE_FIELD, source).long()


def training_graph(data: Data, config: EdgeClassifierConfig, source: str | Path, cap_edges: bool) -> Data:
    """The model inputs with edge_y and edge_weights, reduced by hard_cuts (and the edge cap)."""
    edge_y = require_field(data, "edge_y", source).bool()  # [E]
    weights = edge_weights(data, config.weight_conditions(), source)  # [E]
    edges = torch.nonzero(hard_cut_mask(data, config.cut_conditions(), source)).squeeze(1)  # [E']
    if cap_edges and config.max_train_edges is not None and edges.numel() > config.max_train_edges:
        phi = require_field(data, "hit_phi", source).float()
        edges = edges[sector_edges(phi[data.edge_index[0, edges]], config.max_train_edges)]
    graph = model_inputs(data, config, source, edges)
    graph.edge_y = edge_y[edges]
    graph.edge_weights = weights[edges]
    return graph


class EventGraphs(torch.utils.data.Dataset):
    """The events of one split as training graphs, loaded from disk on each access."""

    def __init__(self, files: list[Path], config: EdgeClassifierConfig, cap_edges: bool) -> None:
        self.files, self.config, self.cap_edges = files, config, cap_edges

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Data:
        return training_graph(load_event(self.files[i]), self.config, self.files[i], self.cap_edges)


def merge_arrays(collected: list[dict[str, Any]]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Per-event arrays (EdgeClassifierStage.event_arrays) concatenated, and their counts summed."""
    arrays = {
        key: np.concatenate([c[key] for c in collected])
        for key in collected[0]
        if isinstance(collected[0][key], np.ndarray)
    }
    counts = {
        key: sum((c["counts"][key] for c in collected[1:]), collected[0]["counts"][key])
        for key in collected[0]["counts"]
    }
    return arrays, counts


def end_worker() -> None:
    """End a DDP worker process (rank > 0) once its fit is over. Lightning's `ddp` launcher, torchrun and
    srun run the whole command in every rank, so whatever follows training in `tb train` or `tb run`
    (the valset cut, inference, the next stages, the stage record) would run in every rank at once,
    writing the same files as rank 0; it is rank 0's alone. Exit status 0: the worker's share is done."""
    raise SystemExit(0)


# ------------------------------------------------------------------------------------- the stage


class EdgeClassifierStage(Stage):
    """Train, score, choose the cut, evaluate: everything but the network (`architecture`) and, for
    stages that change the graph, the event processor."""

    config_class = EdgeClassifierConfig
    trainable = True
    config: EdgeClassifierConfig
    architecture: ClassVar[str] = "InteractionNetwork"  # gnn_model.ARCHITECTURES
    title: ClassVar[str] = "edge classifier"  # of prints and plots

    def __init__(self, config: EdgeClassifierConfig) -> None:
        super().__init__(config)
        self._cut_record: dict[str, Any] | None = None  # the valset-chosen cut, once read or chosen

    @property
    def artifacts(self) -> Path:
        return self.trained_dir / "artifacts"

    def feature_dims(self, files: list[Path]) -> tuple[int, int]:
        """(node_dim, edge_dim) of the network: the feature columns of the first event, so [N, D] features
        size the model themselves, plus the columns the module embedding adds (its D, and 1 for its cosine)."""
        graph = model_inputs(load_event(files[0]), self.config, files[0], torch.arange(0))
        embedding = self.config.module_embedding
        extra_node, extra_edge = (0, 0) if embedding is None else embedding.widths()
        return graph.x.shape[1] + extra_node, graph.edge_attr.shape[1] + extra_edge

    def build_module(self, train_files: list[Path]) -> EdgeClassifierModule:
        """The untrained module, sized by the first training event; with `module_embedding`, one row per
        module of input_dir's detector, set from the seed or the table (module_embedding.initial_rows)."""
        c = self.config
        node_dim, edge_dim = self.feature_dims(train_files)
        embedding, vectors, detector = c.module_embedding, None, None
        if embedding is not None:
            detector = detector_for(c.input_dir)
            vectors = {"modules": len(detector), "dim": embedding.dim, "similarity": embedding.similarity}
        module = EdgeClassifierModule(
            model=asdict(c.model_config(node_dim, edge_dim)),
            optim=asdict(c.optim_config()),
            edge_cut=0.5 if isinstance(c.edge_cut, TargetEfficiency) else float(c.edge_cut),
            architecture=self.architecture,
            module_embedding=vectors,
        )
        if embedding is not None:
            module.model.set_rows(initial_rows(embedding, detector, c.input_dir, c.seed))
        return module

    def describe(self, module: EdgeClassifierModule, n_train: int, n_val: int) -> str:
        """The printed line before training: parameters and input widths (the module embedding's apart)."""
        n_node, n_edge = module.data_widths()
        text = (
            f"{self.config.model}: {module.model.num_params():,} parameters, {n_node} node and {n_edge} edge features"
        )
        if module.vectors is not None:
            v = module.vectors
            cosine = " and their cosine as an edge feature" if v.similarity else ""
            text += f" + a trained {v.dim}-wide vector for each of {v.modules:,} modules ({v.modules * v.dim:,} parameters){cosine}"
        return f"{text}, {n_train} training and {n_val} validation events"

    # --------------------------------------------------------------------------------- train

    def train(self, checkpoint: Path | None = None) -> None:
        """Fit on trainset (validating on valset), then choose the cut when edge_cut asks for a target efficiency."""
        L.seed_everything(self.config.seed, workers=True, verbose=False)
        if checkpoint is not None and not Path(checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint {checkpoint} not found")
        resume = checkpoint or last_checkpoint(self.stage_dir)
        if resume:
            read_checkpoint(
                resume
            )  # a file cut short by a kill mid-write: one line naming it, not Lightning's traceback
        train_files, val_files = self.input_files("trainset"), self.input_files("valset")
        if not train_files:
            raise FileNotFoundError(f"no event files in {self.config.input_dir / 'trainset'}: nothing to train on")
        c = self.config
        module = self.build_module(train_files)
        if launched_as_rank_zero():  # not once per DDP rank
            print(self.describe(module, len(train_files), len(val_files)))
        # What inference checks its events against. Written by every rank, the same bytes atomically: a DDP
        # worker that `tb train --overwrite` starts again clears the stage's outputs first, this file included.
        save_profile(self.artifacts, train_files)
        # Under DDP, Lightning replaces the shuffling sampler by a DistributedSampler drawing its order from
        # `seed` (PL_GLOBAL_SEED) and the epoch: every rank draws the same order and takes every W-th event
        # of it, so the split is the same in every process, every run and after a resume
        train_loader = GraphTrainingLoader(
            EventGraphs(train_files, c, cap_edges=True),
            batch_size=c.batch_size,
            shuffle=True,
            num_workers=c.num_workers,
        )
        val_set = EventGraphs(val_files, c, cap_edges=False)
        val_loader = (
            DataLoader(val_set, batch_size=1, sampler=EveryRankSampler(val_set), num_workers=c.num_workers)
            if val_files
            else None
        )
        trainer = self.trainer(validate=val_loader is not None)
        trainer.fit(
            module,
            train_dataloaders=train_loader,
            val_dataloaders=val_loader,
            ckpt_path=str(resume) if resume else None,
        )
        if not trainer.is_global_zero:
            end_worker()
        if isinstance(c.edge_cut, TargetEfficiency):
            self._cut_record = self.choose_cut()  # on the whole valset, in rank 0 alone, with the checkpoint written

    def trainer(self, validate: bool = True) -> L.Trainer:
        c = self.config
        monitor = c.metric_to_monitor if validate or not c.metric_to_monitor.startswith("val/") else "train/loss"
        return make_trainer(c, self.stage_dir, monitor=monitor, limit_val_batches=1.0 if validate else 0)

    def trained(self) -> EdgeClassifierModule:
        """The best checkpoint (else the last), in eval mode; refuses a checkpoint of the other network."""
        path = trained_checkpoint(self.trained_dir, self.config.model)
        module = load_module(EdgeClassifierModule, path)
        found = module.hparams.get("architecture", "InteractionNetwork")
        if found != self.architecture:
            raise CheckpointError(
                f"{path} holds a {found} network, but model '{self.config.model}' needs a {self.architecture}: "
                f"give this stage its own stage_dir"
            )
        trained, configured = embedding_shape(module.vectors), embedding_shape(self.config.module_embedding)
        if trained != configured:
            raise CheckpointError(
                f"{path} was trained with module_embedding {trained}, but key 'module_embedding' gives "
                f"{configured}: use the training config's module_embedding (dim and similarity)"
            )
        module.eval()
        return module

    @property
    def onnx_dir(self) -> Path:
        """Where `runtime: onnx` keeps its export: this run's artifacts/onnx, also when the checkpoint is a
        trained_stage_dir's (whose folder inference does not write to)."""
        return self.stage_dir / "artifacts" / ONNX_DIR

    def inference_module(self) -> EdgeClassifierModule | OnnxEdgeScorer:
        """The trained network on the inference device (the GPU when asked for and present), compiled when
        `compile_inference` asks: the module keeps its weights and config, only its forward is compiled.
        With `runtime: onnx`, an onnxruntime session on the checkpoint's export (onnx_runtime.py)."""
        if self.config.runtime == "onnx":
            from stages.edge_classifier.onnx_runtime import onnx_scorer  # it imports this module

            return onnx_scorer(self, self.trained())
        module = self.trained().to(inference_device(self.config.accelerator))
        if self.config.compile_inference:
            module.model = torch.compile(module.model, dynamic=True)
        return module

    # --------------------------------------------------------------------------------- score

    def score_chunk(self, n_edges: int) -> int:
        """Edges scored per forward pass: all of them, because message passing needs the whole graph. A
        network that scores each edge alone (the filter) returns less, so a huge graph never holds all
        its edge activations at once."""
        return n_edges

    @torch.no_grad()
    def score(self, module: EdgeClassifierModule | OnnxEdgeScorer, data: Data, source: str | Path) -> torch.Tensor:
        """float32 [E] edge scores of a whole event (on the CPU), score_chunk(E) edges per forward pass; by
        PyTorch, or by onnxruntime when `module` is inference_module's OnnxEdgeScorer (the same inputs
        and chunks)."""
        edge_index = require_field(data, "edge_index", source).long()  # [2, E]
        x = node_feature_matrix(data, self.config.node_features, self.config.node_scales, source).to(
            module.device
        )  # [N, F]
        expected = module.data_widths()  # the network's widths less the module embedding's columns
        if (x.shape[1], len(self.config.edge_features)) != expected:
            raise ValueError(
                f"{source}: the features give {x.shape[1]} node and {len(self.config.edge_features)} edge columns, "
                f"but the checkpoint was trained with {expected[0]} and {expected[1]}"
            )
        hit_module = None if module.vectors is None else hit_modules(data, source).to(module.device)  # [N]
        E = edge_index.shape[1]
        step = max(self.score_chunk(E), 1)
        scores = []
        for start in range(0, E, step):
            chunk = edge_index[:, start : start + step]  # [2, E']
            edge_attr = edge_inputs(data, chunk, self.config, source).to(module.device)  # [E', F_e]
            if not isinstance(module, EdgeClassifierModule):  # runtime onnx
                scores.append(module.edge_scores(x, chunk, edge_attr, hit_module))  # [E']
                continue
            with inference_autocast(self.config.precision, module.device):
                logits = module(x, chunk.to(module.device), edge_attr, hit_module)  # [E']
            scores.append(torch.sigmoid(logits.float()).cpu())  # [E']
        return torch.cat(scores) if scores else torch.zeros(0)  # [E]

    def event_processor(self) -> EventProcessor:
        """Load the trained checkpoint once onto the inference device; the function adds edge_scores."""
        module = self.inference_module()
        check = self.conditions_check()

        def add_scores(data: Data, source: Path) -> Data:
            check(data, source)
            data[SCORES_FIELD] = self.score(module, data, source)
            return data

        return add_scores

    def conditions_check(self) -> ConditionsCheck:
        """Each event is checked against the run conditions of the training events (run_conditions.py);
        infer ends with the run's verdict."""
        self.conditions = check_for(self.config.model, self.artifacts)
        return self.conditions

    def infer(self, overwrite: bool = False) -> None:
        self.rewrite_events(self.event_processor(), overwrite)
        self.conditions.summary()

    # --------------------------------------------------------------------------------- the cut

    @property
    def edge_cut_path(self) -> Path:
        return self.artifacts / EDGE_CUT_FILE

    def operating_cut(self, module: EdgeClassifierModule | OnnxEdgeScorer | None = None) -> float:
        """The cut in use: a fixed edge_cut, else the valset-chosen one (edge_cut.json, chosen and saved
        when missing or stale). `module`, when given, is the loaded checkpoint to choose it with."""
        if not isinstance(self.config.edge_cut, TargetEfficiency):
            return float(self.config.edge_cut)
        if self._cut_record is None:
            self._cut_record = self.saved_cut() or self.cut_chosen_here(module)
        return float(self._cut_record["edge_cut"])

    def cut_chosen_here(self, module: EdgeClassifierModule | OnnxEdgeScorer | None = None) -> dict[str, Any]:
        """choose_cut, unless the stage infers with another run's artifacts (trained_stage_dir): that
        run's cut is the one its checkpoint was tuned with, the new input may have no truth to choose
        one on, and the training run's folder is not written to."""
        if self.trained_elsewhere:
            raise FileNotFoundError(
                f"key 'trained_stage_dir': {self.edge_cut_path} is missing or stale (another target_efficiency "
                f"or a newer checkpoint); run 'tb infer' on the training run's config to choose the cut there, "
                f"or give edge_cut as a number"
            )
        return self.choose_cut(module)

    def saved_cut(self) -> dict[str, Any] | None:
        """edge_cut.json if it belongs to this target and to the checkpoint inference loads, else None."""
        path = self.edge_cut_path
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            log.warning("%s unreadable (%s): the cut is chosen again", path, err)
            return None
        checkpoint = trained_checkpoint(self.trained_dir, self.config.model)
        stale = (
            not isinstance(record, dict)
            or record.get("checkpoint") != checkpoint.name
            or record.get("target_efficiency") != self.config.edge_cut.target_efficiency
            or checkpoint.stat().st_mtime > path.stat().st_mtime
        )
        if stale:
            log.info("%s is stale (another target or a newer checkpoint): the cut is chosen again", path)
        return None if stale else record

    def choose_cut(self, module: EdgeClassifierModule | OnnxEdgeScorer | None = None) -> dict[str, Any]:
        """Score input_dir's valset events whole, take the cut keeping the target share of their target
        truth edges (operating_point.cut_for_efficiency), write edge_cut.json."""
        efficiency = self.config.edge_cut.target_efficiency
        files = self.input_files("valset")
        if not files:
            raise FileNotFoundError(
                f"key 'edge_cut': {{target_efficiency: {efficiency}}} chooses the cut on the valset events of "
                f"{self.config.input_dir / 'valset'}, but there are none; add valset events "
                f"(data_split[1] > 0) or give edge_cut as a number"
            )
        module = module or self.inference_module()
        target_scores = []
        for path in tqdm(files, desc=f"{self.title} cut on valset", unit="event", leave=False):
            data = load_event(path)
            scores = self.score(module, data, path).numpy()  # [E]
            target = target_truth_mask(data, self.config.target_conditions(), path)  # [T]
            target_scores.append(
                scores[edge_target_mask(require_field(data, "track_to_edge_map", path), target, len(scores))]
            )
        target_scores = np.concatenate(target_scores)
        cut = cut_for_efficiency(target_scores, efficiency)
        if cut == KEEP_ALL:
            log.warning(
                "%s: the valset has no target edges to choose the cut on: every edge is kept", self.config.input_dir
            )
        record = {
            "edge_cut": cut,
            "target_efficiency": efficiency,
            "valset_events": len(files),
            "n_target_edges": int(len(target_scores)),
            "checkpoint": trained_checkpoint(self.trained_dir, self.config.model).name,
        }
        write_text(self.edge_cut_path, json.dumps(record, indent=2) + "\n")
        print(
            f"{self.title}: edge_cut {cut:.6g} keeps {efficiency:.2%} of the {len(target_scores):,} target edges of "
            f"{len(files)} valset events -> {self.edge_cut_path}"
        )
        return record

    # --------------------------------------------------------------------------------- evaluate

    def eval_files(self) -> list[Path]:
        """The scored events of the `dataset` split; a clear error before infer has run."""
        files = list_event_files(self.stage_dir, self.config.dataset)
        if not files:
            raise FileNotFoundError(f"no event files in {self.stage_dir / self.config.dataset}: run infer first")
        return files

    def evaluate(self) -> dict[str, Any]:
        """Metrics at the operating cut over the `dataset` split, plots, stage_dir/eval/metrics.json."""
        split, files = self.config.dataset, self.eval_files()
        cut = self.operating_cut()
        collected = [
            self.scored_arrays(load_event(path), path, cut)
            for path in tqdm(files, desc=f"{self.title} eval {split}", unit="event", leave=False)
        ]
        arrays, counts = merge_arrays(collected)
        metrics = self.summarise(arrays, counts, len(files))
        self.plot(arrays)
        path = self.write_metrics(metrics)
        print(
            f"{self.title} ({split}, {len(files)} events, edge_cut {cut:.6g}): "
            f"target efficiency {format_rate(metrics['target_efficiency'])}, target purity {format_rate(metrics['target_purity'])}, "
            f"target AUC {format_rate(metrics['target_auc'])}; all true edges: efficiency {format_rate(metrics['efficiency'])}, "
            f"purity {format_rate(metrics['purity'])}, AUC {format_rate(metrics['auc'])}\n  -> {path}"
        )
        return metrics

    def event_arrays(self, path: Path) -> dict[str, Any]:
        """Per-edge and per-truth-edge arrays of one scored event at the operating cut, and its summable
        counts (the A/B benchmark's per-event numbers)."""
        return self.scored_arrays(load_event(path), path, self.operating_cut())

    def scored_arrays(
        self, data: Data, source: str | Path, cut: float, scores: np.ndarray | None = None
    ) -> dict[str, Any]:
        """Arrays of one event at `cut`; the scores are its edge_scores field unless given.

        scores, edge_y, edge_target, kept [E]; truth_in_graph, truth_kept, truth_pt_gev, truth_eta per
        target truth edge; counts: GraphCounts of all, target, and target truth edges in the graph.
        """
        if "track_to_edge_map" not in data:  # graph construction sets it only where the event has truth
            raise NoTruthError(
                f"{source}: no truth (track_to_edge_map; the events were read without truth): nothing to evaluate"
            )
        if scores is None:
            scores = require_field(data, SCORES_FIELD, source).float().numpy()  # [E]
        edge_y = require_field(data, "edge_y", source).bool().numpy()  # [E]
        mapping = require_field(data, "track_to_edge_map", source).long()  # [T]
        target = target_truth_mask(data, self.config.target_conditions(), source)  # [T]
        kept = scores > cut  # [E]
        target_np = target.numpy()
        nan = np.full(len(mapping), np.nan)
        return {
            "scores": scores,
            "edge_y": edge_y,
            "edge_target": edge_target_mask(mapping, target, len(edge_y)),
            "kept": kept,
            "truth_in_graph": truth_edge_found(mapping)[target_np],
            "truth_kept": truth_edge_found(mapping, kept)[target_np],
            "truth_pt_gev": (data.track_particle_pt.double().numpy() / 1000.0 if "track_particle_pt" in data else nan)[
                target_np
            ],
            "truth_eta": (data.track_particle_eta.double().numpy() if "track_particle_eta" in data else nan)[target_np],
            "counts": {
                "all": graph_counts(mapping, None, edge_y, kept),
                "target": graph_counts(mapping, target, edge_y, kept),
                "target_graph": graph_counts(mapping, target, edge_y),
            },
        }

    def summarise(self, a: dict[str, np.ndarray], counts: dict, events: int) -> dict[str, Any]:
        """Efficiencies, purities and AUCs at the operating cut; names say which edges they count.

        target_efficiency   kept target truth edges / target truth edges that are in the graph
        target_purity       kept target true edges / kept edges that are fake or target true (true
                            edges of other particles are neither right nor wrong for the target)
        acorn_target_purity kept target true edges / all kept edges (ACORN's target purity)
        efficiency, purity  the same over every true edge
        cumulative_target_efficiency  kept target truth edges / all target truth edges (graph losses too)
        auc, target_auc     all edges (true vs fake); target true edges vs fakes
        (operating_point.rates defines the rates; its n_target is the target truth edges in the graph.)
        """
        y, tgt, s = a["edge_y"], a["edge_target"], a["scores"]
        r = rates(a["kept"], y, tgt, n_target=int(a["truth_in_graph"].sum()))
        scored_target = tgt | ~y
        return {
            "dataset": self.config.dataset,
            "events": events,
            **self.cut_summary(),
            **{key: r[key] for key in ("target_efficiency", "target_purity", "acorn_target_purity")},
            "cumulative_target_efficiency": counts["target"].rates()["efficiency"],
            "efficiency": r["efficiency"],
            "purity": r["purity"],
            "auc": auc_or_none(s, y),
            "target_auc": auc_or_none(s[scored_target], tgt[scored_target]),
            "n_edges": int(len(y)),
            "n_true_edges": int(y.sum()),
            "n_target_edges": int(tgt.sum()),
            "n_kept_edges": r["n_kept"],
            "n_target_truth_edges": counts["target"].n_true,
            "graph_target_efficiency": counts["target_graph"].rates()["efficiency"],
        }

    def cut_summary(self) -> dict[str, Any]:
        """edge_cut (the cut used) and, for a valset-chosen cut, its target and valset size."""
        out: dict[str, Any] = {"edge_cut": self.operating_cut()}
        if isinstance(self.config.edge_cut, TargetEfficiency):
            out["edge_cut_target_efficiency"] = self.config.edge_cut.target_efficiency
            out["edge_cut_valset_events"] = (self._cut_record or {}).get("valset_events")
        return out

    def plot(self, a: dict[str, np.ndarray]) -> list[Path]:
        """ROC curves, the score distributions and the target efficiency vs pT and eta."""
        out, cut = self.stage_dir / "eval", self.operating_cut()
        written = [
            plot_roc(a["scores"], a["edge_y"], a["edge_target"], out / "roc_curve.png", title=f"{self.title} ROC")
        ]
        written.append(
            plot_histograms(
                {"true edges": a["scores"][a["edge_y"]], "fake edges": a["scores"][~a["edge_y"]]},
                np.linspace(0.0, 1.0, 51),
                "edge score",
                out / "edge_scores.png",
                logy=True,
                title=f"{self.title} scores (cut {cut:.4g})",
            )
        )
        series = {"in the graph": a["truth_in_graph"], f"kept (score > {cut:.4g})": a["truth_kept"]}
        for column, bins, xlabel, logx, name in (
            ("truth_pt_gev", PT_BINS_GEV, "particle pT [GeV]", True, "edge_efficiency_vs_pt.png"),
            ("truth_eta", ETA_BINS, "particle eta", False, "edge_efficiency_vs_eta.png"),
        ):
            x = a[column]
            if np.isfinite(x).any():
                written.append(
                    plot_efficiency_curves(
                        {k: (x, v) for k, v in series.items()},
                        bins,
                        xlabel,
                        out / name,
                        logx=logx,
                        title="target truth edges",
                    )
                )
        return written


def embedding_shape(embedding: ModuleEmbeddingConfig | ModuleVectorsConfig | None) -> str:
    """What must agree between a config's module_embedding and a checkpoint's, for messages and checks."""
    if embedding is None:
        return "null"
    return f"{{dim: {embedding.dim}, similarity: {str(embedding.similarity).lower()}}}"


def auc_or_none(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """ROC AUC, None when only one class is present (a metrics file should still be written)."""
    return roc_auc(scores, labels) if 0 < labels.sum() < len(labels) else None


def plot_roc(
    scores: np.ndarray, edge_y: np.ndarray, edge_target: np.ndarray, out_path: Path, title: str = "edge classifier ROC"
) -> Path:
    """ROC of all edges (true vs fake) and of target true edges vs fakes."""
    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    relevant = edge_target | ~edge_y
    for label, s, y in (
        ("all edges", scores, edge_y),
        ("target edges vs fakes", scores[relevant], edge_target[relevant]),
    ):
        auc = auc_or_none(s, y)
        if auc is not None:
            fpr, tpr = roc_curve(s, y)
            ax.plot(fpr, tpr, label=f"{label} (AUC {auc:.4f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlim(1e-5, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, out_path)


def format_rate(value: float | None) -> str:
    """A rate for a printed summary; n/a where it is undefined."""
    return "n/a" if value is None else f"{value:.4f}"
