"""Edge classification: score every edge of the constructed graph (ACORN's InteractionGNN)."""

from stages.edge_classifier.interaction_gnn import InteractionGNN, InteractionGNNConfig

__all__ = ["InteractionGNN", "InteractionGNNConfig"]
