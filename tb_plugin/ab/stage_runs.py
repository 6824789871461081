"""One stage run of the A/B, and how a finished run is recognised: the floor both the sequential walk
(runner.py) and the worker processes (parallel.py) stand on, so neither imports the other.

A stage is run as `tb run` runs it (pipeline.run_stage), so its stage record (stage_record.py) says
when it has finished and with which config and input. A rerun of the A/B reuses a finished stage only
when nothing changed: resuming after a config edit would silently mix old results into the new A/B.
"""

from __future__ import annotations

from typing import Any

from tb_plugin import stage_record
from tb_plugin.config import to_record
from tb_plugin.pipeline import run_stage
from tb_plugin.stage import Stage
from tb_plugin.training import TrainerConfig


def gradient_trained(stage: Stage) -> bool:
    """Stages with a Lightning Trainer depend on their seed; the others are deterministic."""
    return isinstance(stage.config, TrainerConfig)


def run_once(stage: Stage) -> dict[str, Any]:
    """Train (timed), infer and evaluate a stage unless its record says it is done with this config and
    input; returns what the A/B keeps of it (train time, config). A stage folder made from another
    config or input is refused: the A/B has no --overwrite, a new ab_dir is the clean rerun."""
    status = stage_record.status(stage)
    if status.state == "stale":
        raise stage_record.StaleOutputError(
            f"{stage.stage_dir}: this stage finished with another config or input ({status.reason}); remove "
            f"{stage.stage_dir} (or use another ab_dir) to rerun it with the new one"
        )
    if status.state != "up to date":
        run_stage(stage)
    return {
        "stage": stage.config.stage,
        "model": stage.config.model,
        "train_time_s": stage_record.train_seconds(stage),
        "config": to_record(stage.config),
    }


def finished_with(stage: Stage) -> bool:
    """Whether the stage's folder holds a finished run of exactly this config and input."""
    return stage_record.status(stage).state == "up to date"


def trainable_parameters(stage: Stage) -> int:
    """Parameters with gradients of the stage's trained model; 0 for stages without one."""
    trained = getattr(stage, "trained", None)
    if trained is None or not gradient_trained(stage):
        return 0
    try:
        module = trained()
    except ValueError:  # a stage of a source without a model (tracking_bert with source: geometry)
        return 0
    module = module[0] if isinstance(module, tuple) else module
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad))
