"""`tb` commands from the command line (in-process): arguments that depend on each other."""

import subprocess
import sys
from pathlib import Path

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
