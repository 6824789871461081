import math
import time

import numpy as np
import pytest

from tb_plugin.ab.statistics import (
    Difference,
    comparable_metrics,
    compare_arms,
    paired_bootstrap,
    per_event_matrix,
    pooled,
    seed_summary,
)


def _counts(seed: int, shape=(5, 50), p=0.9):
    rng = np.random.default_rng(seed)
    den = rng.integers(20, 200, shape).astype(float)
    return rng.binomial(den.astype(int), p).astype(float), den


# ---------------------------------------------------------------------------- pooled


def test_pooled_is_a_ratio_of_sums_not_a_mean_of_ratios():
    num, den = np.array([1.0, 90.0]), np.array([10.0, 100.0])
    assert pooled(num, den) == pytest.approx(91.0 / 110.0)
    assert np.mean(num / den) == pytest.approx(0.5)  # the mean of ratios would say 0.5
    assert pooled(num, den) != pytest.approx(np.mean(num / den))


def test_pooled_is_none_when_undefined_and_skips_missing_cells():
    assert pooled([0.0, 0.0], [0.0, 0.0]) is None
    assert pooled([], []) is None
    assert pooled([3.0, None, 1.0], [4.0, 5.0, float("nan")]) == pytest.approx(0.75)


# ---------------------------------------------------------------------------- bootstrap


def test_constant_shift_gives_an_exact_degenerate_interval():
    num, den = _counts(1)
    d = paired_bootstrap(num, den, num + 0.1 * den, den, n_boot=500)
    assert d.estimate == pytest.approx(0.1, abs=1e-12)
    assert d.ci_low == pytest.approx(0.1, abs=1e-12) and d.ci_high == pytest.approx(0.1, abs=1e-12)
    assert d.significant
    assert (d.n_seeds, d.n_events, d.confidence) == (5, 50, 0.95)
    assert d.arm_value - d.control_value == pytest.approx(0.1, abs=1e-12)


def test_same_distribution_interval_covers_zero():
    base_num, den = _counts(2)
    tb_num = np.random.default_rng(3).binomial(den.astype(int), 0.9).astype(float)
    d = paired_bootstrap(base_num, den, tb_num, den)
    assert d.ci_low < 0.0 < d.ci_high
    assert not d.significant
    assert d.ci_low <= d.estimate <= d.ci_high
    assert d.ci_high - d.ci_low < 0.03  # ~12k trials per arm: a tight interval, not a vacuous one


def test_same_distribution_covers_zero_for_most_bootstrap_seeds():
    base_num, den = _counts(4)
    tb_num = np.random.default_rng(5).binomial(den.astype(int), 0.9).astype(float)
    covered = sum(not paired_bootstrap(base_num, den, tb_num, den, n_boot=400, seed=s).significant for s in range(20))
    assert covered >= 18


def test_large_shift_is_significant_with_the_right_sign():
    num, den = _counts(6, p=0.8)
    better = np.random.default_rng(7).binomial(den.astype(int), 0.9).astype(float)
    up = paired_bootstrap(num, den, better, den)
    down = paired_bootstrap(better, den, num, den)
    assert up.significant and up.ci_low > 0.05
    assert down.significant and down.ci_high < -0.05
    assert up.estimate == pytest.approx(-down.estimate)


def test_pairing_cancels_shared_event_variation():
    """Events differ wildly in difficulty, both arms alike; tb is better by 0.01 on every event. Paired,
    the interval is tight and excludes zero; an unpaired analysis would drown the 0.01 in event spread."""
    rng = np.random.default_rng(8)
    rate = rng.uniform(0.3, 0.99, (3, 40))
    den = np.full_like(rate, 1000.0)
    d = paired_bootstrap(rate * den, den, (rate + 0.01) * den, den)
    assert d.significant and d.ci_low > 0.009 and d.ci_high < 0.011


def test_bootstrap_uses_pooled_values_not_mean_of_ratios():
    # one seed, two events: big event at 0.9 in both arms, small event 0.0 vs 1.0
    base_num, base_den = np.array([[90.0, 0.0]]), np.array([[100.0, 10.0]])
    tb_num, tb_den = np.array([[90.0, 10.0]]), np.array([[100.0, 10.0]])
    d = paired_bootstrap(base_num, base_den, tb_num, tb_den, n_boot=200)
    assert d.estimate == pytest.approx(100.0 / 110.0 - 90.0 / 110.0)  # 0.0909, not the 0.5 of per-event means
    assert d.control_value == pytest.approx(90.0 / 110.0)


def test_single_seed_resamples_events_only():
    num, den = _counts(9, shape=(1, 30))
    d = paired_bootstrap(num, den, num + 0.05 * den, den, n_boot=300)
    assert d.n_seeds == 1 and d.n_events == 30
    assert d.ci_low == pytest.approx(0.05) and d.ci_high == pytest.approx(0.05)
    other = np.random.default_rng(10).binomial(den.astype(int), 0.9).astype(float)
    d2 = paired_bootstrap(num, den, other, den, n_boot=300)
    assert d2.ci_low < d2.estimate < d2.ci_high


def test_deterministic_for_a_seed_and_different_for_another():
    base_num, den = _counts(11)
    tb_num = np.random.default_rng(12).binomial(den.astype(int), 0.9).astype(float)
    a = paired_bootstrap(base_num, den, tb_num, den, seed=3)
    b = paired_bootstrap(base_num, den, tb_num, den, seed=3)
    c = paired_bootstrap(base_num, den, tb_num, den, seed=4)
    assert a == b
    assert (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)
    assert a.estimate == c.estimate


def test_confidence_level_widens_the_interval():
    base_num, den = _counts(13)
    tb_num = np.random.default_rng(14).binomial(den.astype(int), 0.9).astype(float)
    narrow = paired_bootstrap(base_num, den, tb_num, den, confidence=0.5)
    wide = paired_bootstrap(base_num, den, tb_num, den, confidence=0.99)
    assert wide.ci_low < narrow.ci_low < narrow.ci_high < wide.ci_high


def test_shape_mismatch_is_refused_naming_the_shapes():
    a, b = np.ones((2, 3)), np.ones((2, 4))
    with pytest.raises(ValueError, match=r"tb_num \(2, 4\)"):
        paired_bootstrap(a, a, b, a)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        paired_bootstrap(np.ones(3), np.ones(3), np.ones(3), np.ones(3))


def test_undefined_metric_is_nan_and_not_significant():
    zeros = np.zeros((2, 3))
    d = paired_bootstrap(zeros, zeros, zeros, zeros, n_boot=100)
    assert math.isnan(d.estimate) and math.isnan(d.ci_low) and not d.significant
    assert d.as_dict()["estimate"] is None


def test_fast_enough():
    base_num, den = _counts(15)
    tb_num = np.random.default_rng(16).binomial(den.astype(int), 0.9).astype(float)
    start = time.perf_counter()
    paired_bootstrap(base_num, den, tb_num, den, n_boot=2000)
    assert time.perf_counter() - start < 0.5


def test_difference_round_trips_through_a_dict():
    d = Difference(
        estimate=0.1,
        ci_low=0.05,
        ci_high=0.15,
        confidence=0.9,
        n_seeds=3,
        n_events=7,
        significant=True,
        control_value=0.5,
        arm_value=0.6,
    )
    assert Difference.from_dict(d.as_dict()) == d
    # a results.json of two-arm days named the pooled values after the arms
    legacy = {k: v for k, v in d.as_dict().items() if k not in ("control_value", "arm_value")}
    assert Difference.from_dict({**legacy, "baseline": 0.5, "trackingbert": 0.6}) == d
    assert d.as_dict()["n_seeds"] == 3 and d.as_dict()["significant"] is True


# ---------------------------------------------------------------------------- results.json


def _seed(seed: int, rate: float, ids=("000000001", "000000002", "000000003"), extra: dict | None = None) -> dict:
    den = [10.0, 20.0, 30.0]
    num = [rate * d for d in den]
    per_event = {"eff": {"num": num, "den": den}, "edges": {"num": [100.0, 200.0, 300.0], "den": [1.0, 1.0, 1.0]}}
    per_event.update(extra or {})
    return {
        "seed": seed,
        "event_ids": list(ids),
        "metrics": {"eff": sum(num) / sum(den), "edges": 200.0},
        "per_event": per_event,
    }


def _results(base_rates=(0.8, 0.9), tb_rates=(0.85, 0.95), **kwargs) -> dict:
    return {
        "metrics": [
            {"name": "eff", "label": "efficiency", "higher_is_better": True},
            {"name": "edges", "label": "edges per event", "higher_is_better": False},
            {"name": "absent", "label": "not measured", "higher_is_better": True},
        ],
        "arms": {
            "baseline": {"seeds": [_seed(i, r, **kwargs) for i, r in enumerate(base_rates)]},
            "trackingbert": {"seeds": [_seed(i, r, **kwargs) for i, r in enumerate(tb_rates)]},
        },
    }


def test_compare_arms_in_report_order():
    results = _results()
    diffs = compare_arms(results, n_boot=300, confidence=0.9, seed=1)
    assert list(diffs) == ["eff", "edges"]  # 'absent' has no per-event values
    assert diffs["eff"].estimate == pytest.approx(0.05)
    assert diffs["eff"].significant and diffs["eff"].confidence == 0.9
    assert diffs["edges"].estimate == 0.0 and not diffs["edges"].significant
    assert (diffs["eff"].n_seeds, diffs["eff"].n_events) == (2, 3)


def test_compare_arms_pairs_seeds_by_value_not_position():
    results = _results()
    results["arms"]["trackingbert"]["seeds"].reverse()
    num, _ = per_event_matrix(results, "trackingbert", "eff")
    assert num[0, 0] == pytest.approx(8.5)  # seed 0 first
    assert compare_arms(results, n_boot=100)["eff"].estimate == pytest.approx(0.05)


def test_compare_arms_refuses_different_events():
    results = _results()
    results["arms"]["trackingbert"]["seeds"][1]["event_ids"][2] = "000000099"
    with pytest.raises(ValueError, match="trackingbert' seed 1.*position 2"):
        compare_arms(results, n_boot=100)


def test_compare_arms_refuses_different_seeds_and_short_per_event_lists():
    results = _results()
    results["arms"]["trackingbert"]["seeds"][1]["seed"] = 7
    with pytest.raises(ValueError, match="seeds"):
        compare_arms(results, n_boot=100)
    short = _results(extra={"auc": {"num": [0.9, 0.8], "den": [1.0, 1.0]}})
    assert "auc" in comparable_metrics(short)
    with pytest.raises(ValueError, match="auc.*3 event_ids"):
        compare_arms(short, n_boot=100)


def test_seed_summary_mean_and_sample_std():
    results = _results(base_rates=(0.8, 0.9))
    mean, std = seed_summary(results, "baseline", "eff")
    assert mean == pytest.approx(0.85) and std == pytest.approx(np.std([0.8, 0.9], ddof=1))
    one = _results(base_rates=(0.8,), tb_rates=(0.9,))
    assert seed_summary(one, "trackingbert", "eff") == (pytest.approx(0.9), 0.0)
    assert all(math.isnan(v) for v in seed_summary(results, "baseline", "absent"))
    for s in results["arms"]["baseline"]["seeds"]:
        s["metrics"]["eff"] = 0.1
    assert seed_summary(results, "baseline", "eff")[1] == 0.0  # agreeing seeds: exactly 0, no rounding noise


def test_seed_summary_pools_per_event_when_metrics_lacks_it():
    results = _results()
    for s in results["arms"]["baseline"]["seeds"]:
        del s["metrics"]["eff"]
    assert seed_summary(results, "baseline", "eff")[0] == pytest.approx(0.85)
