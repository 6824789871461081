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

`tb run PIPELINE --shard K/N` (shard.py) runs shard K of every stage's inference, stage after stage.
Training is not sharded: a pipeline with a stage that trains here and has not finished training for
its config and input is refused before any stage runs (train once with a plain `tb run`, then shard
inference; a pipeline of `trained_stage_dir` configs applied to new events needs none). After its
share of a stage, a shard waits until every shard has finished that stage (their markers in
stage_dir/shards), since the next stage reads all of its events; shard 1 then evaluates it. A shard
that failed ends the wait of the others with its error; one killed without a trace (out of time)
keeps them waiting until their own time runs out.
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
from tb_plugin.shard import Shard
from tb_plugin.stage import NoTruthError, Stage

log = logging.getLogger(__name__)
SHARD_POLL_S = 5.0  # how often a shard of `tb run --shard` looks whether the others have finished a stage


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


def infer_phase(stage: Stage, overwrite: bool = False) -> None:
    """The infer phase: `run_phase` of stage.infer, which also rewrites the events it finds where the
    record says so (a shard of an inference begun over stale outputs with --overwrite by any shard)."""
    with stage_record.running(stage, "infer", overwrite) as rewrite:
        stage.infer(overwrite=overwrite or rewrite)


def run_stage(stage: Stage, overwrite: bool = False) -> dict[str, Any]:
    """Train (where the stage trains, unless it uses another run's artifacts: trained_stage_dir, or has
    finished training for this very config and input), infer, then evaluate one stage; returns its
    metrics, {} for events without truth (real data), whose evaluation is skipped with one line so
    that the next stage still runs. With stage.shard set, only that shard's inference runs (after
    waiting for the other shards, shard 1 evaluates: `run_shard`)."""
    name = f"{stage.config.stage}/{stage.config.model}"
    if stage.shard is not None:
        return run_shard(stage, name, overwrite)
    if stage.trained_elsewhere:
        log.info("[%s] not trained here: inference uses the artifacts of %s", name, stage.trained_dir)
    elif stage.trainable and stage_record.phase_done(stage, "train"):
        log.info("[%s] trained already, with this config and input", name)
    elif stage.trainable:
        log.info("[%s] train", name)
        run_phase(stage, "train", stage.train, overwrite)
    log.info("[%s] infer -> %s", name, stage.stage_dir)
    start = time.perf_counter()
    infer_phase(stage, overwrite)
    log.info("[%s] infer took %.1f s", name, time.perf_counter() - start)
    log.info("[%s] eval", name)
    return run_phase(stage, "eval", lambda: evaluate_if_truth(stage, name))


def run_shard(stage: Stage, name: str, overwrite: bool = False) -> dict[str, Any]:
    """One stage of `tb run --shard K/N`: this shard's inference, the wait for the others, and for
    shard 1 the evaluation (one shard evaluates, the stage's events being complete only then)."""
    shard = stage.shard
    log.info("[%s] infer, shard %s -> %s", name, shard, stage.stage_dir)
    start = time.perf_counter()
    infer_phase(stage, overwrite)
    log.info("[%s] shard %s: infer took %.1f s", name, shard, time.perf_counter() - start)
    wait_for_shards(stage, name)
    if shard.index != 1:
        return {}
    log.info("[%s] eval (shard 1 of %d)", name, shard.count)
    stage.shard = None  # evaluation reads every shard's events
    try:
        return run_phase(stage, "eval", lambda: evaluate_if_truth(stage, name))
    finally:
        stage.shard = shard


def wait_for_shards(stage: Stage, name: str) -> None:
    """Until every shard of this stage's inference has finished (its marker matches the record); a
    failed shard, or a record that changed under the wait (another config run into the same stage_dir),
    ends it with one line. Logs which shards it waits for, at most once a minute."""
    said = -60.0
    start = time.perf_counter()
    while True:
        record = stage_record.read_record(stage.stage_dir) or {}
        progress = stage_record.shard_progress(stage.stage_dir, record)
        if progress is None or progress.count != stage.shard.count:
            raise stage_record.StaleOutputError(
                f"{stage.stage_dir}: its stage record no longer describes a {stage.shard.count}-shard inference "
                f"(another run wrote it while shard {stage.shard} waited); rerun the shards"
            )
        if progress.failed:
            raise stage_record.StaleOutputError(f"{stage.stage_dir}: {stage_record.shards_unfinished(progress)}")
        if progress.complete:
            return
        waited = time.perf_counter() - start
        if waited - said >= 60.0:
            missing = ", ".join(str(k) for k in progress.missing)
            log.info("[%s] shard %s waits for shard(s) %s of %d", name, stage.shard, missing, progress.count)
            said = waited
        time.sleep(SHARD_POLL_S)


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


def run_pipeline(path: str | Path, overwrite: bool = False, shard: Shard | None = None) -> list[dict[str, Any]]:
    """Every stage in order; without `overwrite`, a stale stage anywhere in the chain is refused before
    any stage runs. With `shard`, this shard's inference of each stage (the module docstring)."""
    stages = load_stages(path)
    if shard is not None:
        refuse_untrained(stages, path, shard)
        for stage in stages:
            stage.shard = shard
    if not overwrite:
        # A shard checks each stage's own record only: the other shards rerunning a finished stage make
        # it incomplete for a while, which the chain would pass on as "stale" to every later stage. A
        # stage downstream of one rewritten by this run is still refused, at its own start.
        statuses = pipeline_status(stages) if shard is None else [stage_record.status(s) for s in stages]
        for stage, status in zip(stages, statuses):
            if status.state == "stale":
                raise stage_record.StaleOutputError(
                    f"{path}: stage {stage.config.stage}/{stage.config.model} ({stage.stage_dir}) is stale: "
                    f"{status.reason}; rerun with --overwrite to rewrite it and what follows ('tb status {path}' lists all)"
                )
    return [run_stage(stage, overwrite=overwrite) for stage in stages]


def refuse_untrained(stages: list[Stage], path: str | Path, shard: Shard) -> None:
    """Training is not sharded (N processes would each train, or race on one checkpoint): under
    --shard, a stage that trains here must have finished training for its config and input."""
    for stage in stages:
        if stage_record.trains_here(stage) and not stage_record.phase_done(stage, "train"):
            raise ConfigError(
                f"{path}: --shard {shard}: stage {stage.config.stage}/{stage.config.model} ({stage.stage_dir}) "
                f"has not finished training for this config and input, and training is not sharded: train "
                f"once first ('tb run {path}' without --shard), then shard inference"
            )
