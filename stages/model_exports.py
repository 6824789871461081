"""What `tb export --format onnx|torchscript` exports of each trained stage (tb_plugin.model_export writes it).

    edge_classifier  Filter, InteractionGNN: edge_scores [E] = sigmoid(network(x, edge_index, edge_attr
                     [, hit_module])); the sidecar gives the node and edge features (names, order,
                     columns, scales), the edge score cut and where it came from
    graph_construction  MetricLearning: embedding [N, emb_dim] = the unit-sphere embedding of x; the
                     sidecar gives the node features and the radius / kNN the graph is built with
    tracking_bert    TrackingBERT (sources pretrained, random, shuffled): the encoder, hidden [B, L, C]
                     and ntp_logits [B] of token sequences; vocab.json is written beside it

The exported networks take the inputs the stages build from an event (stages.features), not the
event: how to build them is what the sidecar's `layout` says. The example inputs are random and
small (their values do not matter to an export, their sizes do): every hit of the traced example has
an edge, since the Interaction GNN skips hits without edges only when there are some (a Python branch
that tracing records once, and that leaves every score as it is); the check inputs hold such hits.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from stages.edge_classifier.edge_stage import EdgeClassifierStage, TargetEfficiency
from stages.edge_classifier.gnn_model import EdgeClassifierModule
from stages.edge_classifier.module_embedding import MODULE_FIELD
from stages.features import node_feature_matrix
from stages.graph_construction.embedding_model import MetricLearningModule
from stages.graph_construction.metric_learning import MetricLearning
from tb_plugin.config import ConfigError, to_record
from tb_plugin.event_store import load_event
from tb_plugin.model import TrackingBERT
from tb_plugin.model_export import ExportableModel, ExportError, file_sha256
from tb_plugin.pretraining.stage import TrackingBERTStage
from tb_plugin.stage import Stage
from tb_plugin.tokenizer import SPECIAL_TOKENS
from tb_plugin.training import trained_checkpoint

EDGE_FEATURE_DEFINITIONS = {  # stages.features.edge_feature_matrix, for readers without this package
    "dr": "hit_r[dst] - hit_r[src]",
    "dphi": "hit_phi[dst] - hit_phi[src], wrapped into [-pi, pi)",
    "dz": "hit_z[dst] - hit_z[src]",
    "deta": "hit_eta[dst] - hit_eta[src]",
    "phislope": "dphi / dr, 0 where |dr| <= 1e-6",
    "rphislope": "phislope * (hit_r[src] + hit_r[dst]) / 2",
    "tb_sim": "cosine similarity of hit_tb_emb[src] and hit_tb_emb[dst]",
}
EXAMPLE_SIZES = (48, 160)  # (hits, edges) of the traced example
CHECK_SIZES = (31, 75)  # other sizes, for the check; the last CHECK_ISOLATED hits have no edge
CHECK_ISOLATED = 6


def exportable_models(stage: Stage, config_path: str | Path) -> list[ExportableModel]:
    """The trained networks of `stage`; one line naming the config when the stage has none."""
    if isinstance(stage, EdgeClassifierStage):
        return [edge_classifier_export(stage)]
    if isinstance(stage, MetricLearning):
        return [metric_learning_export(stage)]
    if isinstance(stage, TrackingBERTStage):
        if stage.config.source == "geometry":
            raise ConfigError(
                f"{config_path}: key 'source' is geometry: the table is the detector's descriptors, there is no "
                f"network to export; --format csv|npz|pt exports the table"
            )
        return [encoder_export(stage)]
    raise ConfigError(
        f"{config_path}: stage '{stage.config.stage}' model '{stage.config.model}' has no trained network to export "
        f"with --format onnx|torchscript; the stages that have one: edge_classifier (Filter, InteractionGNN), "
        f"graph_construction (MetricLearning), tracking_bert (TrackingBERT)"
    )


def checkpoint_metadata(stage: Stage, path: Path, network: dict[str, Any]) -> dict[str, Any]:
    """Which model this is: the stage, its config, the checkpoint (with its hash) and the network's keys."""
    return {
        "stage": stage.config.stage,
        "model": stage.config.model,
        "checkpoint": str(path),
        "checkpoint_sha256": file_sha256(path),
        "network": network,
        "config": to_record(stage.config),
    }


# ----------------------------------------------------------------------------------------------------
# Example inputs


def example_graph(n_hits: int, n_edges: int, isolated: int, generator: torch.Generator) -> Tensor:
    """int64 [2, n_edges]: src cycles through the first n_hits - isolated hits, dst drawn among them."""
    used = n_hits - isolated
    src = torch.arange(n_edges) % used
    dst = torch.randint(0, used, (n_edges,), generator=generator)
    return torch.stack([src, dst])


def graph_inputs(
    node_dim: int, edge_dim: int, modules: int | None, n_hits: int, n_edges: int, isolated: int, seed: int
) -> dict[str, Tensor]:
    """Random x [N, F], edge_index [2, E], edge_attr [E, F_e] (when F_e > 0), hit_module [N] (when there
    is a module embedding), in the exported forward's order."""
    g = torch.Generator().manual_seed(seed)
    inputs = {
        "x": torch.randn(n_hits, node_dim, generator=g),
        "edge_index": example_graph(n_hits, n_edges, isolated, g),
    }
    if edge_dim:
        inputs["edge_attr"] = torch.randn(n_edges, edge_dim, generator=g)
    if modules is not None:
        inputs["hit_module"] = torch.randint(0, modules, (n_hits,), generator=g)
    return inputs


# ----------------------------------------------------------------------------------------------------
# Edge classifiers


class EdgeScores(nn.Module):
    """edge_scores [E] = sigmoid of the edge logits, what the stage writes; inputs by position, edge_attr
    only when the network has edge features and hit_module only with a module embedding."""

    def __init__(self, module: EdgeClassifierModule, has_edge_attr: bool) -> None:
        super().__init__()
        self.network = module.model  # the plain nn.Module: tracing a LightningModule asks for its Trainer
        self.has_edge_attr = has_edge_attr
        self.has_hit_module = module.vectors is not None

    def forward(self, x: Tensor, edge_index: Tensor, *rest: Tensor) -> Tensor:
        edge_attr = rest[0] if self.has_edge_attr else None
        if self.has_hit_module:
            return torch.sigmoid(self.network(x, edge_index, edge_attr, rest[-1]))  # [E]
        return torch.sigmoid(self.network(x, edge_index, edge_attr))  # [E]


def first_input_event(stage: Stage) -> tuple[Any, Path] | None:
    """An input event to measure the width of each node feature on, or None when input_dir has none."""
    for split in ("trainset", "valset", "testset"):
        files = stage.input_files(split)
        if files:
            return load_event(files[0]), files[0]
    return None


def node_feature_layout(stage: Stage, names: list[str], scales: list[float] | None, total: int) -> list[dict[str, Any]]:
    """[{field, columns, scale}] in x's column order. An [N, D] field (hit_tb_emb) gives D columns,
    measured on an input event; without one, every field counts 1 column when that adds up to `total`,
    else `columns` is null (x's width is in the sidecar's inputs all the same)."""
    columns: list[int | None] = [None] * len(names)
    event = first_input_event(stage)
    if event is not None:
        data, path = event
        columns = [int(node_feature_matrix(data, [n], None, path).shape[1]) for n in names]
    elif len(names) == total:
        columns = [1] * len(names)
    return [
        {"field": n, "columns": c, "scale": 1.0 if scales is None else float(s)}
        for n, c, s in zip(names, columns, scales or [None] * len(names))
    ]


def edge_cut_record(stage: EdgeClassifierStage) -> dict[str, Any]:
    """The cut on edge_scores and its provenance: the fixed `edge_cut`, or the valset-chosen one of
    artifacts/edge_cut.json. A cut that was never chosen is null, with the remedy; it is not chosen
    here, since an export writes nothing into the stage's artifacts."""
    cut = stage.config.edge_cut
    if not isinstance(cut, TargetEfficiency):
        return {"value": float(cut), "provenance": "key 'edge_cut' (a fixed number)"}
    saved = stage.saved_cut()
    if saved is None:
        return {
            "value": None,
            "target_efficiency": cut.target_efficiency,
            "provenance": f"key 'edge_cut': {{target_efficiency: {cut.target_efficiency}}} is not chosen yet "
            f"({stage.edge_cut_path} missing or stale): run 'tb infer' on this config, then export again",
        }
    value = float(saved["edge_cut"])
    return {
        "value": value if math.isfinite(value) else None,  # -inf: the valset had no target edge, keep all
        "keep_all": not math.isfinite(value),
        "target_efficiency": cut.target_efficiency,
        "provenance": f"chosen on {saved.get('valset_events')} valset events to keep {cut.target_efficiency:.2%} of "
        f"their {saved.get('n_target_edges')} target truth edges ({stage.edge_cut_path})",
        "valset_events": saved.get("valset_events"),
        "n_target_edges": saved.get("n_target_edges"),
        "checkpoint": saved.get("checkpoint"),
    }


def edge_network_name(stage: EdgeClassifierStage) -> str:
    """The file stem of an edge classifier's export: filter or interaction_gnn."""
    return "filter" if stage.architecture == "Filter" else "interaction_gnn"


def edge_classifier_export(stage: EdgeClassifierStage) -> ExportableModel:
    """The edge network of a trained edge classifier (Filter or InteractionGNN) with its sigmoid."""
    c = stage.config
    module = stage.trained()
    node_dim, edge_dim = module.data_widths()
    modules = None if module.vectors is None else module.vectors.modules
    inputs = graph_inputs(node_dim, edge_dim, modules, *EXAMPLE_SIZES, isolated=0, seed=0)
    check = graph_inputs(node_dim, edge_dim, modules, *CHECK_SIZES, isolated=CHECK_ISOLATED, seed=1)
    axes = {"x": {0: "n_hits"}, "edge_index": {1: "n_edges"}, "edge_scores": {0: "n_edges"}}
    if edge_dim:
        axes["edge_attr"] = {0: "n_edges"}
    if modules is not None:
        axes["hit_module"] = {0: "n_hits"}
    layout: dict[str, Any] = {
        "x": {
            "build": "each field divided by its scale, side by side in this order (an [N, D] field gives D columns)",
            "node_features": node_feature_layout(stage, c.node_features, c.node_scales, node_dim),
        },
        "edge_index": "the event's edge_index: row 0 the source (inner) hit, row 1 the target (outer) hit, rows of x",
        "edge_attr": {
            "build": "each feature of the edge src -> dst divided by its scale, in this order",
            "edge_features": [
                {"name": n, "definition": EDGE_FEATURE_DEFINITIONS[n], "scale": 1.0 if c.edge_scales is None else s}
                for n, s in zip(c.edge_features, c.edge_scales or [None] * len(c.edge_features))
            ],
        }
        if edge_dim
        else None,
        "edge_scores": "sigmoid of the edge logits: an edge is kept when edge_scores > edge_cut",
        "edge_cut": edge_cut_record(stage),
        "prunes": stage.architecture == "Filter",  # the filter writes the graph of the kept edges only
    }
    if modules is not None:
        layout["hit_module"] = (
            f"int64 [N]: the events' {MODULE_FIELD}, each hit's dense module index (0..{modules - 1}) in the "
            f"detectors.csv of the training input"
        )
    refuses = {}
    if module.hparams["model"].get("aggregation") == "max":  # PyG's scatter max under ONNX export fails in this torch
        refuses["onnx"] = "key 'aggregation' is max, which exports to torchscript only; use --format torchscript"
    path = trained_checkpoint(stage.trained_dir, c.model)
    return ExportableModel(
        name=edge_network_name(stage),
        module=EdgeScores(module, bool(edge_dim)).eval(),
        inputs=inputs,
        check_inputs=check,
        outputs=("edge_scores",),
        dynamic_axes=axes,
        layout=layout,
        metadata=checkpoint_metadata(stage, path, dict(module.hparams)),
        refuses=refuses,
    )


# ----------------------------------------------------------------------------------------------------
# Metric learning


class UnitEmbedding(nn.Module):
    """MetricLearningModule.forward on its plain network: tracing a LightningModule asks for its Trainer."""

    def __init__(self, module: MetricLearningModule) -> None:
        super().__init__()
        self.network = module.network

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.normalize(self.network(x), dim=-1)  # [N, emb_dim]


def metric_learning_export(stage: MetricLearning) -> ExportableModel:
    """The embedding network: x [N, F] -> unit vectors [N, emb_dim]."""
    c = stage.config
    module = stage.trained().eval()
    in_dim = module.settings.in_dim
    g = torch.Generator().manual_seed(0)
    return ExportableModel(
        name="metric_learning",
        module=UnitEmbedding(module).eval(),
        inputs={"x": torch.randn(EXAMPLE_SIZES[0], in_dim, generator=g)},
        check_inputs={"x": torch.randn(CHECK_SIZES[0], in_dim, generator=g)},
        outputs=("embedding",),
        dynamic_axes={"x": {0: "n_hits"}, "embedding": {0: "n_hits"}},
        layout={
            "x": {
                "build": "each field divided by its scale, side by side in this order (an [N, D] field gives D columns)",
                "node_features": node_feature_layout(stage, c.node_features, c.node_scales, in_dim),
            },
            "embedding": "each hit's point on the unit sphere; the graph joins each hit to its at most knn_infer "
            "nearest neighbours closer than r_infer, then orients and deduplicates the edges",
            "r_infer": c.r_infer,
            "knn_infer": c.knn_infer,
        },
        metadata=checkpoint_metadata(
            stage, trained_checkpoint(stage.stage_dir, "metric-learning model"), module.hparams["settings"]
        ),
    )


# ----------------------------------------------------------------------------------------------------
# TrackingBERT


class EncoderOutputs(nn.Module):
    """The encoder without the MDM head: final hidden states [B, L, C] and the NTP logit [B]."""

    def __init__(self, model: TrackingBERT) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, segment_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        h = self.model.encode(input_ids, segment_ids, attention_mask)  # [B, L, C]
        return h, self.model.ntp_head(h[:, 0])  # [B, L, C], [B]


def token_inputs(vocab_size: int, n_seq: int, length: int, seed: int) -> dict[str, Tensor]:
    """Random pair-shaped sequences: [CLS] first, segment 1 in the second half, the last two of every
    other row padding."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(len(SPECIAL_TOKENS), vocab_size, (n_seq, length), generator=g)
    input_ids[:, 0] = SPECIAL_TOKENS.index("[CLS]")
    segment_ids = (torch.arange(length) > length // 2).long().expand(n_seq, length).contiguous()
    attention_mask = torch.ones(n_seq, length, dtype=torch.bool)
    attention_mask[::2, max(1, length - 2) :] = False
    return {"input_ids": input_ids, "segment_ids": segment_ids, "attention_mask": attention_mask}


def encoder_export(stage: TrackingBERTStage) -> ExportableModel:
    """The trained (or control) TrackingBERT encoder, with vocab.json beside it."""
    module, tokenizer, _ = stage.trained()
    model = module.model.eval()
    cfg = model.config
    if cfg.max_len < 3:
        raise ExportError(f"{stage.stage_dir}: max_len {cfg.max_len} leaves no other length to check the export on")
    seq_axes = {0: "n_sequences", 1: "seq_len"}
    path = trained_checkpoint(stage.stage_dir, "TrackingBERT")
    return ExportableModel(
        name="tracking_bert_encoder",
        module=EncoderOutputs(model).eval(),
        inputs=token_inputs(cfg.vocab_size, 6, cfg.max_len, seed=0),
        check_inputs=token_inputs(cfg.vocab_size, 3, cfg.max_len - 2, seed=1),
        outputs=("hidden", "ntp_logits"),
        dynamic_axes={
            "input_ids": seq_axes,
            "segment_ids": seq_axes,
            "attention_mask": seq_axes,
            "hidden": seq_axes,
            "ntp_logits": {0: "n_sequences"},
        },
        layout={
            "input_ids": "int64 [B, L], L <= max_len: [CLS] A [SEP] B [SEP] [PAD]..., the tokens of the hits of "
            "track A then track B in order along each track (vocab.json maps modules to tokens)",
            "segment_ids": "int64 [B, L]: 0 up to and including the first [SEP], 1 after it (B and its [SEP]), 0 on padding",
            "attention_mask": "bool [B, L]: true on real tokens, false on [PAD]",
            "special_tokens": {name: i for i, name in enumerate(SPECIAL_TOKENS)},
            "max_len": cfg.max_len,
            "vocab_size": cfg.vocab_size,
            "vocabulary": "vocab.json",
            "hidden": "final hidden states (after the last LayerNorm); the token-embedding table is what "
            "--format csv|npz|pt exports",
            "ntp_logits": "logit that track A has the higher pT (the NTP head on the [CLS] state)",
        },
        metadata=checkpoint_metadata(stage, path, dict(module.hparams)),
        companions={"vocab.json": tokenizer.save},
    )
