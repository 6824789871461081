"""Sharded inference (`tb infer/run --shard K/N`): N shards write the files of one unsharded run, the
stage counts as inferred only when all N have finished, and no shard deletes another's outputs."""

import contextlib
import json
import shutil
import threading

import pytest
import torch
import yaml

from tb_plugin import pipeline, stage_record
from tb_plugin.cli import main
from tb_plugin.config import ConfigError
from tb_plugin.event_store import SPLITS, list_event_files
from tb_plugin.pipeline import load_stage
from tb_plugin.shard import Shard, parse_shard

OWN = ("stage_record.json", "shards")  # what differs between a sharded and an unsharded run, by design


def write_configs(root, trackml, **reading_overrides):
    """Data reading (6 events: [4, 1, 1]) and a ModuleMap that infers with the map of `root/mm_trained`."""
    configs = {
        "reading.yaml": {
            "stage": "data_reading",
            "model": "TrackMLReader",
            "input_dir": str(trackml),
            "stage_dir": str(root / "fs"),
            "data_split": [4, 1, 1],
            **reading_overrides,
        },
        "train_mm.yaml": {
            "stage": "graph_construction",
            "model": "ModuleMap",
            "input_dir": str(root / "fs"),
            "stage_dir": str(root / "mm_trained"),
            "window_tracks": {},
        },
        "mm.yaml": {
            "stage": "graph_construction",
            "model": "ModuleMap",
            "input_dir": str(root / "fs"),
            "stage_dir": str(root / "mm"),
            "trained_stage_dir": str(root / "mm_trained"),
            "window_tracks": {},
        },
    }
    (root / "configs").mkdir(exist_ok=True)
    for name, values in configs.items():
        (root / "configs" / name).write_text(yaml.safe_dump(values))
    pipelines = {"train.yaml": ["reading.yaml", "train_mm.yaml"], "apply.yaml": ["reading.yaml", "mm.yaml"]}
    for name, stages in pipelines.items():
        (root / name).write_text(yaml.safe_dump({"stages": [f"configs/{s}" for s in stages]}))
    return root / "configs", root


def outputs(folder):
    """Every file a stage wrote (relative path -> bytes), but its record and shard markers."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.relative_to(folder).parts[0] not in OWN
    }


def events(folder):
    return [p for split in SPLITS for p in list_event_files(folder, split)]


def unsharded_copy(folder, run):
    """What one unsharded run writes into `folder`, moved aside so that the shards write the same path
    (each event records its config, stage_dir included)."""
    run()
    kept = folder.with_name(folder.name + "_unsharded")
    folder.rename(kept)
    return outputs(kept)


@pytest.mark.parametrize("text", ["0/2", "3/2", "2", "1/0", "a/b", "1/2/3", "-1/2", ""])
def test_bad_shard_values_are_one_line_and_exit_2(tiny_trackml_folder, tmp_path, capsys, text):
    configs, root = write_configs(tmp_path, tiny_trackml_folder)
    assert main(["-q", "infer", str(configs / "reading.yaml"), f"--shard={text}"]) == 2
    assert main(["-q", "run", str(root / "apply.yaml"), f"--shard={text}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("tb: error: --shard") for line in lines)
    assert "expected K/N" in lines[0] or "between 1 and N" in lines[0] or "at least 1" in lines[0]
    assert not (tmp_path / "fs").exists()  # refused before anything was written


def test_shard_counts_from_one_and_says_so_for_zero():
    assert parse_shard("2/3") == Shard(2, 3) and parse_shard(" 1 / 1 ") == Shard(1, 1) and parse_shard(None) is None
    with pytest.raises(ConfigError, match=r"K counts from 1.*SLURM_ARRAY_TASK_ID \+ 1"):
        parse_shard("0/4")
    shards = [Shard(k, 3).share(list(range(8))) for k in (1, 2, 3)]
    assert shards == [[0, 3, 6], [1, 4, 7], [2, 5]]  # every position once, sizes within one


def test_two_shards_write_the_files_of_one_unsharded_run(tiny_trackml_folder, tmp_path):
    configs, root = write_configs(tmp_path, tiny_trackml_folder)
    reading, mm = str(configs / "reading.yaml"), str(configs / "mm.yaml")
    expected = unsharded_copy(tmp_path / "fs", lambda: main(["-q", "infer", reading]))
    for shard in ("2/2", "1/2"):  # in any order
        assert main(["-q", "infer", reading, "--shard", shard]) == 0
    assert outputs(tmp_path / "fs") == expected
    assert len(events(tmp_path / "fs")) == 6

    assert main(["-q", "run", str(root / "train.yaml")]) == 0  # the module map, trained once, unsharded
    expected = unsharded_copy(tmp_path / "mm", lambda: main(["-q", "infer", mm]))
    for shard in ("1/3", "2/3", "3/3"):  # more shards than the valset and testset have events
        assert main(["-q", "infer", mm, "--shard", shard]) == 0
    assert outputs(tmp_path / "mm") == expected
    assert stage_record.status(load_stage(mm)).state == "incomplete"  # only eval is left
    assert main(["-q", "eval", mm]) == 0
    assert stage_record.status(load_stage(mm)).state == "up to date"


def test_inferred_only_when_all_shards_are_done(tiny_trackml_folder, tmp_path, capsys):
    configs, root = write_configs(tmp_path, tiny_trackml_folder)
    reading = str(configs / "reading.yaml")
    assert main(["-q", "run", str(root / "train.yaml")]) == 0  # an unsharded run first: a rerun is sharded
    stage = load_stage(reading)
    assert main(["-q", "infer", reading, "--shard", "1/2", "--overwrite"]) == 0
    status = stage_record.status(stage)
    assert (status.state, status.unfinished) == ("incomplete", "infer")
    assert "1 of 2 shards (to run: --shard 2/2)" in status.reason
    assert not stage_record.phase_done(stage, "infer")
    capsys.readouterr()
    assert main(["-q", "eval", reading]) == 2
    assert "nothing complete to evaluate yet" in capsys.readouterr().err
    assert main(["-q", "infer", str(configs / "mm.yaml"), "--shard", "1/2"]) == 2  # downstream waits too
    err = capsys.readouterr().err
    assert "is not complete: infer has finished in 1 of 2 shards" in err and len(err.strip().splitlines()) == 1
    assert main(["-q", "status", str(root / "apply.yaml")]) == 0
    assert "1 of 2 shards" in capsys.readouterr().out

    assert main(["-q", "infer", reading, "--shard", "2/2"]) == 0
    assert stage_record.phase_done(stage, "infer")
    assert stage_record.status(stage).unfinished == "eval"
    # a marker of another config or N counts for nothing: a 3-shard rerun starts unfinished
    assert main(["-q", "infer", reading, "--shard", "3/3"]) == 0
    assert not stage_record.phase_done(stage, "infer")
    assert "1 of 3 shards" in stage_record.status(stage).reason


def test_a_failed_shard_is_named_and_unfinished(tiny_trackml_folder, tmp_path, monkeypatch, capsys):
    configs, _ = write_configs(tmp_path, tiny_trackml_folder)
    reading = str(configs / "reading.yaml")
    from stages.data_reading.trackml_reader import TrackMLReader

    def broken(self, prefix):
        raise FileNotFoundError(f"{prefix}: gone")

    monkeypatch.setattr(TrackMLReader, "read_event", broken)
    assert main(["-q", "infer", reading, "--shard", "1/2"]) == 2
    monkeypatch.undo()
    assert main(["-q", "infer", reading, "--shard", "2/2"]) == 0
    status = stage_record.status(load_stage(reading))
    assert status.state == "incomplete" and "shard 1/2 failed: FileNotFoundError" in status.reason
    assert main(["-q", "infer", reading, "--shard", "1/2"]) == 0  # the rerun resumes
    assert stage_record.phase_done(load_stage(reading), "infer")


def test_shards_do_not_delete_each_others_outputs(tiny_trackml_folder, tmp_path):
    configs, _ = write_configs(tmp_path, tiny_trackml_folder)
    reading = str(configs / "reading.yaml")
    fs = tmp_path / "fs"
    assert main(["-q", "infer", reading, "--shard", "1/2"]) == 0
    first = {p: p.stat().st_mtime_ns for p in events(fs)}
    assert len(first) == 4  # trainset positions 0 and 2, valset 0, testset 0
    train = json.loads((fs / "splits.json").read_text())["splits"]["trainset"]
    # shard 1 "is writing" its trainset event at position 2: that temporary must survive shard 2's start
    busy = fs / "trainset" / f".event{train[2]:09d}.pyg.abc123.tmp"
    busy.write_bytes(b"being written")
    leftover = fs / "trainset" / f".event{train[1]:09d}.pyg.xyz789.tmp"  # shard 2's, from a killed run
    leftover.write_bytes(b"half")
    assert main(["-q", "infer", reading, "--shard", "2/2", "--overwrite"]) == 0
    assert busy.exists() and not leftover.exists()
    assert all(p.exists() and p.stat().st_mtime_ns == t for p, t in first.items())
    assert len(events(fs)) == 6
    busy.unlink()

    # a config change with --overwrite: nothing is cleared, and every shard rewrites its own events,
    # also one started without --overwrite (the record says the stage is being rewritten)
    (configs / "reading.yaml").write_text(
        yaml.safe_dump({**yaml.safe_load((configs / "reading.yaml").read_text()), "use_cells": False})
    )
    before = {p: p.stat().st_mtime_ns for p in events(fs)}
    assert main(["-q", "infer", reading, "--shard", "1/2"]) == 2  # stale: refused without --overwrite
    assert main(["-q", "infer", reading, "--shard", "1/2", "--overwrite"]) == 0
    assert all(p.exists() for p in before)  # shard 2's (stale) events are left to shard 2
    assert [p for p in before if p.stat().st_mtime_ns == before[p]] == [p for p in before if p not in first]
    assert main(["-q", "infer", reading, "--shard", "2/2"]) == 0
    assert all(p.stat().st_mtime_ns != t for p, t in before.items())  # every event rewritten once
    stage = load_stage(reading)
    assert stage_record.phase_done(stage, "infer")
    after = {p: p.stat().st_mtime_ns for p in events(fs)}
    assert main(["-q", "infer", reading, "--shard", "2/2"]) == 0  # finished once: now it resumes
    assert {p: p.stat().st_mtime_ns for p in events(fs)} == after


def test_run_shard_refuses_untrained_stages(tiny_trackml_folder, tmp_path, capsys):
    _, root = write_configs(tmp_path, tiny_trackml_folder)
    assert main(["-q", "run", str(root / "train.yaml"), "--shard", "1/2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--shard 1/2: stage graph_construction/ModuleMap" in err and "training is not sharded" in err
    assert not (tmp_path / "fs").exists()
    assert main(["-q", "infer", str(root / "configs" / "train_mm.yaml"), "--shard", "2/2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "training is not sharded: train it once first" in err
    assert not (tmp_path / "mm_trained").exists()


def test_run_shards_at_once_match_one_unsharded_run(tiny_trackml_folder, tmp_path, monkeypatch):
    _, root = write_configs(tmp_path, tiny_trackml_folder)
    assert main(["-q", "run", str(root / "train.yaml")]) == 0
    shutil.rmtree(tmp_path / "fs")  # new events: the trained map is applied to them

    assert main(["-q", "run", str(root / "apply.yaml")]) == 0
    expected = {name: unsharded_copy(tmp_path / name, lambda: None) for name in ("fs", "mm")}

    monkeypatch.setattr(pipeline, "SHARD_POLL_S", 0.05)
    # Shards are processes; here they are threads, and torch's safe_globals (a process-wide setting
    # that event loading enters and leaves) is taken by one thread at a time.
    lock, safe_globals = threading.RLock(), torch.serialization.safe_globals

    @contextlib.contextmanager
    def one_at_a_time(globals_):
        with lock, safe_globals(globals_):
            yield

    monkeypatch.setattr(torch.serialization, "safe_globals", one_at_a_time)
    codes = {}

    def shard(k):
        codes[k] = main(["-q", "run", str(root / "apply.yaml"), "--shard", f"{k}/2"])

    threads = [threading.Thread(target=shard, args=(k,)) for k in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert codes == {1: 0, 2: 0}
    for name, config in (("fs", "reading.yaml"), ("mm", "mm.yaml")):
        assert outputs(tmp_path / name) == expected[name]  # eval/ included: shard 1 evaluated each stage
        assert stage_record.status(load_stage(root / "configs" / config)).state == "up to date"
