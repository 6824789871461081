import json
import math
from pathlib import Path

import pytest

from tb_plugin.ab.arms_report import render_ab_report
from tb_plugin.ab.report import (
    format_seconds,
    format_signed,
    format_spread,
    format_value,
    overhead_line,
    render_report,
    summary_table,
    verdict,
    write_report,
)
from tb_plugin.ab.statistics import Difference

METRICS = [
    {"name": "track_building.two_way.efficiency", "label": "track efficiency (two_way)", "higher_is_better": True},
    {"name": "track_building.two_way.fake_rate", "label": "fake rate (two_way)", "higher_is_better": False},
    {"name": "graph_construction.edges_per_event", "label": "graph edges per event", "higher_is_better": False},
    {"name": "edge_classifier.auc", "label": "edge ROC AUC", "higher_is_better": True},
]


def _seed(seed: int, eff: float, fake: float, edges: float, auc: float, gnn_s: float, params: int) -> dict:
    return {
        "seed": seed,
        "event_ids": ["000001000", "000001001"],
        "metrics": {
            METRICS[0]["name"]: eff,
            METRICS[1]["name"]: fake,
            METRICS[2]["name"]: edges,
            METRICS[3]["name"]: auc,
        },
        "per_event": {},
        "trainable_parameters": {"edge_classifier": params, "total": params},
        "train_time_s": {
            "tracking_bert": 0.0 if params < 2000 else 30.0,
            "edge_classifier": 80.0 + seed,
            "total": 80.0 + seed,
        },
        "inference_s_per_event": {"graph_construction": 0.1, "edge_classifier": gnn_s, "total": 0.1 + gnn_s},
    }


def _d(estimate, low, high, significant):
    return Difference(
        estimate=estimate, ci_low=low, ci_high=high, confidence=0.95, n_seeds=2, n_events=2, significant=significant
    )


@pytest.fixture
def results() -> dict:
    return {
        "metrics": METRICS,
        "config": {"pipeline": "configs/pipelines/demo_baseline.yaml", "bootstrap": {"samples": 2000}},
        "arms": {
            "baseline": {
                "seeds": [
                    _seed(0, 0.90, 0.10, 12345.0, 0.97, 0.40, 1500),
                    _seed(1, 0.92, 0.11, 12345.0, 0.98, 0.40, 1500),
                ]
            },
            "trackingbert": {
                "seeds": [
                    _seed(0, 0.88, 0.14, 12345.0, 0.99, 0.45, 2500),
                    _seed(1, 0.87, 0.15, 12345.0, 0.99, 0.47, 2500),
                ]
            },
        },
        "overhead": {
            "inference_ratio": 1.08,
            "baseline_s_per_event": 0.5,
            "trackingbert_s_per_event": 0.54,
            "target": 1.05,
        },
        "low_label": {
            "n_labelled": [1, 2, 4],
            "arms": {
                "baseline": {
                    METRICS[0]["name"]: {"mean": [0.5, 0.6, 0.7], "std": [0.05, 0.04, 0.03]},
                    METRICS[1]["name"]: {"mean": [None] * 3, "std": [None] * 3},
                },
                "trackingbert": {
                    METRICS[0]["name"]: {"mean": [0.55, 0.65, 0.72], "std": [0.02, 0.02, None]},
                    METRICS[1]["name"]: {"mean": [None] * 3, "std": [None] * 3},
                },
            },
            "differences": {
                "1": {METRICS[0]["name"]: _d(0.05, 0.01, 0.09, True).as_dict()},
                "2": {METRICS[0]["name"]: _d(0.05, -0.01, 0.09, False).as_dict()},
            },
        },
        "plots": ["plots/efficiency_vs_pt.png", "plots/roc.png"],
    }


@pytest.fixture
def differences() -> dict:
    return {
        METRICS[0]["name"]: _d(-0.035, -0.05, -0.02, True),  # efficiency down: worse
        METRICS[1]["name"]: _d(0.04, 0.03, 0.05, True),  # fake rate up: worse
        METRICS[2]["name"]: _d(0.0, -10.0, 12.0, False),
        METRICS[3]["name"]: _d(0.015, 0.005, 0.025, True).as_dict(),  # a dict from results.json works too
    }


def test_verdicts_follow_direction_and_significance():
    assert verdict(_d(-0.1, -0.2, -0.05, True), True) == "worse"
    assert verdict(_d(-0.1, -0.2, -0.05, True), False) == "better"
    assert verdict(_d(0.1, 0.05, 0.2, True), True) == "better"
    assert verdict(_d(0.1, -0.01, 0.2, False), True) == "no significant difference"
    assert verdict(None, True) == "not compared"


def test_number_formats():
    assert format_value(0.912345) == "0.9123"
    assert format_value(12345.4) == "12,345"
    assert format_value(None) == "n/a" and format_value(math.nan) == "n/a"
    assert format_signed(0.01) == "+0.01" and format_signed(-0.5) == "-0.5"
    assert format_seconds(0.12345) == "0.123"
    assert format_spread(0.006581) == "0.0066" and format_spread(112.6) == "113" and format_spread(0.0) == "0"


def test_summary_table_rows(results, differences):
    table = summary_table(results, differences)
    lines = table.strip().splitlines()
    assert len(lines) == 2 + len(METRICS)
    eff_row, fake_row, edges_row, auc_row = lines[2:]
    assert eff_row.startswith(
        "| track efficiency (two_way) | 0.91 ± 0.014 | 0.875 ± 0.0071 | -0.035 [-0.05, -0.02] | worse |"
    )
    assert fake_row.endswith("| +0.04 [+0.03, +0.05] | worse |")
    assert edges_row.startswith("| graph edges per event | 12,345 | 12,345 |")  # identical seeds: no ± 0
    assert edges_row.endswith("| no significant difference |")
    assert auc_row.endswith("| better |")
    assert "95% CI" in lines[0]


def test_report_content(results, differences):
    text = render_report(results, differences)
    assert text.startswith("# A/B benchmark: trackingbert vs baseline")
    for spec in METRICS:
        assert spec["label"] in text
    assert "- seeds: 0, 1 (2 per arm" in text
    assert "- test events: 2," in text
    assert "2000 replicates" in text
    assert "`pipeline`: `configs/pipelines/demo_baseline.yaml`" in text
    assert "significantly better on 1, significantly worse on 2, and shows no significant difference on 1" in text
    # costs: parameters with separators, seconds with three decimals, total last
    assert "| trainable parameters: edge_classifier | 1,500 | 2,500 |" in text
    assert "| inference [s per event]: edge_classifier | 0.400 | 0.460 ± 0.014 |" in text
    assert "| inference [s per event]: graph_construction | 0.100 | 0.100 |" in text  # equal seeds: no "± 0.000"
    assert text.index("training time [s]: edge_classifier") < text.index("training time [s]: total")
    assert "ratio 1.080 (+8.0%), which **does not meet** the target of at most 1.050." in text
    assert "trackingbert takes 0.540 s per event, baseline 0.500 s" in text
    assert (
        "| track efficiency (two_way) | 4 | 0.7 ± 0.030 | 0.72 | n/a | not compared |" in text
    )  # None std: the mean alone
    assert "| track efficiency (two_way) | 1 | 0.5 ± 0.050 | 0.55 ± 0.020 | +0.05 [+0.01, +0.09] | better |" in text
    assert (
        "| track efficiency (two_way) | 2 | 0.6 ± 0.040 | 0.65 ± 0.020 | +0.05 [-0.01, +0.09] | no significant difference |"
        in text
    )
    assert "| fake rate (two_way) | 1 |" not in text  # a metric without values gets no low-label rows
    assert "- [roc.png](plots/roc.png)" in text
    assert "worker processes" not in text
    parallel = render_report({**results, "config": {**results["config"], "jobs": 2}}, differences)
    assert "The stages ran in 2 worker processes (key `jobs`)" in parallel


def test_report_never_claims_a_gain_inside_the_interval(results):
    diffs = {m["name"]: _d(0.02, -0.001, 0.04, False) for m in METRICS}
    text = render_report(results, diffs)
    table = summary_table(results, diffs)
    assert "| better |" not in table and "| worse |" not in table
    assert table.count("no significant difference") == len(METRICS)
    assert "significantly better on 0, significantly worse on 0" in text


def test_report_is_robust_to_missing_optional_parts(results, differences, tmp_path):
    for key in ("config", "overhead", "low_label", "plots"):
        del results[key]
    text = render_report(results, {k: v for k, v in differences.items() if k != METRICS[2]["name"]})
    assert "Inference overhead: not measured." in text
    assert "Low-label" not in text and "## Plots" not in text
    assert "| graph edges per event | 12,345 | 12,345 | n/a | not compared |" in text
    one_seed = dict(results)
    one_seed["arms"] = {arm: {"seeds": results["arms"][arm]["seeds"][:1]} for arm in results["arms"]}
    assert "only events are resampled" in render_report(one_seed, differences)


def test_meeting_the_target_and_relative_plot_links(results, differences, tmp_path):
    assert "which **meets** the target" in overhead_line({"inference_ratio": 1.02, "target": 1.05})
    results["plots"] = [str(tmp_path / "plots" / "roc.png")]
    text = render_report(results, differences, relative_to=tmp_path)
    assert "- [roc.png](plots/roc.png)" in text


def test_write_report_is_atomic(results, differences, tmp_path):
    path = write_report(tmp_path / "ab" / "REPORT.md", render_report(results, differences))
    assert path.read_text().startswith("# A/B benchmark")
    assert not list(path.parent.glob(".*tmp"))


def test_a_spread_at_rounding_level_is_no_spread():
    from tb_plugin.ab.report import mean_std_cell as _mean_std

    assert _mean_std(0.9787, 1.4e-16) == _mean_std(0.9787, 0.0) == "0.9787"
    assert "±" in _mean_std(0.9787, 1e-6)


def test_metrics_identical_in_both_arms_leave_the_table(results, differences):
    # the graph's edges: the same cells in both arms, seed by seed (a shared module map); the efficiency: not
    for arm, effs in (("baseline", ([3, 4], [3, 5])), ("trackingbert", ([3, 4], [2, 5]))):
        for seed, eff in zip(results["arms"][arm]["seeds"], effs):
            seed["per_event"] = {
                METRICS[2]["name"]: {"num": [12000.0, 12690.0], "den": [1.0, 1.0]},
                METRICS[0]["name"]: {"num": eff, "den": [5, 5]},
            }
    table = summary_table(results, differences)
    assert "graph edges per event" not in table and "track efficiency (two_way)" in table
    text = render_report(results, differences)
    assert "Of 3 metrics compared" in text
    assert (
        "Identical in both arms, event by event (made by stages the arms share), and left out of the table: graph edges per event."
        in text
    )
    # one differing cell in one seed: back in the table
    results["arms"]["trackingbert"]["seeds"][1]["per_event"][METRICS[2]["name"]]["num"][0] = 12001.0
    assert "graph edges per event" in summary_table(results, differences)


DATA = Path(__file__).parent / "data"


def test_a_two_arm_results_json_gives_todays_report():
    """results.json of a two-arm A/B (written before arms existed) renders to the report of that day,
    byte for byte: the arms report leaves the two-arm form alone."""
    results = json.loads((DATA / "two_arm_results.json").read_text())
    expected = (DATA / "two_arm_REPORT.md").read_text()
    assert render_ab_report(results) == expected
    assert render_report(results, results["differences"]) == expected
    # and so does the same results.json as the runner now writes it: with its one comparison listed
    results["comparisons"] = [{"arm": "trackingbert", "control": "baseline", "differences": results["differences"]}]
    assert render_ab_report(results) == expected


def multi_arm(results: dict, differences: dict) -> dict:
    """The two-arm fixture with a third arm, `random`, a copy of trackingbert that is a bit worse, and the
    comparison trackingbert − random besides the two against the baseline."""
    out = json.loads(json.dumps({**results, "differences": {k: _dict(v) for k, v in differences.items()}}))
    out["arms"] = {
        "baseline": {"source": "none", "seeds": out["arms"]["baseline"]["seeds"]},
        "trackingbert": {
            "source": "pretrained",
            "compare_to": ["random"],
            "seeds": out["arms"]["trackingbert"]["seeds"],
        },
        "random": {
            "source": "random",
            "compare_to": [],
            "seeds": json.loads(json.dumps(out["arms"]["trackingbert"]["seeds"])),
        },
    }
    for seed in out["arms"]["random"]["seeds"]:
        seed["metrics"][METRICS[0]["name"]] -= 0.01
    control = {
        METRICS[0]["name"]: _d(0.01, 0.004, 0.016, True).as_dict(),
        METRICS[1]["name"]: _d(0.0, -0.01, 0.01, False).as_dict(),
    }
    out["comparisons"] = [
        {"arm": "trackingbert", "control": "baseline", "differences": out["differences"]},
        {"arm": "random", "control": "baseline", "differences": out["differences"]},
        {"arm": "trackingbert", "control": "random", "differences": control},
    ]
    out["config"]["arms"] = {"trackingbert": {"source": "pretrained"}, "random": {"source": "random"}}
    out["config"]["note"] = "the GNN is smaller than the demo pipeline's"
    out["config"]["trackingbert_features"] = {"node_features": ["hit_tb_emb"], "edge_features": ["tb_sim"]}
    out["overhead"]["arms"] = {
        "trackingbert": {"s_per_event": 0.54, "ratio": 1.08},
        "random": {"s_per_event": 0.55, "ratio": 1.1},
    }
    out["low_label"]["arms"]["random"] = out["low_label"]["arms"]["trackingbert"]
    out["low_label"]["comparisons"] = [
        {
            "arm": "trackingbert",
            "control": "random",
            "differences": {"1": {METRICS[0]["name"]: _d(0.02, 0.01, 0.03, True).as_dict()}},
        }
    ]
    return out


def _dict(value):
    return value.as_dict() if isinstance(value, Difference) else value


def test_the_arms_report_opens_with_what_the_controls_show(results, differences):
    text = render_ab_report(multi_arm(results, differences))
    assert text.startswith("# A/B benchmark: trackingbert, random vs baseline\n")
    sections = [line for line in text.splitlines() if line.startswith("## ")]
    assert sections[:6] == [
        "## What was compared",
        "## What the controls show",
        "## Every arm (mean ± std over 2 seeds)",
        "## trackingbert − baseline",
        "## random − baseline",
        "## trackingbert − random",
    ]
    assert "- `random`: the same pipeline with the module-embedding features of the untrained TrackingBERT" in text
    assert "- **note**: the GNN is smaller than the demo pipeline's" in text
    # the controls table: a column per comparison, cells with interval and verdict
    header = "| metric | trackingbert − baseline | random − baseline | trackingbert − random |"
    assert header in text
    row = next(line for line in text.splitlines() if line.startswith("| track efficiency (two_way) | -0.035"))
    assert row.endswith("| +0.01 [+0.004, +0.016] better |")
    assert "- trackingbert − random: better on 1, worse on 0, no significant difference on 1 of 2 metrics" in text
    # every arm side by side, and each arm's cost and overhead
    assert "| metric | baseline | trackingbert | random |" in text
    assert "| quantity | baseline | trackingbert | random |" in text
    assert "- `random`: 0.550 s per event, ratio 1.100 (+10.0%)" in text
    assert "### trackingbert − random, by labelled events" in text


def test_the_forest_plot_shows_every_comparison(results, differences, tmp_path):
    from tb_plugin.ab.plots import plot_comparisons

    arms = multi_arm(results, differences)
    path = plot_comparisons(arms["comparisons"], METRICS, tmp_path / "comparisons.png")
    assert path.stat().st_size > 10_000
