"""`stage: edge_classifier, model: InteractionGNN`: score every graph edge with an Interaction Network.

    tb train   fit on input_dir/trainset, validate on valset, one event per batch (ACORN); checkpoints
               stage_dir/artifacts/{best,last}.ckpt, resumes from last.ckpt
    tb infer   every event again with `edge_scores` float32 [E] (the sigmoid of the logits); every
               other field passes through and the config is appended
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

`max_train_edges`: a training event with more edges is trained on a random phi sector of it holding
exactly that many edges (edges sorted by the phi of their inner hit, a window from a random start,
wrapping around; the events need `hit_phi`), with all nodes kept. A sector rather than a uniform
sample of edges because it keeps each hit's neighbourhood whole except at the sector's two borders:
thinning the edges uniformly would change every hit's degree, and with it what the summed messages
look like, between training and inference. Validation and inference always see whole events.
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
from matplotlib.figure import Figure
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader
from tqdm import tqdm

from stages.edge_classifier.gnn_model import ACTIVATIONS, AGGREGATIONS, EdgeClassifierModule, GNNConfig, OptimConfig
from stages.features import check_feature_config, edge_feature_matrix, node_feature_matrix
from stages.graph_metrics import ETA_BINS, PT_BINS_GEV, graph_counts, target_truth_mask, track_field, truth_edge_found
from stages.plots import plot_efficiency_curves, plot_histograms, save_figure
from tb_plugin.conditions import Condition, parse_conditions
from tb_plugin.config import ConfigError
from tb_plugin.event_store import (
    list_event_files,
    load_event,
    require_field,
)
from tb_plugin.pretraining.metrics import roc_auc, roc_curve
from tb_plugin.training import TrainerConfig, inference_device, last_checkpoint, make_trainer, trained_checkpoint
from tb_plugin.stage import EventProcessor, Stage, StageConfig

log = logging.getLogger(__name__)

SCORES_FIELD = "edge_scores"


@dataclass(kw_only=True)
class WeightSpec:
    """One `weighting` entry: the edges passing every condition get this weight."""

    weight: float
    conditions: dict[str, Any] = field(default_factory=dict)


def default_weighting() -> list[WeightSpec]:
    """Every edge 1 (true edges trained as true, fakes as fakes); true edges of pT > 1 GeV particles 2,
    because those are the tracks the pipeline is judged on and edge losses cost them most."""
    return [WeightSpec(weight=1.0), WeightSpec(weight=2.0, conditions={"edge_y": True, "track_particle_pt": [1000.0, math.inf]})]


@dataclass(kw_only=True)
class InteractionGNNConfig(StageConfig, TrainerConfig):
    input_dir: Path = field()  # graphs with edge_index, edge_y, track_to_edge_map (graph construction's stage_dir)
    # features
    node_features: list[str] = field(default_factory=lambda: ["hit_r", "hit_phi", "hit_z"])
    node_scales: list[float] | None = field(default_factory=lambda: [1000.0, 3.14159, 1000.0])
    edge_features: list[str] = field(default_factory=list)  # stages.features.EDGE_FEATURES, e.g. [dr, dphi, dz, tb_sim]
    edge_scales: list[float] | None = None  # each edge feature is divided by its scale (dr, dz in mm want ~100)
    # model (ACORN names)
    hidden: int = 64
    n_graph_iters: int = 8
    nb_node_layer: int = 2
    nb_edge_layer: int = 2
    layernorm: bool = True
    hidden_activation: str = "SiLU"
    aggregation: str = "sum"
    dropout: float = 0.0
    recurrent: bool = False
    checkpointing: bool = False  # recompute message passing in the backward pass (less memory, ~30 % slower)
    # truth, weighting and targets (ACORN conditions; pT in MeV)
    weighting: list[WeightSpec] = field(default_factory=default_weighting)
    hard_cuts: dict[str, Any] = field(default_factory=dict)
    target_tracks: dict[str, Any] = field(default_factory=lambda: {"track_particle_pt": [1000.0, math.inf]})
    edge_cut: float = 0.5  # kept edges: edge_scores > edge_cut
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

    def __post_init__(self) -> None:
        super().__post_init__()
        check_feature_config(self.node_features, self.node_scales, self.edge_features)
        if self.edge_scales is not None:
            if len(self.edge_scales) != len(self.edge_features):
                raise ValueError(f"key 'edge_scales' has {len(self.edge_scales)} entries but 'edge_features' has "
                                 f"{len(self.edge_features)}; give one scale per feature")
            if any(not s or not math.isfinite(s) for s in self.edge_scales):
                raise ValueError(f"key 'edge_scales' must hold finite non-zero numbers, got {self.edge_scales}")
        for key in ("hidden", "n_graph_iters", "nb_node_layer", "nb_edge_layer", "max_epochs", "batch_size", "num_nodes"):
            if getattr(self, key) < 1:
                raise ValueError(f"key '{key}' must be at least 1, got {getattr(self, key)}")
        if self.hidden_activation not in ACTIVATIONS:
            raise ValueError(f"key 'hidden_activation' must be one of {', '.join(ACTIVATIONS)}, got {self.hidden_activation!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"key 'aggregation' must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"key 'dropout' must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.edge_cut < 1.0:
            raise ValueError(f"key 'edge_cut' must be in [0, 1) (edges with a score above it are kept), got {self.edge_cut}")
        if self.max_train_edges is not None and self.max_train_edges < 1:
            raise ValueError(f"key 'max_train_edges' must be at least 1 or null (no cap), got {self.max_train_edges}")
        if not self.lr > 0:
            raise ValueError(f"key 'lr' must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError(f"keys 'weight_decay' and 'warmup_steps' must be >= 0, got {self.weight_decay} and {self.warmup_steps}")
        for i, spec in enumerate(self.weighting):
            if not math.isfinite(spec.weight):
                raise ValueError(f"key 'weighting[{i}].weight' must be a finite number, got {spec.weight}")
        self.weight_conditions()
        self.cut_conditions()
        self.target_conditions()

    def weight_conditions(self) -> list[tuple[float, list[Condition]]]:
        return parse_weighting(self.weighting)

    def cut_conditions(self) -> list[Condition]:
        return track_conditions(self.hard_cuts, "key 'hard_cuts'")

    def target_conditions(self) -> list[Condition]:
        """Target truth edges pass both hard_cuts and target_tracks."""
        return self.cut_conditions() + track_conditions(self.target_tracks, "key 'target_tracks'")

    def model_config(self, node_dim: int, edge_dim: int) -> GNNConfig:
        return GNNConfig(node_dim=node_dim, edge_dim=edge_dim, hidden=self.hidden, n_graph_iters=self.n_graph_iters,
                         nb_node_layer=self.nb_node_layer, nb_edge_layer=self.nb_edge_layer, layernorm=self.layernorm,
                         hidden_activation=self.hidden_activation, aggregation=self.aggregation, dropout=self.dropout,
                         recurrent=self.recurrent, checkpointing=self.checkpointing)

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
            raise ConfigError(f"{where}.{c.field}: conditions here read edge_* or track_* fields (or ACORN's short "
                              f"particle names such as pt), got '{c.field}'")
    return conditions


def track_conditions(specs: dict[str, Any] | None, where: str) -> list[Condition]:
    conditions = edge_conditions(specs, where)
    for c in conditions:
        if not c.field.startswith("track_"):
            raise ConfigError(f"{where}.{c.field}: conditions here select particles: use track_* fields, got '{c.field}'")
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
                raise ValueError(f"{source}: '{c.field}' has shape {list(values.shape)}, expected [{mapping.shape[0]}] like track_to_edge_map")
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


def parse_weighting(weighting: list[WeightSpec] | list[dict[str, Any]] | Weighting, key: str = "weighting") -> Weighting:
    """(weight, conditions) pairs from WeightSpecs, YAML-style mappings or pairs already parsed."""
    parsed = []
    for i, entry in enumerate(weighting):
        if isinstance(entry, tuple):
            parsed.append(entry)
            continue
        spec = entry if isinstance(entry, WeightSpec) else WeightSpec(**entry)
        parsed.append((float(spec.weight), edge_conditions(spec.conditions, f"key '{key}[{i}].conditions'")))
    return parsed


def edge_weights(data: Data, weighting: list[WeightSpec] | list[dict[str, Any]] | Weighting, source: str | Path = "event") -> torch.Tensor:
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


def sector_edges(edge_phi: torch.Tensor, max_edges: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """long [min(E, max_edges)]: the edges of a random phi sector holding exactly max_edges edges."""
    E = edge_phi.shape[0]
    if E <= max_edges:
        return torch.arange(E)
    order = torch.argsort(edge_phi)  # [E]
    start = int(torch.randint(E, (1,), generator=generator))
    return order[(start + torch.arange(max_edges)) % E]  # [max_edges], wraps around at phi = +-pi


# ------------------------------------------------------------------------------------- graphs


def model_inputs(data: Data, config: InteractionGNNConfig, source: str | Path, edges: torch.Tensor | None = None) -> Data:
    """x [N, F], edge_index [2, E'], edge_attr [E, F_e] of the event (of the `edges` subset if given)."""
    edge_index = require_field(data, "edge_index", source).long()
    if edges is not None:
        edge_index = edge_index[:, edges]
    x = node_feature_matrix(data, config.node_features, config.node_scales, source)  # [N, F]
    edge_attr = edge_feature_matrix(data, edge_index, config.edge_features, source)  # [E', F_e]
    if config.edge_scales is not None:
        edge_attr = edge_attr / torch.tensor(config.edge_scales, dtype=edge_attr.dtype)  # [E', F_e]
    return Data(x=x, edge_index=edge_index, edge_attr=edge_attr, num_nodes=x.shape[0])


def training_graph(data: Data, config: InteractionGNNConfig, source: str | Path, cap_edges: bool) -> Data:
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

    def __init__(self, files: list[Path], config: InteractionGNNConfig, cap_edges: bool) -> None:
        self.files, self.config, self.cap_edges = files, config, cap_edges

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Data:
        return training_graph(load_event(self.files[i]), self.config, self.files[i], self.cap_edges)


# ------------------------------------------------------------------------------------- the stage


class InteractionGNN(Stage):
    config_class = InteractionGNNConfig
    trainable = True
    config: InteractionGNNConfig

    @property
    def artifacts(self) -> Path:
        return self.stage_dir / "artifacts"

    def feature_dims(self, files: list[Path]) -> tuple[int, int]:
        """(node_dim, edge_dim) read off the first event, so [N, D] features size the model themselves."""
        graph = model_inputs(load_event(files[0]), self.config, files[0], torch.arange(0))
        return graph.x.shape[1], graph.edge_attr.shape[1]

    # --------------------------------------------------------------------------------- train

    def train(self, checkpoint: Path | None = None) -> None:
        L.seed_everything(self.config.seed, workers=True, verbose=False)
        if checkpoint is not None and not Path(checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint {checkpoint} not found")
        resume = checkpoint or last_checkpoint(self.stage_dir)
        train_files, val_files = self.input_files("trainset"), self.input_files("valset")
        if not train_files:
            raise FileNotFoundError(f"no event files in {self.config.input_dir / 'trainset'}: nothing to train on")
        node_dim, edge_dim = self.feature_dims(train_files)
        module = EdgeClassifierModule(model=asdict(self.config.model_config(node_dim, edge_dim)),
                                      optim=asdict(self.config.optim_config()), edge_cut=self.config.edge_cut)
        print(f"InteractionGNN: {module.model.num_params():,} parameters, {node_dim} node and {edge_dim} edge features, "
              f"{len(train_files)} training and {len(val_files)} validation events")
        c = self.config
        train_loader = DataLoader(EventGraphs(train_files, c, cap_edges=True), batch_size=c.batch_size, shuffle=True,
                                  num_workers=c.num_workers)
        val_loader = (DataLoader(EventGraphs(val_files, c, cap_edges=False), batch_size=1, num_workers=c.num_workers)
                      if val_files else None)
        trainer = self.trainer(validate=val_loader is not None)
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=str(resume) if resume else None)

    def trainer(self, validate: bool = True) -> L.Trainer:
        c = self.config
        monitor = c.metric_to_monitor if validate or not c.metric_to_monitor.startswith("val/") else "train/loss"
        return make_trainer(c, self.stage_dir, monitor=monitor, limit_val_batches=1.0 if validate else 0)

    def trained(self) -> EdgeClassifierModule:
        """The best checkpoint (else the last), in eval mode."""
        path = trained_checkpoint(self.stage_dir, "InteractionGNN")
        module = EdgeClassifierModule.load_from_checkpoint(path, map_location="cpu")
        module.eval()
        return module

    # --------------------------------------------------------------------------------- infer

    @torch.no_grad()
    def score(self, module: EdgeClassifierModule, data: Data, source: str | Path) -> torch.Tensor:
        """float32 [E] edge scores of a whole event."""
        graph = model_inputs(data, self.config, source).to(module.device)
        expected = (module.model.config.node_dim, module.model.config.edge_dim)
        if (graph.x.shape[1], graph.edge_attr.shape[1]) != expected:
            raise ValueError(f"{source}: the features give {graph.x.shape[1]} node and {graph.edge_attr.shape[1]} edge columns, "
                             f"but the checkpoint was trained with {expected[0]} and {expected[1]}")
        return torch.sigmoid(module(graph.x, graph.edge_index, graph.edge_attr).float()).cpu()  # [E]

    def event_processor(self) -> EventProcessor:
        """Load the trained checkpoint once onto the inference device; the function adds edge_scores."""
        module = self.trained().to(inference_device(self.config.accelerator))

        def add_scores(data: Data, source: Path) -> Data:
            data[SCORES_FIELD] = self.score(module, data, source)
            return data

        return add_scores

    def infer(self, overwrite: bool = False) -> None:
        self.rewrite_events(self.event_processor(), overwrite)

    # --------------------------------------------------------------------------------- evaluate

    def evaluate(self) -> dict[str, Any]:
        split = self.config.dataset
        files = list_event_files(self.stage_dir, split)
        if not files:
            raise FileNotFoundError(f"no event files in {self.stage_dir / split}: run infer first")
        collected = [self.event_arrays(path) for path in tqdm(files, desc=f"edge_classifier eval {split}", unit="event", leave=False)]
        arrays = {key: np.concatenate([c[key] for c in collected]) for key in collected[0] if key != "counts"}
        counts = {key: sum((c["counts"][key] for c in collected[1:]), collected[0]["counts"][key]) for key in collected[0]["counts"]}
        metrics = self.summarise(arrays, counts, len(files))
        self.plot(arrays)
        path = self.write_metrics(metrics)
        print(f"edge_classifier ({split}, {len(files)} events, edge_cut {self.config.edge_cut}): "
              f"target efficiency {_fmt(metrics['target_efficiency'])}, target purity {_fmt(metrics['target_purity'])}, "
              f"target AUC {_fmt(metrics['target_auc'])}; all true edges: efficiency {_fmt(metrics['efficiency'])}, "
              f"purity {_fmt(metrics['purity'])}, AUC {_fmt(metrics['auc'])}\n  -> {path}")
        return metrics

    def event_arrays(self, path: Path) -> dict[str, Any]:
        """Per-edge and per-truth-edge arrays of one scored event, and its summable counts."""
        data = load_event(path)
        scores = require_field(data, SCORES_FIELD, path).float().numpy()  # [E]
        edge_y = require_field(data, "edge_y", path).bool().numpy()  # [E]
        mapping = require_field(data, "track_to_edge_map", path).long()  # [T]
        target = target_truth_mask(data, self.config.target_conditions(), path).numpy()  # [T]
        kept = scores > self.config.edge_cut  # [E]
        edge_target = np.zeros(len(edge_y), dtype=bool)  # [E] graph edges that are target truth edges
        matched = mapping.numpy() >= 0
        edge_target[mapping.numpy()[matched & target]] = True
        T = len(mapping)
        nan = np.full(T, np.nan)
        return {
            "scores": scores, "edge_y": edge_y, "edge_target": edge_target, "kept": kept,
            "truth_in_graph": truth_edge_found(mapping)[target],
            "truth_kept": truth_edge_found(mapping, kept)[target],
            "truth_pt_gev": (data.track_particle_pt.double().numpy() / 1000.0 if "track_particle_pt" in data else nan)[target],
            "truth_eta": (data.track_particle_eta.double().numpy() if "track_particle_eta" in data else nan)[target],
            "counts": {
                "all": graph_counts(mapping, None, edge_y, kept),
                "target": graph_counts(mapping, target, edge_y, kept),
                "target_graph": graph_counts(mapping, target, edge_y),
            },
        }

    def summarise(self, a: dict[str, np.ndarray], counts: dict, events: int) -> dict[str, Any]:
        """Efficiencies, purities and AUCs at edge_cut; names say which edges they count.

        target_efficiency   kept target truth edges / target truth edges that are in the graph
        target_purity       kept target true edges / kept edges that are fake or target true (true
                            edges of other particles are neither right nor wrong for the target)
        acorn_target_purity kept target true edges / all kept edges (ACORN's target purity)
        efficiency, purity  the same over every true edge
        cumulative_target_efficiency  kept target truth edges / all target truth edges (graph losses too)
        auc, target_auc     all edges (true vs fake); target true edges vs fakes
        """
        kept, y, tgt, s = a["kept"], a["edge_y"], a["edge_target"], a["scores"]
        in_graph = int(a["truth_in_graph"].sum())
        found = int(a["truth_kept"].sum())
        kept_target = int((kept & tgt).sum())
        kept_relevant = int((kept & (tgt | ~y)).sum())
        all_truth = counts["all"].rates()
        scored_target = tgt | ~y
        return {
            "dataset": self.config.dataset,
            "events": events,
            "edge_cut": self.config.edge_cut,
            "target_efficiency": found / in_graph if in_graph else None,
            "target_purity": kept_target / kept_relevant if kept_relevant else None,
            "acorn_target_purity": kept_target / int(kept.sum()) if kept.any() else None,
            "cumulative_target_efficiency": counts["target"].rates()["efficiency"],
            "efficiency": int((kept & y).sum()) / int(y.sum()) if y.any() else None,
            "purity": all_truth["purity"],
            "auc": _auc(s, y),
            "target_auc": _auc(s[scored_target], tgt[scored_target]),
            "n_edges": int(len(y)),
            "n_true_edges": int(y.sum()),
            "n_target_edges": int(tgt.sum()),
            "n_kept_edges": int(kept.sum()),
            "n_target_truth_edges": counts["target"].n_true,
            "graph_target_efficiency": counts["target_graph"].rates()["efficiency"],
        }

    def plot(self, a: dict[str, np.ndarray]) -> list[Path]:
        """ROC curves, the score distributions and the target efficiency vs pT and eta."""
        out = self.stage_dir / "eval"
        written = [plot_roc(a["scores"], a["edge_y"], a["edge_target"], out / "roc_curve.png")]
        written.append(plot_histograms({"true edges": a["scores"][a["edge_y"]], "fake edges": a["scores"][~a["edge_y"]]},
                                       np.linspace(0.0, 1.0, 51), "edge score", out / "edge_scores.png", logy=True,
                                       title="edge classifier scores"))
        series = {"in the graph": a["truth_in_graph"], f"kept (score > {self.config.edge_cut})": a["truth_kept"]}
        for column, bins, xlabel, logx, name in (("truth_pt_gev", PT_BINS_GEV, "particle pT [GeV]", True, "edge_efficiency_vs_pt.png"),
                                                 ("truth_eta", ETA_BINS, "particle eta", False, "edge_efficiency_vs_eta.png")):
            x = a[column]
            if np.isfinite(x).any():
                written.append(plot_efficiency_curves({k: (x, v) for k, v in series.items()}, bins, xlabel, out / name,
                                                      logx=logx, title="target truth edges"))
        return written


def _auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """ROC AUC, None when only one class is present (a metrics file should still be written)."""
    return roc_auc(scores, labels) if 0 < labels.sum() < len(labels) else None


def plot_roc(scores: np.ndarray, edge_y: np.ndarray, edge_target: np.ndarray, out_path: Path) -> Path:
    """ROC of all edges (true vs fake) and of target true edges vs fakes."""
    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    relevant = edge_target | ~edge_y
    for label, s, y in (("all edges", scores, edge_y), ("target edges vs fakes", scores[relevant], edge_target[relevant])):
        auc = _auc(s, y)
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
    ax.set_title("edge classifier ROC")
    fig.tight_layout()
    return save_figure(fig, out_path)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
