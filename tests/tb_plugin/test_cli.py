"""`tb` commands from the command line (in-process): arguments that depend on each other."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from tb_plugin.cli import main
from tb_plugin.trackml import event_prefix, list_events, write_event


def test_a_replay_simulates_one_event_without_events(tmp_path, make_tiny_event):
    _, particles, _ = make_tiny_event(1)
    write_event(event_prefix(tmp_path / "real", 1), particles=particles)
    out = tmp_path / "sim"
    assert (
        main(
            [
                "-q",
                "simulate",
                "--particles",
                str(tmp_path / "real" / "event000000001-particles.csv"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert [event_id for event_id, _ in list_events(out)] == [1000]
    assert (out / "detectors.csv").is_file()


def test_events_is_still_required_without_a_replay(tmp_path, capsys):
    assert main(["simulate", "--out", str(tmp_path / "sim")]) == 2
    assert capsys.readouterr().err == (
        "tb: error: tb simulate: --events is required (the number of events to simulate); "
        "only a replay (--particles FILE) defaults to one event\n"
    )
    assert not (tmp_path / "sim").exists()


def test_simulate_does_not_import_torch():
    """`tb simulate` needs numpy and pandas only; importing torch and torch_geometric would add
    about 5 s to every run (measured on the 2-core dev machine), more than simulating a few events."""
    code = (
        "import sys; from tb_plugin.cli import build_parser; import tb_plugin.simulation; "
        "print(sorted(m for m in ('torch', 'torch_geometric') if m in sys.modules))"
    )
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo)
    assert out.stdout.strip() == "[]"


def test_simulate_records_its_config_and_can_keep_the_field_uniform(tmp_path):
    """simulation.json says how the events were made; --uniform-field moves the forward hits."""
    folders = {}
    for name, extra in (("falling", []), ("uniform", ["--uniform-field"])):
        out = tmp_path / name
        command = ["-q", "simulate", "--events", "1", "--pileup", "2", "--seed", "3", "--out", str(out)]
        assert main(command + extra) == 0
        folders[name] = out
        record = json.loads((out / "simulation.json").read_text())
        assert record["simulation"]["b_field_half_z_mm"] == (0.0 if extra else 2000.0)
        assert record["simulation"]["pileup"] == 2.0 and record["simulation"]["seed"] == 3
        assert record["geometry_hash"] and record["ids_hash"] and record["replay_particles"] is None
    truth = {name: pd.read_csv(out / "event000001000-truth.csv") for name, out in folders.items()}
    forward = {name: t[t["tz"].abs() > 2000] for name, t in truth.items()}
    assert len(forward["uniform"]) > 0
    assert not forward["falling"][["tx", "ty"]].equals(forward["uniform"][["tx", "ty"]])
