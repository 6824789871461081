"""Inference of several stages on one event in memory, timed per stage.

Each stage's `event_processor` (tb_plugin.stage.Stage) is prepared once, when the chain is built, and
the functions then run in order on one event with no disk I/O between stages: what `tb infer` would
write stage by stage, without writing it. It measures the per-event inference time of a pipeline
(benchmarks/inference_speed.py, the A/B runner in tb_plugin/ab/).

    chain = InferenceChain([module_map, gnn, cc])
    data, seconds = chain.run(load_event(path), path)       # a loaded feature-store event
    chain = InferenceChain([reader, module_map, gnn, cc])   # data reading first:
    data, seconds = chain.run(None, prefix)                 # the source is the TrackML prefix

`seconds` maps each stage's `config.stage` name to its wall seconds on this event; a name that repeats
is suffixed `_2`, `_3`, ... in pipeline order (`stage_names`). The input Data is not changed: the
chain works on a shallow copy, so one loaded event can go through several chains.

From a pipeline YAML (`chain_from_pipeline`): data reading is left out by default, so the caller
starts from a loaded feature-store event (the inputs of both arms of an A/B comparison are then the
same object, and reading CSVs is not charged to the pipeline); `include_reading=True` keeps it, and
`run(None, prefix)` then starts from the CSV files.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

from torch_geometric.data import Data

from tb_plugin.pipeline import load_pipeline, stage_from_mapping
from tb_plugin.stage import EventProcessor, Stage

READING_STAGE = "data_reading"


def unique_names(names: list[str]) -> list[str]:
    """Each name, with `_2`, `_3`, ... on its second, third, ... occurrence."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


class InferenceChain:
    """The processors of `stages`, prepared once and run in order on one in-memory event."""

    def __init__(self, stages: list[Stage]) -> None:
        if not stages:
            raise ValueError("an inference chain needs at least one stage")
        later_readers = [s.config.model for s in stages[1:] if s.config.stage == READING_STAGE]
        if later_readers:
            raise ValueError(
                f"data reading ({', '.join(later_readers)}) can only be the first stage of a chain: it reads "
                "files, it does not add to an event"
            )
        self.stages = list(stages)
        self.stage_names = unique_names([s.config.stage for s in self.stages])
        self.starts_from_files = self.stages[0].config.stage == READING_STAGE
        self.processors: list[EventProcessor] = [s.event_processor() for s in self.stages]

    def run(self, data: Data | None, source: str | Path) -> tuple[Data, dict[str, float]]:
        """(the event with every stage's fields, wall seconds per stage). `data` is a loaded event, or
        None when the chain starts with data reading and `source` is the event's TrackML prefix."""
        source = Path(source)
        if data is None and not self.starts_from_files:
            raise ValueError(
                f"{source}: the chain starts with {self.stage_names[0]}, which adds to a loaded event; "
                "pass the event's Data (or put data reading first to start from its TrackML files)"
            )
        event = None if data is None else copy.copy(data)
        seconds: dict[str, float] = {}
        for name, process in zip(self.stage_names, self.processors):
            start = time.perf_counter()
            event = process(event, source)
            seconds[name] = time.perf_counter() - start
        return event, seconds


def chain_from_pipeline(path: str | Path, include_reading: bool = False) -> InferenceChain:
    """The chain of a pipeline file's stages (trained already: processors load their checkpoints and
    maps). Data reading is left out unless `include_reading`; see the module docstring for why."""
    stages = [stage_from_mapping(e.values, e.source) for e in load_pipeline(path)]
    if not include_reading:
        stages = [s for s in stages if s.config.stage != READING_STAGE]
    if not stages:
        raise ValueError(f"{path}: no stage left to chain (the pipeline holds only data reading)")
    return InferenceChain(stages)
