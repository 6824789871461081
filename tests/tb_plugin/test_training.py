"""The shared Trainer keys: validated where the config is loaded, passed on to Lightning."""

import pytest

from tb_plugin.config import ConfigError
from tb_plugin.pipeline import stage_from_mapping
from tb_plugin.training import make_trainer

GNN = {"stage": "edge_classifier", "model": "InteractionGNN", "input_dir": "in", "stage_dir": "out"}


def test_val_every_n_epochs_reaches_the_trainer(tmp_path):
    stage = stage_from_mapping({**GNN, "stage_dir": str(tmp_path), "val_every_n_epochs": 4, "max_epochs": 12}, "gnn.yaml")
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
    module = type("Module", (), {"log": lambda self, name, value: logged.append(name)})()
    timer = EpochTimer()
    timer.on_train_epoch_end(None, module)  # no start: nothing to log, no error
    timer.on_train_epoch_start(None, module)
    timer.on_train_epoch_end(None, module)
    assert logged == ["train/epoch_time_s"]
