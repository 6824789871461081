import numpy as np
import pytest

from stages.plots import (
    binned_efficiency,
    plot_binned_efficiency,
    plot_efficiency_curves,
    plot_histograms,
    wilson_interval,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_single_efficiency_curve_is_a_png(tmp_path):
    x = np.array([0.5, 0.7, 1.5, 2.5, 2.6, 40.0])
    passed = np.array([True, False, True, True, True, False])
    out = plot_binned_efficiency(
        x, passed, np.logspace(-1, 1, 6), "pT [GeV]", tmp_path / "eff.png", label="two_way", logx=True
    )
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert not list(tmp_path.glob(".*tmp"))  # written atomically: no temporary left behind


def test_several_series_overlay(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(-4, 4, 200)
    series = {"A": (x, x > 0), "B": (x, x > 1), "C": (x[:10], np.ones(10, bool))}
    out = plot_efficiency_curves(series, np.linspace(-4, 4, 9), "eta", tmp_path / "sub" / "eta.png")
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_binned_efficiency_values_and_wilson_bounds():
    eff, lo, hi, n = binned_efficiency(
        np.array([0.5, 0.5, 1.5, 5.0]), np.array([True, False, True, True]), np.array([0.0, 1.0, 2.0, 3.0])
    )
    assert n.tolist() == [2, 1, 0]
    assert eff[:2].tolist() == [0.5, 1.0] and np.isnan(eff[2])
    assert lo[1] < 1.0 and hi[1] == 1.0  # an all-passed bin of one entry still has an error bar
    e, lo, h = wilson_interval(np.array([0]), np.array([4]))
    assert e[0] == 0.0 and lo[0] == 0.0 and h[0] > 0.0


def test_mismatched_lengths_are_refused(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        plot_binned_efficiency(np.zeros(3), np.zeros(2, bool), np.linspace(0, 1, 3), "x", tmp_path / "x.png")


def test_histograms(tmp_path):
    out = plot_histograms(
        {"true": np.array([0.9, 0.8]), "false": np.array([0.1, np.nan])}, 10, "score", tmp_path / "h.png", logy=True
    )
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_wilson_bounds_never_cross_the_efficiency():
    from stages.plots import wilson_interval

    total = np.arange(1, 2000, dtype=float)
    for passed in (total, np.zeros_like(total)):
        eff, lo, hi = wilson_interval(passed, total)
        assert (lo <= eff).all() and (hi >= eff).all()
