"""Graph construction: candidate edges between hits, with their truth, in ACORN's graph-file contract.

ModuleMap joins hits on module pairs seen in training truth; MetricLearning joins hits that are
close in a learned embedding. Both write edge_index, edge_y and track_to_edge_map (see truth.py).
"""

from stages.graph_construction.metric_learning import MetricLearning, MetricLearningConfig
from stages.graph_construction.module_map import ModuleMap, ModuleMapConfig
from stages.graph_construction.truth import graph_truth

__all__ = ["MetricLearning", "MetricLearningConfig", "ModuleMap", "ModuleMapConfig", "graph_truth"]
