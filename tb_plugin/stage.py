"""What every pipeline stage shares: the common config keys and the train / infer / eval contract.

A stage is a plain class that owns its config. Stages that learn hold a LightningModule; they do not
inherit from one. `tb train/infer/eval` and `tb run` only ever talk to this interface.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from torch_geometric.data import Data
from tqdm import tqdm

from tb_plugin.atomic import atomic_path, write_text
from tb_plugin.config import ConfigError, to_record
from tb_plugin.event_store import (
    SPLITS,
    SplitError,
    append_config,
    list_event_files,
    load_event,
    remove_stale_temporaries,
    save_event,
    split_files,
)
from tb_plugin.shard import Shard

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class StageConfig:
    """Keys every stage understands (ACORN names)."""

    stage: str
    model: str
    stage_dir: Path
    input_dir: Path | None = None
    data_split: list[int] | None = None  # [n_train, n_val, n_test] events
    seed: int = 0

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)  # the mixins' checks (TrainerConfig)
        if parent is not None:
            parent()
        if self.data_split is not None:
            if len(self.data_split) != 3 or any(n < 0 for n in self.data_split):
                raise ValueError(
                    f"key 'data_split' must be three non-negative event counts [n_train, n_val, n_test], got {self.data_split}"
                )
        for key in ("input_dir", "trained_stage_dir"):
            refuse_overlap(self.stage_dir, key, getattr(self, key, None))


def refuse_overlap(stage_dir: Path, key: str, folder: Path | None) -> None:
    """A stage writes apart from what it reads: a stage_dir equal to its input_dir would find every
    output "already written" (the outputs are the inputs) and drop its artifacts into the input, and
    a folder inside the other would list one's files among the other's."""
    if folder is None:
        return
    out, other = Path(stage_dir).resolve(), Path(folder).resolve()
    if out == other:
        where = "is the same folder as"
    elif out.is_relative_to(other):
        where = "lies inside"
    elif other.is_relative_to(out):
        where = "contains"
    else:
        return
    raise ValueError(
        f"key 'stage_dir' ({stage_dir}) {where} key '{key}' ({folder}); a stage must write into a folder of "
        f"its own, apart from the one it reads: set stage_dir to another folder"
    )


@dataclass(kw_only=True)
class TrainedArtifactsConfig:
    """The key of the stages that can infer with artifacts trained in another run (mixed into their
    config dataclass). A trained pipeline applied to new events (real TrackML files after `make demo`)
    must read the training run's checkpoints and cuts but write its events elsewhere: in the training
    stage_dir they would mix with the training run's own splits, and its stale-split checks would
    refuse them."""

    # The stage_dir of a finished training run of this stage (e.g. runs/demo/filter): infer and eval
    # read its artifacts/ and write to stage_dir; `tb train` is refused and `tb run` does not train.
    # null = stage_dir's own artifacts/ (train writes them there).
    trained_stage_dir: Path | None = None


class NoTruthError(ValueError):
    """Evaluation of events without truth (real data): nothing to compare with. `tb eval` prints it in
    one line; `tb run` logs it and goes on with the next stage, whose inference needs no truth."""


EventProcessor = Callable[[Data, Path], Data]
"""Adds one stage's fields to one in-memory event; the Path names the event's source, for messages."""


class Stage:
    """Base of the built-in stages. Subclasses set `config_class` and implement `infer`; stages that
    add fields to events implement `event_processor`, which both their `infer` (disk to disk) and
    `stages.inference_chain.InferenceChain` (in memory) run."""

    config_class: ClassVar[type[StageConfig]] = StageConfig
    trainable: ClassVar[bool] = False
    # Set by `tb infer/run --shard K/N` (shard.py): inference writes this shard's events only
    # (inference_files), and touches no other shard's files.
    shard: Shard | None = None

    def __init__(self, config: StageConfig) -> None:
        self.config = config

    @property
    def stage_dir(self) -> Path:
        return Path(self.config.stage_dir)

    @property
    def trained_elsewhere(self) -> bool:
        """The config names another run's trained artifacts (TrainedArtifactsConfig): infer only."""
        config = self.config
        return isinstance(config, TrainedArtifactsConfig) and config.trained_stage_dir is not None

    @property
    def trained_dir(self) -> Path:
        """The stage_dir whose artifacts/ inference reads: trained_stage_dir when set, else stage_dir."""
        return Path(self.config.trained_stage_dir) if self.trained_elsewhere else self.stage_dir

    def train(self, checkpoint: Path | None = None) -> None:
        raise NotImplementedError(f"stage '{self.config.stage}' model '{self.config.model}' does not train")

    def infer(self, overwrite: bool = False) -> None:
        raise NotImplementedError

    def evaluate(self) -> dict[str, Any]:
        return {}

    def event_processor(self) -> EventProcessor:
        """Load what inference needs once (checkpoint, map, tokenizer) and return the function that adds
        this stage's fields to one in-memory event. One function serves `infer` and the in-memory
        chain, so the two cannot drift apart."""
        raise NotImplementedError(f"stage '{self.config.stage}' model '{self.config.model}' has no per-event inference")

    def require_input(self) -> None:
        """Refuse a missing or empty input_dir before anything is written: stages fall back to defaults
        (the built-in detector where a store has no detectors.csv) and would otherwise leave files
        made for data they never saw."""
        folder = self.config.input_dir
        if folder is None or not Path(folder).is_dir():
            raise ConfigError(
                f"key 'input_dir': {folder} does not exist; run the stage that writes it first "
                f"(data reading for a feature store), or point input_dir at that stage's stage_dir"
            )
        if not any(list_event_files(folder, split) for split in SPLITS):
            raise ConfigError(
                f"key 'input_dir': {folder} holds no event files in {{{','.join(SPLITS)}}}; run the stage "
                f"that writes it first, or point input_dir at that stage's stage_dir"
            )

    def input_files(self, split: str) -> list[Path]:
        """Sorted event files of a split of input_dir; data_split, when given, takes the first n of each."""
        files = list_event_files(self.config.input_dir, split)
        if self.config.data_split is not None:
            files = files[: self.config.data_split[SPLITS.index(split)]]
        return files

    def inference_files(self, split: str) -> list[Path]:
        """The input files of a split that this process infers: all of input_files, or under --shard K/N
        the shard's share of them (positions K-1, K-1+N, ... of the sorted list: shard.py)."""
        files = self.input_files(split)
        return self.shard.share(files) if self.shard is not None else files

    def unread_keys(self) -> frozenset[str]:
        """Config keys this stage's outputs do not depend on as configured (none by default): its stage
        record leaves them out, so changing one does not make finished outputs stale."""
        return frozenset()

    def input_paths(self) -> list[Path]:
        """The files whose contents decide this stage's outputs (its stage record fingerprints them): the
        events it reads, the input's geometry, and the artifacts of a trained_stage_dir."""
        paths = [path for split in SPLITS for path in self.input_files(split)] if self.config.input_dir else []
        if self.config.input_dir and (Path(self.config.input_dir) / "detectors.csv").is_file():
            paths.append(Path(self.config.input_dir) / "detectors.csv")
        if self.trained_elsewhere and (self.trained_dir / "artifacts").is_dir():
            paths += sorted(
                p for p in (self.trained_dir / "artifacts").iterdir() if p.is_file() and not p.name.startswith(".")
            )
        return paths

    def rewrite_events(self, add_fields: EventProcessor, overwrite: bool) -> None:
        """The inference loop of a stage that adds fields to events: every input event is read, given
        its new fields, stamped with this stage's config and written atomically to stage_dir; events
        already written are skipped (resume) unless `overwrite`. The input's detectors.csv is kept
        beside the output (copy_detector)."""
        record = self.config_record()
        total = 0
        name = self.config.stage
        self.prepare_outputs(overwrite)
        self.copy_detector()
        shard = f" (shard {self.shard})" if self.shard is not None else ""
        for split in SPLITS:
            total += len(self.input_files(split))  # a shard may own no event of a split, or of any
            files = self.inference_files(split)
            written = 0
            for path in tqdm(files, desc=f"{name} {split}{shard}", unit="event", leave=False):
                target = self.stage_dir / split / path.name
                if target.exists() and not overwrite:
                    continue
                data = load_event(path)
                data = add_fields(data, path)
                append_config(data, record)
                save_event(data, target)
                written += 1
            if files:
                log.info(
                    "%s %s%s: %d events written, %d already there", name, split, shard, written, len(files) - written
                )
        if total == 0:
            raise FileNotFoundError(
                f"no event files in {self.config.input_dir}/{{{','.join(SPLITS)}}}: nothing for {name} to do"
            )

    def copy_detector(self) -> None:
        """input_dir/detectors.csv copied (atomically) to stage_dir when the input has one and the output
        does not, so the next stage finds the geometry where it reads (a GNN after a filter sizes its
        module embedding with it). An output's own detectors.csv (tracking_bert writes the one it
        tokenised with) is left as it is."""
        if self.config.input_dir is None:
            return
        source, target = Path(self.config.input_dir) / "detectors.csv", self.stage_dir / "detectors.csv"
        if source.is_file() and not target.exists():
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)

    def prepare_outputs(self, overwrite: bool) -> None:
        """Before a run writes events: delete the temporaries a killed run left, and make stage_dir's
        splits mirror input_dir's. An output whose event the input now holds in another split, or no
        longer holds (data reading ran again with another seed or data_split), is deleted with
        `overwrite` and refused without: kept, it would sit beside the new copy in a second split.
        Under --shard this stays safe beside the other shards: such a file is no shard's output under
        this input, and a temporary is removed only by the shard that writes its event."""
        self.remove_temporaries()
        inputs = {split: {p.name for p in list_event_files(self.config.input_dir, split)} for split in SPLITS}
        if not any(inputs.values()):
            return  # no input at all: the caller says so, naming input_dir
        stale = [
            path
            for split, files in split_files(self.stage_dir).items()
            for path in files
            if path.name not in inputs[split]
        ]
        if not stale:
            return
        if not overwrite:
            first = stale[0]
            now = next((split for split in SPLITS if first.name in inputs[split]), None)
            where = (
                f"{self.config.input_dir} now has it in {now}" if now else f"{self.config.input_dir} no longer has it"
            )
            raise SplitError(
                f"{self.stage_dir}: {len(stale)} event file(s) do not match the splits of the input "
                f"(e.g. {first.parent.name}/{first.name}: {where}); rerun with --overwrite to rewrite "
                f"this stage, or delete {self.stage_dir}"
            )
        for path in stale:
            path.unlink(missing_ok=True)  # another shard may have removed it first
        log.info(
            "%s: removed %d event files whose input event moved to another split or went away",
            self.config.stage,
            len(stale),
        )

    def remove_temporaries(self, owned: Mapping[str, set[str]] | None = None) -> None:
        """Delete the half-written event files a killed run left in stage_dir; under --shard only those of
        this shard's events (`owned`: per split, the file names it writes; by default those of
        inference_files), as another shard's are being written right now."""
        if self.shard is None:
            owned = None
        elif owned is None:
            owned = {split: {path.name for path in self.inference_files(split)} for split in SPLITS}
        for path in remove_stale_temporaries(self.stage_dir, owned):
            log.info("%s: removed %s, left by a run that was killed while writing it", self.config.stage, path)

    def config_record(self) -> dict[str, Any]:
        return to_record(self.config)

    def write_metrics(self, metrics: dict[str, Any]) -> Path:
        """stage_dir/eval/metrics.json, with the config that produced it."""
        path = self.stage_dir / "eval" / "metrics.json"
        write_text(path, json.dumps({**metrics, "config": self.config_record()}, indent=2, default=float) + "\n")
        return path
