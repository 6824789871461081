"""benchmarks/detector_conditions.py at a tiny size: the tiny A/B trained on ideal events, applied to
an ideal and a conditions dataset with every arm (recalibration without truth and retraining included),
the paired differences, the losses from ideal, the table's shift by module class, and refusals."""

from __future__ import annotations

import json

import yaml

from tb_plugin.ab.runner import load_runner
from tests.conftest import load_benchmark
from tests.tb_plugin.ab.conftest import write_yaml


def test_every_arm_on_ideal_and_conditions(ab_setup, tmp_path, capsys):
    ab = yaml.safe_load(ab_setup.read_text())
    ab |= {"pipeline": str(ab_setup.parent / "pipeline.yaml"), "tracking_bert": str(ab_setup.parent / "tb.yaml")}
    ab |= {"ab_dir": str(tmp_path / "ab"), "seeds": [0], "jobs": 1, "timing_events": 1}
    ab |= {"arms": {"pretrained": {"source": "pretrained", "compare_to": "random"}, "random": {"source": "random"}}}
    ab.pop("trackingbert_keys")
    load_runner(write_yaml(tmp_path / "ab.yaml", ab)).run()
    conditions = {"dead_fraction": 0.05, "efficiency_spread": 0.05, "misalignment_mm": 0.3}
    config = {
        "ab": "ab.yaml",
        "out_dir": str(tmp_path / "conditions"),
        "events": 7,
        "pileup": 3,
        "seed": 8,
        "first_event": 500,
        "data_split": [4, 1, 2],
        "datasets": {"ideal": {}, "broken": conditions},
        "recalibration": {"max_epochs": 1},
        "bootstrap": {"samples": 50, "confidence": 0.95, "seed": 0},
    }
    bench = load_benchmark("detector_conditions")
    assert bench.main([str(write_yaml(tmp_path / "conditions.yaml", config))]) == 0
    out = tmp_path / "conditions"
    results = json.loads((out / "results.json").read_text())
    ideal, broken = results["datasets"]["ideal"], results["datasets"]["broken"]
    assert set(broken["differences"]) == {f"{a} - {c}" for a, c in bench.COMPARISONS}
    assert set(broken["loss"]) == set(bench.ARMS) and "loss" not in ideal
    score = broken["loss"]["baseline"]["track_building.trackml_score"]
    assert score["ci_low"] <= score["estimate"] <= score["ci_high"] and score["n_events"] == 2
    assert broken["shift"]["dead"]["modules"] > 0 and ideal["shift"]["dead"]["modules"] == 0
    # efficiency by particle class, on the data and against the same particles on the ideal events
    dead = broken["loss"]["baseline"]["particles_dead.efficiency"]
    assert dead["n_events"] == 2 and dead["ci_low"] <= dead["estimate"] <= dead["ci_high"]
    assert "particles_other.efficiency" in broken["differences"]["recalibrated - pretrained"]
    # the data's events really have the conditions: fewer hits than the ideal twin of the same particles
    hits = {name: (out / name / "simulated").glob("*-hits.csv") for name in ("ideal", "broken")}
    lines = {name: sum(len(p.read_text().splitlines()) for p in paths) for name, paths in hits.items()}
    assert lines["broken"] < lines["ideal"]
    # arms a, b, d were applied (nothing trained on the data), e retrained, c recalibrated from the simulation
    applied = out / "broken" / "baseline" / "seed0" / "edge_classifier_filter"
    assert not (applied / "artifacts").exists()
    assert (out / "broken" / "retrained" / "seed0" / "edge_classifier_filter" / "artifacts").is_dir()
    assert (out / "broken" / "tracking_bert_recalibrated" / "artifacts" / "best.ckpt").is_file()
    assert (out / "embedding_shift.png").stat().st_size > 0
    assert "recalibrated - pretrained" in (out / "REPORT.md").read_text()
    # a rerun reads what finished; a bad dataset name is one line and exit 2
    before = (out / "broken" / "tracking_bert_recalibrated" / "artifacts" / "best.ckpt").stat().st_mtime
    assert bench.main([str(tmp_path / "conditions.yaml"), "--datasets", "broken"]) == 0
    assert (out / "broken" / "tracking_bert_recalibrated" / "artifacts" / "best.ckpt").stat().st_mtime == before
    capsys.readouterr()
    assert bench.main([str(tmp_path / "conditions.yaml"), "--datasets", "nowhere"]) == 2
    assert "'nowhere' is not in" in capsys.readouterr().err
    # a dataset whose options changed is refused, not read as if it still matched
    config["datasets"]["broken"] = {**conditions, "misalignment_mm": 0.1}
    assert bench.main([str(write_yaml(tmp_path / "conditions.yaml", config))]) == 2
    assert "was simulated with other options" in capsys.readouterr().err


def test_a_bad_config_is_one_line(tmp_path, capsys):
    bench = load_benchmark("detector_conditions")
    path = write_yaml(tmp_path / "c.yaml", {"ab": "ab.yaml", "out_dir": "x", "datasets": {"broken": {}}})
    assert bench.main([str(path)]) == 2
    assert "needs an 'ideal' entry" in capsys.readouterr().err
    path = write_yaml(
        tmp_path / "c.yaml", {"ab": "ab.yaml", "out_dir": "x", "datasets": {"ideal": {}, "b": {"dead": 1}}}
    )
    assert bench.main([str(path)]) == 2
    assert "unknown option 'dead'" in capsys.readouterr().err
