"""Running stages from YAML: one stage config (`tb train/infer/eval`) or a pipeline of them (`tb run`).

A pipeline file lists stage configs in order:

    stages:
      - ../data_reading/simulated.yaml          # a stage config file, relative to this pipeline file
      - config: ../graph_construction/ml.yaml   # a file plus keys that override it
        max_epochs: 2
      - {stage: track_building, model: ConnectedComponents, ...}   # or inline

Each stage is trained (if it trains), then run in inference, then evaluated. Inference skips events
already written, so re-running an interrupted pipeline picks up where it stopped. Each phase runs
between the checks of the stage record (stage_record.py): a stage whose config or input changed since
it wrote its outputs is refused, or rewritten from scratch with `--overwrite`, never kept in silence.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tb_plugin import stage_record
from tb_plugin.config import ConfigError, build, load_yaml, unknown_key_message
from tb_plugin.registry import resolve
from tb_plugin.stage import NoTruthError, Stage

log = logging.getLogger(__name__)


def stage_from_mapping(values: Mapping[str, Any], source: str) -> Stage:
    """Select the stage class by `stage`/`model` and build its typed config."""
    for key in ("stage", "model"):
        if key not in values:
            raise ConfigError(f"{source}: missing required key '{key}' (it selects the stage class)")
        if not isinstance(values[key], str):
            raise ConfigError(f"{source}: key '{key}' must be a string, got {values[key]!r}")
    cls = resolve(values["stage"], values["model"], source)
    config = build(cls.config_class, values, source)
    return cls(config)


def load_stage(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Stage:
    values = load_yaml(path)
    values.update(overrides or {})
    return stage_from_mapping(values, str(path))


@dataclass(frozen=True)
class PipelineEntry:
    values: dict[str, Any]
    source: str


def load_pipeline(path: str | Path) -> list[PipelineEntry]:
    """Resolve every entry of a pipeline file into its stage config mapping, checking all before running any."""
    path = Path(path)
    spec = load_yaml(path)
    unknown = set(spec) - {"stages"}
    if unknown:
        raise ConfigError(unknown_key_message(str(path), sorted(unknown)[0], ["stages"]))
    entries = spec.get("stages")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: key 'stages' must be a non-empty list of stage config files or mappings")
    resolved = []
    for i, entry in enumerate(entries):
        where = f"{path}: stages[{i}]"
        if isinstance(entry, str):
            file = (path.parent / entry).resolve()
            resolved.append(PipelineEntry(load_yaml(file), str(file)))
        elif isinstance(entry, Mapping) and "config" in entry:
            if not isinstance(entry["config"], str):
                raise ConfigError(f"{where}: key 'config' must be a path to a stage config file")
            file = (path.parent / entry["config"]).resolve()
            values = load_yaml(file)
            values.update({k: v for k, v in entry.items() if k != "config"})
            resolved.append(PipelineEntry(values, f"{file} (with overrides from {where})"))
        elif isinstance(entry, Mapping):
            resolved.append(PipelineEntry(dict(entry), where))
        else:
            raise ConfigError(f"{where}: expected a config file path or a mapping, got {entry!r}")
    return resolved


def run_phase(stage: Stage, phase: str, action: Callable[[], Any], overwrite: bool = False) -> Any:
    """One phase of a stage between its record's checks: refused when the stage folder is stale (or
    cleared, with `overwrite`), marked finished with its wall time when `action` returns."""
    with stage_record.running(stage, phase, overwrite):
        return action()


def run_stage(stage: Stage, overwrite: bool = False) -> dict[str, Any]:
    """Train (where the stage trains, unless it uses another run's artifacts: trained_stage_dir, or has
    finished training for this very config and input), infer, then evaluate one stage; returns its
    metrics, {} for events without truth (real data), whose evaluation is skipped with one line so
    that the next stage still runs."""
    name = f"{stage.config.stage}/{stage.config.model}"
    if stage.trained_elsewhere:
        log.info("[%s] not trained here: inference uses the artifacts of %s", name, stage.trained_dir)
    elif stage.trainable and stage_record.phase_done(stage, "train"):
        log.info("[%s] trained already, with this config and input", name)
    elif stage.trainable:
        log.info("[%s] train", name)
        run_phase(stage, "train", stage.train, overwrite)
    log.info("[%s] infer -> %s", name, stage.stage_dir)
    start = time.perf_counter()
    run_phase(stage, "infer", lambda: stage.infer(overwrite=overwrite), overwrite)
    log.info("[%s] infer took %.1f s", name, time.perf_counter() - start)
    log.info("[%s] eval", name)
    return run_phase(stage, "eval", lambda: evaluate_if_truth(stage, name))


def evaluate_if_truth(stage: Stage, name: str) -> dict[str, Any]:
    try:
        return stage.evaluate()
    except NoTruthError as err:
        log.warning("[%s] eval skipped: %s", name, err)
        return {}


def load_stages(path: str | Path) -> list[Stage]:
    return [stage_from_mapping(e.values, e.source) for e in load_pipeline(path)]


def pipeline_status(stages: list[Stage]) -> list[stage_record.Status]:
    """Each stage's status, with the chain followed: a stage that reads the folder of an earlier stage
    which a run would rewrite (stale, missing, or stopped before its inference finished) is stale too,
    though its own record cannot know it yet."""
    rewritten: dict[Path, Path] = {}  # resolved folder -> as its config names it
    statuses = []
    for stage in stages:
        status = stage_record.status(stage)
        reads = {p.resolve() for p in stage_record.config_paths(stage_record.plain_keys(stage.config))}
        reads.discard(stage.stage_dir.resolve())
        upstream = [shown for folder, shown in rewritten.items() if folder in reads]
        if upstream and status.state in ("up to date", "incomplete"):
            status = stage_record.Status("stale", f"its upstream stage {upstream[0]} is to be rerun")
        if status.rewrites:
            rewritten[stage.stage_dir.resolve()] = stage.stage_dir
        statuses.append(status)
    return statuses


def run_pipeline(path: str | Path, overwrite: bool = False) -> list[dict[str, Any]]:
    """Every stage in order; without `overwrite`, a stale stage anywhere in the chain is refused before
    any stage runs."""
    stages = load_stages(path)
    if not overwrite:
        for stage, status in zip(stages, pipeline_status(stages)):
            if status.state == "stale":
                raise stage_record.StaleOutputError(
                    f"{path}: stage {stage.config.stage}/{stage.config.model} ({stage.stage_dir}) is stale: "
                    f"{status.reason}; rerun with --overwrite to rewrite it and what follows ('tb status {path}' lists all)"
                )
    return [run_stage(stage, overwrite=overwrite) for stage in stages]
