"""One stage run of the A/B, and how a finished run is recognised: the floor both the sequential walk
(runner.py) and the worker processes (parallel.py) stand on, so neither imports the other.

A stage that has trained, inferred and been evaluated leaves `ab_stage.json` in its stage_dir, with
its train time and the config it ran with. A rerun reuses it only for that same config: resuming
after a config edit would silently mix old results into the new A/B.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tb_plugin.atomic import write_text
from tb_plugin.config import ConfigError, to_record
from tb_plugin.stage import Stage
from tb_plugin.training import TrainerConfig

STAGE_RECORD = "ab_stage.json"


def gradient_trained(stage: Stage) -> bool:
    """Stages with a Lightning Trainer depend on their seed; the others are deterministic."""
    return isinstance(stage.config, TrainerConfig)


def run_once(stage: Stage) -> dict[str, Any]:
    """Train (timed), infer and evaluate a stage unless its record says it is done; returns the record."""
    record_path = stage.stage_dir / STAGE_RECORD
    if record_path.exists():
        record = json.loads(record_path.read_text())
        check_same_config(record, stage, record_path)
        return record
    train_time = 0.0
    if stage.trainable:
        start = time.perf_counter()
        stage.train()
        train_time = time.perf_counter() - start
    stage.infer()
    stage.evaluate()
    record = {
        "stage": stage.config.stage,
        "model": stage.config.model,
        "train_time_s": train_time,
        "config": to_record(stage.config),
    }
    write_text(record_path, json.dumps(record, indent=2, default=json_default) + "\n")
    return record


def changed_keys(record: dict[str, Any], stage: Stage) -> list[str]:
    """The keys whose value in the stage's config differs from the one a finished run recorded."""
    current = json.loads(json.dumps(to_record(stage.config), default=json_default))
    previous = record.get("config", {})
    defaults = field_defaults(type(stage.config))
    return sorted(
        k
        for k in set(current) | set(previous)
        if current.get(k) != previous.get(k)
        # a key added in a later version, at its default (which keeps the old behaviour), is no change
        and not (k not in previous and k in defaults and current.get(k) == defaults[k])
    )


def finished_with(stage: Stage) -> bool:
    """Whether the stage's folder holds a finished run (its ab_stage.json) of exactly this config."""
    record_path = stage.stage_dir / STAGE_RECORD
    return record_path.is_file() and not changed_keys(json.loads(record_path.read_text()), stage)


def check_same_config(record: dict[str, Any], stage: Stage, record_path: Path) -> None:
    """A finished stage is reused only for the config that produced it."""
    current = json.loads(json.dumps(to_record(stage.config), default=json_default))
    previous = record.get("config", {})
    changed = changed_keys(record, stage)
    if changed:
        details = ", ".join(f"{k}: {previous.get(k)!r} -> {current.get(k)!r}" for k in changed[:5])
        raise ConfigError(
            f"{record_path}: this stage finished with another config ({details}); remove "
            f"{stage.stage_dir} (or use another ab_dir) to rerun it with the new one"
        )


def field_defaults(config_class: type) -> dict[str, Any]:
    """The plain declared defaults of a config dataclass's fields, as they read in a JSON record (fields
    without one, or with a default factory, are left out: such keys always count as changed)."""
    out = {}
    for f in dataclasses.fields(config_class):
        if f.default is not dataclasses.MISSING:
            try:
                out[f.name] = json.loads(json.dumps(f.default, default=json_default))
            except TypeError:
                continue
    return out


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


def config_paths(value: Any) -> Iterator[Path]:
    """The paths among a stage config's values, nested mappings and lists included (YAML gives strings,
    so every string is taken for a path: the callers compare them with stage folders)."""
    if isinstance(value, dict):
        for v in value.values():
            yield from config_paths(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from config_paths(v)
    elif isinstance(value, (str, Path)) and str(value):
        yield Path(value)


def json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
