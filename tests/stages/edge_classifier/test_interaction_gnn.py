import io
import json
import math

import pytest
import torch
from torch_geometric.data import Data

from stages.edge_classifier import InteractionGNN, InteractionGNNConfig
from stages.edge_classifier.gnn_model import EdgeClassifierModule
from stages.edge_classifier.interaction_gnn import edge_weights, sector_edges, training_graph
from tb_plugin.config import ConfigError, build
from tb_plugin.event_store import MissingFieldError, list_event_files, load_event, save_event
from tb_plugin.training import CheckpointError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# (particle_id, pT MeV, phi) of the hand-made particles; each leaves one hit on each of 5 layers.
PARTICLES = [(11, 2500.0, 0.3), (12, 1500.0, 1.5), (13, 400.0, -2.0)]
RADII = [30.0, 70.0, 115.0, 170.0, 260.0]


def make_event(event_id: int, seed: int = 0) -> Data:
    """Straight tracks from the origin, one hit per layer, then two noise hits. Graph: every truth
    edge except the last one of particle 11 (a graph loss), and fakes from each hit to the next
    layer's hit of the next particle, plus one fake between the two noise hits."""
    g = torch.Generator().manual_seed(seed + event_id)
    r, phi, z, pid = [], [], [], []
    for particle, _, phi0 in PARTICLES:
        for radius in RADII:
            (
                r.append(radius),
                phi.append(phi0 + 0.01 * float(torch.randn(1, generator=g))),
                z.append(0.4 * radius),
                pid.append(particle),
            )
    r += [90.0, 140.0]
    phi += [2.8, 2.9]
    z += [-50.0, 60.0]
    pid += [0, 0]
    n_layers, n_particles = len(RADII), len(PARTICLES)
    truth = [(p * n_layers + k, p * n_layers + k + 1) for p in range(n_particles) for k in range(n_layers - 1)]
    fakes = [
        (p * n_layers + k, ((p + 1) % n_particles) * n_layers + k + 1)
        for p in range(n_particles)
        for k in range(n_layers - 1)
    ]
    noise = [(15, 16)]
    graph = truth[:3] + truth[4:] + fakes + noise  # truth[3] (particle 11's last edge) is missing
    track_edges = torch.tensor(truth).T
    edge_index = torch.tensor(graph).T
    edge_y = torch.tensor([e in truth for e in graph])
    mapping = torch.tensor([graph.index(e) if e in graph else -1 for e in truth])
    pid_t = torch.tensor(pid)
    pt = {p: v for p, v, _ in PARTICLES}
    data = Data(
        hit_id=torch.arange(1, len(r) + 1),
        hit_r=torch.tensor(r),
        hit_phi=torch.tensor(phi),
        hit_z=torch.tensor(z),
        hit_particle_id=pid_t,
        edge_index=edge_index,
        edge_y=edge_y,
        track_edges=track_edges,
        track_to_edge_map=mapping,
        track_particle_id=pid_t[track_edges[0]],
        track_particle_pt=torch.tensor([pt[int(p)] for p in pid_t[track_edges[0]]]),
        track_particle_eta=torch.full((len(truth),), 0.4),
        num_nodes=len(r),
    )
    data.event_id = f"{event_id:09d}"
    data.config = [{"stage": "graph_construction"}]
    return data


def config(input_dir, stage_dir, **overrides) -> InteractionGNNConfig:
    values = {
        "stage": "edge_classifier",
        "model": "InteractionGNN",
        "input_dir": str(input_dir),
        "stage_dir": str(stage_dir),
        "hidden": 8,
        "n_graph_iters": 2,
        "max_epochs": 2,
        **overrides,
    }
    return build(InteractionGNNConfig, values, "gnn.yaml")


@pytest.fixture
def graph_folder(tmp_path):
    folder = tmp_path / "graphs"
    for split, ids in (("trainset", [1, 2]), ("valset", [3]), ("testset", [4])):
        for event_id in ids:
            save_event(make_event(event_id), folder / split / f"event{event_id:09d}.pyg")
    return folder


def test_edge_weights_follow_acorn_semantics(tmp_path):
    data = make_event(1)
    c = config(
        tmp_path / "in",
        tmp_path / "out",
        weighting=[
            {"weight": 0.5, "conditions": {"edge_y": False}},
            {"weight": 0.0, "conditions": {"y": True}},  # ACORN's old name
            {"weight": 3.0, "conditions": {"edge_y": True, "pt": [1000, math.inf]}},  # short particle name
            {"weight": 7.0, "conditions": {"track_particle_id": 12}},  # a track condition never holds on fakes
        ],
    )
    w = edge_weights(data, c.weight_conditions())
    pt_of_edge = torch.full((data.edge_index.shape[1],), -1.0)
    found = data.track_to_edge_map >= 0
    pt_of_edge[data.track_to_edge_map[found]] = data.track_particle_pt[found]
    id_of_edge = torch.zeros(data.edge_index.shape[1], dtype=torch.long)
    id_of_edge[data.track_to_edge_map[found]] = data.track_particle_id[found]
    expected = torch.where(~data.edge_y, 0.5, torch.where(pt_of_edge >= 1000, 3.0, 0.0))
    expected[id_of_edge == 12] = 7.0
    assert torch.equal(w, expected)
    assert (w[~data.edge_y] == 0.5).all()
    # plain YAML-style entries work the same
    assert torch.equal(
        edge_weights(data, [{"weight": 0.5, "conditions": {"edge_y": False}}]), torch.where(data.edge_y, 1.0, 0.5)
    )
    # the default: every edge 1, true edges of pT > 1 GeV particles 2
    default = edge_weights(data, config(tmp_path / "in", tmp_path / "out").weight_conditions())
    assert torch.equal(default, torch.where(pt_of_edge >= 1000, 2.0, 1.0))


def test_edge_cap_keeps_a_phi_sector_and_all_nodes(tmp_path):
    data = make_event(1)
    c = config(tmp_path / "in", tmp_path / "out", max_train_edges=6)
    graph = training_graph(data, c, "event", cap_edges=True)
    assert graph.edge_index.shape == (2, 6) and graph.num_nodes == data.num_nodes
    assert graph.edge_y.shape == graph.edge_weights.shape == (6,)
    # every kept edge is an edge of the event, with its own label and weight
    keys = (data.edge_index[0] * 100 + data.edge_index[1]).tolist()
    index = torch.tensor([keys.index(k) for k in (graph.edge_index[0] * 100 + graph.edge_index[1]).tolist()])
    assert torch.equal(graph.edge_y, data.edge_y[index])
    assert torch.equal(graph.edge_weights, edge_weights(data, c.weight_conditions())[index])
    # a sector: consecutive in the phi order of the edges' inner hits, wrapping around
    phi = torch.tensor([0.5, -3.0, 3.1, 0.1, 2.0, -1.0])
    chosen = sector_edges(phi, 3, torch.Generator().manual_seed(0))
    order = torch.argsort(phi).tolist()
    start = order.index(int(chosen[0]))
    assert chosen.tolist() == [order[(start + k) % 6] for k in range(3)]
    assert torch.equal(sector_edges(phi, 10), torch.arange(6))  # no cap below the size
    assert training_graph(data, c, "event", cap_edges=False).edge_index.shape[1] == data.edge_index.shape[1]


def test_hard_cuts_keep_edges_between_hits_of_passing_particles(tmp_path):
    data = make_event(1)
    graph = training_graph(
        data, config(tmp_path / "in", tmp_path / "out", hard_cuts={"pt": [1000, math.inf]}), "event", cap_edges=False
    )
    passing_hits = set(range(10))  # particles 11 and 12 are hits 0..9; 13 (400 MeV) and noise drop out
    assert graph.edge_index.shape[1] > 0
    assert set(graph.edge_index.reshape(-1).tolist()) <= passing_hits


def test_train_infer_evaluate_end_to_end(graph_folder, tmp_path, capsys):
    stage_dir = tmp_path / "gnn"
    stage = InteractionGNN(
        config(graph_folder, stage_dir, edge_features=["dr", "dphi", "dz"], edge_scales=[100.0, 0.1, 100.0], lr=5e-3)
    )
    stage.train()
    assert (stage_dir / "artifacts" / "last.ckpt").is_file() and (stage_dir / "artifacts" / "best.ckpt").is_file()
    finished = (stage_dir / "artifacts" / "last.ckpt").read_bytes()
    stage.train()  # a rerun resumes a finished fit: nothing to train, no error (tb run twice)
    assert (
        torch.load(stage_dir / "artifacts" / "last.ckpt", weights_only=False)["epoch"]
        == torch.load(io.BytesIO(finished), weights_only=False)["epoch"]
    )
    stage.infer()
    for split in ("trainset", "valset", "testset"):
        for path in list_event_files(graph_folder, split):
            original, scored = load_event(path), load_event(stage_dir / split / path.name)
            scores = scored.edge_scores
            assert scores.dtype == torch.float32 and scores.shape == (original.edge_index.shape[1],)
            assert ((scores >= 0) & (scores <= 1)).all()
            assert set(scored.keys()) == set(original.keys()) | {"edge_scores"}
            for key in original.keys():
                if torch.is_tensor(original[key]):
                    assert torch.equal(original[key], scored[key]), key
            assert scored.config[:-1] == original.config and scored.config[-1]["model"] == "InteractionGNN"
    # resume: finished events are skipped unless overwrite
    written = stage_dir / "testset" / "event000000004.pyg"
    mtime = written.stat().st_mtime_ns
    stage.infer()
    assert written.stat().st_mtime_ns == mtime
    metrics = stage.evaluate()
    on_disk = json.loads((stage_dir / "eval" / "metrics.json").read_text())
    for key in (
        "target_efficiency",
        "target_purity",
        "acorn_target_purity",
        "cumulative_target_efficiency",
        "efficiency",
        "purity",
        "auc",
        "target_auc",
        "n_edges",
        "events",
    ):
        assert key in metrics and key in on_disk
    assert on_disk["events"] == 1 and on_disk["config"]["model"] == "InteractionGNN"
    # the test event's graph lacks one of its 8 target truth edges: cumulative <= in-graph efficiency
    assert metrics["n_target_truth_edges"] == 8 and metrics["graph_target_efficiency"] == pytest.approx(7 / 8)
    for name in ("roc_curve.png", "edge_scores.png", "edge_efficiency_vs_pt.png", "edge_efficiency_vs_eta.png"):
        assert (stage_dir / "eval" / name).read_bytes()[:8] == PNG_MAGIC
    assert "target efficiency" in capsys.readouterr().out


def test_missing_node_feature_names_feature_and_file(graph_folder, tmp_path):
    stage = InteractionGNN(
        config(graph_folder, tmp_path / "gnn", node_features=["hit_r", "hit_eta"], node_scales=[1000, 1])
    )
    with pytest.raises(MissingFieldError, match=r"event000000001\.pyg.*'hit_eta'"):
        stage.train()


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"edge_cut": 1.5}, "edge_cut"),
        ({"max_train_edges": 0}, "max_train_edges"),
        ({"node_scales": [1.0]}, "node_scales"),
        ({"edge_features": ["dr"], "edge_scales": [100.0, 1.0]}, "edge_scales"),
        ({"edge_features": ["curvature"]}, "edge_features"),
        ({"weighting": [{"weight": 1.0, "conditions": {"edge_y": ["between", 1]}}]}, r"weighting\[0\]\.conditions"),
        ({"weighting": [{"weight": 1.0, "condition": {}}]}, "condition"),
        ({"target_tracks": {"hit_r": [0, 10]}}, "target_tracks"),
        ({"hard_cuts": {"pt": [5, 1]}}, "hard_cuts"),
        ({"aggregation": "median"}, "aggregation"),
        ({"hidden": 0}, "hidden"),
    ],
)
def test_config_errors_name_the_key(tmp_path, overrides, key):
    with pytest.raises(ConfigError, match=key):
        config(tmp_path / "in", tmp_path / "out", **overrides)


def test_infinite_range_in_yaml_style(tmp_path):
    c = config(tmp_path / "in", tmp_path / "out", target_tracks={"track_particle_pt": [1000, math.inf]})
    assert c.target_conditions()[0].value == (1000.0, math.inf)


def test_a_checkpoint_cut_short_is_refused_naming_it(graph_folder, tmp_path):
    stage_dir = tmp_path / "gnn"
    stage = InteractionGNN(config(graph_folder, stage_dir))
    stage.train()
    last = stage_dir / "artifacts" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # killed while Lightning wrote it
    with pytest.raises(CheckpointError, match=r"last\.ckpt: not a readable checkpoint \(truncated or corrupt\?\)"):
        InteractionGNN(config(graph_folder, stage_dir, max_epochs=2)).train()


def test_a_resumed_finished_fit_leaves_no_random_state_for_the_next_stage(graph_folder, tmp_path):
    """`tb run` again: a finished stage's resume must not hand its saved random state to the next
    stage trained in the same process (that stage would then draw from another stage's generators)."""
    from tb_plugin import training

    InteractionGNN(config(graph_folder, tmp_path / "gnn")).train()
    InteractionGNN(config(graph_folder, tmp_path / "gnn")).train()  # resumes a finished fit: nothing to train
    assert training._pending_random_state is None


def test_compiled_inference_gives_the_eager_scores(graph_folder, tmp_path):
    stage = InteractionGNN(config(graph_folder, tmp_path / "gnn", max_epochs=1))
    stage.train()
    compiled = InteractionGNN(config(graph_folder, tmp_path / "gnn", max_epochs=1, compile_inference=True))
    assert isinstance(compiled.inference_module().model, torch._dynamo.eval_frame.OptimizedModule)
    eager, fast = stage.event_processor(), compiled.event_processor()
    for path in list_event_files(graph_folder, "testset") + list_event_files(graph_folder, "trainset"):  # 2 sizes
        torch.testing.assert_close(fast(load_event(path), path).edge_scores, eager(load_event(path), path).edge_scores)


def test_bf16_precision_scores_under_bfloat16_autocast(graph_folder, tmp_path, monkeypatch):
    """precision: bf16-mixed holds at inference too: the forward runs under bfloat16 autocast (its
    scores are close to float32's, not equal), and 32-true runs without it."""
    stage = InteractionGNN(config(graph_folder, tmp_path / "gnn", max_epochs=1))
    stage.train()
    bf16 = InteractionGNN(config(graph_folder, tmp_path / "gnn", max_epochs=1, precision="bf16-mixed"))
    path = list_event_files(graph_folder, "testset")[0]
    autocast = []
    forward = EdgeClassifierModule.forward

    def recording(self, *args):
        autocast.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return forward(self, *args)

    monkeypatch.setattr(EdgeClassifierModule, "forward", recording)
    full = stage.event_processor()(load_event(path), path).edge_scores
    half = bf16.event_processor()(load_event(path), path).edge_scores
    assert autocast == [False, True]
    assert half.dtype == torch.float32 and not torch.equal(half, full)
    torch.testing.assert_close(half, full, atol=0.03, rtol=0)
