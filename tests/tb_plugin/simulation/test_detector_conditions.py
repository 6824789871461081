"""Detector conditions in the simulation: dead, inefficient and misaligned modules, and their file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tb_plugin.cli import build_parser, cmd_simulate, main
from tb_plugin.config import ConfigError
from tb_plugin.geometry import Detector
from tb_plugin.simulation import (
    DetectorConditions,
    DetectorConditionsConfig,
    SimulationConfig,
    read_conditions,
    simulate_dataset,
    simulate_event,
)
from tb_plugin.simulation.detector_conditions import (
    CONDITION_COLUMNS,
    CONDITIONS_FILE,
    ConditionsError,
    local_rotation,
    read_dead_modules,
    write_conditions,
)

SMALL = SimulationConfig(n_events=1, pileup=2.0, seed=5, with_cells=True)


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector.builtin()


def _files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def _module(detector: Detector, hits: pd.DataFrame) -> np.ndarray:
    return detector.index_strict(hits["volume_id"], hits["layer_id"], hits["module_id"])


def _xyz(frame: pd.DataFrame, prefix: str = "") -> np.ndarray:
    return frame[[f"{prefix}{axis}" for axis in "xyz"]].to_numpy(np.float64)


def _one_module(detector: Detector, module: int, **values) -> DetectorConditions:
    """A table of one module: ideal except for the given dead / efficiency / shift / angle."""
    return DetectorConditions.for_modules(
        detector,
        [module],
        [values.get("dead", False)],
        [values.get("efficiency", 1.0)],
        [values.get("shift", (0.0, 0.0, 0.0))],
        [values.get("angle", (0.0, 0.0, 0.0))],
    )


def test_conditions_off_and_all_zero_write_the_same_bytes(tmp_path, detector):
    simulate_dataset(SMALL, detector, tmp_path / "off", progress=False, workers=1)
    zero = DetectorConditionsConfig(seed=9).draw(detector)
    assert not zero.active and len(zero) == 0
    simulate_dataset(SMALL, detector, tmp_path / "zero", progress=False, workers=1, conditions=zero)
    assert _files(tmp_path / "off") == _files(tmp_path / "zero")
    assert not (tmp_path / "zero" / CONDITIONS_FILE).exists()
    assert "detector_conditions" not in json.loads((tmp_path / "off" / "simulation.json").read_text())


def test_the_command_line_with_zero_conditions_writes_the_same_bytes(tmp_path):
    base = ["-q", "simulate", "--events", "1", "--pileup", "1", "--seed", "2", "--cells"]
    assert main([*base, "--out", str(tmp_path / "off")]) == 0
    empty = tmp_path / "none.csv"
    empty.write_text("volume_id,layer_id,module_id\n")
    zero = ["--dead-fraction", "0", "--efficiency-spread", "0", "--misalignment-mm", "0", "--misalignment-mrad", "0"]
    zero += ["--dead-modules", str(empty), "--conditions-seed", "4"]
    assert main([*base, *zero, "--out", str(tmp_path / "zero")]) == 0
    assert _files(tmp_path / "off") == _files(tmp_path / "zero")


def test_a_dead_module_has_no_hits_not_even_noise(detector):
    config = SimulationConfig(pileup=3.0, seed=1, noise_fraction=0.5)
    ideal = simulate_event(config, detector, 1000)
    module = _module(detector, ideal["hits"])
    busy = np.unique(module)[::7][:20]  # modules with hits in the ideal event
    ids = [(int(detector.volume_id[m]), int(detector.layer_id[m]), int(detector.module_id[m])) for m in busy]
    conditions = DetectorConditionsConfig(dead_modules=tuple(ids)).draw(detector)
    assert len(conditions) == len(busy) and conditions.dead.all()

    event = simulate_event(config, detector, 1000, conditions=conditions)
    left = _module(detector, event["hits"])
    assert not np.isin(left, busy).any()
    assert len(event["hits"]) > 0.8 * len(ideal["hits"])
    assert event["particles"]["particle_id"].tolist() == ideal["particles"]["particle_id"].tolist()


def test_dead_fraction_kills_that_share_of_the_modules_reproducibly(detector):
    conditions = DetectorConditionsConfig(dead_fraction=0.03, seed=3).draw(detector)
    assert conditions.dead.sum() == round(0.03 * len(detector))
    again = DetectorConditionsConfig(dead_fraction=0.03, seed=3).draw(detector)
    other = DetectorConditionsConfig(dead_fraction=0.03, seed=4).draw(detector)
    assert (again.module_id == conditions.module_id).all()
    assert not np.array_equal(other.module_id, conditions.module_id)
    # Asking for another quantity leaves the dead modules where they were.
    more = DetectorConditionsConfig(dead_fraction=0.03, seed=3, misalignment_mm=0.1).draw(detector)
    for name in ("volume_id", "layer_id", "module_id"):
        assert (getattr(more, name)[more.dead] == getattr(conditions, name)).all()


def test_a_pure_u_shift_moves_that_modules_hits_by_minus_the_shift(detector, one_particle, clean):
    """The module sits 0.3 mm further along its u axis: the particle crosses the same plane at the
    same point, the sensor measures u 0.3 mm smaller, and the hit, reported through the nominal
    frame, appears 0.3 mm back along u. Every other hit stays where it was."""
    config = SimulationConfig(b_field_half_z_mm=0.0, **clean)
    replay = one_particle(px=2.0, py=1.0, pz=0.7)
    ideal = simulate_event(config, detector, 1, replay=replay)
    module = _module(detector, ideal["hits"])
    assert len(module) >= 8
    moved = int(module[len(module) // 2])
    shift = 0.3
    event = simulate_event(
        config, detector, 1, replay=replay, conditions=_one_module(detector, moved, shift=(shift, 0, 0))
    )

    assert _module(detector, event["hits"]).tolist() == module.tolist()
    delta = _xyz(event["hits"]) - _xyz(ideal["hits"])  # [H, 3]
    on = module == moved
    assert on.sum() == 1
    np.testing.assert_allclose(delta[on], -shift * detector.rotation[moved][:, 0][None, :], atol=2e-4)
    np.testing.assert_allclose(delta[~on], 0.0, atol=2e-4)
    np.testing.assert_allclose(_xyz(event["truth"], "t"), _xyz(ideal["truth"], "t"), atol=2e-4)


def test_misaligned_hits_carry_the_true_local_position_in_the_nominal_frame(detector):
    conditions = DetectorConditionsConfig(misalignment_mm=0.5, misalignment_mrad=5.0, seed=2).draw(detector)
    true = conditions.applied(detector).true_detector
    assert len(conditions) == len(detector)
    event = simulate_event(
        SimulationConfig(pileup=2.0, seed=4, noise_fraction=0.0), detector, 1000, conditions=conditions
    )
    module = _module(detector, event["hits"])
    measured = detector.to_local(module, _xyz(event["hits"]))  # nominal frame
    crossed = true.to_local(module, _xyz(event["truth"], "t"))  # true frame
    assert np.abs(measured[:, 2]).max() < 2e-3  # on the nominal plane (float32 positions)
    sigma = np.stack([detector.pitch_u[module], detector.pitch_v[module]], axis=1) / np.sqrt(12.0)
    pull = (measured[:, :2] - crossed[:, :2]) / sigma
    assert np.abs(pull).max() < 6.0
    # Measured in the nominal frame as if the module were where detectors.csv puts it, they would be
    # off by the misalignment: many times the resolution for the pixels.
    naive = detector.to_local(module, _xyz(event["truth"], "t"))
    assert np.median(np.abs(measured[:, 0] - naive[:, 0]) / sigma[:, 0]) > 2.0


def test_local_rotation_turns_about_the_named_axis():
    angle = np.array([[0.0, 0.0, np.pi / 2], [np.pi / 2, 0.0, 0.0]])
    rotation = local_rotation(angle)
    np.testing.assert_allclose(rotation[0] @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], atol=1e-12)  # u -> v about w
    np.testing.assert_allclose(rotation[1] @ [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], atol=1e-12)  # v -> w about u


def test_efficiency_spread_loses_the_expected_share_of_hits(detector):
    spread = 0.3
    conditions = DetectorConditionsConfig(efficiency_spread=spread, seed=1).draw(detector)
    efficiency = conditions.applied(detector).efficiency
    assert abs((1.0 - efficiency).mean() - spread * np.sqrt(2.0 / np.pi)) < 0.01
    assert efficiency.min() >= 0.0 and efficiency.max() <= 1.0

    config = SimulationConfig(pileup=10.0, seed=3, noise_fraction=0.0)
    ideal = simulate_event(config, detector, 1000)
    event = simulate_event(config, detector, 1000, conditions=conditions)
    # The main random stream makes the same draws: the conditions only remove hits from the ideal ones.
    p = efficiency[_module(detector, ideal["hits"])]
    expected, sigma = p.sum(), np.sqrt((p * (1.0 - p)).sum())
    assert abs(len(event["hits"]) - expected) < 4.0 * sigma
    assert len(event["hits"]) < 0.9 * len(ideal["hits"])


def test_conditions_file_round_trips_as_a_typed_table(tmp_path, detector):
    some = ((8, 2, 1), (13, 4, 7))
    drawn = DetectorConditionsConfig(
        dead_fraction=0.01, dead_modules=some, efficiency_spread=0.05, misalignment_mm=0.1, misalignment_mrad=1.0
    ).draw(detector)
    path = write_conditions(drawn, tmp_path / CONDITIONS_FILE)
    back = read_conditions(path, detector)
    for name in ("volume_id", "layer_id", "module_id", "dead", "efficiency", "shift", "angle"):
        assert getattr(back, name).dtype == getattr(drawn, name).dtype, name
        np.testing.assert_array_equal(getattr(back, name), getattr(drawn, name), err_msg=name)
    assert back.to_frame().equals(drawn.to_frame())
    assert back.source == {"file": str(path)}
    rows = back.to_frame().set_index(["volume_id", "layer_id", "module_id"])
    assert rows.loc[list(some), "dead"].tolist() == [1, 1]


def test_a_dataset_with_conditions_writes_and_records_them(tmp_path, detector):
    conditions = DetectorConditionsConfig(dead_fraction=0.1, seed=8).draw(detector)
    config = SimulationConfig(n_events=1, pileup=1.0, seed=1)
    simulate_dataset(config, detector, tmp_path / "a", progress=False, workers=1, conditions=conditions)
    record = json.loads((tmp_path / "a" / "simulation.json").read_text())["detector_conditions"]
    assert record["file"] == CONDITIONS_FILE and record["dead"] == conditions.dead.sum()
    assert record["drawn"]["dead_fraction"] == 0.1 and record["drawn"]["seed"] == 8
    # Replaying the written table gives the same events.
    again = read_conditions(tmp_path / "a" / CONDITIONS_FILE, detector)
    simulate_dataset(config, detector, tmp_path / "b", progress=False, workers=1, conditions=again)
    first, second = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert first.pop("simulation.json") != second.pop("simulation.json")  # source: drawn vs file
    assert first == second


@pytest.mark.parametrize(
    "text, message",
    [
        ("volume_id,layer_id\n8,2\n", "missing column(s) module_id"),
        (
            "volume_id,layer_id,module_id\n8,2,x\n",
            "column module_id has 1 value(s) that are not an integer, first at data row 1: 'x'",
        ),
        ("volume_id,layer_id,module_id\n8,2,99999\n", "unknown (volume_id, layer_id, module_id)"),
    ],
)
def test_a_bad_dead_modules_file_is_refused_naming_it(tmp_path, text, message):
    path = tmp_path / "dead.csv"
    path.write_text(text)
    args = build_parser().parse_args(
        ["simulate", "--events", "1", "--out", str(tmp_path / "o"), "--dead-modules", str(path)]
    )
    with pytest.raises(ConfigError) as err:
        cmd_simulate(args)
    assert str(err.value).startswith(f"tb simulate: {path}: ")
    assert message in str(err.value)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "option, value, expected",
    [
        ("--dead-fraction", "1.5", "tb simulate: --dead-fraction 1.5: expected a number in [0, 1.0]"),
        ("--efficiency-spread", "-0.1", "tb simulate: --efficiency-spread -0.1: expected a number in [0, 1.0]"),
        ("--misalignment-mm", "nan", "tb simulate: --misalignment-mm nan: expected a number in [0, 5.0]"),
        ("--misalignment-mrad", "100", "tb simulate: --misalignment-mrad 100.0: expected a number in [0, 50.0]"),
        ("--conditions-seed", "-1", "tb simulate: --conditions-seed -1: expected an integer in [0, 2**63)"),
    ],
)
def test_bad_condition_options_name_the_option(tmp_path, option, value, expected):
    args = build_parser().parse_args(["simulate", "--events", "1", "--out", str(tmp_path / "o"), option, value])
    with pytest.raises(ConfigError) as err:
        cmd_simulate(args)
    assert str(err.value) == expected
    assert not (tmp_path / "o").exists()


def test_conditions_file_and_drawing_options_exclude_each_other(tmp_path):
    args: argparse.Namespace = build_parser().parse_args(
        ["simulate", "--events", "1", "--out", str(tmp_path / "o"), "--conditions", "c.csv", "--dead-fraction", "0.1"]
    )
    with pytest.raises(ConfigError, match="--conditions FILE replaces --dead-fraction"):
        cmd_simulate(args)


def test_conditions_refuse_modules_the_detector_lacks(tmp_path, detector):
    with pytest.raises(ConditionsError, match="dead_modules: 1 unknown"):
        DetectorConditionsConfig(dead_modules=((8, 2, 99999),)).draw(detector)
    path = tmp_path / "c.csv"
    path.write_text(",".join(CONDITION_COLUMNS) + "\n8,2,99999,1,1,0,0,0,0,0,0\n")
    with pytest.raises(ConditionsError, match="1 unknown") as err:
        read_conditions(path, detector)
    assert str(err.value).startswith(f"{path}: ")
    assert read_dead_modules(path) == ((8, 2, 99999),)  # without a detector, ids are only read
