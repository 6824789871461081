"""ACORN-style host stages: data_reading, graph_construction, edge_classifier, track_building."""
