"""tracking_bert refuses what would otherwise fail deep inside Lightning or give wrong output: a
checkpoint of other model keys (train resume, infer), foreign objects in it, a missing input_dir; the
track cache follows the events' content; the built-in geometry fallback is announced."""

import logging
import os
from dataclasses import asdict

import pytest
import torch

from tb_plugin.config import ConfigError
from tb_plugin.event_store import list_event_files
from tb_plugin.geometry import Detector
from tb_plugin.model import TrackingBERTModule
from tb_plugin.pipeline import stage_from_mapping
from tb_plugin.pretraining.datamodule import SequenceSettings, TrackingBERTDataModule
from tb_plugin.tokenizer import ModuleTokenizer
from tb_plugin.training import CheckpointError

TINY = {"n_layer": 1, "n_embd": 16, "n_head": 2, "d_ff": 32, "max_epochs": 1, "batch_size": 4}


def read_store(folder, store, **overrides):
    values = {
        "stage": "data_reading",
        "model": "TrackMLReader",
        "input_dir": str(folder),
        "stage_dir": str(store),
        "data_split": [4, 1, 1],
        **overrides,
    }
    stage_from_mapping(values, "reading.yaml").infer(overwrite=True)
    return store


def tb_stage(store, stage_dir, **overrides):
    values = {
        "stage": "tracking_bert",
        "model": "TrackingBERT",
        "input_dir": str(store),
        "stage_dir": str(stage_dir),
        **TINY,
        **overrides,
    }
    return stage_from_mapping(values, "tracking_bert.yaml")


def hand_trained(stage):
    """vocab.json and best/last.ckpt as `tb train` leaves them, without training: what the checks read."""
    tokenizer = ModuleTokenizer(stage.detector())
    tokenizer.save(stage.vocab_file)
    module = TrackingBERTModule(
        model=asdict(stage.config.model_config(tokenizer.vocab_size)), optim=asdict(stage.config.optim_config())
    )
    for name in ("best.ckpt", "last.ckpt"):
        torch.save(
            {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "epoch": 0, "global_step": 0},
            stage.artifacts / name,
        )
    return module


@pytest.fixture
def store(tiny_trackml_folder, tmp_path):
    return read_store(tiny_trackml_folder, tmp_path / "fs")


def test_infer_refuses_a_checkpoint_of_another_width(store, tmp_path):
    hand_trained(tb_stage(store, tmp_path / "tb"))  # 16 wide
    stage = tb_stage(store, tmp_path / "tb", n_embd=32)
    with pytest.raises(CheckpointError) as err:
        stage.infer()
    best = tmp_path / "tb" / "artifacts" / "best.ckpt"
    assert str(err.value) == (
        f"{best} was trained with n_embd: 16, but the config has n_embd: 32; set n_embd: 16 again "
        f"to use this checkpoint, or delete {tmp_path / 'tb' / 'artifacts'} and run 'tb train' again"
    )
    assert not any(list_event_files(tmp_path / "tb", split) for split in ("trainset", "valset", "testset"))
    tb_stage(store, tmp_path / "tb").infer()  # the config the checkpoint was trained with
    [event] = [e for e in list_event_files(tmp_path / "tb", "testset")]
    assert torch.load(event, weights_only=False).hit_tb_emb.shape[1] == 16


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("n_embd", 32, "was trained with n_embd: 16, but the config has n_embd: 32; set n_embd: 16 again to resume"),
        ("n_layer", 2, "was trained with n_layer: 1, but the config has n_layer: 2"),
        ("max_hits", 6, "was trained with max_hits: 8, but the config has max_hits: 6"),
    ],
)
def test_resume_refuses_a_checkpoint_of_other_model_keys(store, tmp_path, key, value, message):
    hand_trained(tb_stage(store, tmp_path / "tb"))
    with pytest.raises(CheckpointError, match=rf"^{tmp_path / 'tb' / 'artifacts' / 'last.ckpt'} {message}"):
        tb_stage(store, tmp_path / "tb", **{key: value}).train()


class Foreign:
    """An object outside tensors and plain values (harmless: unpickling it would call os.getcwd)."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_a_foreign_best_checkpoint_is_refused_naming_it(store, tmp_path):
    stage = tb_stage(store, tmp_path / "tb")
    hand_trained(stage)
    torch.save({"state_dict": {}, "hyper_parameters": {}, "extra": Foreign()}, stage.artifacts / "best.ckpt")
    with pytest.raises(CheckpointError, match=rf"^{stage.artifacts / 'best.ckpt'}: refused to load"):
        stage.infer()


def test_a_missing_input_dir_is_refused_before_anything_is_written(tmp_path):
    stage = tb_stage(tmp_path / "no_store", tmp_path / "tb")
    for run in (stage.train, stage.infer, stage.evaluate):
        with pytest.raises(
            ConfigError, match=rf"^key 'input_dir': {tmp_path / 'no_store'} does not exist; run the stage"
        ):
            run()
    assert not (tmp_path / "tb").exists()  # no vocab.json of the built-in geometry


def test_the_track_cache_follows_the_events_content(tiny_trackml_folder, store, tmp_path):
    tokenizer = ModuleTokenizer(Detector.from_csv(store / "detectors.csv"))
    settings = SequenceSettings(min_hits=3, max_hits=8)

    def tracks():
        data = TrackingBERTDataModule(store, tmp_path / "cache", tokenizer, settings)
        data.prepare_data()
        data.setup()
        return data.cache_file("trainset"), len(data.tracks["trainset"])

    before, n_before = tracks()
    read_store(tiny_trackml_folder, store, hard_cuts={"pt": [2000, float("inf")]})  # same file names, particle B cut
    after, n_after = tracks()
    assert (n_before, n_after) == (8, 4)  # 2 tracks per event, then only A's
    assert before != after and before.exists()


def test_a_store_without_detectors_csv_falls_back_loudly(store, tmp_path, caplog):
    (store / "detectors.csv").unlink()
    with caplog.at_level(logging.WARNING):
        detector = tb_stage(store, tmp_path / "tb").detector()
    assert detector.geometry_hash() == Detector.builtin().geometry_hash()
    [record] = [r for r in caplog.records if "FALLING BACK" in r.getMessage()]
    assert record.getMessage().startswith(
        f"{store} has no detectors.csv and the config names no 'detector': FALLING BACK "
        f"to the built-in TrackML-like detector"
    )


def test_training_compiles_on_a_cuda_gpu_unless_the_config_says(tmp_path, monkeypatch):
    from tb_plugin.pretraining import stage as stage_module

    def config(**keys):
        values = {"stage": "tracking_bert", "model": "TrackingBERT", "input_dir": str(tmp_path / "in"), **keys}
        return stage_from_mapping({**values, "stage_dir": str(tmp_path / "tb")}, "t.yaml").config

    assert not config(accelerator="cpu").compiles()
    assert config(accelerator="cpu", compile_training=True).compiles()
    monkeypatch.setattr(stage_module, "inference_device", lambda accelerator: torch.device("cuda"))
    assert config(accelerator="gpu").compiles()
    assert not config(accelerator="gpu", compile_training=False).compiles()
