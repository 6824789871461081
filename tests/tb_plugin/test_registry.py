from dataclasses import dataclass
from importlib.metadata import EntryPoint

import pytest

from stages.data_reading import TrackMLReader
from tb_plugin import registry
from tb_plugin.config import ConfigError
from tb_plugin.stage import Stage, StageConfig


@dataclass(kw_only=True)
class PluginConfig(StageConfig):
    threshold: float = 0.5


class PluginStage(Stage):
    config_class = PluginConfig


def test_builtin_stage_resolves():
    assert registry.resolve("data_reading", "TrackMLReader", "cfg.yaml") is TrackMLReader


def test_unknown_stage_and_model_suggest_the_nearest():
    with pytest.raises(ConfigError, match=r"cfg\.yaml: unknown stage 'data_readng'; did you mean 'data_reading'\?"):
        registry.resolve("data_readng", "TrackMLReader", "cfg.yaml")
    with pytest.raises(
        ConfigError, match=r"unknown model for stage 'data_reading' 'TrackMLReeder'; did you mean 'TrackMLReader'\?"
    ):
        registry.resolve("data_reading", "TrackMLReeder", "cfg.yaml")


def test_third_party_stage_registers_through_entry_points(monkeypatch):
    ep = EntryPoint(
        name="graph_construction.PluginStage", value=f"{__name__}:PluginStage", group=registry.ENTRY_POINT_GROUP
    )
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep] if group == registry.ENTRY_POINT_GROUP else [])
    assert ("graph_construction", "PluginStage") in registry.available_stages()
    assert registry.resolve("graph_construction", "PluginStage", "cfg.yaml") is PluginStage


def test_entry_point_that_is_not_a_stage_is_refused(monkeypatch):
    ep = EntryPoint(name="graph_construction.Bad", value="pathlib:Path", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep])
    with pytest.raises(ConfigError, match="is not a tb_plugin Stage subclass"):
        registry.resolve("graph_construction", "Bad", "cfg.yaml")
