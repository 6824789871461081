"""Bad input through the command line: one line naming the file or key, exit code 2, no traceback,
nothing written or changed. Each case builds its small inputs in code (the hand-made events of
conftest, a TrackingBERT checkpoint saved without training) and runs `tb` in-process."""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml

from tb_plugin import stage_record
from tb_plugin.cli import main
from tb_plugin.model import TrackingBERTModule
from tb_plugin.pipeline import load_stage, run_phase
from tb_plugin.tokenizer import ModuleTokenizer

TINY_TB = {
    "stage": "tracking_bert",
    "model": "TrackingBERT",
    "n_layer": 1,
    "n_embd": 16,
    "n_head": 2,
    "d_ff": 32,
    "max_epochs": 1,
    "batch_size": 4,
}


class Foreign:
    """An object outside tensors and plain values (harmless: unpickling it would call os.getcwd)."""

    def __reduce__(self):
        return (os.getcwd, ())


def write_yaml(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def reading_config(tmp: Path, folder: Path, **overrides) -> Path:
    values = {
        "stage": "data_reading",
        "model": "TrackMLReader",
        "input_dir": str(folder),
        "stage_dir": str(tmp / "fs"),
        "data_split": [4, 1, 1],
        **overrides,
    }
    return write_yaml(tmp / "reading.yaml", values)


def feature_store(tmp: Path, folder: Path) -> Path:
    stage = load_stage(reading_config(tmp, folder))
    run_phase(stage, "infer", stage.infer)  # as `tb infer` does: with its stage record
    return tmp / "fs"


def tb_config(tmp: Path, store: Path, **overrides) -> Path:
    return write_yaml(tmp / "tb.yaml", {**TINY_TB, "input_dir": str(store), "stage_dir": str(tmp / "tb"), **overrides})


def hand_trained(tmp: Path, store: Path, finished: bool = True, **recorded_as) -> Path:
    """A tracking_bert stage as `tb train` leaves it (vocab.json, best and last.ckpt), 16 wide, untrained.
    Its stage record says it was trained with `recorded_as`: artifacts that do not match their record
    (copied in by hand) are what the checkpoint checks catch, behind the record's."""
    stage_record.begin(load_stage(tb_config(tmp, store, **recorded_as)), "train")
    stage = load_stage(tb_config(tmp, store))
    tokenizer = ModuleTokenizer(stage.detector())
    tokenizer.save(stage.vocab_file)
    module = TrackingBERTModule(
        model=asdict(stage.config.model_config(tokenizer.vocab_size)), optim=asdict(stage.config.optim_config())
    )
    for name in ("best.ckpt", "last.ckpt"):
        torch.save(
            {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, stage.artifacts / name
        )
    if finished:  # else a training that stopped half-way, which `tb train` resumes
        stage_record.finish(load_stage(tb_config(tmp, store, **recorded_as)), "train", 0.0)
    tb_config(tmp, store)  # the config file as it was
    return stage.artifacts


# Each case: (tmp_path, TrackML folder) -> (argv, strings the one line must contain).
Case = Callable[[Path, Path], tuple[list[str], list[str]]]


def repeated_yaml_key(tmp, folder):
    config = tmp / "reading.yaml"
    config.write_text(
        f"stage: data_reading\nmodel: TrackMLReader\ninput_dir: {folder}\nstage_dir: {tmp / 'fs'}\n"
        f"data_split: [4, 1, 1]\nseed: 0\ndata_split: [2, 1, 1]\n"
    )
    return ["infer", str(config)], [str(config), "key 'data_split' appears twice, at lines 5 and 7"]


def data_split_larger_than_the_folder(tmp, folder):
    return ["infer", str(reading_config(tmp, folder, data_split=[10, 0, 0]))], ["key 'data_split'", str(folder)]


def rerun_with_another_seed(tmp, folder):
    feature_store(tmp, folder)
    return ["infer", str(reading_config(tmp, folder, seed=1))], [
        f"{tmp / 'fs'}: ",
        "--overwrite",
        f"delete {tmp / 'fs'}",
    ]


def event_in_two_splits(tmp, folder):
    store = feature_store(tmp, folder)
    first = sorted((store / "trainset").iterdir())[0]
    (store / "splits.json").unlink()  # a store of an older version: only the folders tell
    shutil.copy(first, store / "testset" / first.name)
    return ["train", str(tb_config(tmp, store))], [f"{first} and {store / 'testset' / first.name}", "two splits"]


def store_against_its_split_record(tmp, folder):
    store = feature_store(tmp, folder)
    moved = sorted((store / "trainset").iterdir())[0]
    moved.rename(store / "valset" / moved.name)
    return ["train", str(tb_config(tmp, store))], [str(store / "valset" / moved.name), str(store / "splits.json")]


def outputs_of_an_earlier_split(tmp, folder):
    store = feature_store(tmp, folder)
    hand_trained(tmp, store)
    stage = load_stage(tb_config(tmp, store))
    run_phase(stage, "infer", stage.infer)
    reading = load_stage(reading_config(tmp, folder, seed=1))
    run_phase(reading, "infer", lambda: reading.infer(overwrite=True), overwrite=True)  # the store is split anew
    return ["infer", str(tb_config(tmp, store))], [
        f"{tmp / 'tb'}: its model was trained before a change (input {store}/",
        "--overwrite",
    ]


def hits_without_final_newline(tmp, folder):
    hits = folder / "event000000100-hits.csv"
    hits.write_text(hits.read_text().rstrip("\n"))
    return ["infer", str(reading_config(tmp, folder, data_split=[6, 0, 0]))], [str(hits), "line 9", "newline"]


def vocabulary_of_another_detector(tmp, folder):
    store = feature_store(tmp, folder)
    other = tmp / "other_detectors.csv"
    lines = (store / "detectors.csv").read_text().splitlines()
    fields = lines[1].split(",")
    fields[2] = "99999"  # one module renumbered: other ids (a module moved with the same ids only warns)
    other.write_text("\n".join([lines[0], ",".join(fields), *lines[2:]]) + "\n")
    artifacts = hand_trained(tmp, store, detector=str(other))
    return ["infer", str(tb_config(tmp, store, detector=str(other)))], [
        str(artifacts / "vocab.json"),
        "other module ids",
    ]


def resume_with_another_width(tmp, folder):
    store = feature_store(tmp, folder)
    artifacts = hand_trained(tmp, store, finished=False, n_embd=32)
    return ["train", str(tb_config(tmp, store, n_embd=32))], [str(artifacts / "last.ckpt"), "n_embd: 16", "n_embd: 32"]


def infer_with_another_width(tmp, folder):
    store = feature_store(tmp, folder)
    artifacts = hand_trained(tmp, store, n_embd=32)
    return ["infer", str(tb_config(tmp, store, n_embd=32))], [str(artifacts / "best.ckpt"), "n_embd: 16", "n_embd: 32"]


def tracking_bert_without_input(tmp, folder):
    return ["train", str(tb_config(tmp, tmp / "no_store"))], [
        "key 'input_dir'",
        str(tmp / "no_store"),
        "does not exist",
    ]


def foreign_objects_in_best_ckpt(tmp, folder):
    store = feature_store(tmp, folder)
    artifacts = hand_trained(tmp, store)
    torch.save({"state_dict": {}, "hyper_parameters": {}, "extra": Foreign()}, artifacts / "best.ckpt")
    return ["infer", str(tb_config(tmp, store))], [f"{artifacts / 'best.ckpt'}: refused to load"]


def simulate_without_events(tmp, folder):
    return ["simulate", "--out", str(tmp / "sim")], ["--events is required"]


def replay_of_a_missing_file(tmp, folder):
    return ["simulate", "--particles", str(tmp / "absent.csv"), "--out", str(tmp / "sim")], [str(tmp / "absent.csv")]


def negative_vertex_spread(tmp, folder):
    command = ["simulate", "--events", "1", "--vertex-sigma-z", "-1", "--out", str(tmp / "sim")]
    return command, ["vertex_sigma_z_mm = -1.0"]


CASES: list[Case] = [
    repeated_yaml_key,
    data_split_larger_than_the_folder,
    rerun_with_another_seed,
    event_in_two_splits,
    store_against_its_split_record,
    outputs_of_an_earlier_split,
    hits_without_final_newline,
    vocabulary_of_another_detector,
    resume_with_another_width,
    infer_with_another_width,
    tracking_bert_without_input,
    foreign_objects_in_best_ckpt,
    simulate_without_events,
    replay_of_a_missing_file,
    negative_vertex_spread,
]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and mtime: what a refused run must leave as it was."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[case.__name__ for case in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, tiny_trackml_folder, tmp_path, capsys):
    argv, named = case(tmp_path, tiny_trackml_folder)
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main(["-q", *argv]) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    err = re.sub(r"[^\n]*\r", "", err)  # what a terminal shows: progress bars (cleared with \r) are gone
    assert err.startswith("tb: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    for name in named:
        assert name in err, f"{name!r} not in {err!r}"
    assert snapshot(tmp_path) == before


def test_values_yaml_spells_differently_are_accepted(tmp_path):
    config = tmp_path / "tb.yaml"
    config.write_text(
        f"stage: tracking_bert\nmodel: TrackingBERT\ninput_dir: {tmp_path / 'fs'}\nstage_dir: {tmp_path / 'tb'}\n"
        "lr: 3e-3\nprecision: 32\n"
    )
    stage = load_stage(config)
    assert stage.config.lr == 0.003 and stage.config.precision == "32"


def test_the_built_in_geometry_fallback_is_announced_once(tiny_trackml_folder, tmp_path, caplog):
    store = feature_store(tmp_path, tiny_trackml_folder)
    (store / "detectors.csv").unlink()  # e.g. a store written by ACORN's reader
    hand_trained(tmp_path, store)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["-q", "infer", str(tb_config(tmp_path, store))]) == 0  # the documented fallback still runs
    [warning] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.startswith(
        f"{store} has no detectors.csv and the config names no 'detector': FALLING BACK to the built-in"
    )
