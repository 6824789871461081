"""Every shipped YAML config and pipeline loads into its typed stage config (no key typos)."""

from pathlib import Path

import pytest

from tb_plugin.ab.runner import load_runner
from tb_plugin.pipeline import load_pipeline, load_stage, stage_from_mapping

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STAGE_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name not in ("pipelines", "ab"))
PIPELINES = sorted((CONFIGS / "pipelines").glob("*.yaml"))
AB_CONFIGS = sorted((CONFIGS / "ab").glob("*.yaml"))


@pytest.mark.parametrize("path", STAGE_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_stage_config_loads(path):
    stage = load_stage(path)
    assert stage.config.stage == path.parent.name


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_pipeline_loads(path):
    entries = load_pipeline(path)
    stages = [stage_from_mapping(e.values, e.source) for e in entries]
    assert stages[0].config.stage == "data_reading"


@pytest.mark.parametrize("path", AB_CONFIGS, ids=lambda p: p.name)
def test_ab_config_builds_both_arms(path):
    runner = load_runner(path)
    for arm in ("baseline", "trackingbert"):
        for seed in runner.config.seeds:
            assert [s.config.stage for s in runner.plan(arm, seed).stages][-1] == "track_building"
