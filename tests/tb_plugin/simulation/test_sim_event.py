"""One simulated event: determinism, the TrackML format, truth bookkeeping, noise and replay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tb_plugin import trackml
from tb_plugin.geometry import Detector
from tb_plugin.simulation import SimulationConfig, simulate_dataset, simulate_event
from tb_plugin.simulation.kinematics import unpack_particle_id

CONFIG = SimulationConfig(pileup=4.0, seed=7)


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector.builtin()


@pytest.fixture(scope="module")
def event(detector) -> dict[str, pd.DataFrame]:
    return simulate_event(CONFIG, detector, 1000)


def test_same_seed_same_event_and_different_seed_different_event(detector, event):
    again = simulate_event(CONFIG, detector, 1000)
    for part in ("hits", "particles", "truth"):
        pd.testing.assert_frame_equal(event[part], again[part])
    other_seed = simulate_event(SimulationConfig(pileup=4.0, seed=8), detector, 1000)
    other_event = simulate_event(CONFIG, detector, 1001)
    for other in (other_seed, other_event):
        assert not event["particles"]["particle_id"].equals(other["particles"]["particle_id"]) or not event["hits"][
            "x"
        ].equals(other["hits"]["x"])


def test_frames_have_the_trackml_columns_and_dtypes(event):
    for part in ("hits", "particles", "truth"):
        expected = trackml.PART_COLUMNS[part]
        assert list(event[part].columns) == list(expected)
        for column, dtype in expected.items():
            assert event[part][column].dtype == dtype, (part, column)


def test_hit_ids_run_in_module_order(event, detector):
    hits = event["hits"]
    assert hits["hit_id"].tolist() == list(range(1, len(hits) + 1))
    module = detector.index(hits["volume_id"], hits["layer_id"], hits["module_id"])
    assert (module >= 0).all()
    assert (np.diff(module) >= 0).all()
    assert (event["truth"]["hit_id"].to_numpy() == hits["hit_id"].to_numpy()).all()


def test_nhits_counts_truth_rows_and_weights_sum_to_one(event):
    truth, particles = event["truth"], event["particles"]
    counts = truth[truth["particle_id"] != 0].groupby("particle_id").size()
    nhits = particles.set_index("particle_id")["nhits"]
    assert counts.reindex(nhits.index, fill_value=0).tolist() == nhits.tolist()
    assert set(counts.index) <= set(nhits.index)
    assert truth["weight"].sum() == pytest.approx(1.0, abs=1e-4)
    assert (truth.loc[truth["particle_id"] == 0, "weight"] == 0).all()


def test_noise_fraction_is_close_to_the_config(detector):
    config = SimulationConfig(pileup=10.0, seed=3, noise_fraction=0.19)
    truth = simulate_event(config, detector, 5)["truth"]
    assert (truth["particle_id"] == 0).mean() == pytest.approx(0.19, abs=0.02)
    quiet = simulate_event(SimulationConfig(pileup=10.0, seed=3, noise_fraction=0.0), detector, 5)["truth"]
    assert (quiet["particle_id"] != 0).all()


def test_particle_ids_carry_vertex_and_generation(event):
    particles = event["particles"]
    fields = unpack_particle_id(particles["particle_id"].to_numpy())
    assert particles["particle_id"].is_unique
    assert (particles["particle_id"] > 0).all()
    generation = fields["generation"]
    assert (generation == 0).any() and (generation > 0).any()
    # Secondaries belong to an existing primary's family and start away from the beam.
    family = (fields["vertex_id"] << 16) | fields["primary_id"]
    assert set(family[generation > 0]) <= set(family[generation == 0])
    radius = np.hypot(particles["vx"], particles["vy"]).to_numpy()
    assert np.median(radius[generation > 0]) > 10.0
    assert (fields["process"][generation == 0] == 0).all()
    assert (fields["process"][generation > 0] > 0).all()


def test_listed_particles_follow_the_trackml_cuts(event):
    particles = event["particles"]
    pt = np.hypot(particles["px"], particles["py"])
    eta = np.arcsinh(particles["pz"] / pt)
    assert (pt >= 0.1 - 1e-6).all()
    assert (np.abs(eta) <= 4.0 + 1e-4).all()
    assert set(np.unique(particles["q"])) <= {-1, 1}


def test_dataset_round_trips_through_the_reader(detector, tmp_path):
    config = SimulationConfig(n_events=2, pileup=2.0, seed=1, first_event=42, with_cells=True)
    prefixes = simulate_dataset(config, detector, tmp_path, progress=False, workers=1)
    assert [p.name for p in prefixes] == ["event000000042", "event000000043"]
    hits, cells, particles, truth = trackml.load_event(prefixes[0])
    direct = simulate_event(config, detector, 42)
    pd.testing.assert_frame_equal(hits, direct["hits"])
    pd.testing.assert_frame_equal(particles, direct["particles"])
    assert set(cells["hit_id"]) == set(hits["hit_id"])
    assert len(truth) == len(hits)


def test_replay_keeps_particle_ids_and_kinematics(detector, event):
    replay = event["particles"].drop(columns="nhits").assign(nhits=0)
    replayed = simulate_event(SimulationConfig(seed=99, pileup=4.0), detector, 2000, replay=replay)
    particles = replayed["particles"]
    assert particles["particle_id"].tolist() == replay["particle_id"].tolist()
    for column in ("vx", "vy", "vz", "px", "py", "pz", "q"):
        assert (particles[column].to_numpy() == replay[column].to_numpy()).all(), column
    # Same kinematics, new randomness: hit counts agree closely but not necessarily exactly.
    diff = particles["nhits"].to_numpy() - event["particles"]["nhits"].to_numpy()
    assert np.mean(np.abs(diff) <= 2) > 0.8


def test_replay_needs_kinematic_columns(detector):
    with pytest.raises(ValueError, match="px"):
        simulate_event(CONFIG, detector, 1, replay=pd.DataFrame({"particle_id": [1], "vx": [0.0]}))


def test_an_empty_bunch_crossing_gives_empty_frames(detector):
    event = simulate_event(SimulationConfig(pileup=0.0, hard_scatter=False), detector, 1)
    assert all(len(frame) == 0 for frame in event.values())
    assert list(event["hits"].columns) == list(trackml.PART_COLUMNS["hits"])


def test_worker_processes_write_the_same_files(detector, tmp_path):
    config = SimulationConfig(n_events=2, pileup=2.0, seed=4)
    serial = simulate_dataset(config, detector, tmp_path / "serial", progress=False, workers=1)
    parallel = simulate_dataset(config, detector, tmp_path / "parallel", progress=False, workers=2)
    for a, b in zip(serial, parallel):
        for part in ("hits", "particles", "truth"):
            assert Path(f"{a}-{part}.csv").read_bytes() == Path(f"{b}-{part}.csv").read_bytes()
