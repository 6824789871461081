"""The shared Trainer keys: validated where the config is loaded, passed on to Lightning."""

import os

import lightning as L
import pytest
import torch

from tb_plugin.config import ConfigError
from tb_plugin.pipeline import stage_from_mapping
from tb_plugin.training import make_trainer

GNN = {"stage": "edge_classifier", "model": "InteractionGNN", "input_dir": "in", "stage_dir": "out"}


def test_val_every_n_epochs_reaches_the_trainer(tmp_path):
    stage = stage_from_mapping(
        {**GNN, "stage_dir": str(tmp_path), "val_every_n_epochs": 4, "max_epochs": 12}, "gnn.yaml"
    )
    trainer = make_trainer(stage.config, tmp_path)
    assert trainer.check_val_every_n_epoch == 4
    assert trainer.max_epochs == 12


@pytest.mark.parametrize("value", [0, -2])
def test_val_every_n_epochs_must_be_positive(value):
    with pytest.raises(ConfigError, match=r"gnn.yaml: key 'val_every_n_epochs' must be an integer >= 1"):
        stage_from_mapping({**GNN, "val_every_n_epochs": value}, "gnn.yaml")


def test_epoch_timer_ignores_an_epoch_end_without_a_start():
    """Resuming a fit that already reached max_epochs ends an epoch that never started (tb run twice)."""
    from tb_plugin.training import EpochTimer

    logged = []
    module = type("Module", (), {"log": lambda self, name, value, **options: logged.append(name)})()
    timer = EpochTimer()
    timer.on_train_epoch_end(None, module)  # no start: nothing to log, no error
    timer.on_train_epoch_start(None, module)
    timer.on_train_epoch_end(None, module)
    assert logged == ["train/epoch_time_s"]


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_checkpoint_with_foreign_objects_is_refused_naming_the_file(tmp_path, monkeypatch):
    from tb_plugin.training import CheckpointError, read_checkpoint

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "best.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "payload": _RunsCode()}, path)
    with pytest.raises(
        CheckpointError, match=rf"^{path}: refused to load: the checkpoint holds objects other than tensors"
    ) as err:
        read_checkpoint(path)
    assert str(err.value).endswith("(it needs posix.system); delete it and run 'tb train' again")
    assert "\n" not in str(err.value) and "weights_only" not in str(err.value)  # not torch's advice to load it unsafely
    assert not (tmp_path / "pwned").exists()
    path.write_bytes(b"half a checkpoint")
    with pytest.raises(CheckpointError, match=rf"^{path}: not a readable checkpoint"):
        read_checkpoint(path)
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match=rf"^{path}: not a checkpoint written by 'tb train'"):
        read_checkpoint(path)


def test_weights_of_another_size_are_one_message_naming_the_file(tmp_path):
    from tb_plugin.model import TrackingBERTModule
    from tb_plugin.training import CheckpointError, load_module

    small = TrackingBERTModule(model={"vocab_size": 9, "n_embd": 8, "n_head": 2, "n_layer": 1, "d_ff": 8}, optim={})
    path = tmp_path / "last.ckpt"
    hparams = {"model": {**small.hparams["model"], "n_embd": 16}, "optim": {}}  # says 16, holds 8
    torch.save({"state_dict": small.state_dict(), "hyper_parameters": hparams}, path)
    with pytest.raises(CheckpointError, match=rf"^{path}: does not fit a TrackingBERTModule \(Error\(s\) in loading"):
        load_module(TrackingBERTModule, path)
    torch.save({"state_dict": small.state_dict(), "hyper_parameters": dict(small.hparams)}, path)
    loaded = load_module(TrackingBERTModule, path)
    assert not loaded.training and torch.equal(loaded.model.module_embeddings(), small.model.module_embeddings())


@pytest.mark.parametrize(
    ("device", "clip", "fused"),
    [("cuda", None, True), ("cuda", 0.0, True), ("cuda", 1.0, False), ("cpu", None, False), ("cpu", 1.0, False)],
)
def test_adamw_is_fused_on_cuda_only_when_nothing_is_clipped(device, clip, fused):
    """The device and the Trainer's clipping decide; the optimizer is only built, so no GPU is needed."""
    from tb_plugin.training import adamw

    module = L.LightningModule()
    module.layer = torch.nn.Linear(2, 1)
    module.trainer = L.Trainer(accelerator="cpu", gradient_clip_val=clip, logger=False, enable_checkpointing=False)
    module._device = torch.device(device, 0)  # where Lightning's .to() records it; a CUDA index needs no GPU
    assert adamw(module, module.parameters(), lr=1e-3).defaults["fused"] is fused
