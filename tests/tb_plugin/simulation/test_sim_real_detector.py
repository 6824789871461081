"""The simulation on the real TrackML geometry, replaying a real particles file (skips without it)."""

from __future__ import annotations

import numpy as np

from tb_plugin import trackml
from tb_plugin.geometry import Detector
from tb_plugin.simulation import SimulationConfig, simulate_event
from tb_plugin.simulation.kinematics import unpack_particle_id


def test_replay_of_real_particles_on_the_real_detector(shared_trackml):
    detector = Detector.from_csv(shared_trackml / "detectors.csv")
    real = trackml.read_part(shared_trackml / "event000001001-particles.csv", "particles")
    # A slice of whole primary families keeps the test fast and the file's secondaries meaningful.
    vertex_id = unpack_particle_id(real["particle_id"].to_numpy())["vertex_id"]
    replay = real[vertex_id <= 20].reset_index(drop=True)
    event = simulate_event(SimulationConfig(seed=1), detector, 1001, replay=replay)

    hits = event["hits"]
    module = detector.index(hits["volume_id"], hits["layer_id"], hits["module_id"])
    assert (module >= 0).all()
    local = detector.to_local(module, hits[["x", "y", "z"]].to_numpy(np.float64))
    assert detector.contains(module, local * np.array([1.0, 1.0, 0.0]), tol=2e-3).all()

    simulated = event["particles"]
    assert simulated["particle_id"].tolist() == replay["particle_id"].tolist()
    diff = simulated["nhits"].to_numpy() - replay["nhits"].to_numpy()
    assert np.mean(np.abs(diff) <= 2) > 0.7
    assert abs(np.mean(diff)) < 1.5
