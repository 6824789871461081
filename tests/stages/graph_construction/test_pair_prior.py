"""ModuleMap pair prior: candidates on a hand-made detector, propose / prune on small hand-made events."""

import dataclasses
import json
import logging

import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from stages.graph_construction.module_map import ModuleMap, ModuleMapConfig, ModuleMapTable
from stages.graph_construction.pair_prior import (
    PairPriorConfig,
    candidate_pairs,
    load_prior_table,
    module_shapes,
    pair_geometry,
)
from tb_plugin.config import ConfigError, build
from tb_plugin.event_store import save_event
from tb_plugin.geometry import Detector
from tb_plugin.injection import save_module_table

# Three barrel layers (volume 8, layers 2 / 4 / 6) at r = 30, 70, 110 mm; 8 modules in phi and two z-rings
# (centres z = -25 and +25, half-length 20, half-width 5). Dense index = 16 * layer + 8 * ring + phi step.
RADII = {2: 30.0, 4: 70.0, 6: 110.0}
N_PHI = 8
RING_Z = (-25.0, 25.0)


def tiny_detector() -> Detector:
    rows = []
    for layer, r in RADII.items():
        for ring, z in enumerate(RING_Z):
            for p in range(N_PHI):
                phi = p * 2 * np.pi / N_PHI
                w = np.array([np.cos(phi), np.sin(phi), 0.0])
                v = np.array([0.0, 0.0, 1.0])
                rows.append(
                    (
                        layer,
                        1 + ring * N_PHI + p,
                        [r * np.cos(phi), r * np.sin(phi), z],
                        np.stack([np.cross(v, w), v, w], axis=1),
                    )
                )
    k = len(rows)
    return Detector.from_arrays(
        volume_id=np.full(k, 8),
        layer_id=[r[0] for r in rows],
        module_id=[r[1] for r in rows],
        center=np.array([r[2] for r in rows]),
        rotation=np.array([r[3] for r in rows]),
        thickness=np.full(k, 0.15),
        min_hu=np.full(k, 5.0),
        max_hu=np.full(k, 5.0),
        hv=np.full(k, 20.0),
        pitch_u=np.full(k, 0.05),
        pitch_v=np.full(k, 0.05),
    )


def module(layer: int, ring: int, p: int) -> int:
    return 16 * (layer // 2 - 1) + N_PHI * ring + p


def track_event(tracks: list[list[tuple[int, int, int]]], event_id: int = 1) -> Data:
    """Hits at the module centres' phi, on straight lines from the origin (z = +-0.3 r by ring), one
    truth edge between consecutive hits of a track; two-hit tracks are soft (pT 300 MeV, below the
    windows' 500 MeV), longer ones 2 GeV."""
    phi, r, z, layer, index, edges, pt = [], [], [], [], [], [], []
    for track in tracks:
        for j, (lay, ring, p) in enumerate(track):
            if j:
                edges.append((len(phi) - 1, len(phi)))
                pt.append(300.0 if len(track) == 2 else 2000.0)
            phi.append(p * 2 * np.pi / N_PHI)
            r.append(RADII[lay])
            z.append((0.3 if ring else -0.3) * RADII[lay])
            layer.append(lay)
            index.append(module(lay, ring, p))
    phi, r, z = (np.asarray(a) for a in (phi, r, z))
    t = len(edges)
    f32 = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return Data(
        hit_x=f32(r * np.cos(phi)),
        hit_y=f32(r * np.sin(phi)),
        hit_z=f32(z),
        hit_r=f32(r),
        hit_phi=f32(phi),
        hit_eta=f32(np.arcsinh(z / r)),
        hit_volume_id=torch.full((len(r),), 8),
        hit_layer_id=torch.tensor(layer),
        hit_module_index=torch.tensor(index),
        track_edges=torch.tensor(edges, dtype=torch.long).T.reshape(2, -1),
        track_particle_pt=torch.tensor(pt, dtype=torch.float32),
        track_particle_eta=torch.full((t,), 0.3),
        num_nodes=len(r),
        event_id=f"{event_id:09d}",
        config=[{"stage": "data_reading"}],
    )


def straight(ring: int, p: int) -> list[tuple[int, int, int]]:
    return [(2, ring, p), (4, ring, p), (6, ring, p)]


def table_vectors(detector: Detector) -> np.ndarray:
    """A stand-in TrackingBERT table: modules on one (ring, phi) road share a direction, plus a little noise."""
    rng = np.random.default_rng(0)
    road = (detector.module_id - 1).astype(int)  # ring * 8 + phi step, the same on every layer
    table = np.eye(2 * N_PHI)[road] + 0.05 * rng.standard_normal((len(detector), 2 * N_PHI))
    return table.astype(np.float32)


@pytest.fixture
def store(tmp_path):
    """Trainset: straight tracks on roads phi 0..3 of both rings (phi 0..2 twice, phi 3 once) and one
    soft stray truth edge seen once (layer 2 phi 0 -> layer 4 phi 2, far outside the dphi window, which
    it does not set)."""
    detector = tiny_detector()
    folder = tmp_path / "store"
    folder.mkdir()
    detector.to_csv(folder / "detectors.csv")
    first = [straight(ring, p) for ring in (0, 1) for p in range(4)] + [[(2, 0, 0), (4, 0, 2)]]
    second = [straight(ring, p) for ring in (0, 1) for p in range(3)]
    for i, tracks in enumerate((first, second)):
        save_event(track_event(tracks, i), folder / "trainset" / f"event{i:09d}.pyg")
    test = [straight(ring, p) for ring in (0, 1) for p in range(N_PHI)]
    save_event(track_event(test, 100), folder / "testset" / "event000000100.pyg")
    save_module_table(
        folder / "module_table.npz",
        torch.from_numpy(table_vectors(detector)),
        np.ones(len(detector), dtype=bool),
        detector,
    )
    return tmp_path


def stage(root, name="out", **keys) -> ModuleMap:
    values = {
        "stage": "graph_construction",
        "model": "ModuleMap",
        "input_dir": str(root / "store"),
        "stage_dir": str(root / name),
        **keys,
    }
    return ModuleMap(build(ModuleMapConfig, values, "module_map.yaml"))


def learned(mm: ModuleMap) -> dict:
    with np.load(mm.map_file) as npz:
        return {k: npz[k] for k in npz.files}


def pair_set(arrays: dict) -> set[tuple[int, int]]:
    return set(map(tuple, arrays["pairs"].tolist()))


# ------------------------------------------------------------------------------------- candidates


def test_candidates_on_a_hand_made_detector_are_the_expected_pairs():
    shapes = module_shapes(tiny_detector())
    layer_pairs = np.array([[8002, 8004], [8004, 8006], [8002, 8002]])
    low = np.array(
        [[-0.003, -3.0], [-0.003, -3.0], [-np.inf, -np.inf]]
    )  # the last layer pair is unbounded: no candidates
    high = np.array([[0.003, 3.0], [0.003, 3.0], [np.inf, np.inf]])
    pairs, window = candidate_pairs(shapes, layer_pairs, low, high)
    # same phi step and same z-ring only: across rings the centres give |z0| = 62.5 mm (layers 2 -> 4) or
    # 112.5 mm (4 -> 6), beyond the window widened by the modules' extent in z0 (about 51 and 91 mm)
    expected = {
        (module(lay, ring, p), module(lay + 2, ring, p)) for lay in (2, 4) for ring in (0, 1) for p in range(N_PHI)
    }
    got = set(map(tuple, pairs.tolist()))
    assert got == expected and len(pairs) == len(expected)
    rows = {(module(2, 0, 0), module(4, 0, 0)): 0, (module(4, 1, 5), module(6, 1, 5)): 1}
    for pair, row in rows.items():
        assert window[list(map(tuple, pairs.tolist())).index(pair)] == row
    # chunking and a scope do not change the answer beyond the scope
    small, _ = candidate_pairs(shapes, layer_pairs, low, high, chunk_pairs=3)
    assert np.array_equal(small, pairs)
    scope = np.ones(len(shapes), dtype=bool)
    scope[module(4, 0, 3)] = False
    scoped, _ = candidate_pairs(shapes, layer_pairs, low, high, scope)
    assert set(map(tuple, scoped.tolist())) == {p for p in expected if module(4, 0, 3) not in p}


def test_candidates_wrap_around_phi_and_the_score_is_zero_on_the_boundary():
    shapes = module_shapes(tiny_detector())
    # a window centred on +1 phi step: phi 7 -> phi 0 crosses -pi / pi... and 2 pi
    step = 2 * np.pi / N_PHI
    low, high = np.array([[step - 0.01, -3.0]]), np.array([[step + 0.01, 3.0]])
    pairs, _ = candidate_pairs(shapes, np.array([[8002, 8004]]), low, high)
    assert (module(2, 0, 7), module(4, 0, 0)) in set(map(tuple, pairs.tolist()))
    assert len(pairs) == 2 * N_PHI
    inside, score = pair_geometry(shapes, pairs[:, 0], pairs[:, 1], low, high)
    assert inside.all() and (score >= 0).all() and (score <= 1).all()
    far = np.array([module(2, 0, 0)]), np.array([module(4, 0, 4)])
    inside, score = pair_geometry(shapes, *far, low, high)
    assert not inside[0] and score[0] < 0


def test_geometry_score_of_radially_overlapping_modules_follows_their_distance():
    shapes = module_shapes(tiny_detector())
    # one layer to itself: z0 says nothing, so a wide window passes every pair; the score follows the
    # centres' distance over the modules' reach (20.6 mm each): 50 mm for neighbours in z (the two
    # rings), -0.21; modules half a turn apart, far below
    low, high = np.array([[-4.0, -3.0]]), np.array([[4.0, 3.0]])
    a = np.array([module(4, 0, 0), module(4, 0, 0)])
    b = np.array([module(4, 1, 0), module(4, 1, 4)])
    inside, score = pair_geometry(shapes, a, b, low, high)
    assert inside.all()
    assert score[0] == pytest.approx(1 - 50 / (2 * np.hypot(5, 20)), abs=1e-6) and score[1] < -2


def test_whole_builtin_detector_in_seconds():
    import time

    detector = Detector.builtin()
    shapes = module_shapes(detector)
    layers = np.unique(shapes.layer)
    barrel = [k for k in layers if k // 1000 in (8, 13, 17)]
    layer_pairs = np.array(list(zip(barrel[:-1], barrel[1:])) + [(k, k) for k in barrel])  # consecutive + same-layer
    low = np.tile([[-0.05, -300.0]], (len(layer_pairs), 1))
    high = np.tile([[0.05, 300.0]], (len(layer_pairs), 1))
    started = time.perf_counter()
    pairs, _ = candidate_pairs(shapes, layer_pairs, low, high)
    assert time.perf_counter() - started < 20 and len(pairs) > 0


# ------------------------------------------------------------------------------------- the stage


def test_prior_null_gives_the_identical_map(store):
    plain, off = stage(store, "plain"), stage(store, "off", prior=None)
    plain.train()
    off.train()
    a, b = learned(plain), learned(off)
    assert a.keys() == b.keys() and "proposed" not in a and "prior" not in a
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "scorer,head", [("geometry", "none"), ("tb", "none"), ("tb", "bilinear"), ("tb", "mlp"), ("geometry", "mlp")]
)
def test_propose_gives_a_superset_with_the_layer_pairs_windows(store, scorer, head):
    plain = stage(store, "plain")
    plain.train()
    mm = stage(
        store,
        prior={
            "scorer": scorer,
            "head": head,
            "propose": True,
            "propose_quantile": 0.0,
            "head_steps": 30,
            "head_batch": 64,
        },
    )
    mm.train()
    base, prior = learned(plain), learned(mm)
    assert pair_set(base) <= pair_set(prior)
    proposed = prior["proposed"]
    assert (prior["counts"][proposed] == 0).all() and (prior["counts"][~proposed] > 0).all()
    assert pair_set(base) == set(map(tuple, prior["pairs"][~proposed].tolist()))
    assert np.array_equal(prior["low"], base["low"]) and np.array_equal(prior["layer_pairs"], base["layer_pairs"])
    # every proposed pair is a hole (same road, same ring, next layer) and carries its own layer pair's window
    holes = {
        (module(lay, ring, p), module(lay + 2, ring, p)) for lay in (2, 4) for ring in (0, 1) for p in range(4, N_PHI)
    }
    assert set(map(tuple, prior["pairs"][proposed].tolist())) <= holes
    layer = lambda m: 8000 + 2 * (m // 16 + 1)  # noqa: E731
    for (a, b), row in zip(prior["pairs"][proposed].tolist(), prior["window"][proposed].tolist()):
        assert tuple(prior["layer_pairs"][row]) == (layer(a), layer(b))
    record = json.loads(str(prior["prior"]))
    assert (
        record["proposed"] == int(proposed.sum())
        and record["scorer"] == scorer
        and record["candidates_unseen"] == len(holes)
    )
    if head == "none":  # the holes score like the seen roads: the lowest seen score lets every one in
        assert pair_set(prior) == pair_set(base) | holes
    # inference keeps the proposed pairs (count 0) whatever min_count says
    table = ModuleMapTable.load(mm.map_file).select(1)
    assert len(table.pairs) == len(prior["pairs"]) and table.proposed.sum() == proposed.sum()


def test_a_high_quantile_proposes_fewer(store):
    counts = []
    for q in (0.0, 0.5, 1.0):
        mm = stage(store, f"q{q}", prior={"scorer": "tb", "propose_quantile": q})
        mm.train()
        counts.append(int(learned(mm)["proposed"].sum()))
    assert counts[0] >= counts[1] >= counts[2] and counts[0] > counts[2]


def test_propose_raises_efficiency_on_the_test_event(store):
    plain = stage(store, "plain")
    plain.train()
    plain.infer()
    mm = stage(store, prior={"scorer": "geometry", "propose": True, "propose_quantile": 0.0})
    mm.train()
    mm.infer()
    assert plain.evaluate()["efficiency"] == pytest.approx(0.5)  # roads 0..3 of 8
    assert mm.evaluate()["efficiency"] == pytest.approx(1.0)


@pytest.mark.parametrize("scorer", ["geometry", "tb"])
def test_prune_gives_a_subset_without_the_stray_pair(store, scorer):
    plain = stage(store, "plain")
    plain.train()
    mm = stage(
        store, prior={"scorer": scorer, "propose": False, "prune": True, "prune_max_count": 1, "prune_quantile": 0.2}
    )
    mm.train()
    base, prior = learned(plain), learned(mm)
    stray = (module(2, 0, 0), module(4, 0, 2))
    assert stray in pair_set(base) and stray not in pair_set(prior)
    assert pair_set(prior) < pair_set(base) and not prior["proposed"].any()
    kept = dict(zip(map(tuple, base["pairs"].tolist()), base["counts"].tolist()))
    assert all(kept[p] == c for p, c in zip(map(tuple, prior["pairs"].tolist()), prior["counts"].tolist()))
    assert all(kept[p] <= 1 for p in pair_set(base) - pair_set(prior))  # only rare pairs go
    assert json.loads(str(prior["prior"]))["pruned"] == len(base["pairs"]) - len(prior["pairs"])


def test_deterministic_given_the_seed(store):
    keys = {
        "scorer": "tb",
        "head": "mlp",
        "propose": True,
        "prune": True,
        "propose_quantile": 0.3,
        "head_steps": 20,
        "head_batch": 64,
    }
    runs = []
    for name in ("a", "b"):
        mm = stage(store, name, prior=keys, seed=3)
        mm.train()
        runs.append(learned(mm))
    assert all(np.array_equal(runs[0][k], runs[1][k]) for k in ("pairs", "counts", "window", "proposed"))
    assert json.loads(str(runs[0]["prior"]))["head_loss"] == json.loads(str(runs[1]["prior"]))["head_loss"]


def test_tb_scorer_leaves_modules_outside_the_vocabulary_alone(store):
    detector = Detector.from_csv(store / "store" / "detectors.csv")
    in_vocab = np.ones(len(detector), dtype=bool)
    outside = [module(4, 1, 5), module(2, 0, 0)]  # a hole's module, and the stray pair's inner module
    in_vocab[outside] = False
    save_module_table(
        store / "store" / "module_table.npz", torch.from_numpy(table_vectors(detector)), in_vocab, detector
    )
    plain = stage(store, "plain")
    plain.train()
    mm = stage(
        store, prior={"scorer": "tb", "propose": True, "prune": True, "propose_quantile": 0.0, "prune_quantile": 1.0}
    )
    mm.train()
    base, prior = learned(plain), learned(mm)
    added, removed = pair_set(prior) - pair_set(base), pair_set(base) - pair_set(prior)
    assert added and removed
    assert not any(m in outside for pair in added | removed for m in pair)


def test_missing_table_and_geometry_mismatch_are_one_line_errors_naming_the_file(store):
    path = store / "store" / "module_table.npz"
    path.unlink()
    with pytest.raises(FileNotFoundError, match="module_table.npz") as err:
        stage(store, prior={"scorer": "tb"}).train()
    assert "\n" not in str(err.value)
    other = store / "other_table.npz"
    fewer = tiny_detector().subset(slice(0, 40))  # other module ids
    save_module_table(other, torch.zeros(40, 4), np.ones(40, dtype=bool), fewer)
    with pytest.raises(
        ValueError, match=f"other_table.npz.*geometry {fewer.geometry_hash()[:12]} .other module ids"
    ) as err:
        stage(store, prior={"scorer": "tb", "table": str(other)}).train()
    assert "\n" not in str(err.value)
    # the geometry scorer needs no table
    stage(store, prior={"scorer": "geometry"}).train()


def test_table_of_a_detector_with_the_same_ids_applies_with_a_warning(store, caplog):
    """A table keyed on the same module ids applies to a moved detector (the built-in vs the real file);
    the warning names the table and both geometries."""
    detector = Detector.from_csv(store / "store" / "detectors.csv")
    moved = detector.center.copy()
    moved[:, 2] += 0.01
    other = dataclasses.replace(detector, center=moved)
    path = store / "store" / "module_table.npz"
    with caplog.at_level(logging.WARNING, logger="tb_plugin.geometry"):
        table, in_vocab = load_prior_table(path, other, store / "store")
    assert table.shape[0] == len(detector) and in_vocab.all()
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "module_table.npz" in warning and detector.geometry_hash()[:12] in warning
    assert other.geometry_hash()[:12] in warning


def test_prior_config_errors_name_the_key_and_list_choices(tmp_path):
    with pytest.raises(ConfigError, match=r"module_map.yaml: key 'prior': key 'scorer' .*Allowed: 'tb', 'geometry'"):
        stage(tmp_path, prior={"scorer": "bert"})
    with pytest.raises(ConfigError, match=r"'head'.*Allowed: 'none', 'bilinear', 'mlp'"):
        stage(tmp_path, prior={"head": "linear"})
    with pytest.raises(ConfigError, match="prior.propose_quantile"):
        stage(tmp_path, prior={"propose_quantile": 1.5})
    with pytest.raises(ConfigError, match="propose.*prune"):
        stage(tmp_path, prior={"propose": False})
    with pytest.raises(ConfigError, match="unknown key 'quantile'"):
        stage(tmp_path, prior={"quantile": 0.5})
    assert build(PairPriorConfig, {}, "x").scorer == "tb"
