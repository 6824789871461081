"""benchmarks/pretraining_scaling.py at a tiny size: two points of the tiny A/B (one epoch, and two with
the layer softmax), their compute, pretraining metrics and control differences, the shared arms, the
summary files, and one-line refusals of a bad sweep file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import load_benchmark
from tests.tb_plugin.ab.conftest import write_yaml


def sweep_file(ab_setup: Path, tmp_path: Path, points: list) -> Path:
    ab = yaml.safe_load(ab_setup.read_text())
    ab |= {"pipeline": str(ab_setup.parent / "pipeline.yaml"), "tracking_bert": str(ab_setup.parent / "tb.yaml")}
    ab |= {"seeds": [0], "jobs": 1, "timing_events": 1}
    write_yaml(tmp_path / "base_ab.yaml", ab)
    return write_yaml(
        tmp_path / "sweep.yaml", {"out_dir": str(tmp_path / "sweep"), "ab": "base_ab.yaml", "points": points}
    )


def test_two_points_run_share_their_controls_and_summarise(ab_setup, tmp_path, capsys):
    bench = load_benchmark("pretraining_scaling")
    points = [
        {"name": "one", "keys": {"max_epochs": 1, "mdm_candidates": "all"}},
        {"name": "two", "keys": {"max_epochs": 2, "mdm_candidates": "layer"}, "controls": ["shuffled"]},
    ]
    assert bench.main([str(sweep_file(ab_setup, tmp_path, points))]) == 0
    out = tmp_path / "sweep"
    summary = json.loads((out / "scaling.json").read_text())
    one, two = summary["points"]
    assert (one["mdm_candidates"], two["mdm_candidates"]) == ("all", "layer")
    assert two["compute"]["tokens"] == 2 * one["compute"]["tokens"]  # the same tracks, twice the epochs
    assert two["compute"]["mdm_candidates_mean"] < one["compute"]["mdm_candidates_mean"]  # a layer, not the vocabulary
    assert "pretrained - shuffled" in two["downstream"] and "shuffled - random" in two["downstream"]
    assert set(one["downstream"]) == {"pretrained - random", "finetune - learned"}  # no shuffled arm asked
    for point in (one, two):
        assert -1 <= point["mdm_layer"]["top1_minus_count"] <= 1 and point["pretraining_s"] > 0
        for comparison in ("pretrained - random", "finetune - learned"):
            score = point["downstream"][comparison]["track_building.trackml_score"]
            assert score["ci_low"] <= score["estimate"] <= score["ci_high"]
            assert "track_building.size_matched.trackml_score" in point["downstream"][comparison]
    # the second point reran its pretrained and finetune arms only: the random control (whose keys differ
    # in max_epochs and mdm_candidates alone, which it does not read), the baseline and learned are the first's
    assert not (out / "two" / "tracking_bert_random").exists()
    for arm in ("baseline", "random", "learned"):  # result.json summaries only, no stage folder
        assert not (out / "two" / arm / "seed0" / "edge_classifier_filter").exists(), arm
    for arm in ("pretrained", "finetune"):
        assert (out / "two" / arm / "seed0" / "edge_classifier_filter" / "stage_record.json").is_file(), arm
    assert (out / "scaling.png").stat().st_size > 0
    table = (out / "scaling.md").read_text()
    assert table.count("\n") == 4 and "n/a |\n" in table and "| one |" in table and "| two |" in table
    assert "smallest compute where pretrained beats random" in capsys.readouterr().out
    # a rerun of one point reads it instead of training again, and the summary keeps both points
    before = (out / "one" / "tracking_bert" / "artifacts" / "best.ckpt").stat().st_mtime
    assert bench.main([str(tmp_path / "sweep.yaml"), "--points", "one"]) == 0
    assert (out / "one" / "tracking_bert" / "artifacts" / "best.ckpt").stat().st_mtime == before
    assert [p["name"] for p in json.loads((out / "scaling.json").read_text())["points"]] == ["one", "two"]
    assert bench.main([str(tmp_path / "sweep.yaml"), "--points", "three"]) == 2
    # --summary re-reads each point's differences from its results.json (a metric added later reaches old
    # points), and leaves out a point whose point.json ran other keys than the sweep file now asks
    stored = json.loads((out / "two" / "point.json").read_text())
    stored["downstream"] = {}
    (out / "two" / "point.json").write_text(json.dumps(stored))
    changed = yaml.safe_load((tmp_path / "sweep.yaml").read_text())
    changed["points"][0]["keys"]["max_epochs"] = 3
    write_yaml(tmp_path / "sweep.yaml", changed)
    capsys.readouterr()
    assert bench.main([str(tmp_path / "sweep.yaml"), "--summary"]) == 0
    (only,) = json.loads((out / "scaling.json").read_text())["points"]
    assert only["name"] == "two" and "pretrained - shuffled" in only["downstream"]
    assert "one/point.json ran keys" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("points", "message"),
    [
        ([{"name": "a", "keys": {"max_epoch": 2}}], "max_epoch"),
        ([{"name": "a", "keys": {"mdm_candidates": "sampled"}}], "mdm_candidates"),
        ([{"keys": {}}], "points[0]"),
        ([{"name": "a"}, {"name": "a"}], "unique"),
        ([{"name": "a", "controls": ["learned"]}], "controls must be a list of"),
        ([], "non-empty"),
    ],
)
def test_a_bad_sweep_file_gets_one_line_and_exit_2(ab_setup, tmp_path, capsys, points, message):
    bench = load_benchmark("pretraining_scaling")
    assert bench.main([str(sweep_file(ab_setup, tmp_path, points))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err


def test_a_pretraining_only_sweep_trains_and_evaluates_each_point(ab_setup, tmp_path):
    """The GPU form (benchmarks/gpu_scaling.sh): tracking_bert + input_dir, no A/B; the epochs come from
    the checkpoint, so a run that max_time_s cut short counts what it trained."""
    from tb_plugin.ab.runner import load_runner
    from tb_plugin.ab.stage_runs import run_once

    reading = load_runner(ab_setup).reading_stage()
    run_once(reading)
    sweep = {
        "out_dir": str(tmp_path / "sweep"),
        "tracking_bert": str(ab_setup.parent / "tb.yaml"),
        "input_dir": str(reading.stage_dir),
        "points": [
            {"name": "all", "keys": {"mdm_candidates": "all"}},
            {"name": "layer", "keys": {"mdm_candidates": "layer", "max_epochs": 2}},
        ],
    }
    bench = load_benchmark("pretraining_scaling")
    assert bench.main([str(write_yaml(tmp_path / "sweep.yaml", sweep))]) == 0
    every, layer = json.loads((tmp_path / "sweep" / "scaling.json").read_text())["points"]
    assert every["downstream"] == layer["downstream"] == {}
    assert (every["compute"]["epochs_trained"], layer["compute"]["epochs_trained"]) == (1, 2)
    assert (tmp_path / "sweep" / "layer" / "eval" / "metrics.json").is_file()
    assert "n/a" in (tmp_path / "sweep" / "scaling.md").read_text()
    both = dict(sweep, ab=str(ab_setup))
    assert bench.main([str(write_yaml(tmp_path / "both.yaml", both))]) == 2
