"""ModuleMap: learns module pairs from hand-made truth and builds exactly the expected candidate edges;
the phi-searched builder gives every hit pair inside the windows, as brute force finds them."""

import itertools
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from stages.graph_construction.module_map import (
    EventHits,
    ModuleMap,
    ModuleMapConfig,
    ModuleMapTable,
    build_module_map_edges,
)
from stages.run_conditions import PROFILE_FILE, RunConditions
from tb_plugin.config import ConfigError, build
from tb_plugin.event_store import list_event_files, load_event, save_event
from tests.conftest import simulated_feature_store

# Six modules on three barrel layers (2 per layer, at phi 0 and pi), at radii 30, 70, 110 mm.
MODULE_LAYER = np.array([2, 2, 4, 4, 6, 6])
MODULE_R = np.array([30.0, 30.0, 70.0, 70.0, 110.0, 110.0])
MODULE_PHI = np.array([0.0, np.pi - 0.01, 0.0, np.pi - 0.01, 0.0, np.pi - 0.01])


def make_event(modules: list[int], truth: list[tuple[int, int]], dphi: list[float] | None = None) -> Data:
    """Hits on the given modules (hit i on modules[i]), straight from the origin, small phi offsets."""
    m = np.asarray(modules)
    phi = MODULE_PHI[m] + (np.asarray(dphi) if dphi is not None else 0.0)
    r, z = MODULE_R[m], 0.5 * MODULE_R[m]
    edges = torch.tensor(truth, dtype=torch.long).T.reshape(2, -1)
    t = edges.shape[1]
    return Data(
        hit_x=torch.tensor(r * np.cos(phi), dtype=torch.float32),
        hit_y=torch.tensor(r * np.sin(phi), dtype=torch.float32),
        hit_z=torch.tensor(z, dtype=torch.float32),
        hit_r=torch.tensor(r, dtype=torch.float32),
        hit_phi=torch.tensor(phi, dtype=torch.float32),
        hit_eta=torch.tensor(np.arcsinh(z / r), dtype=torch.float32),
        hit_volume_id=torch.full((len(m),), 8),
        hit_layer_id=torch.tensor(MODULE_LAYER[m]),
        hit_module_index=torch.tensor(m),
        track_edges=edges,
        track_particle_pt=torch.full((t,), 2000.0),
        track_particle_eta=torch.full((t,), 0.5),
        num_nodes=len(m),
        event_id="000000001",
        config=[{"stage": "data_reading"}],
    )


@pytest.fixture
def store(tmp_path):
    """Trainset: tracks on modules 0 -> 2 -> 4 (twice) and 1 -> 3. Test event: several hits per module."""
    train = [make_event([0, 2, 4], [(0, 1), (1, 2)]), make_event([0, 2, 4, 1, 3], [(0, 1), (1, 2), (3, 4)])]
    for i, data in enumerate(train):
        save_event(data, tmp_path / "store" / "trainset" / f"event{i:09d}.pyg")
    test = make_event([0, 0, 2, 2, 2, 4, 1, 3, 5], [(0, 2), (2, 5), (6, 7), (7, 8)])
    save_event(test, tmp_path / "store" / "testset" / "event000000100.pyg")
    return tmp_path


def stage(root, **keys) -> ModuleMap:
    values = {
        "stage": "graph_construction",
        "model": "ModuleMap",
        "input_dir": str(root / "store"),
        "stage_dir": str(root / "out"),
        "doublet_cuts": False,
        **keys,
    }
    return ModuleMap(build(ModuleMapConfig, values, "module_map.yaml"))


def test_learns_pairs_and_builds_exactly_the_expected_edges(store):
    mm = stage(store)
    mm.train()
    with np.load(mm.map_file) as npz:
        learned = {tuple(p): c for p, c in zip(npz["pairs"].tolist(), npz["counts"].tolist())}
    assert learned == {(0, 2): 2, (2, 4): 2, (1, 3): 1}

    mm.infer()
    data = load_event(store / "out" / "testset" / "event000000100.pyg")
    on = lambda module: [i for i, m in enumerate([0, 0, 2, 2, 2, 4, 1, 3, 5]) if m == module]  # noqa: E731
    expected = (
        set(itertools.product(on(0), on(2)))
        | set(itertools.product(on(2), on(4)))
        | set(itertools.product(on(1), on(3)))
    )
    assert set(map(tuple, data.edge_index.T.tolist())) == expected and data.edge_index.shape[1] == len(expected)
    assert data.edge_index.dtype == torch.int64 and data.edge_y.dtype == torch.bool
    # truth: (0,2), (2,5), (6,7) found; (7,8) lies on the unseen pair 3 -> 5
    mapping = data.track_to_edge_map.tolist()
    assert mapping[3] == -1 and all(m >= 0 for m in mapping[:3])
    assert int(data.edge_y.sum()) == 3
    # input fields pass through, config appended
    assert torch.equal(data.hit_module_index, torch.tensor([0, 0, 2, 2, 2, 4, 1, 3, 5]))
    assert [c["stage"] for c in data.config] == ["data_reading", "graph_construction"]

    metrics = mm.evaluate()
    assert metrics["efficiency"] == pytest.approx(0.75) and metrics["edges_per_event"] == len(expected)
    assert json.loads((store / "out" / "eval" / "metrics.json").read_text())["purity"] == pytest.approx(
        3 / len(expected)
    )


def test_resume_skips_written_events_unless_overwrite(store):
    mm = stage(store)
    mm.train()
    mm.infer()
    target = store / "out" / "testset" / "event000000100.pyg"
    stamp = target.stat().st_mtime_ns
    mm.infer()
    assert target.stat().st_mtime_ns == stamp
    mm.infer(overwrite=True)
    assert target.stat().st_mtime_ns != stamp


def test_doublet_cuts_drop_candidates_outside_the_learned_window(store):
    mm = stage(store, doublet_cuts=True, window_tracks={}, window_margin=0.0)
    mm.train()
    mm.prepare_inference()
    # two hits on module 0, one at the learned dphi (0) and one turned by 0.3 rad; both to one hit on module 2
    data = make_event([0, 0, 2], [(0, 2)], dphi=[0.0, 0.3, 0.0])
    edges = mm.build_edges(data, "hand-made")
    assert set(map(tuple, edges.T.tolist())) == {(0, 2)}


def edge_set(edges) -> set[tuple[int, int]]:
    return set(map(tuple, np.asarray(edges).T.tolist()))


def hits_on(module, phi=None, r=None, z=None) -> EventHits:
    """EventHits on the CPU; coordinates default to zeros (enough without doublet cuts)."""
    n = len(module)
    coords = [np.zeros(n) if c is None else np.asarray(c, dtype=np.float64) for c in (phi, r, z)]
    return EventHits(torch.as_tensor(module, dtype=torch.int64), torch.from_numpy(np.stack(coords)))


def test_chunks_give_the_same_edges():
    module = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    pairs = torch.tensor([[0, 1], [1, 2], [0, 2]])
    whole = build_module_map_edges(hits_on(module), pairs, None, chunk_edges=1_000)
    for chunk in (1, 2, 5, 7):
        chunked = build_module_map_edges(hits_on(module), pairs, None, chunk_edges=chunk)
        assert edge_set(chunked) == edge_set(whole) and chunked.shape == whole.shape
    expected = {
        (i, j) for (a, b) in pairs.tolist() for i in np.flatnonzero(module == a) for j in np.flatnonzero(module == b)
    }
    assert edge_set(whole) == expected and whole.shape[1] == 3 * 2 + 2 * 4 + 3 * 4
    assert build_module_map_edges(hits_on(np.zeros(0, dtype=np.int64)), pairs, None, 1_000).shape == (2, 0)


def brute_force_edges(module, phi, r, z, pairs, low, high) -> set[tuple[int, int]]:
    """The oracle: every hit pair on each map pair (a, b) [P, 2] whose dphi and z0, computed here in
    numpy from their definition, lie in the pair's windows low / high [P, F]."""
    phi, r, z = (np.asarray(c, dtype=np.float64) for c in (phi, r, z))
    found = set()
    for (a, b), lo, hi in zip(pairs.tolist(), low, high):
        i, j = (g.ravel() for g in np.meshgrid(np.flatnonzero(module == a), np.flatnonzero(module == b), indexing="ij"))
        dphi = np.remainder(phi[j] - phi[i] + np.pi, 2 * np.pi) - np.pi
        with np.errstate(divide="ignore", invalid="ignore"):
            z0 = z[i] - r[i] * (z[j] - z[i]) / (r[j] - r[i])
        z0 = np.where(np.isnan(z0), np.inf, z0)
        keep = (dphi >= lo[0]) & (dphi <= hi[0]) & (z0 >= lo[1]) & (z0 <= hi[1])
        found |= set(zip(i[keep].tolist(), j[keep].tolist()))
    return found


def random_event_and_windows(seed: int):
    """300 hits on 12 modules (float32 phi all around, some at exactly +-pi; two modules at one
    radius: z0 = +-inf) and every module pair with windows of each kind: narrow, crossing phi = +-pi,
    below -pi, wider than a turn, open, and one whose low end is exactly the dphi of a hit pair."""
    rng = np.random.default_rng(seed)
    module = rng.integers(0, 12, 300)
    phi = rng.uniform(-np.pi, np.pi, 300).astype(np.float32)
    phi[:6] = [np.pi, -np.pi, np.pi, -np.pi, 0.0, 0.0]
    radius = np.array([30, 30, 70, 70, 110, 110, 170, 170, 260, 260, 360, 360.0])
    r = np.where(module == 1, 30.0, radius[module] + rng.uniform(-2, 2, 300)).astype(np.float32)
    z = rng.uniform(-600, 600, 300).astype(np.float32)
    pairs = np.array([(a, b) for a in range(12) for b in range(12)])  # [P, 2], with a == b
    centre = rng.uniform(-np.pi, np.pi, len(pairs))
    half = rng.choice([0.05, 0.4, 1.5, 4.0], len(pairs))
    low = np.stack([centre - half, rng.uniform(-400, 0, len(pairs))], axis=1)  # [P, F]
    high = np.stack([centre + half, rng.uniform(0, 400, len(pairs))], axis=1)
    low[::7, 0], high[::7, 0] = -4.0, -3.0  # below -pi: only its part above -pi can hold edges
    low[::11], high[::11] = -np.inf, np.inf  # open: no cut
    low[::13, 1], high[::13, 1] = -np.inf, np.inf
    i, j = np.flatnonzero(module == 2)[0], np.flatnonzero(module == 4)[0]  # a window edge on a hit pair's dphi
    row = 2 * 12 + 4
    low[row, 0] = np.remainder(np.float64(phi[j]) - np.float64(phi[i]) + np.pi, 2 * np.pi) - np.pi
    high[row, 0], low[row, 1], high[row, 1] = low[row, 0] + 0.3, -np.inf, np.inf
    return module, phi, r, z, pairs, low, high


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_edges_are_every_hit_pair_inside_the_windows_whatever_the_chunks(seed):
    module, phi, r, z, pairs, low, high = random_event_and_windows(seed)
    expected = brute_force_edges(module, phi, r, z, pairs, low, high)
    assert 0 < len(expected) < sum((module == a).sum() * (module == b).sum() for a, b in pairs)  # the cuts cut
    windows = (torch.from_numpy(low.T.copy()), torch.from_numpy(high.T.copy()))  # [F, P]
    for chunk in (1, 5, 64, 10**9):
        edges = build_module_map_edges(hits_on(module, phi, r, z), torch.from_numpy(pairs), windows, chunk)
        assert edges.dtype == torch.int64 and edges.shape[1] == len(expected)  # no duplicates
        assert edge_set(edges) == expected


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    """Feature store of four simulated events (pile-up 2, the built-in detector): 3 train, 1 test."""
    root = tmp_path_factory.mktemp("mm_sim")
    simulated_feature_store(root, n_events=4, pileup=2, seed=5, data_split=[3, 0, 1])
    return root


def test_simulated_event_gets_exactly_the_hit_pairs_inside_the_learned_windows(simulated):
    mm = stage(simulated, doublet_cuts=True, window_tracks={}, accelerator="cpu")
    mm.train()
    mm.prepare_inference()
    path = list_event_files(simulated / "store", "testset")[0]
    data = load_event(path)
    table = ModuleMapTable.load(mm.map_file).select(1)
    low, high = table.windows(0.1)  # [P, F]
    coords = [data[k].numpy() for k in ("hit_phi", "hit_r", "hit_z")]
    expected = brute_force_edges(data.hit_module_index.numpy(), *coords, table.pairs, low, high)
    edges = mm.build_edges(data, path)
    assert len(expected) > 100 and edges.shape[1] == len(expected) and edge_set(edges) == expected


def test_beam_spot_widens_the_z0_windows_by_how_far_it_reaches_past_training(tmp_path):
    simulated = tmp_path
    simulated_feature_store(simulated, n_events=7, pileup=5, seed=5, data_split=[6, 0, 1])
    mm = stage(simulated, doublet_cuts=True, window_tracks={}, accelerator="cpu")
    mm.train()
    trained = RunConditions.load(mm.map_file.parent / PROFILE_FILE)
    assert trained is not None and trained.z0_core is not None  # saved beside the map at training
    mm.prepare_inference()
    low, high = (w.cpu().numpy() for w in mm.windows)  # [F, P]
    wide = stage(simulated, doublet_cuts=True, window_tracks={}, accelerator="cpu", beam_spot=[-150.0, 120.0])
    wide.prepare_inference()
    wide_low, wide_high = (w.cpu().numpy() for w in wide.windows)
    np.testing.assert_allclose(wide_low[1], low[1] - (trained.z0_core[0] + 150.0))
    np.testing.assert_allclose(wide_high[1], high[1] + (120.0 - trained.z0_core[1]))
    np.testing.assert_array_equal(wide_low[0], low[0])  # dphi untouched
    path = list_event_files(simulated / "store", "testset")[0]
    data = load_event(path)
    assert edge_set(mm.build_edges(data, path)) <= edge_set(wide.build_edges(data, path))


def test_accelerator_key_lists_its_choices(tmp_path):
    with pytest.raises(ConfigError, match="accelerator.*'tpu'"):
        stage(tmp_path, accelerator="tpu")
    with pytest.raises(ValueError, match="key 'accelerator' has value 'tpu'; choices: cpu, gpu, cuda, auto"):
        ModuleMapConfig(
            stage="graph_construction",
            model="ModuleMap",
            stage_dir=tmp_path / "out",
            input_dir=tmp_path / "in",
            accelerator="tpu",
        )
    assert stage(tmp_path).config.accelerator == "auto"


def test_gpu_accelerator_without_cuda_builds_on_the_cpu_with_a_warning(store, caplog):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    mm = stage(store, accelerator="gpu")
    mm.train()
    with caplog.at_level(logging.WARNING):
        mm.prepare_inference()
    assert mm.device == torch.device("cpu") and "no CUDA device" in caplog.text
    edges = mm.build_edges(load_event(store / "store" / "testset" / "event000000100.pyg"), "testset event")
    assert edges.shape == (2, 2 * 3 + 3 * 1 + 1 * 1)  # modules 0 -> 2, 2 -> 4, 1 -> 3 of the test event


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="min_count"):
        stage(tmp_path, min_count=0)
    with pytest.raises(ConfigError, match="target_tracks"):
        stage(tmp_path, target_tracks={"pt": ["above", 3]})
    with pytest.raises(ConfigError, match="window_coverage"):
        stage(tmp_path, window_coverage=1.5)
    with pytest.raises(ConfigError, match=r"key 'beam_spot' must be \[z_min, z_max\]"):
        stage(tmp_path, beam_spot=[50.0, -50.0])


def test_map_events_learns_from_more_events_than_it_writes(store):
    # data_split writes no training graph, yet map_events: 2 learns the pair 1 -> 3 from the second event
    built = stage(store, data_split=[0, 0, 1], map_events=2)
    built.train()
    built.infer()
    assert not (store / "out" / "trainset").exists()
    test = load_event(store / "out" / "testset" / "event000000100.pyg")
    pairs = {(int(a), int(b)) for a, b in test.edge_index.T}
    assert (6, 7) in pairs  # hits on modules 1 -> 3
    only_first = stage(store, data_split=[1, 0, 1], map_events=None, stage_dir=str(store / "out1"))
    only_first.train()
    only_first.infer()
    test = load_event(store / "out1" / "testset" / "event000000100.pyg")
    assert (6, 7) not in {(int(a), int(b)) for a, b in test.edge_index.T}
    with pytest.raises(FileNotFoundError, match="map_events.*3 events.*holds 2"):
        stage(store, map_events=3, stage_dir=str(store / "out2")).train()


def test_select_keeps_the_pairs_the_prior_proposed(store):
    from stages.graph_construction.module_map import ModuleMapTable

    mm = stage(store)
    mm.train()
    table = ModuleMapTable.load(mm.map_file)
    assert table.proposed is None  # a map learned without a prior has no record of proposals
    assert {tuple(p) for p in table.select(2).pairs.tolist()} == {(0, 2), (2, 4)}
    proposed = ModuleMapTable(
        np.array([[0, 2], [1, 3], [3, 5]]),
        np.array([2, 1, 0]),
        np.zeros(3, dtype=np.int64),
        table.low,
        table.high,
        proposed=np.array([False, False, True]),
    )
    kept = proposed.select(2)
    assert kept.pairs.tolist() == [[0, 2], [3, 5]] and kept.proposed.tolist() == [False, True]


def test_prior_key_defaults_to_off_and_builds_a_typed_config(tmp_path):
    from stages.graph_construction.module_map import PairPriorConfig

    assert stage(tmp_path).config.prior is None
    built = stage(tmp_path, prior={"scorer": "geometry", "prune": True}).config.prior
    assert isinstance(built, PairPriorConfig) and built.scorer == "geometry" and built.prune and built.propose
