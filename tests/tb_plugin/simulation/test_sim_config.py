"""SimulationConfig: defaults are valid, and every bad value is refused with the field named."""

from __future__ import annotations

import numpy as np
import pytest

from tb_plugin.simulation import SimulationConfig


def test_defaults_are_valid_and_recorded():
    config = SimulationConfig()
    record = config.record()
    assert record["pileup"] == 200.0
    assert record["noise_fraction"] == pytest.approx(0.19)
    assert 0.0 < record["hit_inefficiency"] < 0.05


def test_numpy_numbers_are_accepted():
    config = SimulationConfig(n_events=np.int64(3), pileup=np.float32(5.0), seed=np.int32(2))
    assert config.n_events == 3


@pytest.mark.parametrize(
    "field, value",
    [
        ("n_events", 0),
        ("n_events", 2.5),
        ("pileup", -1.0),
        ("pileup", float("nan")),
        ("seed", -3),
        ("first_event", 1_000_000_000),
        ("hit_inefficiency", 1.0),
        ("min_cos_incidence", 1.0),
        ("vertex_sigma_z_mm", -5.5),
        ("noise_fraction", 0.99),
        ("noise_fraction", "0.1"),
        ("b_field_tesla", 0.0),
        ("max_turns", 0.0),
        ("max_crossings", 0),
        ("with_cells", 1),
        ("secondaries", "yes"),
    ],
)
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SimulationConfig(**{field: value})


def test_event_ids_must_fit_nine_digits():
    with pytest.raises(ValueError, match="first_event"):
        SimulationConfig(first_event=999_999_999, n_events=2)


def test_a_moved_beam_spot_moves_every_vertex_and_nothing_else():
    import numpy as np

    from tb_plugin.simulation import kinematics

    nominal = kinematics.generate_primaries(np.random.default_rng(4), 10.0, True, 0.015, 5.5)
    moved = kinematics.generate_primaries(np.random.default_rng(4), 10.0, True, 0.015, 5.5, mean_z=30.0)
    np.testing.assert_allclose(moved.vertex[:, 2] - nominal.vertex[:, 2], 30.0)
    np.testing.assert_array_equal(moved.vertex[:, :2], nominal.vertex[:, :2])
    np.testing.assert_array_equal(moved.momentum, nominal.momentum)
    with pytest.raises(ValueError, match="vertex_mean_z_mm"):
        SimulationConfig(vertex_mean_z_mm=900.0)
