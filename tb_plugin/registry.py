"""Which class runs a config: the YAML keys `stage` and `model` select it.

Built-in stages are listed here; third-party packages add theirs through the entry-point group
`tb_plugin.stages`, with names `"<stage>.<Model>"` and values `"package.module:Class"`, e.g. in
their pyproject.toml:

    [project.entry-points."tb_plugin.stages"]
    "graph_construction.MyBuilder" = "my_pkg.builders:MyBuilder"
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from tb_plugin.config import ConfigError, unknown_key_message
from tb_plugin.stage import Stage

ENTRY_POINT_GROUP = "tb_plugin.stages"

BUILTIN_STAGES: dict[tuple[str, str], str] = {
    ("data_reading", "TrackMLReader"): "stages.data_reading:TrackMLReader",
    ("tracking_bert", "TrackingBERT"): "tb_plugin.pretraining.stage:TrackingBERTStage",
    ("graph_construction", "ModuleMap"): "stages.graph_construction:ModuleMap",
    ("graph_construction", "PyModuleMap"): "stages.graph_construction:ModuleMap",  # ACORN's name
    ("graph_construction", "MetricLearning"): "stages.graph_construction:MetricLearning",
    ("edge_classifier", "InteractionGNN"): "stages.edge_classifier:InteractionGNN",
    ("edge_classifier", "Filter"): "stages.edge_classifier:Filter",
    ("track_building", "ConnectedComponents"): "stages.track_building:ConnectedComponents",
    ("track_building", "Walkthrough"): "stages.track_building.walkthrough:Walkthrough",
}


def available_stages() -> dict[tuple[str, str], str]:
    """Built-in stages plus those registered by installed packages."""
    stages = dict(BUILTIN_STAGES)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        stage, _, model = ep.name.partition(".")
        if stage and model:
            stages[(stage, model)] = ep.value
    return stages


def resolve(stage: str, model: str, source: str) -> type[Stage]:
    stages = available_stages()
    if (stage, model) not in stages:
        stage_names = {s for s, _ in stages}
        if stage not in stage_names:
            raise ConfigError(unknown_key_message(source, stage, stage_names, what="stage"))
        models = {m for s, m in stages if s == stage}
        raise ConfigError(unknown_key_message(source, model, models, what=f"model for stage '{stage}'"))
    module_name, _, attr = stages[(stage, model)].partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(
            f"{source}: stage '{stage}' model '{model}' points to {stages[(stage, model)]}, which cannot be loaded: {err}"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise ConfigError(f"{source}: {stages[(stage, model)]} is not a tb_plugin Stage subclass")
    return cls
