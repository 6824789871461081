import numpy as np
import pytest

from tb_plugin.ab.plots import (
    PT_BINS_GEV,
    _thinned,
    plot_efficiency_vs_pt,
    plot_embedding_pca,
    plot_low_label,
    plot_metric_differences,
    plot_roc,
)
from tb_plugin.ab.statistics import Difference

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METRICS = [
    {"name": "track_building.two_way.efficiency", "label": "track efficiency", "higher_is_better": True},
    {"name": "track_building.two_way.fake_rate", "label": "fake rate", "higher_is_better": False},
    {"name": "graph_construction.edges_per_event", "label": "edges per event", "higher_is_better": False},
]


def _is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == PNG_MAGIC


def test_efficiency_vs_pt_accepts_arrays_and_per_event_lists(tmp_path):
    rng = np.random.default_rng(0)
    pt = rng.exponential(1.0, 500) + 0.1
    arms = {
        "baseline": (pt, rng.random(500) < 0.8),
        "trackingbert": ([pt[:250], pt[250:]], [rng.random(250) < 0.9, rng.random(250) < 0.9]),
    }
    out = plot_efficiency_vs_pt(arms, tmp_path / "eff.png")
    assert _is_png(out)
    assert not list(tmp_path.glob(".*tmp"))


def test_pt_bins_match_the_stages():
    from stages.graph_metrics import PT_BINS_GEV as STAGE_BINS

    np.testing.assert_array_equal(PT_BINS_GEV, STAGE_BINS)


def test_roc(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.random(3000) < 0.2
    arms = {
        "baseline": (labels + rng.normal(0, 0.6, 3000), labels),
        "trackingbert": (
            [labels[:1000] + rng.normal(0, 0.4, 1000), labels[1000:] + rng.normal(0, 0.4, 2000)],
            [labels[:1000], labels[1000:]],
        ),
    }
    assert _is_png(plot_roc(arms, tmp_path / "roc.png"))
    with pytest.raises(ValueError, match="both classes"):
        plot_roc({"baseline": (np.ones(5), np.ones(5, bool))}, tmp_path / "bad.png")


def test_thinning_keeps_the_ends_and_real_points():
    fpr = np.linspace(0, 1, 100_000)
    tpr = np.sqrt(fpr)
    f, t = _thinned(fpr, tpr, max_points=1000)
    assert len(f) <= 1001 and f[0] == 0.0 and f[-1] == 1.0
    np.testing.assert_array_equal(t, np.sqrt(f))
    assert f[1] < 1e-4  # the low-FPR end keeps its detail for the log axis
    same = _thinned(fpr[:10], tpr[:10], max_points=1000)
    assert len(same[0]) == 10


def test_metric_differences_forest(tmp_path):
    diffs = {
        METRICS[0]["name"]: Difference(
            estimate=0.01, ci_low=0.004, ci_high=0.02, confidence=0.95, n_seeds=3, n_events=50, significant=True
        ),
        METRICS[1]["name"]: Difference(
            estimate=0.002, ci_low=-0.01, ci_high=0.012, confidence=0.95, n_seeds=3, n_events=50, significant=False
        ).as_dict(),
        METRICS[2]["name"]: Difference(
            estimate=float("nan"),
            ci_low=float("nan"),
            ci_high=float("nan"),
            confidence=0.95,
            n_seeds=3,
            n_events=50,
            significant=False,
        ),
    }
    assert _is_png(plot_metric_differences(diffs, METRICS, tmp_path / "differences.png"))
    assert _is_png(
        plot_metric_differences({METRICS[0]["name"]: diffs[METRICS[0]["name"]]}, METRICS, tmp_path / "one.png")
    )
    with pytest.raises(ValueError, match="none of the metrics"):
        plot_metric_differences(diffs, ["other"], tmp_path / "none.png")


def test_low_label_one_png_per_metric(tmp_path):
    name = METRICS[0]["name"]
    low = {
        "n_labelled": [1, 2, 4, 8, 64],
        "arms": {
            "baseline": {name: {"mean": [0.4, 0.5, 0.6, 0.7, 0.9], "std": [0.1, 0.05, 0.04, 0.02, 0.01]}},
            "trackingbert": {name: {"mean": [0.5, 0.6, 0.65, 0.72, 0.9], "std": [0.05, 0.04, None, 0.02, 0.01]}},
        },
    }
    low["arms"]["baseline"][METRICS[1]["name"]] = {"mean": [None] * 5, "std": [None] * 5}  # no such stage
    low["arms"]["trackingbert"][METRICS[1]["name"]] = {"mean": [None] * 5, "std": [None] * 5}
    written = plot_low_label(low, METRICS, tmp_path / "low")
    assert [p.name for p in written] == ["low_label_track_building_two_way_efficiency.png"]
    assert all(_is_png(p) for p in written)
    low["arms"]["baseline"][name]["mean"] = [0.4]
    with pytest.raises(ValueError, match="1 values for 5"):
        plot_low_label(low, METRICS, tmp_path / "low")


def test_embedding_pca_is_re_exported(tmp_path):
    rng = np.random.default_rng(2)
    out = plot_embedding_pca(
        rng.normal(size=(40, 8)), np.repeat([7, 8], 20), np.tile([2, 4, 6, 8], 10), tmp_path / "pca.png"
    )
    assert _is_png(out)
