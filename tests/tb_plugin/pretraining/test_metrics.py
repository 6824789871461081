import json

import numpy as np
import pytest

from tb_plugin.geometry import Detector
from tb_plugin.pretraining.metrics import mdm_metrics, ntp_metrics, roc_auc, roc_curve
from tb_plugin.tokenizer import CLS, MASK, PAD, ModuleTokenizer


@pytest.fixture(scope="module")
def detector():
    """Four modules: tokens 5 and 6 are 15 mm apart (same layer), 7 is 40 mm out, 8 in an endcap."""
    centres = np.array([[30.0, 0, 0], [30.0, 15.0, 0], [70.0, 0, 0], [30.0, 0, 600.0]])
    m = len(centres)
    return Detector.from_arrays(
        volume_id=[8, 8, 8, 9],
        layer_id=[2, 2, 4, 2],
        module_id=[1, 2, 1, 1],
        center=centres,
        rotation=np.repeat(np.eye(3)[None], m, axis=0),
        thickness=np.full(m, 0.15),
        min_hu=np.full(m, 8.4),
        max_hu=np.full(m, 8.4),
        hv=np.full(m, 36.0),
        pitch_u=np.full(m, 0.05),
        pitch_v=np.full(m, 0.05625),
    )


@pytest.fixture(scope="module")
def tokenizer(detector):
    return ModuleTokenizer(detector)


def test_mdm_exact_values_and_breakdowns(detector, tokenizer):
    pred = np.array(
        [
            [5, 6, 7, 8, PAD],  # target 5: top-1
            [5, 7, 8, PAD, 6],  # target 6: top-5 only; top-1 is 15 mm away -> within 20 mm
            [5, 6, 8, PAD, PAD],  # target 7: miss; 40 mm away
            [MASK, 8, 5, 6, 7],  # target 8: special top-1 -> miss for top-1 and within, top-5 hit
        ]
    )
    target = np.array([5, 6, 7, 8])
    position = np.array([0, 1, 1, 3])
    m = mdm_metrics(pred, target, position, tokenizer, detector)
    assert m["top1"] == 0.25 and m["top5"] == 0.75 and m["within_20mm"] == 0.5 and m["n_masked"] == 4
    assert m["by_volume"] == {
        "8": {"top1": 1 / 3, "top5": 2 / 3, "within_20mm": 2 / 3, "n": 3},
        "9": {"top1": 0.0, "top5": 1.0, "within_20mm": 0.0, "n": 1},
    }
    assert list(m["by_position"]) == ["0", "1", "3"]
    assert m["by_position"]["1"] == {"top1": 0.0, "top5": 0.5, "within_20mm": 0.5, "n": 2}
    assert sum(g["n"] for g in m["by_volume"].values()) == sum(g["n"] for g in m["by_position"].values()) == 4
    json.dumps(m)  # plain python numbers only
    assert all(type(m[k]) is float for k in ("top1", "top5", "within_20mm")) and type(m["n_masked"]) is int


def test_mdm_top5_looks_only_at_the_first_five_and_within_is_by_centre(detector, tokenizer):
    pred = np.array([[7, 8, 7, 8, 7, 5], [6, 7, 8, 8, 8, 8]])
    m = mdm_metrics(pred, np.array([5, 5]), np.array([0, 2]), tokenizer, detector)
    assert m["top5"] == 0.0 and m["within_20mm"] == 0.5  # module 6 sits 15 mm from 5, module 7 40 mm


def test_mdm_refuses_bad_input(detector, tokenizer):
    with pytest.raises(ValueError, match="k >= 5"):
        mdm_metrics(np.zeros((2, 3), int) + 5, np.array([5, 6]), np.array([0, 1]), tokenizer, detector)
    with pytest.raises(ValueError, match="special tokens"):
        mdm_metrics(np.full((2, 5), 5), np.array([5, CLS]), np.array([0, 1]), tokenizer, detector)
    with pytest.raises(ValueError, match="no masked hits"):
        mdm_metrics(np.zeros((0, 5), int), np.zeros(0, int), np.zeros(0, int), tokenizer, detector)


def brute_force_auc(scores, labels):
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


def test_roc_auc_known_cases():
    labels = np.array([0, 0, 1, 1])
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), labels) == 1.0
    assert roc_auc(np.array([0.9, 0.8, 0.2, 0.1]), labels) == 0.0
    assert roc_auc(np.full(4, 0.3), labels) == 0.5
    assert roc_auc(np.array([0.1, 0.5, 0.5, 0.9]), labels) == 0.875
    rng = np.random.default_rng(1)
    assert abs(roc_auc(rng.random(20_000), rng.integers(0, 2, 20_000)) - 0.5) < 0.02
    with pytest.raises(ValueError, match="both classes"):
        roc_auc(np.array([0.1, 0.2]), np.array([1, 1]))
    with pytest.raises(ValueError, match="0/1"):
        roc_auc(np.array([0.1, 0.2]), np.array([0, 2]))


def test_roc_auc_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(5):
        scores = rng.integers(0, 30, 500).astype(float)  # many ties
        labels = rng.integers(0, 2, 500)
        assert roc_auc(scores, labels) == pytest.approx(brute_force_auc(scores, labels), abs=1e-12)


def test_roc_curve_endpoints_ties_and_area():
    scores = np.array([0.9, 0.8, 0.8, 0.3, 0.1])
    labels = np.array([1, 1, 0, 0, 1])
    fpr, tpr = roc_curve(scores, labels)
    assert fpr.tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert tpr.tolist() == pytest.approx([0.0, 1 / 3, 2 / 3, 2 / 3, 1.0])
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))  # trapezoids = AUC with half ties
    assert area == pytest.approx(roc_auc(scores, labels))


def test_ntp_metrics():
    m = ntp_metrics(np.array([2.0, -1.0, 0.5, -3.0, 0.0]), np.array([1, 0, 0, 0, 1]))
    assert m == {"accuracy": 0.6, "auc": pytest.approx(5 / 6), "n_pairs": 5, "positive_fraction": 0.4}
    json.dumps(m)
    assert ntp_metrics(np.array([1.0, 2.0]), np.array([True, True]))["auc"] is None
