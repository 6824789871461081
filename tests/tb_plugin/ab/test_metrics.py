"""The A/B's operating points on hand-made graphs: a graph builder's curve read at valset-chosen radii."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from tb_plugin.ab.metrics import ArmEvents, GraphCurve, collect_arm_events
from tb_plugin.event_store import save_event


def event(distances: list[float], target_edges: int, missing_targets: int = 0) -> Data:
    """A scored graph: edges 0..target_edges-1 are target truth edges (pT 2 GeV); `missing_targets`
    more target truth edges are not in the graph at any radius."""
    n_edges = len(distances)
    n_truth = target_edges + missing_targets
    mapping = torch.tensor(list(range(target_edges)) + [-1] * missing_targets, dtype=torch.long)
    return Data(
        edge_index=torch.zeros((2, n_edges), dtype=torch.long),
        edge_distance=torch.tensor(distances, dtype=torch.float64),
        track_edges=torch.zeros((2, n_truth), dtype=torch.long),
        track_to_edge_map=mapping,
        track_particle_pt=torch.full((n_truth,), 2000.0),
        num_nodes=2,
    )


class CurveStage:
    """The part of MetricLearning a GraphCurve uses: scored_graph, config, stage_dir."""

    def __init__(self, root: Path, events: dict[str, dict[str, Data]], r_infer: float) -> None:
        self.stage_dir = root / "out"
        self.events = events
        self.config = SimpleNamespace(
            input_dir=root / "in", r_infer=r_infer, target_tracks={"track_particle_pt": [1000, float("inf")]}
        )
        for split, by_name in events.items():
            for name, data in by_name.items():
                save_event(data, self.stage_dir / split / name)

    def scored_graph(self, data: Data, source: Path) -> Data:
        return self.events[source.parent.name][source.name]


@pytest.fixture
def no_loading(monkeypatch):
    monkeypatch.setattr("tb_plugin.ab.metrics.load_event", lambda path: Data())


def test_radii_chosen_on_the_valset_are_read_on_the_test_events(tmp_path, no_loading):
    # valset: 20 target edges at distances 0.01..0.20, 20 fakes at 0.5; 95 % of 20 needs the 19 nearest
    val = event([0.01 * (i + 1) for i in range(20)] + [0.5] * 20, target_edges=20)
    test = event([0.05, 0.18, 0.195, 0.3, 0.6], target_edges=3, missing_targets=1)
    stage = CurveStage(
        tmp_path, {"valset": {"event000000001.pyg": val}, "testset": {"event000000002.pyg": test}}, r_infer=0.155
    )
    points: dict = {}
    curve = GraphCurve(stage, {}, points)
    assert 0.19 <= curve.radius["at95"] < 0.20  # keeps 0.01..0.19, not 0.20
    assert points["graph.valset_edges_per_event"] == 15  # distances < r_infer = 0.155
    out = ArmEvents()
    curve.add(out, "testset", "event000000002.pyg")
    assert out.per_event["graph_construction.at95.edges_per_event"] == {"num": [2.0], "den": [1.0]}
    assert out.per_event["graph_construction.at95.target_efficiency"] == {
        "num": [2.0],
        "den": [4.0],
    }  # the missing one counts


def test_the_trackingbert_arm_is_read_at_the_baselines_graph_size(tmp_path, no_loading):
    val = event([0.01 * (i + 1) for i in range(10)], target_edges=5)
    stage = CurveStage(tmp_path, {"valset": {"event000000001.pyg": val}}, r_infer=0.055)
    points: dict = {}
    curve = GraphCurve(stage, {"graph.valset_edges_per_event": 3.0}, points)  # the baseline kept 3 edges per event
    kept = (val.edge_distance.numpy() < curve.radius["at_edges"]).sum()
    assert kept == 3 and points["graph.valset_edges_per_event"] == 5
    np.testing.assert_allclose(points["graph.at_edges.radius"], curve.radius["at_edges"])


def test_a_gnn_that_keeps_no_valset_target_edge_has_no_matched_rows(tmp_path, monkeypatch):
    """A briefly trained baseline GNN (benchmarks/gpu_check.sh) can keep no target edge of the valset at
    its cut: the matched operating point is then undefined, and its rows are left out instead of failing
    the A/B; the fixed-efficiency operating points are still chosen."""
    arrays = {
        "scores": np.array([0.1, 0.2, 0.3]),
        "edge_target": np.array([True, True, False]),
        "kept": np.zeros(3, dtype=bool),
    }
    gnn = SimpleNamespace(
        config=SimpleNamespace(stage="edge_classifier"), stage_dir=tmp_path / "gnn", event_arrays=lambda path: arrays
    )
    tracks = SimpleNamespace(config=SimpleNamespace(stage="track_building"), stage_dir=tmp_path / "tracks")
    save_event(Data(num_nodes=1), gnn.stage_dir / "valset" / "event000000001.pyg")
    save_event(Data(num_nodes=1), tracks.stage_dir / "testset" / "event000000002.pyg")
    monkeypatch.setattr("tb_plugin.ab.metrics._edge_metrics", lambda *args: None)
    monkeypatch.setattr("tb_plugin.ab.metrics._track_metrics", lambda *args, **kw: None)
    tracks.event_matches = lambda path: None
    out = collect_arm_events([gnn, tracks], reference={})
    assert out.operating_points["matched.reference_efficiency"] == 0.0
    assert "matched.cut" not in out.operating_points
    assert "edge_classifier.at95.cut" in out.operating_points and out.event_ids == ["000000002"]
