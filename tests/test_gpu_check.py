"""The bounded GPU check (benchmarks/gpu_check.sh) without running it: the script parses, its size table
keeps the full run at the paper's size and under 8 minutes of budgets while --smoke shrinks every part,
and the configs it writes for a run load and build both arms of the A/B. The run itself takes minutes
(`bash benchmarks/gpu_check.sh --smoke` on a CPU); configs/ab/gpu_check.yaml and the files it names
are also loaded by tests/test_configs.py, like every shipped config."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Timer

from tb_plugin.ab.runner import load_runner
from tb_plugin.config import load_yaml
from tb_plugin.pipeline import load_stage
from tb_plugin.training import make_trainer

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check  # noqa: E402


def sizes(*flags: str) -> dict[str, str]:
    """The script's size table (`--sizes`), as KEY -> value."""
    out = subprocess.run(["bash", str(SCRIPT), "--sizes", *flags], check=True, capture_output=True, text=True)
    return dict(line.split("=", 1) for line in out.stdout.splitlines())


def test_the_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_a_wrong_flag_is_refused():
    out = subprocess.run(["bash", str(SCRIPT), "--fast"], capture_output=True, text=True)
    assert out.returncode == 2 and "usage" in out.stderr


def test_full_run_is_the_paper_model_at_pileup_200_within_8_minutes():
    full = sizes()
    paper = load_yaml(REPO / "configs" / "tracking_bert" / "paper.yaml")
    assert full["TB_SIZE"] == ",".join(str(paper[k]) for k in ("n_layer", "n_embd", "n_head", "d_ff"))
    assert int(full["TB_BATCH"]) == paper["batch_size"]
    assert full["PILEUP"] == "200" and int(full["N_EVENTS"]) >= 90
    assert (full["ACCELERATOR"], full["PRECISION"]) == ("gpu", "bf16-mixed")
    budgets = [int(v) for k, v in full.items() if k.startswith("BUDGET_") and k != "BUDGET_TOTAL"]
    assert sum(budgets) == int(full["BUDGET_TOTAL"]) <= 8 * 60 - 20  # a margin for the shell between parts
    assert int(full["TB_SECONDS"]) < int(full["BUDGET_pretrain"])
    assert "--device cuda" in full["THROUGHPUT"] and "--accelerator gpu" in full["CHAIN"]


def test_full_table_is_what_the_shipped_configs_say():
    """configs/ab/gpu_check.yaml and the files it names are the full run: the script's table agrees."""
    full = sizes()
    tb = load_yaml(REPO / "configs" / "tracking_bert" / "gpu_check.yaml")
    reading, module_map, gnn = load_yaml(REPO / "configs" / "pipelines" / "gpu_check.yaml")["stages"][:3]
    ab = load_yaml(REPO / "configs" / "ab" / "gpu_check.yaml")
    assert tb["max_time_s"] == float(full["TB_SECONDS"]) and tb["batch_size"] == int(full["TB_BATCH"])
    assert reading["data_split"] == [int(n) for n in full["SPLIT"].split(",")]
    assert module_map["data_split"] == [int(n) for n in full["GRAPH_SPLIT"].split(",")]
    assert module_map["map_events"] == int(full["MAP_EVENTS"])
    assert gnn["max_time_s"] == float(full["GNN"].split(",")[3]) and gnn["max_epochs"] == int(full["GNN"].split(",")[2])
    assert ab["seeds"] == [0, 1] and ab["timing_events"] == int(full["TIMING_EVENTS"])


def test_smoke_shrinks_every_part_onto_the_cpu():
    full, smoke = sizes(), sizes("--smoke")
    assert int(smoke["PILEUP"]) < int(full["PILEUP"]) and int(smoke["N_EVENTS"]) < int(full["N_EVENTS"])
    small, paper = (list(map(int, s["TB_SIZE"].split(","))) for s in (smoke, full))
    assert all(a < b for a, b in zip(small, paper))
    assert (smoke["ACCELERATOR"], smoke["PRECISION"], smoke["TB_EPOCHS"]) == ("cpu", "32-true", "1")
    assert "--device cpu" in smoke["THROUGHPUT"] and "--accelerator cpu" in smoke["CHAIN"]
    assert smoke["SEEDS"] == full["SEEDS"] == "0,1"


@pytest.mark.parametrize("flags", [(), ("--smoke",)], ids=["full", "smoke"])
def test_written_configs_build_every_arm_in_the_output_folder(tmp_path, flags):
    table = sizes(*flags)
    hidden, iters, epochs, seconds = table["GNN"].split(",")
    gpu_check.main(
        ["configs", "--out", str(tmp_path), "--split", table["SPLIT"], "--map-events", table["MAP_EVENTS"]]
        + ["--graph-split", table["GRAPH_SPLIT"], "--seeds", table["SEEDS"], "--tb-size", table["TB_SIZE"]]
        + ["--tb-batch", table["TB_BATCH"], "--tb-seconds", table["TB_SECONDS"], "--gnn-hidden", hidden]
        + ["--gnn-iters", iters, "--gnn-epochs", epochs, "--gnn-seconds", seconds]
        + ["--accelerator", table["ACCELERATOR"], "--precision", table["PRECISION"]]
    )
    runner = load_runner(tmp_path / "configs" / "ab.yaml")
    assert runner.config.seeds == [0, 1] and runner.ab_dir == tmp_path / "ab"
    assert runner.reading_values["data_split"] == [int(n) for n in table["SPLIT"].split(",")]
    pretraining = runner.pretraining_stage().config
    assert pretraining.stage_dir == tmp_path / "tracking_bert" and pretraining.input_dir == tmp_path / "feature_store"
    assert pretraining.n_layer == int(table["TB_SIZE"].split(",")[0])
    assert pretraining.max_time_s == float(table["TB_SECONDS"])
    assert runner.names == ["baseline", "pretrained", "random"]  # the pretrained arm and its control
    assert runner.arms.embedding_dir("random") == tmp_path / "ab" / "tracking_bert_random"
    for arm in runner.names:
        stages = runner.plan(arm, 0).stages
        assert [s.config.stage for s in stages][-1] == "track_building"
        assert all(tmp_path in s.stage_dir.parents for s in stages)
        gnn = next(s.config for s in stages if s.config.model == "InteractionGNN")
        assert gnn.accelerator == table["ACCELERATOR"] and gnn.hidden == int(hidden)
        assert ("hit_tb_emb" in gnn.node_features) == (arm != "baseline")


def test_max_time_s_bounds_the_trainer(tmp_path):
    """The key the check bounds its training with reaches Lightning as max_time."""
    stage = load_stage(REPO / "configs" / "tracking_bert" / "gpu_check.yaml")
    config = dataclasses.replace(stage.config, accelerator="cpu", precision="32-true")
    timers = [c for c in make_trainer(config, tmp_path).callbacks if isinstance(c, Timer)]
    assert len(timers) == 1 and timers[0]._duration == stage.config.max_time_s == 60
    with pytest.raises(ValueError, match="max_time_s"):
        dataclasses.replace(config, max_time_s=0)
