"""The A/B's arms as stage configs, built from one pipeline file so that they cannot drift apart.

    baseline      data reading -> [the downstream stages of the pipeline]
    <table arm>   data reading -> tracking_bert (source pretrained / random / shuffled / geometry)
                  -> [the same stages, hit_tb_emb appended to node_features and tb_sim to
                  edge_features wherever a stage has those keys]
    <model arm>   data reading -> [the same stages, each edge classifier with a trainable per-module
                  vector of the table's width: `module_embedding` (source learned: from scratch;
                  finetune: from the pretrained table)]
    <keys arm>    any of the above with `keys`, set by model on that arm's stages only

Data reading runs once and is shared: every arm sees the same events and splits. Each tracking_bert
source runs once, whatever the number of arms reading it: the pretrained one on the trainset and
valset of data reading only, never on the test events; random and geometry train nothing; shuffled
permutes the pretrained checkpoint. Each seed sets `seed` of every downstream stage in every arm.
Stages without a Trainer (module map, connected components) are deterministic given their input, so
a run of them whose upstream is seed-free is shared by the seeds instead of being repeated, and a
stage whose config and input are the baseline's is the baseline's run.

Folders under ab_dir:

    tracking_bert/                      the pretrained stage (key tracking_bert_dir moves it)
    tracking_bert_<source>/             the other table sources
    <arm>/<stage>/                      seed-free stages (e.g. the module map)
    <arm>/seed<k>/<stage>/              the rest, per seed
    low_label/n<n>/<arm>/seed<k>/...    the low-label sweep
"""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Any

from tb_plugin.ab.config import BASELINE, MODEL_SOURCES, TABLE_SOURCES, ABConfig, ArmSpec, FeatureAddition
from tb_plugin.ab.stage_runs import finished_with, gradient_trained
from tb_plugin.config import ConfigError, load_yaml
from tb_plugin.event_store import list_event_files
from tb_plugin.injection import MODULE_TABLE_FILE
from tb_plugin.pipeline import load_pipeline, stage_from_mapping
from tb_plugin.registry import resolve
from tb_plugin.stage import Stage
from tb_plugin.stage_record import config_paths


class ArmBuilder:
    """Every arm's stage configs, wired to their folders: the runner and the worker tasks read these."""

    def __init__(self, config: ABConfig, source: str = "the A/B config") -> None:
        self.config = config
        self.specs = config.arm_specs()
        entries = load_pipeline(config.pipeline)
        if entries[0].values.get("stage") != "data_reading":
            raise ConfigError(
                f"{config.pipeline}: the A/B needs data reading as the pipeline's first stage "
                f"(all arms share its events), got stage '{entries[0].values.get('stage')}'"
            )
        if len(entries) < 2:
            raise ConfigError(f"{config.pipeline}: the A/B needs stages after data reading to compare")
        for entry in entries[1:]:
            if entry.values.get("stage") in ("data_reading", "tracking_bert"):
                raise ConfigError(
                    f"{entry.source}: the baseline pipeline must not hold a '{entry.values['stage']}' stage "
                    f"after data reading (the A/B adds tracking_bert itself)"
                )
        self.reading_values = dict(entries[0].values)
        self.downstream = [dict(e.values) for e in entries[1:]]
        self.check_keys(source)
        self.tb_values = load_yaml(config.tracking_bert)
        if self.tb_values.get("stage") != "tracking_bert":
            raise ConfigError(
                f"{config.tracking_bert}: key 'stage' must be tracking_bert, got {self.tb_values.get('stage')!r}"
            )
        self.ab_dir = Path(config.ab_dir)

    def check_keys(self, source: str) -> None:
        """Keys set by model must name a model of the pipeline: a typo would leave two arms equal."""
        models = sorted({str(v.get("model")) for v in self.downstream})
        named = [("baseline_keys", self.config.baseline_keys)]
        if self.config.arms is None:
            named.append(("trackingbert_keys", self.config.trackingbert_keys))
        else:
            named += [(f"arms.{arm}.keys", spec.keys) for arm, spec in self.specs.items()]
        for key, keys in named:
            for model in keys:
                if model not in models:
                    raise ConfigError(
                        f"{source}: key '{key}.{model}': the pipeline {self.config.pipeline.name} has no stage of "
                        f"model '{model}'; its models are {', '.join(models)}"
                    )

    # ------------------------------------------------------------------------------ shared stages

    def reading_stage(self) -> Stage:
        return stage_from_mapping(self.reading_values, str(self.config.pipeline))

    def embedding_dir(self, source: str) -> Path:
        """The stage_dir of the tracking_bert stage of a table source: the pretrained one where
        tracking_bert_dir puts it; a control's in ab_dir, or its twin in reuse_ab_dir when that finished
        with the same config (then the arms reading it can be reused from there too)."""
        if source == "pretrained":
            return Path(self.config.tracking_bert_dir or self.ab_dir / "tracking_bert")
        own = self.ab_dir / f"tracking_bert_{source}"
        if self.config.reuse_ab_dir is None:
            return own
        twin = Path(self.config.reuse_ab_dir) / own.name
        values = self.embedding_values(source, twin)
        return twin if finished_with(stage_from_mapping(values, str(self.config.tracking_bert))) else own

    def embedding_values(self, source: str, stage_dir: Path | None = None) -> dict[str, Any]:
        """The tracking_bert stage of one table source: the A/B's config with its `source` set."""
        values = {
            **self.tb_values,
            "input_dir": self.reading_stage().stage_dir,
            "stage_dir": stage_dir or self.embedding_dir(source),
            "source": source,
        }
        if source == "pretrained" and "source" not in self.tb_values:
            del values["source"]  # the pretrained stage's record stays that of today's configs
        if source == "shuffled":
            values["pretrained_dir"] = self.embedding_dir("pretrained")
        return values

    def embedding_stage(self, source: str) -> Stage:
        return stage_from_mapping(self.embedding_values(source), str(self.config.tracking_bert))

    def pretraining_values(self) -> dict[str, Any]:
        return self.embedding_values("pretrained")

    def pretraining_stage(self) -> Stage:
        return self.embedding_stage("pretrained")

    def table_width(self) -> int:
        """The width of the injected table (`dim`, else n_embd): the learned vectors get the same."""
        config = self.pretraining_stage().config
        return int(config.dim or config.n_embd)

    def embedding_sources(self) -> list[str]:
        """The tracking_bert sources some arm reads (its events, its model or its module table), in the
        order they must run: a shuffled control needs the pretrained stage."""
        seed = self.config.seeds[0]
        read = {p for arm in self.specs for values in self.arm_values(arm, seed) for p in config_paths(values)}
        needed = {s for s in TABLE_SOURCES if any(p.is_relative_to(self.embedding_dir(s)) for p in read)}
        if "shuffled" in needed:
            needed.add("pretrained")
        return [s for s in TABLE_SOURCES if s in needed]

    def spec(self, arm: str) -> ArmSpec | None:
        """The arm's spec; None for the baseline."""
        if arm == BASELINE:
            return None
        if arm not in self.specs:
            raise ValueError(f"unknown arm '{arm}'; expected one of {', '.join([BASELINE, *self.specs])}")
        return self.specs[arm]

    def reads_table(self, arm: str) -> bool:
        """Whether the arm's downstream stages read a tracking_bert stage's events (hit_tb_emb)."""
        spec = self.spec(arm)
        return spec is not None and spec.source in TABLE_SOURCES and spec.features is not None

    # ------------------------------------------------------------------------------ one arm

    def arm_values(self, arm: str, seed: int, n_labelled: int | None = None) -> list[dict[str, Any]]:
        """The downstream stage configs of one arm and seed (and labelled-event count), wired in order.

        A stage whose config and input are the baseline's (an arm that sets keys on a later stage only,
        e.g. track building, or a learned arm's module map) keeps the baseline's folder, so the arms
        share it instead of running it twice."""
        spec = self.spec(arm)
        table = spec is not None and spec.source in TABLE_SOURCES
        upstream = self.embedding_dir(spec.source) if self.reads_table(arm) else self.reading_stage().stage_dir
        shared = self.arm_values(BASELINE, seed, n_labelled) if spec is not None else []
        seeded = False
        wired = []
        for i, (values, name) in enumerate(zip(self.downstream, stage_folders(self.downstream))):
            values = copy.deepcopy(values)
            values["input_dir"] = upstream
            keys = spec.keys if spec is not None else self.config.baseline_keys
            values.update(copy.deepcopy(keys.get(values["model"], {})))
            if spec is not None and spec.features is not None:
                if spec.source in MODEL_SOURCES:
                    self.add_module_embedding(values, spec)
                else:
                    self.add_features(values, spec.features)
            if spec is not None and spec.source != "none":
                model_dir = self.embedding_dir(spec.source if table else "pretrained")
                self.point_at_model(values, model_dir, upstream)
            stage = stage_from_mapping(values, f"the A/B arm {arm}")
            if n_labelled is not None and gradient_trained(stage):
                self.set_labelled_events(values, stage, n_labelled)
            seeded = seeded or gradient_trained(stage)
            if seeded:  # a seed-free stage keeps its own seed: one run of it serves every seed
                values["seed"] = seed
            root = self.ab_dir
            if n_labelled is not None and seeded:
                root = root / "low_label" / f"n{n_labelled}"
            folder = root / arm / (f"seed{seed}" if seeded else "") / name
            if i < len(shared) and {**values, "stage_dir": None} == {**shared[i], "stage_dir": None}:
                folder = shared[i]["stage_dir"]
            values["stage_dir"] = self.reused(values, folder, upstream)
            wired.append(values)
            upstream = values["stage_dir"]
        return wired

    def add_features(self, values: dict[str, Any], add: FeatureAddition) -> None:
        """Append the features (and their scales) to the stage's feature keys, where the stage has them; a
        stage without scales gets 1.0 for its own features, which is no scaling."""
        config = stage_from_mapping(values, "the A/B arm").config
        for key, scale_key, extra, extra_scales in (
            ("node_features", "node_scales", add.node_features, add.node_scales),
            ("edge_features", "edge_scales", add.edge_features, add.edge_scales),
        ):
            if not extra or not hasattr(config, key):
                continue
            current = list(getattr(config, key))
            values[key] = current + list(extra)
            if hasattr(config, scale_key):
                scales = getattr(config, scale_key)
                values[scale_key] = (list(scales) if scales is not None else [1.0] * len(current)) + list(extra_scales)

    def add_module_embedding(self, values: dict[str, Any], spec: ArmSpec) -> None:
        """A learned or fine-tuned arm: each stage with the `module_embedding` key trains a per-module
        vector of the table's width in place of hit_tb_emb, and its cosine in place of tb_sim when the
        features name tb_sim. Stages without the key (the module map, metric learning) are unchanged."""
        config_class = resolve(str(values.get("stage")), str(values.get("model")), "the A/B arm").config_class
        if not any(f.name == "module_embedding" for f in dataclasses.fields(config_class)):
            return
        finetune = spec.source == "finetune"
        values["module_embedding"] = {
            "dim": self.table_width(),
            "init": "table" if finetune else "random",
            "table": self.embedding_dir("pretrained") / MODULE_TABLE_FILE if finetune else None,
            "similarity": "tb_sim" in spec.features.edge_features,
        }

    @staticmethod
    def point_at_model(values: dict[str, Any], model_dir: Path, upstream: Path) -> None:
        """A stage that asks for the model by a key set to `tb` (track building's stitch: tb and reject:
        tb) reads the arm's tracking_bert stage unless its config names one; a module map whose prior
        scores with tb reads that stage's module table when its input does not hold one."""
        config_class = resolve(str(values.get("stage")), str(values.get("model")), "the A/B arm").config_class
        has_key = any(f.name == "tracking_bert_dir" for f in dataclasses.fields(config_class))
        if has_key and values.get("tracking_bert_dir") is None and any(v == "tb" for v in values.values()):
            values["tracking_bert_dir"] = model_dir
        prior = values.get("prior")
        if isinstance(prior, dict) and prior.get("scorer", "tb") == "tb" and prior.get("table") is None:
            if Path(upstream) != Path(model_dir):
                values["prior"] = {**prior, "table": model_dir / MODULE_TABLE_FILE}

    def reused(self, values: dict[str, Any], folder: Path, upstream: Path) -> Path:
        """`folder`, or its twin under `reuse_ab_dir` when that holds a finished run of the same config on
        the same input (upstream stages reused, or shared by both A/Bs: data reading, a pretraining
        named by tracking_bert_dir): another A/B's runs are read instead of run again."""
        other = self.config.reuse_ab_dir
        if other is None or not Path(folder).is_relative_to(self.ab_dir):
            return folder
        if Path(upstream).is_relative_to(self.ab_dir) and not Path(upstream).is_relative_to(other):
            return folder  # the input is this A/B's own run: nothing made from it can be elsewhere
        twin = Path(other) / Path(folder).relative_to(self.ab_dir)
        return twin if finished_with(stage_from_mapping({**values, "stage_dir": twin}, "the A/B arm")) else folder

    # ------------------------------------------------------------------------------ low labels

    def set_labelled_events(self, values: dict[str, Any], stage: Stage, n: int) -> None:
        """First n training events, and as many optimiser steps (and validations) as the full run."""
        full = self.training_events(stage)
        if n > full:
            raise ConfigError(
                f"key 'low_label.n_labelled': {n} labelled events asked for, but the stage trains on {full}"
            )
        split = list(stage.config.data_split or [full, 10**9, 10**9])
        split[0] = n
        values["data_split"] = split
        factor = math.ceil(full / n)
        values["max_epochs"] = stage.config.max_epochs * factor
        values["val_every_n_epochs"] = stage.config.val_every_n_epochs * factor

    def training_events(self, stage: Stage) -> int:
        """Training events a downstream stage sees: the smallest first data_split entry along the chain
        from data reading to it (a stage only reads the events its upstream stages wrote)."""
        counts = []
        reading = self.reading_stage()
        if reading.config.data_split is not None:
            counts.append(reading.config.data_split[0])
        else:
            written = list_event_files(reading.stage_dir, "trainset")
            if written:
                counts.append(len(written))
        for values in self.downstream:
            split = values.get("data_split")
            if split is not None:
                counts.append(split[0])
            if values.get("stage") == stage.config.stage and values.get("model") == stage.config.model:
                break
        if not counts:
            raise ConfigError(
                f"{self.config.pipeline}: cannot tell how many labelled training events there are before "
                "data reading has run (give data reading a data_split)"
            )
        return min(counts)


def stage_folders(downstream: list[dict[str, Any]]) -> list[str]:
    """A folder name per downstream stage: its `stage` key, with the model added where two stages share
    it (a filter and a GNN are both edge_classifier stages)."""
    kinds = [v["stage"] for v in downstream]
    return [
        kind if kinds.count(kind) == 1 else f"{kind}_{str(v['model']).lower()}" for kind, v in zip(kinds, downstream)
    ]
