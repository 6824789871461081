"""tb-plugin: TrackingBERT module embeddings as a stage of ACORN-style GNN tracking pipelines."""

__version__ = "0.1.0"
