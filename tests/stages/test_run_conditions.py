"""The run-conditions check: a trained stage warns when its events come from another luminous region
or pile-up than its training events, without truth; events like the training ones pass in silence."""

import logging
from pathlib import Path

import numpy as np
import pytest

from stages.data_reading.trackml_reader import TrackMLReader, TrackMLReaderConfig
from stages.run_conditions import ConditionsCheck, RunConditions, event_vertices, vertex_z0
from tb_plugin import trackml
from tb_plugin.geometry import Detector
from tb_plugin.simulation import SimulationConfig, simulate_dataset


def events(folder: Path, n: int, seed: int, **conditions) -> list:
    simulate_dataset(
        SimulationConfig(n_events=n, pileup=5, seed=seed, **conditions),
        Detector.builtin(),
        folder,
        progress=False,
        workers=1,
    )
    reader = TrackMLReader(
        TrackMLReaderConfig(
            stage="data_reading",
            model="TrackMLReader",
            input_dir=folder,
            stage_dir=folder.parent / "fs",
            data_split=[n, 0, 0],
        )
    )
    return [reader.read_event(prefix) for _, prefix in trackml.list_events(folder)]


@pytest.fixture(scope="module")
def training(tmp_path_factory) -> RunConditions:
    data = events(tmp_path_factory.mktemp("train") / "events", 8, seed=1)
    return RunConditions.of_events([int(d.num_nodes) for d in data], [event_vertices(d) for d in data])


def test_triplets_are_tracks_from_the_vertices(tmp_path):
    (data,) = events(tmp_path / "events", 1, seed=2, vertex_mean_z_mm=40.0, vertex_sigma_z_mm=0.5)
    z0 = vertex_z0(data)
    assert len(z0) >= 20 and abs(np.median(z0) - 40.0) < 1.0
    vertices = event_vertices(data)
    assert len(vertices) >= 1 and np.all(np.abs(vertices - 40.0) < 2.0)


@pytest.mark.parametrize(
    "conditions, warned",
    [({}, False), ({"vertex_sigma_z_mm": 50.0}, True), ({"vertex_mean_z_mm": 30.0}, True)],
    ids=["like training", "sigma z 50 mm", "moved 30 mm"],
)
def test_another_luminous_region_is_named_and_the_same_one_passes(training, tmp_path, caplog, conditions, warned):
    check = ConditionsCheck("ModuleMap", training)
    with caplog.at_level(logging.WARNING):
        for i, data in enumerate(events(tmp_path / "events", 6, seed=3, **conditions)):
            check(data, f"event{i}")
        assert check.summary() == warned
    text = " ".join(r.getMessage() for r in caplog.records)
    assert ("ModuleMap" in text and "luminous region" in text) == warned
    if warned:
        assert f"[{training.z0_core[0]:+.1f}, {training.z0_core[1]:+.1f}] mm" in text


def test_another_pile_up_is_named(training, tmp_path, caplog):
    busy = RunConditions(events=8, hits=tuple(n * 10 for n in training.hits), z0_core=training.z0_core)
    check = ConditionsCheck("Filter", busy)
    (data,) = events(tmp_path / "events", 1, seed=4)
    with caplog.at_level(logging.WARNING):
        check(data, "event0")
        assert check.summary()
    assert f"{data.num_nodes} hits against" in caplog.text and "another pile-up" in caplog.text
    assert f"against {training.hits[1] * 10} in its training events" in caplog.text


def test_a_profile_round_trips_and_old_artifacts_are_not_checked(training, tmp_path):
    training.save(tmp_path / "run_conditions.json")
    assert RunConditions.load(tmp_path / "run_conditions.json") == training
    assert RunConditions.load(tmp_path / "none.json") is None
    assert ConditionsCheck("GNN", None).summary() is False


def test_events_without_layer_fields_are_profiled_by_their_hits_alone():
    import torch
    from torch_geometric.data import Data

    bare = Data(hit_r=torch.ones(5), num_nodes=5)  # e.g. a hand-made or foreign graph
    assert len(vertex_z0(bare)) == 0
    profile = RunConditions.of_events([5], [event_vertices(bare)])
    assert profile.z0_core is None and profile.hits == (5, 5, 5)


def test_a_busy_event_is_searched_in_one_phi_sector_and_still_finds_its_vertices():
    import torch
    from torch_geometric.data import Data

    from stages.run_conditions import MAX_INNER_HITS

    rng = np.random.default_rng(0)
    n = 3 * MAX_INNER_HITS  # straight tracks from two vertices, one hit on each of four barrel layers
    vertex = rng.choice([-20.0, 30.0], n)
    phi, slope = rng.uniform(-np.pi, np.pi, n), rng.uniform(-1.0, 1.0, n)
    radii = np.array([32.0, 72.0, 116.0, 172.0])
    r = np.repeat(radii[None], n, axis=0).ravel()
    data = Data(
        hit_volume_id=torch.full((4 * n,), 8),
        hit_layer_id=torch.from_numpy(np.tile([2, 4, 6, 8], n)),
        hit_r=torch.from_numpy(r),
        hit_z=torch.from_numpy((vertex[:, None] + slope[:, None] * radii[None]).ravel()),
        hit_phi=torch.from_numpy(np.repeat(phi, 4)),
        num_nodes=4 * n,
    )
    z0 = vertex_z0(data)
    assert MAX_INNER_HITS // 2 < len(z0) < n  # one sector's tracks (and a few random combinations), not all
    assert np.mean(np.isclose(z0, -20.0, atol=0.1) | np.isclose(z0, 30.0, atol=0.1)) > 0.95
    assert sorted(np.round(event_vertices(data)).tolist())[:1] == [-20.0] and 30.0 in np.round(event_vertices(data))
