"""Edge classification: score every edge of the constructed graph (ACORN's InteractionGNN), or score
and prune it with a cheap per-edge MLP first (ACORN's Filter)."""

from stages.edge_classifier.edge_stage import EdgeClassifierConfig, EdgeClassifierStage, TargetEfficiency
from stages.edge_classifier.filter import Filter, FilterConfig
from stages.edge_classifier.interaction_gnn import InteractionGNN, InteractionGNNConfig

__all__ = [
    "EdgeClassifierConfig",
    "EdgeClassifierStage",
    "Filter",
    "FilterConfig",
    "InteractionGNN",
    "InteractionGNNConfig",
    "TargetEfficiency",
]
