"""The stage record: a rerun after a config edit or a rewritten input is refused (naming the change)
or, with --overwrite, rewritten; `tb status` lists the chain; a stage never writes into its input."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tb_plugin import stage_record
from tb_plugin.cli import main
from tb_plugin.event_store import SPLITS, list_event_files, load_event
from tb_plugin.geometry import Detector
from tb_plugin.pipeline import load_stage
from tb_plugin.simulation import SimulationConfig, simulate_dataset

SPLIT = [3, 1, 1]


@pytest.fixture(scope="module")
def events(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sim") / "events"
    simulate_dataset(
        SimulationConfig(n_events=sum(SPLIT), pileup=1, seed=3), Detector.builtin(), folder, progress=False, workers=1
    )
    return folder


def write(path: Path, values: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(values))
    return path


def configs(root: Path, events: Path, reading: dict | None = None, module_map: dict | None = None) -> Path:
    """data reading -> module map, as a pipeline file; returns it."""
    write(
        root / "reading.yaml",
        {
            "stage": "data_reading",
            "model": "TrackMLReader",
            "input_dir": str(events),
            "stage_dir": str(root / "store"),
            "data_split": SPLIT,
            **(reading or {}),
        },
    )
    write(
        root / "map.yaml",
        {
            "stage": "graph_construction",
            "model": "ModuleMap",
            "input_dir": str(root / "store"),
            "stage_dir": str(root / "map"),
            "window_tracks": {},
            **(module_map or {}),
        },
    )
    return write(root / "pipeline.yaml", {"stages": ["reading.yaml", "map.yaml"]})


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(capsys) -> str:
    err = re.sub(r"[^\n]*\r", "", capsys.readouterr().err)
    assert err.startswith("tb: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def statuses(pipeline: Path, capsys) -> list[str]:
    capsys.readouterr()
    assert main(["status", str(pipeline)]) == 0
    return [line.split(None, 2)[2] for line in capsys.readouterr().out.splitlines()]


def test_a_changed_key_is_refused_by_name_and_overwrite_applies_it(events, tmp_path, capsys):
    pipeline = configs(tmp_path, events)
    assert main(["-q", "run", str(pipeline)]) == 0
    before = snapshot(tmp_path / "store")
    cut = {"track_particle_pt": [1000, float("inf")]}
    configs(tmp_path, events, reading={"hard_cuts": cut})

    assert main(["-q", "infer", str(tmp_path / "reading.yaml")]) == 2
    err = one_line_error(capsys)
    assert "key 'hard_cuts' changed" in err and "--overwrite" in err and str(tmp_path / "store") in err
    assert snapshot(tmp_path / "store") == before  # refused before anything was written

    assert main(["-q", "infer", str(tmp_path / "reading.yaml"), "--overwrite"]) == 0
    data = load_event(list_event_files(tmp_path / "store", "trainset")[0])
    assert bool((data.track_particle_pt >= 1000).all())  # the cut is applied


def test_a_rewritten_input_makes_the_next_stage_stale_and_tb_run_refuses_before_running(events, tmp_path, capsys):
    pipeline = configs(tmp_path, events)
    assert main(["-q", "run", str(pipeline)]) == 0
    assert statuses(pipeline, capsys) == ["up to date", "up to date"]

    configs(tmp_path, events, reading={"seed": 7})  # other events in each split
    assert statuses(pipeline, capsys) == [
        "stale: key 'seed' changed: 0 -> 7",
        f"stale: its upstream stage {tmp_path / 'store'} is to be rerun",
    ]
    store_before, map_before = snapshot(tmp_path / "store"), snapshot(tmp_path / "map")
    assert main(["-q", "run", str(pipeline)]) == 2
    assert "key 'seed' changed" in one_line_error(capsys)
    assert snapshot(tmp_path / "store") == store_before and snapshot(tmp_path / "map") == map_before

    # the reading alone is rewritten: the map, rerun without --overwrite, must not keep the old graphs
    assert main(["-q", "infer", str(tmp_path / "reading.yaml"), "--overwrite"]) == 0
    assert statuses(pipeline, capsys)[1].startswith(f"stale: input {tmp_path / 'store'}")
    assert main(["-q", "run", str(pipeline)]) == 2
    assert f"stage graph_construction/ModuleMap ({tmp_path / 'map'}) is stale: input" in one_line_error(capsys)
    assert snapshot(tmp_path / "map") == map_before

    assert main(["-q", "run", str(pipeline), "--overwrite"]) == 0
    assert statuses(pipeline, capsys) == ["up to date", "up to date"]
    store_ids = {p.name for s in SPLITS for p in list_event_files(tmp_path / "store", s)}
    map_ids = {p.name for s in SPLITS for p in list_event_files(tmp_path / "map", s)}
    assert map_ids == store_ids


def test_a_rerun_with_the_same_bytes_stays_up_to_date(events, tmp_path, capsys):
    pipeline = configs(tmp_path, events)
    assert main(["-q", "run", str(pipeline)]) == 0
    mtimes = {p: p.stat().st_mtime_ns for p in list_event_files(tmp_path / "store", "trainset")}
    assert main(["-q", "infer", str(tmp_path / "reading.yaml"), "--overwrite"]) == 0  # same config: same bytes
    assert all(p.stat().st_mtime_ns != t for p, t in mtimes.items())
    # `tb infer` alone leaves the reading's evaluation to run again; the map's input has the same bytes
    assert statuses(pipeline, capsys) == ["incomplete: eval has not finished; a rerun resumes", "up to date"]


def test_status_says_missing_and_incomplete(events, tmp_path, capsys):
    pipeline = configs(tmp_path, events)
    assert statuses(pipeline, capsys) == ["missing", "missing"]
    stage = load_stage(tmp_path / "reading.yaml")
    stage_record.begin(stage, "infer")  # a run that was killed during inference
    assert statuses(pipeline, capsys) == ["incomplete: infer has not finished; a rerun resumes", "missing"]


def test_eval_of_stale_outputs_is_refused(events, tmp_path, capsys):
    pipeline = configs(tmp_path, events)
    assert main(["-q", "run", str(pipeline)]) == 0
    configs(tmp_path, events, module_map={"window_margin": 0.3})
    assert main(["-q", "eval", str(tmp_path / "map.yaml")]) == 2
    err = one_line_error(capsys)
    assert "key 'window_margin' changed: 0.1 -> 0.3" in err and "stale" in err


def test_outputs_without_a_record_are_not_taken_for_current(events, tmp_path, capsys):
    pipeline = configs(tmp_path, events)
    load_stage(tmp_path / "reading.yaml").infer()  # the raw step: no record, as an older version left it
    assert statuses(pipeline, capsys)[0].startswith("stale: its outputs have no stage record")
    assert main(["-q", "infer", str(tmp_path / "reading.yaml")]) == 2
    assert "no stage record" in one_line_error(capsys)
    assert main(["-q", "infer", str(tmp_path / "reading.yaml"), "--overwrite"]) == 0


@pytest.mark.parametrize(
    "stage_dir, where", [("store", "is the same folder as"), ("store/map", "lies inside"), (".", "contains")]
)
def test_a_stage_never_writes_into_its_input(events, tmp_path, capsys, stage_dir, where):
    configs(tmp_path, events)
    assert main(["-q", "infer", str(tmp_path / "reading.yaml")]) == 0
    write(
        tmp_path / "bad.yaml",
        {**yaml.safe_load((tmp_path / "map.yaml").read_text()), "stage_dir": str(tmp_path / stage_dir)},
    )
    before = snapshot(tmp_path)
    assert main(["-q", "run", str(write(tmp_path / "p.yaml", {"stages": ["bad.yaml"]}))]) == 2
    err = one_line_error(capsys)
    assert f"key 'stage_dir' ({tmp_path / stage_dir}) {where} key 'input_dir'" in err
    assert {k: v for k, v in snapshot(tmp_path).items() if Path(k).name != "p.yaml"} == before


def test_trained_stage_dir_equal_to_stage_dir_is_refused(events, tmp_path, capsys):
    configs(tmp_path, events, module_map={"trained_stage_dir": str(tmp_path / "map")})
    assert main(["-q", "infer", str(tmp_path / "map.yaml")]) == 2
    assert "is the same folder as key 'trained_stage_dir'" in one_line_error(capsys)


def test_the_record_names_keys_inputs_and_upstream(events, tmp_path):
    pipeline = configs(tmp_path, events)
    assert main(["-q", "run", str(pipeline)]) == 0
    record = json.loads((tmp_path / "map" / stage_record.RECORD).read_text())
    assert record["keys"]["window_tracks"] == {} and "stage_dir" not in record["keys"]
    assert str(tmp_path / "store" / "detectors.csv") in record["inputs"]
    assert len([p for p in record["inputs"] if p.endswith(".pyg")]) == sum(SPLIT)
    assert list(record["upstream"]) == [str(tmp_path / "store")]
    assert all(record["phases"][p]["done"] for p in ("train", "infer", "eval"))


SLOW_TB = """
import sys, time, torch
real = torch.save
def slow(*args, **kwargs):
    time.sleep(0.4)
    return real(*args, **kwargs)
torch.save = slow
from tb_plugin.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_rewrite_killed_half_way_leaves_nothing_half_old(events, tmp_path, capsys, sig):
    """An --overwrite after a config change, killed after its first new events: only new events remain,
    the stage is not taken for up to date, and a plain rerun finishes it with the new config."""
    pipeline = configs(tmp_path, events)
    assert main(["-q", "run", str(pipeline)]) == 0
    configs(tmp_path, events, reading={"hard_cuts": {"track_particle_pt": [500, float("inf")]}})
    argv = [sys.executable, "-c", SLOW_TB, "-q", "infer", str(tmp_path / "reading.yaml"), "--overwrite"]
    process = subprocess.Popen(argv, cwd=Path(__file__).parents[2])
    deadline = time.monotonic() + 120
    while not rewriting(census(tmp_path)):
        assert process.poll() is None and time.monotonic() < deadline, "the rewrite ended before it was killed"
        time.sleep(0.05)
    process.send_signal(sig)
    process.wait()
    assert 0 < len(stored(tmp_path)) < sum(SPLIT)
    assert not _old_events(tmp_path)
    assert statuses(pipeline, capsys)[0] == "incomplete: infer has not finished; a rerun resumes"
    assert main(["-q", "run", str(pipeline)]) == 2  # the map still holds graphs of the old events
    capsys.readouterr()
    assert main(["-q", "infer", str(tmp_path / "reading.yaml")]) == 0
    assert len(stored(tmp_path)) == sum(SPLIT) and not _old_events(tmp_path)


def stored(root: Path) -> list[Path]:
    return [p for s in SPLITS for p in list_event_files(root / "store", s)]


def _old_events(root: Path) -> list[Path]:
    """Event files written without the new hard cut."""
    return [path for path in stored(root) if not load_event(path).config[-1].get("hard_cuts")]


def rewriting(files: tuple[str, ...]) -> bool:
    """The first events of the rewrite, and nothing else, are there: the moment to kill it."""
    return len(files) >= 2 and set(files) == {"new"}


def census(root: Path) -> tuple[str, ...]:
    """'new' or 'old' for each event file listed at one moment, 'gone' for one removed or renamed while
    it was read: the wait above ends only on a listing of new files alone."""
    out = []
    for path in stored(root):
        try:
            out.append("new" if load_event(path).config[-1].get("hard_cuts") else "old")
        except Exception:
            out.append("gone")
    return tuple(out)


def test_the_events_a_map_learns_from_beyond_data_split_are_fingerprinted(events, tmp_path, capsys):
    pipeline = configs(
        tmp_path, events, reading={"data_split": [4, 0, 1]}, module_map={"data_split": [1, 0, 1], "map_events": 4}
    )
    assert main(["-q", "run", str(pipeline)]) == 0
    learned_only = list_event_files(tmp_path / "store", "trainset")[3]  # learned from, no graph written
    data = load_event(learned_only)
    data.hit_r = data.hit_r + 1.0
    torch.save(data, learned_only)
    assert statuses(pipeline, capsys)[1] == f"stale: input {learned_only} was rewritten with other contents"
