import json
import os
import time
from pathlib import Path

import pytest

from tb_plugin.ab.parallel import StageTask, WorkerError, ordered_tasks, run_tasks, worker_threads
from tb_plugin.cli import main
from tb_plugin.config import ConfigError


def fake_stage(values: dict, source: str, log_path: str) -> float:
    """A worker that records when it ran, and fails for a stage named 'broken'."""
    folder = Path(values["stage_dir"])
    if folder.name == "broken":
        raise ConfigError(f"{source}: broken stage")
    if folder.name == "bug":
        raise KeyError("a bug, not the user's input")
    if folder.name == "killed":
        os._exit(9)  # as the kernel's OOM killer would end it
    start = time.time()
    time.sleep(3.0)  # long beside worker start-up (about 1 s on 2 loaded cores), so the overlap test cannot race it
    folder.mkdir(parents=True)
    (folder / "span.json").write_text(json.dumps([start, time.time()]))
    return 3.0


def span(folder: Path) -> list[float]:
    return json.loads((folder / "span.json").read_text())


def chain(root: Path, arm: str, upstream: Path) -> list[dict]:
    """map -> gnn of one arm, the map read from `upstream`."""
    first = {"stage_dir": root / arm / "map", "input_dir": upstream}
    return [first, {"stage_dir": root / arm / "gnn", "input_dir": first["stage_dir"]}]


def test_tasks_are_deduped_and_wait_for_what_they_read(tmp_path):
    pre = {"stage_dir": tmp_path / "tb", "input_dir": tmp_path / "reading"}
    shared = {"stage_dir": tmp_path / "map", "input_dir": tmp_path / "reading"}
    a = [shared, {"stage_dir": tmp_path / "a" / "gnn", "input_dir": tmp_path / "map"}]
    b = [
        shared,
        {"stage_dir": tmp_path / "b" / "gnn", "input_dir": tmp_path / "map", "tracking_bert_dir": pre["stage_dir"]},
    ]
    tasks = ordered_tasks([[pre], a, b], "t")
    assert list(tasks) == [tmp_path / "tb", tmp_path / "map", tmp_path / "a" / "gnn", tmp_path / "b" / "gnn"]
    assert tasks[tmp_path / "map"].needs(tasks) == set()  # data reading is not a task: done before
    assert tasks[tmp_path / "b" / "gnn"].needs(tasks) == {tmp_path / "map", tmp_path / "tb"}
    assert worker_threads(10_000) == 1


def test_run_tasks_runs_in_parallel_after_their_inputs_and_skips_finished_ones(tmp_path, capsys):
    tasks = ordered_tasks([chain(tmp_path, "a", tmp_path / "in"), chain(tmp_path, "b", tmp_path / "in")], "t")
    (tmp_path / "b" / "map").mkdir(parents=True)  # finished before: not run again
    run_tasks(tasks, 2, tmp_path / "logs", lambda p: p == tmp_path / "b" / "map", worker=fake_stage)
    assert not (tmp_path / "b" / "map" / "span.json").exists()
    for arm in "ab":
        assert (tmp_path / arm / "gnn" / "span.json").is_file()
    assert span(tmp_path / "a" / "gnn")[0] >= span(tmp_path / "a" / "map")[1]  # after its input
    assert span(tmp_path / "b" / "gnn")[0] < span(tmp_path / "a" / "map")[1]  # beside a's map: 2 at a time
    out = capsys.readouterr().out
    assert "3 stage runs in 2 processes" in out and "[3/3] finished" in out


def test_a_failing_task_raises_its_error_and_starts_nothing_after_it(tmp_path):
    first = {"stage_dir": tmp_path / "broken", "input_dir": tmp_path / "in"}
    tasks = ordered_tasks([[first, {"stage_dir": tmp_path / "next", "input_dir": tmp_path / "broken"}]], "cfg.yaml")
    with pytest.raises(ConfigError, match="cfg.yaml: broken stage"):
        run_tasks(tasks, 2, tmp_path / "logs", lambda p: False, worker=fake_stage)
    assert not (tmp_path / "next").exists()


def test_a_user_error_in_a_worker_is_the_sequential_one_line_naming_the_stage_and_its_log(tmp_path, capsys):
    (tmp_path / "in" / "trainset").mkdir(parents=True)
    (tmp_path / "in" / "trainset" / "event000000001.pyg").write_bytes(b"x")
    values = {"stage": "tracking_bert", "model": "TrackingBERT", "input_dir": tmp_path / "in", "lr": 0.0}
    tasks = ordered_tasks([[{**values, "stage_dir": tmp_path / "tb"}]], "ab.yaml")
    log = tmp_path / "logs" / f"{'_'.join((tmp_path / 'tb').parts[-3:])}.log"
    with pytest.raises(ConfigError) as err:
        run_tasks(tasks, 2, tmp_path / "logs", lambda p: False)
    assert str(err.value) == f"ab.yaml: key 'lr' must be > 0, got 0.0 [A/B stage {tmp_path / 'tb'}; its log: {log}]"
    assert "Traceback" in log.read_text() and "key 'lr' must be > 0" in log.read_text()


@pytest.mark.parametrize(
    "name, message",
    [
        ("bug", 'failed: KeyError: "a bug, not the user\'s input" (traceback in '),
        ("killed", "died (killed, or out of memory?)"),
    ],
)
def test_a_crash_in_a_worker_is_one_line_naming_the_stage_and_its_log(tmp_path, capsys, monkeypatch, name, message):
    tasks = ordered_tasks([[{"stage_dir": tmp_path / name, "input_dir": tmp_path / "in"}]], "cfg.yaml")
    with pytest.raises(WorkerError) as err:
        run_tasks(tasks, 2, tmp_path / "logs", lambda p: False, worker=fake_stage)
    assert message in str(err.value) and str(tmp_path / name) in str(err.value) and "\n" not in str(err.value)
    # the command line prints it in one line, exit status 2
    monkeypatch.setattr("tb_plugin.cli.cmd_ab", lambda args: (_ for _ in ()).throw(err.value))
    capsys.readouterr()
    assert main(["ab", "unused.yaml"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_task_reads_its_own_folder_without_waiting_for_itself(tmp_path):
    task = StageTask({"stage_dir": tmp_path / "x", "input_dir": tmp_path / "x"}, "t")
    assert task.needs({task.stage_dir: task}) == set()
