"""Every shipped YAML config and pipeline loads into its typed stage config (no key typos)."""

from pathlib import Path

import pytest

from tb_plugin.pipeline import load_pipeline, load_stage, stage_from_mapping

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STAGE_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name != "pipelines")
PIPELINES = sorted((CONFIGS / "pipelines").glob("*.yaml"))


@pytest.mark.parametrize("path", STAGE_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_stage_config_loads(path):
    stage = load_stage(path)
    assert stage.config.stage == path.parent.name


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_pipeline_loads(path):
    entries = load_pipeline(path)
    stages = [stage_from_mapping(e.values, e.source) for e in entries]
    assert stages[0].config.stage == "data_reading"
