"""`stage: edge_classifier, model: InteractionGNN`: score every graph edge with an Interaction Network.

    tb train   fit on input_dir/trainset, validate on valset, one event per batch (ACORN); checkpoints
               stage_dir/artifacts/{best,last}.ckpt, resumes from last.ckpt
    tb infer   every event again with `edge_scores` float32 [E] (the sigmoid of the logits); every
               other field passes through and the config is appended
    tb eval    efficiency, purity and ROC AUC on the `dataset` split, stage_dir/eval/metrics.json + PNGs

Everything but the network is shared with the edge filter (stages/edge_classifier/edge_stage.py: the
keys, weighting, hard_cuts, target_tracks, edge_cut with a valset-chosen target efficiency,
max_train_edges, training, scoring, evaluation); the network is gnn_model.InteractionNetwork.
"""

from __future__ import annotations

from dataclasses import dataclass

from stages.edge_classifier.edge_stage import (  # noqa: F401  (re-exported: the names this module always had)
    SCORES_FIELD,
    EdgeClassifierConfig,
    EdgeClassifierStage,
    EventGraphs,
    TargetEfficiency,
    WeightSpec,
    condition_field,
    default_weighting,
    edge_condition_mask,
    edge_conditions,
    edge_weights,
    hard_cut_mask,
    model_inputs,
    parse_weighting,
    plot_roc,
    sector_edges,
    track_conditions,
    training_graph,
)
from stages.edge_classifier.gnn_model import AGGREGATIONS, GNNConfig


@dataclass(kw_only=True)
class InteractionGNNConfig(EdgeClassifierConfig):
    # model (ACORN names); layernorm, hidden_activation and dropout: EdgeClassifierConfig
    hidden: int = 64
    n_graph_iters: int = 8
    nb_node_layer: int = 2
    nb_edge_layer: int = 2
    aggregation: str = "sum"
    recurrent: bool = False
    checkpointing: bool = False  # recompute message passing in the backward pass (less memory, ~30 % slower)

    positive_keys = EdgeClassifierConfig.positive_keys + ("hidden", "n_graph_iters", "nb_node_layer", "nb_edge_layer")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"key 'aggregation' must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}")

    def onnx_conflicts(self) -> list[str]:
        out = super().onnx_conflicts()
        if self.aggregation == "max":  # PyG's scatter max fails under ONNX export (stages/model_exports.py)
            others = " or ".join(a for a in AGGREGATIONS if a != "max")
            out.append(f"but key 'aggregation' is max, which does not export to ONNX: train with aggregation {others}")
        return out

    def model_config(self, node_dim: int, edge_dim: int) -> GNNConfig:
        return GNNConfig(
            node_dim=node_dim,
            edge_dim=edge_dim,
            hidden=self.hidden,
            n_graph_iters=self.n_graph_iters,
            nb_node_layer=self.nb_node_layer,
            nb_edge_layer=self.nb_edge_layer,
            layernorm=self.layernorm,
            hidden_activation=self.hidden_activation,
            aggregation=self.aggregation,
            dropout=self.dropout,
            recurrent=self.recurrent,
            checkpointing=self.checkpointing,
        )


class InteractionGNN(EdgeClassifierStage):
    """The Interaction Network edge classifier: adds edge_scores, keeps every edge."""

    config_class = InteractionGNNConfig
    config: InteractionGNNConfig
    architecture = "InteractionNetwork"
    title = "edge_classifier"
