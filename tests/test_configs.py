"""Every shipped YAML config and pipeline loads into its typed stage config (no key typos), and every
stage meant for a GPU gets an optimizer its Trainer can clip."""

import dataclasses
from pathlib import Path

import lightning as L
import pytest

from stages.edge_classifier.edge_stage import EdgeClassifierConfig
from stages.edge_classifier.gnn_model import EdgeClassifierModule
from stages.graph_construction.embedding_model import MetricLearningModule
from stages.graph_construction.metric_learning import MetricLearningConfig
from tb_plugin import training
from tb_plugin.ab.runner import load_runner
from tb_plugin.config import load_yaml
from tb_plugin.model import TrackingBERTModule
from tb_plugin.pipeline import load_pipeline, load_stage, stage_from_mapping
from tb_plugin.pretraining.stage import TrackingBERTStageConfig
from tb_plugin.stage import Stage
from tb_plugin.training import TrainerConfig, make_trainer
from tests.conftest import load_benchmark

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STAGE_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name not in ("pipelines", "ab", "scaling"))
PIPELINES = sorted((CONFIGS / "pipelines").glob("*.yaml"))
EXPERIMENTS = [CONFIGS / "ab" / "conditions.yaml"]  # read by a benchmark script, around an A/B config
AB_CONFIGS = sorted(p for p in (CONFIGS / "ab").glob("*.yaml") if p not in EXPERIMENTS)
SWEEPS = sorted((CONFIGS / "scaling").glob("*.yaml"))


@pytest.mark.parametrize("path", STAGE_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_stage_config_loads(path):
    stage = load_stage(path)
    assert stage.config.stage == path.parent.name


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_scaling_sweep_loads_and_every_point_is_a_valid_stage(path):
    """benchmarks/pretraining_scaling.py's sweep files: the file, its base A/B, each point's keys."""
    bench = load_benchmark("pretraining_scaling")
    sweep = bench.SweepConfig.load(path)
    base = load_yaml(sweep.ab)
    tb = load_yaml((sweep.ab.parent / base["tracking_bert"]).resolve())
    for point in sweep.points:
        stage_from_mapping({**tb, **point.get("keys", {})}, f"{path}, point {point['name']}")


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_pipeline_loads(path):
    entries = load_pipeline(path)
    stages = [stage_from_mapping(e.values, e.source) for e in entries]
    assert stages[0].config.stage == "data_reading"


def test_the_conditions_experiment_loads_with_its_ab_and_every_dataset():
    """benchmarks/detector_conditions.py's config: its keys, its A/B (with the pretrained and random arms
    it applies), and every dataset's condition options, which `tb simulate` takes."""
    bench = load_benchmark("detector_conditions")
    config = bench.load_config(EXPERIMENTS[0])
    sources = {s.source for s in load_runner(config.ab).config.arm_specs().values()}
    assert {"pretrained", "random"} <= sources and len(config.datasets) >= 3
    assert sum(config.data_split) <= config.events


@pytest.mark.parametrize("path", AB_CONFIGS, ids=lambda p: p.name)
def test_ab_config_builds_every_arm(path):
    runner = load_runner(path)
    for arm in runner.names:
        for seed in runner.config.seeds:
            assert [s.config.stage for s in runner.plan(arm, seed).stages][-1] == "track_building"


def test_every_ab_of_the_pretrained_model_has_a_random_control():
    """A gain of the pretrained arm means nothing until the same arm with the untrained model is beside
    it: a random code per module gives the filter and the GNN the identity of each module too."""
    checked = 0
    for path in AB_CONFIGS:
        specs = load_runner(path).config.arm_specs()
        for name, spec in specs.items():
            if spec.source == "pretrained":
                checked += 1
                controls = [s for s in specs.values() if s.source == "random" and s.keys == spec.keys]
                assert controls, f"{path.name}: arm {name} has no random arm with its keys"
    assert checked >= 10  # every shipped A/B but the epoch check (demo_epochs.yaml) has a pretrained arm


def stages_of(path: Path) -> list[Stage]:
    """The stages a shipped file runs: a stage config, a pipeline's stages, or an A/B's pretraining and
    both arms (first seed: the seeds change no Trainer key)."""
    if path.parent.name == "pipelines":
        return [stage_from_mapping(e.values, e.source) for e in load_pipeline(path)]
    if path.parent.name == "ab":
        runner = load_runner(path)
        arms = [runner.plan(arm, runner.config.seeds[0]).stages for arm in runner.names]
        return [runner.pretraining_stage(), *(stage for stages in arms for stage in stages)]
    return [load_stage(path)]


def meant_for_a_gpu(stage: Stage) -> bool:
    c = stage.config
    return isinstance(c, TrainerConfig) and (
        c.accelerator in ("gpu", "cuda", "auto") or c.precision not in ("32", "32-true")
    )


GPU_STAGES = [
    pytest.param(stage, id=f"{path.relative_to(CONFIGS)}[{i}]:{stage.config.model}")
    for path in sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name != "scaling" and p not in EXPERIMENTS)
    for i, stage in enumerate(stages_of(path))
    if meant_for_a_gpu(stage)
]


def test_the_gpu_configs_are_found():
    """The check below must not pass by finding no GPU stage."""
    found = {p.id.split("[")[0] for p in GPU_STAGES}
    assert {"tracking_bert/paper.yaml", "pipelines/gpu_pu200.yaml", "ab/gpu.yaml"} <= found


def module_for(stage: Stage) -> L.LightningModule:
    """The LightningModule the stage trains, at a made-up input width (the data sets it; the optimizer
    does not depend on it)."""
    c = stage.config
    if isinstance(c, TrackingBERTStageConfig):
        return TrackingBERTModule(
            model=dataclasses.asdict(c.model_config(64)), optim=dataclasses.asdict(c.optim_config())
        )
    if isinstance(c, EdgeClassifierConfig):
        return EdgeClassifierModule(
            model=dataclasses.asdict(c.model_config(4, 3)),
            optim=dataclasses.asdict(c.optim_config()),
            architecture=stage.architecture,
        )
    if isinstance(c, MetricLearningConfig):
        return MetricLearningModule(dataclasses.asdict(c.settings(4)))
    pytest.fail(f"no module for {type(c).__name__}: add its LightningModule to module_for")


@pytest.mark.parametrize("stage", GPU_STAGES)
def test_a_gpu_stage_gets_an_optimizer_its_trainer_can_clip(stage, tmp_path, monkeypatch):
    """The Trainer of the config's keys, on the CPU (no GPU here) but with its precision and clipping,
    and the optimizer the module configures on CUDA; then the check Lightning makes before each step."""
    monkeypatch.setattr(training, "fused_adamw_device", lambda device: True)
    monkeypatch.setattr(L.Trainer, "estimated_stepping_batches", 1000)  # no data: the schedulers need a length
    config = dataclasses.replace(stage.config, accelerator="cpu")
    trainer = make_trainer(config, tmp_path)
    module = module_for(stage)
    module.trainer = trainer
    configured = module.configure_optimizers()
    optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
    module.clip_gradients(
        optimizer, gradient_clip_val=trainer.gradient_clip_val, gradient_clip_algorithm=trainer.gradient_clip_algorithm
    )
    assert optimizer.defaults["fused"] is not bool(config.gradient_clip_val)  # fused (faster) where nothing clips


def test_demo_on_real_infers_with_every_trained_stage_of_the_demo():
    """configs/pipelines/demo_on_real.yaml: each stage that learns reads the artifacts of the same model
    in the demo (the demo A/B's baseline arm, seed 0: what `make demo` trains), with the same keys, so
    nothing is trained on the real events and the config says what the checkpoint is; every output goes
    outside the demo's folders, which stay as `make demo` left them."""
    runner = load_runner(CONFIGS / "ab" / "demo.yaml")
    demo = [stage_from_mapping(v, "demo") for v in runner.arm_values("baseline", runner.config.seeds[0])]
    real = [stage_from_mapping(e.values, e.source) for e in load_pipeline(CONFIGS / "pipelines" / "demo_on_real.yaml")]
    assert [s.config.model for s in real[1:]] == [s.config.model for s in demo]
    demo_dirs = {s.stage_dir for s in demo}
    where = ("stage_dir", "input_dir", "trained_stage_dir", "data_split", "seed")
    for trained, applied in zip(demo, real[1:]):
        assert applied.stage_dir not in demo_dirs, applied.config.model
        if trained.trainable:
            assert applied.trained_elsewhere and applied.trained_dir == trained.stage_dir, applied.config.model
        keys = {k: v for k, v in dataclasses.asdict(trained.config).items() if k not in where}
        assert keys == {k: v for k, v in dataclasses.asdict(applied.config).items() if k not in where}
    assert real[0].config.input_dir == load_stage(CONFIGS / "data_reading" / "trackml_real.yaml").config.input_dir
