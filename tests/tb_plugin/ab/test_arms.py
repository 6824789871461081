"""A/Bs of several arms: each embedding source wired to its stages, the config's refusals, and a run of
three arms with a control, end to end on the tiny simulated pipeline."""

import json
from pathlib import Path

import pytest
import yaml

from tb_plugin.ab.config import load_ab_config
from tb_plugin.ab.parallel import ordered_tasks
from tb_plugin.ab.runner import load_runner
from tb_plugin.cli import main
from tb_plugin.config import ConfigError
from tests.tb_plugin.ab.conftest import write_yaml

EVERY_SOURCE = {
    "pretrained": {"source": "pretrained", "compare_to": ["random", "shuffled"]},
    "random": {"source": "random"},
    "shuffled": {"source": "shuffled"},
    "geometry": {"source": "geometry"},
    "learned": {"source": "learned"},
    "finetune": {"source": "finetune", "compare_to": "learned"},
}


def arms_ab(ab_setup: Path, tmp_path: Path, arms: dict, **values) -> Path:
    """The tiny A/B with `arms` in place of the two-arm keys."""
    ab = yaml.safe_load(ab_setup.read_text())
    del ab["trackingbert_keys"]
    ab |= {
        "ab_dir": str(tmp_path / "ab"),
        "pipeline": str(ab_setup.parent / "pipeline.yaml"),
        "tracking_bert": str(ab_setup.parent / "tb.yaml"),
        "arms": arms,
        "low_label": None,
    }
    return write_yaml(tmp_path / "ab.yaml", ab | values)


def test_every_source_reads_its_own_vectors(ab_setup, tmp_path):
    runner = load_runner(arms_ab(ab_setup, tmp_path, EVERY_SOURCE))
    ab = tmp_path / "ab"
    assert runner.names == ["baseline", *EVERY_SOURCE]
    assert runner.arms.embedding_sources() == ["pretrained", "random", "shuffled", "geometry"]
    base = runner.arm_values("baseline", 0)
    for source, folder in (
        ("pretrained", "tracking_bert"),
        ("random", "tracking_bert_random"),
        ("shuffled", "tracking_bert_shuffled"),
        ("geometry", "tracking_bert_geometry"),
    ):
        values = runner.arm_values(source, 0)
        assert Path(values[0]["input_dir"]) == ab / folder  # the table arms read their tracking_bert stage
        assert values[2]["node_features"] == base[2]["node_features"] + ["hit_tb_emb"]
        assert runner.arms.embedding_values(source)["stage_dir"] == ab / folder
    assert runner.arms.embedding_values("shuffled")["pretrained_dir"] == ab / "tracking_bert"
    assert runner.arms.embedding_values("random")["source"] == "random"
    # learned and finetune read data reading; the module map is the baseline's run
    for source, init in (("learned", "random"), ("finetune", "table")):
        values = runner.arm_values(source, 0)
        assert values[0]["stage_dir"] == base[0]["stage_dir"]
        for filter_or_gnn in values[1:3]:
            assert filter_or_gnn["node_features"] == base[1]["node_features"]  # no hit_tb_emb in the events
            embedding = filter_or_gnn["module_embedding"]
            assert (embedding["dim"], embedding["init"], embedding["similarity"]) == (8, init, True)  # n_embd 8
        table = values[1]["module_embedding"]["table"]
        assert table == (ab / "tracking_bert" / "module_table.npz" if source == "finetune" else None)
        assert "module_embedding" not in values[3]  # track building has no such key
    assert runner.config.comparisons() == [
        *((arm, "baseline") for arm in EVERY_SOURCE),
        ("pretrained", "random"),
        ("pretrained", "shuffled"),
        ("finetune", "learned"),
    ]
    # the worker tasks wait for what they read: a fine-tuned filter for the pretrained table
    tasks = ordered_tasks([[runner.arms.embedding_values(s)] for s in runner.arms.embedding_sources()], "t")
    tasks.update(ordered_tasks([runner.arm_values(arm, 0) for arm in runner.names], "t"))
    finetuned = Path(runner.arm_values("finetune", 0)[1]["stage_dir"])
    assert ab / "tracking_bert" in tasks[finetuned].needs(tasks)
    assert ab / "tracking_bert" in tasks[ab / "tracking_bert_shuffled"].needs(tasks)
    assert tasks[Path(runner.arm_values("learned", 0)[1]["stage_dir"])].needs(tasks) == {Path(base[0]["stage_dir"])}


@pytest.mark.parametrize(
    ("arms", "extra", "message"),
    [
        ({"baseline": {}}, {}, r"arms.baseline.*not 'baseline'"),
        ({"a b": {}}, {}, r"arms.a b.*letters, digits"),
        ({"pretrained": {"compare_to": "random"}}, {}, r"arms.pretrained.compare_to.*'random'.*not another arm"),
        ({"pretrained": {"compare_to": "pretrained"}}, {}, r"compare_to.*not another arm"),
        ({"control": {"source": "none"}}, {}, r"arms.control': no features and no keys.*would be the baseline"),
        (
            {"control": {"source": "none", "features": {"node_features": ["hit_tb_emb"]}}},
            {},
            r"source none adds no vectors",
        ),
        ({"learned": {"source": "learned", "features": None}}, {}, r"source learned trains vectors.*needs them"),
        ({"x": {"source": "nonsense"}}, {}, r"arms'.x: key 'source'.*Allowed: 'pretrained'"),
        ({"p": {}}, {"trackingbert_keys": {"ModuleMap": {"prior": {}}}}, r"trackingbert_keys.*arms.<name>.keys"),
        ({}, {}, r"key 'arms' names no arm"),
    ],
)
def test_arm_config_errors_name_the_key(ab_setup, tmp_path, arms, extra, message):
    with pytest.raises(ConfigError, match=message):
        load_ab_config(arms_ab(ab_setup, tmp_path, arms, **extra))


def test_keys_of_an_arm_for_a_model_the_pipeline_lacks_are_refused(ab_setup, tmp_path):
    config = arms_ab(ab_setup, tmp_path, {"p": {"keys": {"MetricLearning": {"r_infer": 0.2}}}})
    with pytest.raises(ConfigError, match=r"arms.p.keys.MetricLearning.*ModuleMap"):
        load_runner(config)


def test_three_arms_with_a_control_run_and_report(ab_setup, tmp_path, capsys):
    arms = {
        "pretrained": {"source": "pretrained", "compare_to": "random"},
        "random": {"source": "random"},
        "learned": {"source": "learned"},
    }
    config = arms_ab(ab_setup, tmp_path, arms, seeds=[0], bootstrap={"samples": 200})
    assert main(["-q", "ab", str(config)]) == 0
    printed = capsys.readouterr().out
    assert "## What the controls show" in printed and "| metric | pretrained − baseline |" in printed
    ab = tmp_path / "ab"
    results = json.loads((ab / "results.json").read_text())
    assert list(results["arms"]) == ["baseline", "pretrained", "random", "learned"]
    assert results["arms"]["random"]["source"] == "random" and results["arms"]["pretrained"]["compare_to"] == ["random"]
    pairs = [(c["arm"], c["control"]) for c in results["comparisons"]]
    assert pairs == [
        ("pretrained", "baseline"),
        ("random", "baseline"),
        ("learned", "baseline"),
        ("pretrained", "random"),
    ]
    assert results["differences"] == results["comparisons"][0]["differences"]
    seeds = {arm: results["arms"][arm]["seeds"][0] for arm in results["arms"]}
    # the random table costs no pretraining; the learned arm trains its vectors in the filter and GNN
    assert seeds["random"]["trainable_parameters"]["tracking_bert"] == 0
    assert seeds["random"]["train_time_s"]["tracking_bert"] < seeds["pretrained"]["train_time_s"]["tracking_bert"]
    assert "tracking_bert" not in seeds["learned"]["train_time_s"]
    for stage in ("edge_classifier_filter", "edge_classifier_interactiongnn"):
        assert seeds["learned"]["trainable_parameters"][stage] > seeds["pretrained"]["trainable_parameters"][stage]
    assert "tracking_bert" in seeds["random"]["inference_s_per_event"]  # its table is injected like the pretrained
    # every arm at the baseline's graph size and GNN operating point
    for seed in seeds.values():
        points = seed["operating_points"]
        assert points["size_matched.valset_edges_per_event"] == pytest.approx(
            seeds["baseline"]["operating_points"]["size_matched.own_valset_edges_per_event"]
        )
        assert len(seed["per_event"]["track_building.size_matched.two_way.efficiency"]["num"]) == 2
        assert set(seed["validation_loss"]) == {"edge_classifier_filter", "edge_classifier_interactiongnn"}
    report = (ab / "REPORT.md").read_text()
    assert "## What the controls show" in report and "| metric | pretrained − baseline |" in report
    assert "## pretrained − random" in report and "## Every arm (mean ± std over 1 seeds)" in report
    assert "a per-module vector trained from scratch" in report  # what the learned arm adds
    assert {"plots/comparisons.png", "plots/validation_loss.png"} <= set(results["plots"])
    for plot in results["plots"]:
        assert (ab / plot).stat().st_size > 0
    # the embedding stages ran once each, and the random one trained nothing
    assert (ab / "tracking_bert_random" / "artifacts" / "best.ckpt").is_file()
    assert not (ab / "tracking_bert_random" / "artifacts" / "last.ckpt").exists()


def test_a_control_table_finished_in_another_ab_is_read_from_there(ab_setup, tmp_path, finished_by_hand):
    """reuse_ab_dir: a random (or shuffled, geometry) tracking_bert stage that finished there with the
    same config is this A/B's too, and so are the random arm's stages made from it."""
    first = load_runner(arms_ab(ab_setup, tmp_path, {"random": {"source": "random"}}))
    stage = first.arms.embedding_stage("random")
    finished_by_hand(stage)
    second = arms_ab(
        ab_setup,
        tmp_path,
        {"random": {"source": "random"}},
        ab_dir=str(tmp_path / "second"),
        reuse_ab_dir=str(tmp_path / "ab"),
    )
    runner = load_runner(second)
    assert runner.arms.embedding_dir("random") == tmp_path / "ab" / "tracking_bert_random"
    assert Path(runner.arm_values("random", 0)[0]["input_dir"]) == tmp_path / "ab" / "tracking_bert_random"
    # another seed of the random model is another table: made here
    other = yaml.safe_load((ab_setup.parent / "tb.yaml").read_text()) | {"seed": 7}
    changed = arms_ab(
        ab_setup,
        tmp_path,
        {"random": {"source": "random"}},
        ab_dir=str(tmp_path / "third"),
        reuse_ab_dir=str(tmp_path / "ab"),
        tracking_bert=str(write_yaml(tmp_path / "tb7.yaml", other)),
    )
    assert load_runner(changed).arms.embedding_dir("random") == tmp_path / "third" / "tracking_bert_random"


def test_the_low_label_sweep_runs_in_the_worker_processes_too(ab_setup, tmp_path, monkeypatch):
    """With `jobs` > 1 and the sweep asked for, its stage runs are worker tasks beside the main ones
    (each after what it reads), not a sequential walk afterwards."""
    arms = {"pretrained": {"source": "pretrained"}, "learned": {"source": "learned"}}
    config = arms_ab(ab_setup, tmp_path, arms, jobs=2, low_label={"n_labelled": [1, 2], "seeds": [0]})
    runner = load_runner(config)
    seen = {}
    monkeypatch.setattr("tb_plugin.ab.parallel.run_tasks", lambda tasks, *args, **kwargs: seen.update(tasks))
    runner.run_in_parallel(low_label=True)
    sweep = [p for p in seen if "low_label" in p.parts]
    assert {p.parts[p.parts.index("low_label") + 1] for p in sweep} == {"n1", "n2"}
    assert {p.parts[p.parts.index("low_label") + 2] for p in sweep} == {"baseline", "pretrained", "learned"}
    runner.run_in_parallel(low_label=False)
    assert len(seen) > len(sweep)  # the main runs are tasks either way
    seen.clear()
    runner.run_in_parallel(low_label=False)
    assert not any("low_label" in p.parts for p in seen)
