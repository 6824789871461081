"""tb_plugin.model_export on a toy network: both formats, the check on other sizes, a failed check or a
missing package leaving nothing behind, one line each."""

import builtins
import json

import pytest
import torch
from torch import nn

from tb_plugin import model_export
from tb_plugin.model_export import ExportableModel, ExportError, export_model


class PairScore(nn.Module):
    """A score per edge from its two nodes: the shape of the edge networks, in a few lines."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.SiLU(), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(torch.cat([x[edge_index[0]], x[edge_index[1]]], dim=1))).squeeze(-1)


def toy(**overrides) -> ExportableModel:
    def graph(n, e):
        return {"x": torch.randn(n, 3), "edge_index": torch.randint(0, n, (2, e))}

    values = dict(
        name="toy",
        module=PairScore().eval(),
        inputs=graph(10, 25),
        check_inputs=graph(7, 12),
        outputs=("edge_scores",),
        dynamic_axes={"x": {0: "n_hits"}, "edge_index": {1: "n_edges"}, "edge_scores": {0: "n_edges"}},
        layout={"x": "three columns"},
        metadata={"model": "toy", "config": {"pt": [1000.0, float("inf")]}},
    )
    return ExportableModel(**{**values, **overrides})


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_a_checked_export_records_its_figure_and_layout(tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    result = export_model(toy(), tmp_path, fmt)
    assert result.model_file.name == f"toy{model_export.SUFFIXES[fmt]}"
    assert result.sidecar == tmp_path / f"{result.model_file.name}.json"
    record = json.loads(result.sidecar.read_text())  # strict JSON: the infinite pT bound is a string
    assert record["config"] == {"pt": [1000.0, "inf"]}
    assert record["check"]["max_abs_diff"] == result.max_abs_diff <= 1e-4
    assert [c["sizes"] for c in record["check"]["cases"]] == [
        {"n_hits": 10, "n_edges": 25},
        {"n_hits": 7, "n_edges": 12},
    ]
    assert record["inputs"] == [
        {"name": "x", "dtype": "float32", "shape": ["n_hits", 3]},
        {"name": "edge_index", "dtype": "int64", "shape": [2, "n_edges"]},
    ]
    assert record["layout"] == {"x": "three columns"} and record["torch_version"] == torch.__version__
    assert ("opset" in record) == (fmt == "onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([result.model_file.name, result.sidecar.name])


def test_a_failed_check_is_an_error_and_leaves_nothing(tmp_path):
    with pytest.raises(ExportError, match="differ from PyTorch's.*nothing was written"):
        export_model(toy(), tmp_path / "out", "torchscript", tolerance=-1.0)
    assert not any((tmp_path / "out").iterdir())


def test_a_model_whose_export_differs_is_refused(tmp_path):
    class SizeBaked(PairScore):
        def forward(self, x, edge_index):  # a Python int from a shape: traced as the example's constant
            return super().forward(x, edge_index) * float(x.shape[0])

    with pytest.raises(ExportError, match="differ from PyTorch's"):
        export_model(toy(module=SizeBaked().eval()), tmp_path, "torchscript")
    assert list(tmp_path.iterdir()) == []


def test_onnx_without_the_deploy_extra_names_it(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name.split(".")[0] in ("onnx", "onnxruntime"):
            raise ImportError(f"No module named '{name}'", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    monkeypatch.setattr(model_export.importlib, "import_module", lambda name: no_onnx(name))
    with pytest.raises(ExportError, match=r"tb-plugin\[deploy\]"):
        model_export.export_models([toy()], tmp_path, "onnx")
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_format_and_a_refused_one_are_one_line(tmp_path):
    with pytest.raises(ExportError, match="Allowed: onnx, torchscript"):
        export_model(toy(), tmp_path, "tflite")
    with pytest.raises(ExportError, match="toy: not this one"):
        export_model(toy(refuses={"torchscript": "not this one"}), tmp_path, "torchscript")
