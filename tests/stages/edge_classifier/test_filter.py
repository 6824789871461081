import json
import math
from dataclasses import asdict

import pytest
import torch
from torch_geometric.data import Data

from stages.edge_classifier import Filter, FilterConfig, InteractionGNN, InteractionGNNConfig, TargetEfficiency
from stages.edge_classifier.filter import prune_edges
from stages.edge_classifier.gnn_model import EdgeClassifierModule
from tb_plugin.config import ConfigError, build
from tb_plugin.event_store import list_event_files, load_event, save_event
from tb_plugin.registry import resolve

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RADII = [30.0, 70.0, 115.0, 170.0, 260.0]


def make_event(event_id: int) -> Data:
    """Four straight tracks (pT 2.5, 1.5, 3 GeV and 0.4 GeV), one hit per layer, and two noise hits.
    Graph: every truth edge but particle 0's last one, a fake from each hit to the next layer's hit of
    the next particle, and one fake between the noise hits."""
    g = torch.Generator().manual_seed(event_id)
    particles = [(11, 2500.0, 0.3), (12, 1500.0, 1.5), (13, 3000.0, -1.0), (14, 400.0, -2.0)]
    r, phi, z, pid = [], [], [], []
    for particle, _, phi0 in particles:
        for radius in RADII:
            (
                r.append(radius),
                phi.append(phi0 + 0.01 * float(torch.randn(1, generator=g))),
                z.append(0.4 * radius),
                pid.append(particle),
            )
    r, phi, z, pid = r + [90.0, 140.0], phi + [2.8, 2.9], z + [-50.0, 60.0], pid + [0, 0]
    n_layers, n_particles = len(RADII), len(particles)
    truth = [(p * n_layers + k, p * n_layers + k + 1) for p in range(n_particles) for k in range(n_layers - 1)]
    fakes = [
        (p * n_layers + k, ((p + 1) % n_particles) * n_layers + k + 1)
        for p in range(n_particles)
        for k in range(n_layers - 1)
    ]
    graph = truth[:3] + truth[4:] + fakes + [(len(r) - 2, len(r) - 1)]
    track_edges = torch.tensor(truth).T
    pid_t = torch.tensor(pid)
    pt = {p: v for p, v, _ in particles}
    data = Data(
        hit_id=torch.arange(1, len(r) + 1),
        hit_r=torch.tensor(r),
        hit_phi=torch.tensor(phi),
        hit_z=torch.tensor(z),
        edge_index=torch.tensor(graph).T,
        edge_y=torch.tensor([e in truth for e in graph]),
        track_edges=track_edges,
        track_to_edge_map=torch.tensor([graph.index(e) if e in graph else -1 for e in truth]),
        track_particle_id=pid_t[track_edges[0]],
        track_particle_pt=torch.tensor([pt[int(p)] for p in pid_t[track_edges[0]]]),
        track_particle_eta=torch.full((len(truth),), 0.4),
        num_nodes=len(r),
    )
    data.event_id = f"{event_id:09d}"
    data.config = [{"stage": "graph_construction"}]
    return data


def stage_config(cls, input_dir, stage_dir, **overrides):
    model = "Filter" if cls is FilterConfig else "InteractionGNN"
    values = {
        "stage": "edge_classifier",
        "model": model,
        "input_dir": str(input_dir),
        "stage_dir": str(stage_dir),
        "hidden": 8,
        "max_epochs": 2,
        "lr": 5e-3,
        "edge_features": ["dr", "dphi", "dz"],
        "edge_scales": [100.0, 0.1, 100.0],
        **({"nb_layer": 2} if cls is FilterConfig else {"n_graph_iters": 1}),
        **overrides,
    }
    return build(cls, values, f"{model}.yaml")


@pytest.fixture
def graph_folder(tmp_path):
    folder = tmp_path / "graphs"
    for split, ids in (("trainset", [1, 2]), ("valset", [3, 5]), ("testset", [4])):
        for event_id in ids:
            save_event(make_event(event_id), folder / split / f"event{event_id:09d}.pyg")
    return folder


# ------------------------------------------------------------------------------------- pruning


def test_pruning_slices_every_edge_field_and_remaps_the_truth():
    data = Data(
        hit_r=torch.arange(6.0),
        edge_index=torch.tensor([[0, 1, 0, 3, 4], [1, 2, 3, 4, 5]]),
        edge_y=torch.tensor([True, True, False, True, True]),
        edge_scores=torch.tensor([0.9, 0.1, 0.8, 0.7, 0.2]),
        edge_extra=torch.arange(10.0).reshape(5, 2),  # [E, 2]
        edge_note=torch.tensor([7, 8, 9]),  # an edge_ name, but not [E]: passes through
        track_edges=torch.tensor([[0, 1, 3, 4, 2], [1, 2, 4, 5, 5]]),
        track_to_edge_map=torch.tensor([0, 1, 3, 4, -1]),  # (2, 5) was never in the graph
        track_particle_pt=torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]),
        num_nodes=6,
    )
    out = prune_edges(data.clone(), torch.tensor([True, False, True, True, False]))  # keep edges 0, 2, 3
    assert out.edge_index.tolist() == [[0, 0, 3], [1, 3, 4]]
    assert out.edge_y.tolist() == [True, False, True]
    assert torch.equal(out.edge_scores, torch.tensor([0.9, 0.8, 0.7]))
    assert torch.equal(out.edge_extra, torch.tensor([[0.0, 1.0], [4.0, 5.0], [6.0, 7.0]]))
    assert torch.equal(out.edge_note, data.edge_note) and torch.equal(out.hit_r, data.hit_r)
    assert out.track_to_edge_map.tolist() == [0, -1, 2, -1, -1]  # removed, kept and never-present truth edges
    assert torch.equal(out.track_edges, data.track_edges) and torch.equal(out.track_particle_pt, data.track_particle_pt)
    for t, e in enumerate(out.track_to_edge_map.tolist()):  # every mapped truth edge is its graph edge
        if e >= 0:
            assert out.edge_index[:, e].tolist() == out.track_edges[:, t].tolist()
    with pytest.raises(ValueError, match="one per edge"):
        prune_edges(data.clone(), torch.tensor([True, False]))


def test_chunked_scoring_equals_unchunked(graph_folder, tmp_path):
    torch.manual_seed(0)
    data = load_event(list_event_files(graph_folder, "trainset")[0])
    whole = Filter(stage_config(FilterConfig, graph_folder, tmp_path / "a"))
    chunked = Filter(stage_config(FilterConfig, graph_folder, tmp_path / "b", inference_chunk_edges=3))
    module = EdgeClassifierModule(model=asdict(whole.config.model_config(3, 3)), optim={}, architecture="Filter").eval()
    expected = whole.score(module, data, "event")
    assert expected.shape == (data.edge_index.shape[1],) and expected.dtype == torch.float32
    assert torch.allclose(chunked.score(module, data, "event"), expected, atol=1e-6)
    assert chunked.score_chunk(10**7) == 3 and whole.score_chunk(10**7) == 1_000_000


# ------------------------------------------------------------------------------------- end to end


def test_filter_train_infer_evaluate_with_a_valset_cut(graph_folder, tmp_path, capsys):
    stage_dir = tmp_path / "filter"
    stage = Filter(stage_config(FilterConfig, graph_folder, stage_dir, edge_cut={"target_efficiency": 0.9}))
    stage.train()
    record = json.loads((stage_dir / "artifacts" / "edge_cut.json").read_text())
    assert record["target_efficiency"] == 0.9 and record["valset_events"] == 2 and record["checkpoint"] == "best.ckpt"
    cut = record["edge_cut"]
    stage.infer()
    input_target, kept_target = 0, 0
    for split in ("trainset", "valset", "testset"):
        for path in list_event_files(graph_folder, split):
            original, pruned = load_event(path), load_event(stage_dir / split / path.name)
            assert (pruned.edge_scores > cut).all()
            assert pruned.config[-1]["model"] == "Filter" and pruned.config[-1]["edge_cut_used"] == cut
            keys = (original.edge_index[0] * 1000 + original.edge_index[1]).tolist()
            index = torch.tensor(
                [keys.index(k) for k in (pruned.edge_index[0] * 1000 + pruned.edge_index[1]).tolist()], dtype=torch.long
            )
            assert torch.equal(pruned.edge_y, original.edge_y[index])  # kept edges keep their truth
            found = pruned.track_to_edge_map >= 0
            assert torch.equal(pruned.edge_index[:, pruned.track_to_edge_map[found]], pruned.track_edges[:, found])
            assert not found[original.track_to_edge_map < 0].any()
            if split == "valset":
                a = stage.event_arrays(stage_dir / split / path.name)
                input_target += a["n_input_target"]
                kept_target += int(a["edge_target"].sum())
                assert a["n_input_edges"] == original.edge_index.shape[1] and a["kept"].all()
    assert kept_target / input_target >= 0.9  # the cut keeps its share of the valset's target edges
    metrics = stage.evaluate()
    on_disk = json.loads((stage_dir / "eval" / "metrics.json").read_text())
    assert (
        on_disk["edge_cut"] == cut
        and on_disk["edge_cut_target_efficiency"] == 0.9
        and on_disk["config"]["edge_cut_used"] == cut
    )
    for key in ("target_efficiency", "target_purity", "purity", "edges_per_event", "n_edges"):
        assert key in on_disk["input"] and key in on_disk["output"]
    assert metrics["input"]["n_edges"] == load_event(list_event_files(graph_folder, "testset")[0]).edge_index.shape[1]
    for name in ("roc_curve.png", "edge_scores.png", "edge_efficiency_vs_pt.png", "edge_efficiency_vs_eta.png"):
        assert (stage_dir / "eval" / name).read_bytes()[:8] == PNG_MAGIC
    assert "edges per event" in capsys.readouterr().out
    # a missing cut file is chosen again, the same; a GNN stage refuses the filter's checkpoint
    (stage_dir / "artifacts" / "edge_cut.json").unlink()
    assert Filter(stage.config).operating_cut() == cut and (stage_dir / "artifacts" / "edge_cut.json").is_file()
    with pytest.raises(ValueError, match="Filter network"):
        InteractionGNN(stage_config(InteractionGNNConfig, graph_folder, stage_dir)).trained()


def test_interaction_gnn_with_a_target_efficiency_cut(graph_folder, tmp_path):
    stage_dir = tmp_path / "gnn"
    stage = InteractionGNN(
        stage_config(InteractionGNNConfig, graph_folder, stage_dir, max_epochs=1, edge_cut={"target_efficiency": 0.95})
    )
    assert stage.config.edge_cut == TargetEfficiency(target_efficiency=0.95)
    stage.train()
    cut = json.loads((stage_dir / "artifacts" / "edge_cut.json").read_text())["edge_cut"]
    stage.infer()
    metrics = InteractionGNN(stage.config).evaluate()  # a fresh stage reads the saved cut
    assert metrics["edge_cut"] == cut and metrics["edge_cut_target_efficiency"] == 0.95
    scored = load_event(stage_dir / "testset" / "event000000004.pyg")
    assert (
        scored.edge_index.shape == load_event(graph_folder / "testset" / "event000000004.pyg").edge_index.shape
    )  # not pruned


# ------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("cls", [FilterConfig, InteractionGNNConfig])
@pytest.mark.parametrize(
    "value", [1.5, -0.1, "high", {"target_efficiency": 0.0}, {"target_efficiency": 1.5}, {"efficiency": 0.9}]
)
def test_bad_edge_cut_is_a_one_line_error_naming_the_key(tmp_path, cls, value):
    with pytest.raises(ConfigError, match="edge_cut") as err:
        stage_config(cls, tmp_path / "in", tmp_path / "out", edge_cut=value)
    assert "\n" not in str(err.value)


def test_filter_is_registered_and_its_keys_are_checked(tmp_path):
    assert resolve("edge_classifier", "Filter", "f.yaml") is Filter
    assert build(
        FilterConfig, {"stage": "edge_classifier", "model": "Filter", "input_dir": "a", "stage_dir": "b"}, "f.yaml"
    ).edge_cut == TargetEfficiency(target_efficiency=0.99)  # the default: a filter keeps nearly everything
    for key in ("inference_chunk_edges", "nb_layer"):
        with pytest.raises(ConfigError, match=key):
            stage_config(FilterConfig, tmp_path / "in", tmp_path / "out", **{key: 0})
    with pytest.raises(ConfigError, match="n_graph_iters"):  # a GNN key is not a filter key
        stage_config(FilterConfig, tmp_path / "in", tmp_path / "out", n_graph_iters=2)
    assert math.isfinite(stage_config(FilterConfig, tmp_path / "in", tmp_path / "out", edge_cut=0.2).edge_cut)
