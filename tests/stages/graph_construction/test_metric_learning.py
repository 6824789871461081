"""MetricLearning: neighbour search against brute force, the loss goes down, inference writes the
graph-file contract, a missing node feature is named."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stages.graph_construction.embedding_model import MetricLearningModule, radius_knn_cpu, radius_knn_torch
from stages.graph_construction.metric_learning import MetricLearning, MetricLearningConfig, training_event
from tb_plugin.config import ConfigError, build
from tb_plugin.event_store import MissingFieldError, list_event_files, load_event
from tb_plugin.geometry import Detector
from tb_plugin.pipeline import stage_from_mapping
from tb_plugin.simulation import SimulationConfig, simulate_dataset

SMALL = {"emb_hidden": 32, "nb_layer": 2, "emb_dim": 6, "knn": 10, "knn_val": 10, "knn_infer": 10,
         "r_train": 0.2, "r_infer": 0.2, "points_per_batch": 500}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ml")
    detector = Detector.builtin()
    simulate_dataset(SimulationConfig(n_events=3, pileup=1, seed=3), detector, root / "events", progress=False, workers=1)
    detector.to_csv(root / "events" / "detectors.csv")
    stage_from_mapping({"stage": "data_reading", "model": "TrackMLReader", "input_dir": str(root / "events"),
                        "stage_dir": str(root / "store"), "data_split": [1, 1, 1]}, "reading.yaml").infer()
    return root / "store"


def brute_force(points: np.ndarray, r: float, k: int) -> set[tuple[int, int]]:
    d = np.linalg.norm(points[:, None] - points[None], axis=2)
    np.fill_diagonal(d, np.inf)
    edges = set()
    for i in range(len(points)):
        near = [j for j in np.argsort(d[i])[:k] if d[i, j] < r]
        edges |= {(i, int(j)) for j in near}
    return edges


def test_radius_knn_matches_brute_force():
    points = np.random.default_rng(0).random((200, 3))
    for r, k in ((0.15, 4), (0.08, 50), (2.0, 7)):
        expected = brute_force(points, r, k)
        assert set(map(tuple, radius_knn_cpu(points, r, k).T.tolist())) == expected
        blocked = radius_knn_torch(torch.tensor(points), r, k, block_elements=1000)  # many blocks
        assert set(map(tuple, blocked.T.tolist())) == expected
    query = np.array([5, 17])
    subset = radius_knn_cpu(points, 0.15, 4, query)
    assert set(subset[0].tolist()) <= {5, 17}
    assert set(map(tuple, subset.T.tolist())) == {e for e in brute_force(points, 0.15, 4) if e[0] in (5, 17)}


def test_a_few_steps_lower_the_loss(store):
    torch.manual_seed(0)
    event = training_event(list_event_files(store, "trainset")[0], ["hit_r", "hit_phi", "hit_z"], [1000, 3.14159, 1000])
    config = build(MetricLearningConfig, {"stage": "graph_construction", "model": "MetricLearning", "input_dir": str(store),
                                          "stage_dir": "unused", **SMALL}, "ml.yaml")
    module = MetricLearningModule(vars(config.settings(event.x.shape[1])))
    optimizer = torch.optim.Adam(module.parameters(), lr=5e-3)
    with torch.no_grad():
        before = float(module.event_loss(event))
    for _ in range(20):
        optimizer.zero_grad()
        module.event_loss(event).backward()
        optimizer.step()
    with torch.no_grad():
        after = float(module.event_loss(event))
    assert after < 0.8 * before


def test_train_infer_evaluate_write_the_graph_contract(store, tmp_path):
    values = {"stage": "graph_construction", "model": "MetricLearning", "input_dir": str(store),
              "stage_dir": str(tmp_path / "ml"), "max_epochs": 1, **SMALL}
    ml = MetricLearning(build(MetricLearningConfig, values, "ml.yaml"))
    ml.train()
    assert (tmp_path / "ml" / "artifacts" / "last.ckpt").is_file()
    ml.infer()
    source = load_event(list_event_files(store, "testset")[0])
    data = load_event(list_event_files(tmp_path / "ml", "testset")[0])
    e = data.edge_index
    assert e.dtype == torch.int64 and e.shape[0] == 2 and e.shape[1] > 0
    assert data.edge_y.dtype == torch.bool and data.edge_y.shape == (e.shape[1],)
    assert torch.unique(e[0] * data.num_nodes + e[1]).numel() == e.shape[1]  # no duplicates
    r2z2 = data.hit_x.double() ** 2 + data.hit_y.double() ** 2 + data.hit_z.double() ** 2
    assert (r2z2[e[0]] <= r2z2[e[1]]).all()  # inner to outer
    mapping = data.track_to_edge_map
    assert mapping.shape == (data.track_edges.shape[1],)
    found = mapping >= 0
    assert torch.equal(e[:, mapping[found]], data.track_edges[:, found])
    assert int(data.edge_y.sum()) == int(found.sum())
    assert torch.equal(data.hit_id, source.hit_id) and data.config[-1]["model"] == "MetricLearning"
    metrics = ml.evaluate()
    assert 0 <= metrics["efficiency"] <= 1 and metrics["edges_per_event"] > 0
    assert "target_efficiency" in json.loads((tmp_path / "ml" / "eval" / "metrics.json").read_text())


def test_missing_node_feature_names_feature_and_file(store):
    path = list_event_files(store, "trainset")[0]
    with pytest.raises(MissingFieldError, match=r"hit_tb_emb.*|.*hit_tb_emb") as err:
        training_event(path, ["hit_r", "hit_tb_emb"], None)
    assert str(path) in str(err.value)


def test_config_errors_name_the_key():
    base = {"stage": "graph_construction", "model": "MetricLearning", "input_dir": "x", "stage_dir": "y"}
    with pytest.raises(ConfigError, match="node_scales"):
        build(MetricLearningConfig, {**base, "node_scales": [1.0]}, "ml.yaml")
    with pytest.raises(ConfigError, match="r_infer"):
        build(MetricLearningConfig, {**base, "r_infer": 0}, "ml.yaml")
    with pytest.raises(ConfigError, match="knn"):
        build(MetricLearningConfig, {**base, "knn": 0}, "ml.yaml")
