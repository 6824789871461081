"""The A/B runner end to end on a tiny simulated pipeline: the arms, resume, results and report."""

import json
from pathlib import Path

import pytest
import yaml

from tb_plugin.ab.config import load_ab_config
from tb_plugin.ab.runner import ARMS, ABRunner, load_runner
from tb_plugin.cli import main
from tb_plugin.config import ConfigError
from tb_plugin.pipeline import stage_from_mapping
from tests.tb_plugin.ab.conftest import write_yaml


def test_the_arms_differ_only_in_the_features(ab_setup):
    runner = load_runner(ab_setup)
    base, tb = runner.arm_values("baseline", 0), runner.arm_values("trackingbert", 0)
    assert (
        [v["stage"] for v in base]
        == [v["stage"] for v in tb]
        == ["graph_construction", "edge_classifier", "edge_classifier", "track_building"]
    )
    # two stages of one kind get folders named by their models; the filter feeds the GNN
    assert [Path(v["stage_dir"]).name for v in base] == [
        "graph_construction",
        "edge_classifier_filter",
        "edge_classifier_interactiongnn",
        "track_building",
    ]
    assert base[2]["input_dir"] == base[1]["stage_dir"]
    for b, t in zip(base, tb):
        differing = {k for k in set(b) | set(t) if b.get(k) != t.get(k)}
        assert differing <= {
            "input_dir",
            "stage_dir",
            "node_features",
            "node_scales",
            "edge_features",
            "edge_scales",
            "min_track_length",
        }
    assert tb[1]["node_features"] == base[1]["node_features"] + ["hit_tb_emb"]  # the filter gets the features too
    # trackingbert_keys set the named model's keys in that arm only
    assert tb[3]["min_track_length"] == 4 and "min_track_length" not in base[3]
    gnn_b, gnn_t = base[2], tb[2]
    assert gnn_t["node_features"] == gnn_b["node_features"] + ["hit_tb_emb"]
    assert gnn_t["node_scales"] == gnn_b["node_scales"] + [1.0]
    assert gnn_t["edge_features"] == gnn_b["edge_features"] + ["tb_sim"]
    assert gnn_t["edge_scales"] == gnn_b["edge_scales"] + [1.0]
    # the trackingbert arm reads the pretrained stage; the baseline reads data reading directly
    assert Path(tb[0]["input_dir"]) == runner.pretraining_stage().stage_dir
    assert Path(base[0]["input_dir"]) == runner.reading_stage().stage_dir
    # seeds change the seed of every stage and the folders of the gradient-trained ones only
    other = runner.arm_values("baseline", 1)
    assert other[0] == base[0]  # the module map is seed-free: one config, one folder, shared by the seeds
    assert other[1]["stage_dir"] != base[1]["stage_dir"] and other[1]["seed"] == 1


def test_keys_for_a_model_the_pipeline_lacks_are_refused(ab_setup, tmp_path):
    values = yaml.safe_load(ab_setup.read_text())
    values.update(
        pipeline=str(ab_setup.parent / "pipeline.yaml"),
        tracking_bert=str(ab_setup.parent / "tb.yaml"),
        trackingbert_keys={"MetricLearning": {"r_infer": 0.2}},
    )
    with pytest.raises(ConfigError, match="trackingbert_keys.MetricLearning.*ModuleMap"):
        ABRunner(load_ab_config(write_yaml(tmp_path / "ab.yaml", values)))


def test_low_label_keeps_the_steps_and_the_module_map(ab_setup):
    runner = load_runner(ab_setup)
    full, low = runner.arm_values("baseline", 0), runner.arm_values("baseline", 0, n_labelled=1)
    assert low[0] == full[0]
    for i in (1, 2):  # the filter and the GNN are both retrained on the labelled events
        assert low[i]["data_split"][0] == 1
        assert low[i]["max_epochs"] == full[i]["max_epochs"] * 4  # 4 training events -> 4x the epochs of 1 event
    assert "low_label" in str(low[1]["stage_dir"]) and "low_label" in str(low[3]["stage_dir"])
    # the GNN reads only what the module map wrote: an upstream data_split bounds the full count
    runner.arms.downstream[0]["data_split"] = [2, 1, 2]
    assert runner.arm_values("baseline", 0, n_labelled=1)[2]["max_epochs"] == full[2]["max_epochs"] * 2


def test_ab_runs_resumes_and_reports(ab_setup, capsys):
    assert main(["-q", "ab", str(ab_setup), "--low-label"]) == 0
    ab_dir = load_ab_config(ab_setup).ab_dir
    results = json.loads((ab_dir / "results.json").read_text())
    for arm in ARMS:
        seeds = results["arms"][arm]["seeds"]
        assert [s["seed"] for s in seeds] == [0, 1]
        for s in seeds:
            assert len(s["event_ids"]) == 2
            eff = s["metrics"]["track_building.two_way.efficiency"]
            assert eff is None or 0.0 <= eff <= 1.0
            per_event = s["per_event"]["graph_construction.edges_per_event"]
            assert len(per_event["num"]) == 2 and per_event["den"] == [1.0, 1.0]
            assert s["inference_s_per_event"]["total"] > 0
            assert s["trainable_parameters"]["edge_classifier_interactiongnn"] > 0
            assert s["trainable_parameters"]["edge_classifier_filter"] > 0
            points = s["operating_points"]
            assert points["edge_classifier.at95.cut"] >= points["edge_classifier.at99.cut"]
            assert 0.0 <= points["matched.reference_efficiency"] <= 1.0
    tb_seed = results["arms"]["trackingbert"]["seeds"][0]
    assert tb_seed["trainable_parameters"]["tracking_bert"] > 0 and "tracking_bert" in tb_seed["inference_s_per_event"]
    assert "tracking_bert" not in results["arms"]["baseline"]["seeds"][0]["inference_s_per_event"]
    # the TrackingBERT arm's GNN has more inputs, so more parameters in its first layers
    base_seed = results["arms"]["baseline"]["seeds"][0]
    assert (
        tb_seed["trainable_parameters"]["edge_classifier_interactiongnn"]
        > base_seed["trainable_parameters"]["edge_classifier_interactiongnn"]
    )
    # the matched track rows: each arm at the baseline's valset GNN efficiency of the same seed
    assert (
        tb_seed["operating_points"]["matched.reference_efficiency"]
        == base_seed["operating_points"]["matched.reference_efficiency"]
    )
    names = [m["name"] for m in results["metrics"]]
    for name in (
        "edge_filter.edges_per_event",
        "edge_filter.at99.target_purity",
        "edge_classifier.at95.target_purity",
        "track_building.matched.two_way.fake_rate",
    ):
        assert name in names and name in results["differences"]
    assert results["overhead"]["inference_ratio"] > 0
    diff = results["differences"]["graph_construction.edges_per_event"]
    assert diff["estimate"] == pytest.approx(0.0) and diff["significant"] is False  # same module map in both arms
    assert results["low_label"]["n_labelled"] == [1, 2, 4]
    low_diffs = results["low_label"]["differences"]
    assert sorted(low_diffs) == ["1", "2", "4"]  # a paired difference per labelled-event count
    full_eff = "track_building.two_way.efficiency"
    seed0 = {arm: results["arms"][arm]["seeds"][0]["metrics"][full_eff] for arm in ARMS}  # the sweep's one seed
    if None not in seed0.values():  # the full count reuses the main runs of seed 0
        assert low_diffs["4"][full_eff]["estimate"] == pytest.approx(seed0["trackingbert"] - seed0["baseline"])
    assert low_diffs["1"]["graph_construction.edges_per_event"]["estimate"] == pytest.approx(0.0)  # the map is shared
    report = (ab_dir / "REPORT.md").read_text()
    assert "trackingbert" in report and "baseline" in report
    for plot in results["plots"]:
        assert (ab_dir / plot).stat().st_size > 0
    assert "tracks: efficiency (two_way)" in capsys.readouterr().out

    # resume: a second run recomputes nothing (result files untouched) and gives the same numbers
    result_file = ab_dir / "baseline" / "seed0" / "result.json"
    mtime = result_file.stat().st_mtime_ns
    assert main(["-q", "ab", str(ab_setup)]) == 0
    assert result_file.stat().st_mtime_ns == mtime
    again = json.loads((ab_dir / "results.json").read_text())
    assert again["arms"]["baseline"]["seeds"][0]["metrics"] == results["arms"]["baseline"]["seeds"][0]["metrics"]

    # an edited config is not silently mixed with finished results: the stage that changed is named
    pipeline = yaml.safe_load((ab_setup.parent / "pipeline.yaml").read_text())
    pipeline["stages"][3]["max_epochs"] = 3
    write_yaml(ab_setup.parent / "pipeline.yaml", pipeline)
    try:
        assert main(["-q", "ab", str(ab_setup)]) == 2
        assert "key 'max_epochs' changed: 2 -> 3" in capsys.readouterr().err
    finally:
        pipeline["stages"][3]["max_epochs"] = 2
        write_yaml(ab_setup.parent / "pipeline.yaml", pipeline)


def test_config_errors_name_the_key(tmp_path, ab_setup):
    bad = write_yaml(
        tmp_path / "ab.yaml",
        {
            "ab_dir": "x",
            "pipeline": str(ab_setup.parent / "pipeline.yaml"),
            "tracking_bert": str(ab_setup.parent / "tb.yaml"),
            "seedz": [0],
        },
    )
    with pytest.raises(ConfigError, match="seedz.*did you mean 'seeds'"):
        load_ab_config(bad)
    missing = write_yaml(tmp_path / "ab2.yaml", {"ab_dir": "x", "pipeline": "nope.yaml", "tracking_bert": "tb.yaml"})
    with pytest.raises(ConfigError, match="pipeline"):
        load_ab_config(missing)
    no_reading = write_yaml(
        tmp_path / "p.yaml",
        {"stages": [{"stage": "track_building", "model": "ConnectedComponents", "input_dir": "x", "stage_dir": "y"}]},
    )
    cfg = load_ab_config(
        write_yaml(
            tmp_path / "ab3.yaml",
            {"ab_dir": "x", "pipeline": str(no_reading), "tracking_bert": str(ab_setup.parent / "tb.yaml")},
        )
    )
    with pytest.raises(ConfigError, match="data reading"):
        ABRunner(cfg)


TIMING_KEYS = {"train_time_s", "inference_s_per_event", "overhead", "ab_dir"}


def without_timings(value):
    """results.json less what depends on the clock (and the A/B's own folder)."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def test_a_killed_ab_resumes_and_a_parallel_ab_runs_to_the_same_results(ab_setup, tmp_path, run_tb):
    """kill -9 inside the baseline GNN's second epoch, rerun `tb ab`: results.json equals an
    uninterrupted A/B's, timings aside (the killed stage resumes exactly from its last.ckpt). So does
    an A/B whose stages run in 2 worker processes (`jobs: 2`), each stage's output in its log."""
    values = yaml.safe_load(ab_setup.read_text())
    values.update(
        pipeline=str(ab_setup.parent / "pipeline.yaml"),
        tracking_bert=str(ab_setup.parent / "tb.yaml"),
        seeds=[0],
        low_label=None,
    )
    whole = write_yaml(tmp_path / "whole.yaml", {**values, "ab_dir": str(tmp_path / "whole")})
    killed = write_yaml(tmp_path / "killed.yaml", {**values, "ab_dir": str(tmp_path / "killed")})
    done = run_tb(["ab", str(whole)])
    assert done.returncode == 0, done.stderr[-2000:]
    interrupted = run_tb(["ab", str(killed)], kill_in_epoch=1)  # the filter trains 1 epoch, the GNN 2
    assert interrupted.returncode == -9, interrupted.stderr[-2000:]
    gnn = tmp_path / "killed" / "baseline" / "seed0" / "edge_classifier_interactiongnn"
    assert (gnn / "artifacts" / "last.ckpt").is_file() and not (tmp_path / "killed" / "results.json").exists()
    resumed = run_tb(["ab", str(killed)])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads((tmp_path / "whole" / "results.json").read_text())
    b = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert without_timings(a) == without_timings(b)
    parallel = write_yaml(tmp_path / "parallel.yaml", {**values, "ab_dir": str(tmp_path / "parallel"), "jobs": 2})
    done = run_tb(["ab", str(parallel)])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stage runs in 2 processes" in done.stdout and "finished" in done.stdout
    c = json.loads((tmp_path / "parallel" / "results.json").read_text())
    assert (a["config"].pop("jobs"), c["config"].pop("jobs")) == (1, 2)
    assert without_timings(c) == without_timings(a)
    assert (tmp_path / "parallel" / "logs" / "baseline_seed0_edge_classifier_interactiongnn.log").read_text()


def test_a_key_added_later_at_its_default_does_not_invalidate_a_finished_stage(tmp_path):
    from tb_plugin import stage_record
    from tb_plugin.pipeline import stage_from_mapping

    values = {"stage": "track_building", "model": "ConnectedComponents", "input_dir": "x", "stage_dir": "y"}
    stage = stage_from_mapping(values, "cc.yaml")
    old = stage_record.fingerprint(stage)
    del old["keys"]["stitch"], old["keys"]["stitch_max_chi2"]  # a stage finished before these keys existed
    assert stage_record.difference(old, stage_record.fingerprint(stage), type(stage.config)) is None
    changed = stage_from_mapping({**values, "stitch": "geometry"}, "cc.yaml")
    assert stage_record.difference(old, stage_record.fingerprint(changed), type(stage.config)) == (
        "key 'stitch' changed: null -> \"geometry\""
    )


def keys_only(ab_setup: Path, tmp_path: Path, **values) -> Path:
    """The tiny A/B with the walkthrough as track builder and no features: stitch and reject set per arm."""
    pipeline = yaml.safe_load((ab_setup.parent / "pipeline.yaml").read_text())
    pipeline["stages"][-1] |= {"model": "Walkthrough", "min_track_length": 3}
    ab = yaml.safe_load(ab_setup.read_text())
    ab |= {
        "ab_dir": str(tmp_path / "ab"),
        "pipeline": str(write_yaml(tmp_path / "pipeline.yaml", pipeline)),
        "tracking_bert": str(ab_setup.parent / "tb.yaml"),
        "trackingbert_features": None,
        "trackingbert_keys": {"Walkthrough": {"stitch": "tb", "reject": "tb"}},
        "baseline_keys": {"Walkthrough": {"stitch": "geometry"}},
        "low_label": None,
    }
    return write_yaml(tmp_path / "ab.yaml", ab | values)


def test_an_ab_of_keys_only_shares_the_stages_before_them(ab_setup, tmp_path):
    runner = load_runner(keys_only(ab_setup, tmp_path))
    base, tb = runner.arm_values("baseline", 0), runner.arm_values("trackingbert", 0)
    # map, filter and GNN: one run, in the baseline's folders; both arms read data reading
    assert [v["stage_dir"] for v in tb[:3]] == [v["stage_dir"] for v in base[:3]]
    assert Path(base[0]["input_dir"]) == Path(tb[0]["input_dir"]) == runner.reading_stage().stage_dir
    # track building: its own folder, the A/B's pretrained model, the keys of each arm
    assert tb[3]["stage_dir"] != base[3]["stage_dir"] and tb[3]["input_dir"] == base[3]["input_dir"]
    assert tb[3]["tracking_bert_dir"] == runner.pretraining_stage().stage_dir and "tracking_bert_dir" not in base[3]
    assert (tb[3]["stitch"], tb[3]["reject"], base[3]["stitch"]) == ("tb", "tb", "geometry")
    # another A/B's pretrained stage, named by tracking_bert_dir, is the one used
    runner = load_runner(keys_only(ab_setup, tmp_path, tracking_bert_dir=str(tmp_path / "other" / "tracking_bert")))
    assert runner.pretraining_stage().stage_dir == tmp_path / "other" / "tracking_bert"
    assert runner.arm_values("trackingbert", 0)[3]["tracking_bert_dir"] == tmp_path / "other" / "tracking_bert"
    # a GNN key in the trackingbert arm: from there on nothing is shared
    runner = load_runner(keys_only(ab_setup, tmp_path, trackingbert_keys={"InteractionGNN": {"hidden": 4}}))
    base, tb = runner.arm_values("baseline", 0), runner.arm_values("trackingbert", 0)
    assert tb[1]["stage_dir"] == base[1]["stage_dir"] and tb[2]["stage_dir"] != base[2]["stage_dir"]
    assert tb[3]["input_dir"] == tb[2]["stage_dir"] and "tracking_bert_dir" not in tb[3]


def test_an_ab_without_features_or_keys_is_refused(ab_setup, tmp_path):
    with pytest.raises(ConfigError, match="trackingbert_features.*trackingbert_keys.*would be the baseline"):
        load_ab_config(keys_only(ab_setup, tmp_path, trackingbert_keys={}))


def test_an_ab_of_track_building_keys_runs_with_the_shared_graphs(ab_setup, tmp_path):
    config = keys_only(ab_setup, tmp_path, seeds=[0])
    assert main(["-q", "ab", str(config)]) == 0
    ab_dir = tmp_path / "ab"
    results = json.loads((ab_dir / "results.json").read_text())
    # one filter and one GNN run, shared; two track builders, the trackingbert one with its valset cut
    assert not (ab_dir / "trackingbert" / "seed0" / "edge_classifier_interactiongnn").exists()
    assert (ab_dir / "trackingbert" / "seed0" / "track_building" / "reject_cut.json").exists()
    base, tb = (results["arms"][arm]["seeds"][0] for arm in ARMS)
    assert base["per_event"]["edge_classifier.auc"] == tb["per_event"]["edge_classifier.auc"]
    assert "tracking_bert" not in tb["inference_s_per_event"]  # no features: the model runs inside track building
    for name in ("two_way.fake_rate", "two_way.duplicate_rate", "two_way.efficiency_pt1", "trackml_score"):
        assert f"track_building.{name}" in results["differences"]
    assert "keys `trackingbert_keys` sets" in (ab_dir / "REPORT.md").read_text()


def test_finished_stages_of_another_ab_with_the_same_config_are_reused(ab_setup, tmp_path, finished_by_hand):
    first = load_runner(keys_only(ab_setup, tmp_path))
    base = first.arm_values("baseline", 0)
    for values in base[:3]:  # pretend the first A/B finished its map, filter and GNN
        finished_by_hand(stage_from_mapping(values, "t"))
    variant = keys_only(
        ab_setup,
        tmp_path,
        ab_dir=str(tmp_path / "variant"),
        reuse_ab_dir=str(tmp_path / "ab"),
        baseline_keys={"Walkthrough": {"stitch": "geometry", "reject": "geometry"}},
    )
    runner = load_runner(variant)
    for arm in ARMS:
        values = runner.arm_values(arm, 0)
        assert [v["stage_dir"] for v in values[:3]] == [v["stage_dir"] for v in base[:3]]  # read from the first A/B
        assert Path(values[3]["stage_dir"]).is_relative_to(tmp_path / "variant")  # its own track building
    # a GNN of another config is not reused, and nothing after it either
    runner = load_runner(
        keys_only(
            ab_setup,
            tmp_path,
            ab_dir=str(tmp_path / "v2"),
            reuse_ab_dir=str(tmp_path / "ab"),
            baseline_keys={"InteractionGNN": {"hidden": 4}},
        )
    )
    values = runner.arm_values("baseline", 0)
    assert values[1]["stage_dir"] == base[1]["stage_dir"]
    assert all(Path(v["stage_dir"]).is_relative_to(tmp_path / "v2") for v in values[2:])
