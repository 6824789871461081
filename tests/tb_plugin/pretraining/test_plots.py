import numpy as np
import pytest

from tb_plugin.pretraining.plots import pca_project, plot_embedding_pca, plot_mdm_accuracy, plot_ntp_roc

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 10_000


def fake_mdm(top1, top5):
    group = lambda a, b, n: {"top1": a, "top5": b, "within_20mm": b, "n": n}  # noqa: E731
    return {
        "top1": top1,
        "top5": top5,
        "within_20mm": top5,
        "n_masked": 300,
        "by_volume": {"7": group(top1 - 0.1, top5, 50), "8": group(top1, top5, 200), "9": group(top1 - 0.1, top5, 50)},
        "by_position": {str(p): group(top1 - 0.05 * p, top5, 300 // 6) for p in range(6)},
    }


def test_mdm_accuracy_figures(tmp_path):
    results = {"TrackingBERT": fake_mdm(0.8, 0.95), "count baseline": fake_mdm(0.6, 0.9)}
    results["count baseline"]["by_position"].pop("5")  # a category one model lacks
    paths = plot_mdm_accuracy(results, tmp_path / "plots")
    assert [p.name for p in paths] == ["mdm_accuracy_by_volume.png", "mdm_accuracy_by_position.png"]
    for p in paths:
        assert_png(p)
    assert not list((tmp_path / "plots").glob("*.tmp"))


def test_ntp_roc_figure(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 2000)
    logits = rng.normal(labels * 1.5, 1.0)
    out = plot_ntp_roc(logits, labels, tmp_path / "ntp_roc.png")
    assert out == tmp_path / "ntp_roc.png"
    assert_png(out)


def test_pca_projection_orders_variance_and_is_deterministic():
    rng = np.random.default_rng(0)
    scales = np.array([5.0, 3.0, 1.0, 0.5, 0.1])
    x = rng.normal(size=(2000, 5)) * scales @ np.linalg.qr(rng.normal(size=(5, 5)))[0] + 7.0
    proj, ratio = pca_project(x, 3)
    assert proj.shape == (2000, 3)
    assert ratio[0] > ratio[1] > ratio[2] > 0 and ratio.sum() < 1
    assert ratio[0] == pytest.approx(25 / (scales**2).sum(), rel=0.1)
    assert np.allclose(proj.mean(axis=0), 0, atol=1e-9)
    assert np.allclose(proj.var(axis=0), np.sort(proj.var(axis=0))[::-1])
    proj_again, _ = pca_project(x[:, ::-1].copy()[:, ::-1], 3)
    assert np.allclose(proj, proj_again)
    # a pure sign flip of the data must not mirror the picture arbitrarily: axes follow the loadings
    flipped, _ = pca_project(-x, 3)
    assert np.allclose(np.abs(flipped), np.abs(proj))


def test_embedding_pca_figure(tmp_path):
    rng = np.random.default_rng(0)
    volume = np.repeat([7, 8, 9], 200)
    layer = np.tile(np.repeat([2, 4, 6, 8], 50), 3)
    emb = rng.normal(size=(600, 16)) + volume[:, None] * 0.5 + layer[:, None] * 0.2 * rng.normal(size=16)
    out = plot_embedding_pca(emb, volume, layer, tmp_path / "emb.png")
    assert_png(out)
    with pytest.raises(ValueError, match="volume_id and layer_id"):
        plot_embedding_pca(emb, volume[:10], layer, tmp_path / "bad.png")
