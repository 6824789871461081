"""MetricLearning: neighbour search against brute force, the loss goes down, inference writes the
graph-file contract, an [N, D] node feature (hit_tb_emb) sizes the model and a mismatch is refused,
the operating curve cut from one r_max graph equals the graph built at each radius, a missing node
feature is named."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stages.graph_construction.embedding_model import (
    MetricLearningModule,
    edge_lengths,
    radius_knn_cpu,
    radius_knn_torch,
)
from stages.graph_construction.metric_learning import (
    MetricLearning,
    MetricLearningConfig,
    graph_at_radius,
    training_event,
)
from tb_plugin.config import ConfigError, build
from tb_plugin.event_store import SPLITS, MissingFieldError, list_event_files, load_event, save_event
from tb_plugin.pipeline import stage_from_mapping
from tests.conftest import simulated_feature_store

SMALL = {
    "emb_hidden": 32,
    "nb_layer": 2,
    "emb_dim": 6,
    "knn": 10,
    "knn_val": 10,
    "knn_infer": 10,
    "r_train": 0.2,
    "r_infer": 0.2,
    "points_per_batch": 500,
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return simulated_feature_store(tmp_path_factory.mktemp("ml"), n_events=3, pileup=1, seed=3, data_split=[1, 1, 1])


TB_DIM = 4


@pytest.fixture(scope="module")
def tb_store(store, tmp_path_factory) -> Path:
    """The store again with hit_tb_emb [N, TB_DIM]: one random vector per module, as TrackingBERT writes."""
    root = tmp_path_factory.mktemp("ml_tb") / "store"
    table = torch.randn(int(1e5), TB_DIM, generator=torch.Generator().manual_seed(0))
    for split in SPLITS:
        for path in list_event_files(store, split):
            data = load_event(path)
            data.hit_tb_emb = table[data.hit_module_index.long()]  # [N, D]
            save_event(data, root / split / path.name)
    return root


def ml_stage(store: Path, stage_dir: Path, **values) -> MetricLearning:
    return MetricLearning(
        build(
            MetricLearningConfig,
            {
                "stage": "graph_construction",
                "model": "MetricLearning",
                "input_dir": str(store),
                "stage_dir": str(stage_dir),
                **SMALL,
                **values,
            },
            "ml.yaml",
        )
    )


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
    config = build(
        MetricLearningConfig,
        {
            "stage": "graph_construction",
            "model": "MetricLearning",
            "input_dir": str(store),
            "stage_dir": "unused",
            **SMALL,
        },
        "ml.yaml",
    )
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
    values = {
        "stage": "graph_construction",
        "model": "MetricLearning",
        "input_dir": str(store),
        "stage_dir": str(tmp_path / "ml"),
        "max_epochs": 1,
        **SMALL,
    }
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
    with pytest.raises(ConfigError, match="train_events"):
        build(MetricLearningConfig, {**base, "train_events": 0}, "ml.yaml")
    with pytest.raises(ConfigError, match="val_efficiency"):
        build(MetricLearningConfig, {**base, "val_efficiency": 1.0}, "ml.yaml")
    with pytest.raises(ConfigError, match="train_tracks"):
        build(MetricLearningConfig, {**base, "train_tracks": {"track_particle_pt": "fast"}}, "ml.yaml")


def test_train_tracks_keep_only_the_selected_truth_edges(store):
    path = list_event_files(store, "trainset")[0]
    every = training_event(path, ["hit_r"], None)
    hard = training_event(path, ["hit_r"], None, {"track_particle_pt": [1000, float("inf")]})
    pt = load_event(path).track_particle_pt
    assert hard.track_edges.shape[1] == int((pt > 1000).sum()) < every.track_edges.shape[1]


def test_the_demo_configs_build():
    from tb_plugin.pipeline import load_pipeline

    root = Path(__file__).resolve().parents[3] / "configs"
    stages = [
        stage_from_mapping(e.values, e.source) for e in load_pipeline(root / "pipelines" / "demo_metric_learning.yaml")
    ]
    ml, gnn, tracks = stages[1:]
    assert isinstance(ml, MetricLearning) and ml.config.train_events == 360 and ml.config.data_split == [60, 5, 20]
    assert Path(gnn.config.input_dir) == Path(ml.config.stage_dir) and Path(tracks.config.input_dir) == Path(
        gnn.config.stage_dir
    )


def test_an_n_by_d_node_feature_sizes_the_model_and_a_mismatch_is_refused(tb_store, tmp_path):
    features = {"node_features": ["hit_r", "hit_phi", "hit_z", "hit_tb_emb"], "node_scales": [1000, 3.14159, 1000, 1.0]}
    event = training_event(
        list_event_files(tb_store, "trainset")[0], features["node_features"], features["node_scales"]
    )
    assert event.x.shape[1] == 3 + TB_DIM
    ml = ml_stage(tb_store, tmp_path / "ml", max_epochs=1, **features)
    ml.train()
    assert ml.trained().settings.in_dim == 3 + TB_DIM
    assert ml.trained().settings.node_features == features["node_features"]
    ml.infer()
    data = load_event(list_event_files(tmp_path / "ml", "testset")[0])
    assert data.edge_index.shape[1] > 0 and data.hit_tb_emb.shape[1] == TB_DIM

    # the same checkpoint, read by a config without hit_tb_emb: one line naming the key and both widths
    other = ml_stage(tb_store, tmp_path / "ml")
    source = list_event_files(tb_store, "testset")[0]
    with pytest.raises(
        ValueError, match=r"key 'node_features'.*gives 3 columns.*trained on 7 \(hit_r, hit_phi, hit_z, hit_tb_emb\)"
    ) as err:
        other.build_edges(load_event(source), source)
    assert "\n" not in str(err.value) and str(source) in str(err.value)
    with pytest.raises(ValueError, match=r"key 'node_features'.*gives 3 columns.*last.ckpt was trained on 7"):
        other.train()  # resuming that checkpoint with other columns


def test_the_curve_from_one_r_max_graph_equals_the_graph_built_at_each_radius(store, tmp_path):
    """An untrained embedding is as good as any for the geometry; knn_infer 5 binds at r_max, and the
    cut still reproduces build_edges at each r with the same cap."""
    torch.manual_seed(1)
    ml = ml_stage(store, tmp_path / "ml", knn_infer=5)
    event = training_event(list_event_files(store, "testset")[0], ml.config.node_features, ml.config.node_scales)
    ml.module = MetricLearningModule(vars(ml.config.settings(event.x.shape[1]))).eval()
    source = list_event_files(store, "testset")[0]
    data = load_event(source)
    graph = ml.scored_graph(data, source, r_max=0.5)
    assert "edge_index" not in data  # the caller's event is left as it was
    e = graph.edge_index
    assert graph.edge_distance.shape == (e.shape[1],) and (graph.edge_distance < 0.5).all()
    assert np.allclose(
        graph.edge_distance.numpy(),
        torch.linalg.norm(ml.embed(data, source)[e[0]] - ml.embed(data, source)[e[1]], dim=1).numpy(),
        atol=1e-6,
    )
    capped = np.bincount(radius_knn_cpu(ml.embed(data, source).numpy(), 0.5, 5)[0]).max()
    assert capped == 5  # the cap binds
    sizes = []
    for r in (0.02, 0.05, 0.1, 0.2, 0.5):
        cut = graph_at_radius(graph, r)
        at_r = MetricLearning(dataclasses.replace(ml.config, r_infer=r))
        at_r.module = ml.module
        built = at_r.add_graph(load_event(source), at_r.build_edges(data, source), source)
        assert torch.equal(cut.edge_index, built.edge_index)
        assert torch.equal(cut.edge_y, built.edge_y)
        assert torch.equal(cut.track_to_edge_map, built.track_to_edge_map)
        sizes.append(cut.edge_index.shape[1])
    assert sizes == sorted(sizes) and 0 < sizes[0] < sizes[-1] == e.shape[1]
    assert int(graph_at_radius(graph, 0.5).edge_y.sum()) > int(graph_at_radius(graph, 0.02).edge_y.sum())


def test_edge_lengths_match_the_cpu_search():
    points = np.random.default_rng(2).random((300, 5)).astype(np.float32)
    edges = radius_knn_cpu(points, 0.3, 8)
    lengths = edge_lengths(points, edges)
    for r in (0.1, 0.2):
        assert set(map(tuple, edges[:, lengths < r].T.tolist())) == set(
            map(tuple, radius_knn_cpu(points, r, 8).T.tolist())
        )
