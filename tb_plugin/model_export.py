"""Trained networks as ONNX or TorchScript files for tools without this package, each checked after writing.

`tb export CONFIG.yaml --format onnx|torchscript` writes, for every network of a trained stage (the
stage says which: stages/model_exports.py), the model file and beside it a JSON sidecar
(`<model file>.json`) with what a user needs to feed it: input and output names, dtypes and shapes
(dynamic axes named), the stage's input layout (feature names, order, scales; the edge score cut and
where it came from), the opset, the torch version and the model's config and checkpoint.

A file is only kept if it scores like the network it came from: after writing, the exported model
runs (onnxruntime / torch.jit.load) on the example inputs it was traced with and on `check_inputs`,
which differ in size on every dynamic axis, and its outputs are compared with PyTorch's; the largest
absolute difference must be at most TOLERANCE and is recorded in the sidecar. A failed check, like a
failed export, leaves nothing behind (tb_plugin.atomic): the model file is renamed into place only
after the check and the sidecar are written.

ONNX is written by torch.onnx.export's TorchScript-based exporter (`dynamo=False`): the dynamo exporter,
torch 2.13's default, needs the onnxscript package, and the TorchScript-based one exports every network
here with dynamic axes. TorchScript files are traced (torch.jit.trace), not scripted: the networks'
forward passes hold Python-only checks that tracing evaluates once. onnx and onnxruntime are the
optional extra `deploy` (pip install 'tb-plugin[deploy]'), imported only here and only for onnx.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tb_plugin.atomic import atomic_path, write_text
from tb_plugin.config import ConfigError

MODEL_FORMATS: tuple[str, ...] = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
OPSET = 17  # ONNX opset: every op of the networks here exists in it, and runtimes from 2022 on read it
TOLERANCE = 1e-4  # the largest absolute difference from PyTorch's outputs an exported model may show
DEPLOY_PACKAGES = ("onnx", "onnxruntime")


class ExportError(ConfigError):
    """An export that cannot be done or failed its check: one line naming the model and the reason. A
    ConfigError, so `tb export` reports it as one message and exits 2."""


@dataclass
class ExportableModel:
    """One network of a stage, ready to export: what stages/model_exports.py hands this module."""

    name: str  # file stem, e.g. "filter" -> filter.onnx and filter.onnx.json
    module: nn.Module  # in eval mode: tensors in (the order of `inputs`), one tensor or a tuple out
    inputs: dict[str, Tensor]  # example inputs, in forward's order: the ones the export traces
    check_inputs: dict[str, Tensor]  # another size on every dynamic axis: proves the axes are dynamic
    outputs: tuple[str, ...]  # output names, in forward's order
    dynamic_axes: dict[str, dict[int, str]]  # input or output name -> {dim: axis name}
    layout: dict[str, Any]  # how the inputs are built from an event and what the outputs mean
    metadata: dict[str, Any] = field(default_factory=dict)  # stage, model, checkpoint, config
    companions: dict[str, Callable[[Path], None]] = field(default_factory=dict)  # file name -> writer (vocab.json)
    refuses: dict[str, str] = field(default_factory=dict)  # format -> why this network cannot be written in it


@dataclass
class ExportResult:
    model_file: Path
    sidecar: Path
    max_abs_diff: float
    companions: list[Path] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------
# Writers and runners


def deploy_modules() -> tuple[Any, Any]:
    """(onnx, onnxruntime), or one line naming the extra that provides them."""
    try:
        return importlib.import_module("onnx"), importlib.import_module("onnxruntime")
    except ImportError as err:
        raise ExportError(
            f"--format onnx needs the packages {' and '.join(DEPLOY_PACKAGES)} ({err.name} is missing): "
            f"pip install 'tb-plugin[deploy]', or use --format torchscript"
        ) from None


def missing_deploy_package() -> str | None:
    """The first of DEPLOY_PACKAGES that is not installed, None when all are; nothing is imported (a
    config checks this where it is loaded)."""
    return next((name for name in DEPLOY_PACKAGES if importlib.util.find_spec(name) is None), None)


def inference_session(path: Path, threads: int) -> Any:
    """An onnxruntime CPU session on an exported model for scoring many events: `threads` intra-op
    threads (a caller passes torch's, so both runtimes use the same cores), operators one at a time, no
    spinning between runs (benchmarks/onnx_chain.py measured it so)."""
    _, ort = deploy_modules()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def write_onnx(model: ExportableModel, path: Path) -> None:
    onnx, _ = deploy_modules()
    with warnings.catch_warnings():
        # Tracer warnings about Python-side checks and the exporter's deprecation notice: expected, and
        # the check that follows is what shows the file right.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.module,
            tuple(model.inputs.values()),
            str(path),
            input_names=list(model.inputs),
            output_names=list(model.outputs),
            dynamic_axes=model.dynamic_axes,
            opset_version=OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(str(path))


def write_torchscript(model: ExportableModel, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings, as in write_onnx
        traced = torch.jit.trace(model.module, tuple(model.inputs.values()), check_trace=False)
        torch.jit.save(traced, str(path))


Runner = Callable[[dict[str, Tensor]], list[np.ndarray]]


def onnx_runner(path: Path) -> Runner:
    _, ort = deploy_modules()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]  # an input the graph does not read is left out

    def run(inputs: dict[str, Tensor]) -> list[np.ndarray]:
        return list(session.run(None, {k: v.numpy() for k, v in inputs.items() if k in names}))

    return run


def torchscript_runner(path: Path) -> Runner:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, yet what TorchScript users load
        loaded = torch.jit.load(str(path), map_location="cpu")

    def run(inputs: dict[str, Tensor]) -> list[np.ndarray]:
        with torch.no_grad():
            return as_arrays(loaded(*inputs.values()))

    return run


WRITERS: dict[str, Callable[[ExportableModel, Path], None]] = {"onnx": write_onnx, "torchscript": write_torchscript}
RUNNERS: dict[str, Callable[[Path], Runner]] = {"onnx": onnx_runner, "torchscript": torchscript_runner}


def as_arrays(outputs: Tensor | tuple[Tensor, ...] | list[Tensor]) -> list[np.ndarray]:
    values = [outputs] if torch.is_tensor(outputs) else list(outputs)
    return [v.detach().float().cpu().numpy() for v in values]


# ----------------------------------------------------------------------------------------------------
# The check


def max_abs_difference(model: ExportableModel, run: Runner, inputs: dict[str, Tensor]) -> float:
    """The largest |exported - PyTorch| over every output element; inf when the shapes differ."""
    with torch.no_grad():
        expected = as_arrays(model.module(*inputs.values()))
    got = run(inputs)
    if len(got) != len(expected):
        return math.inf
    worst = 0.0
    for a, b in zip(got, expected):
        if a.shape != b.shape:
            return math.inf
        if a.size:
            worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))))
    return worst


def sizes(model: ExportableModel, inputs: dict[str, Tensor]) -> dict[str, int]:
    """{axis name: its size} of a set of inputs, e.g. {n_hits: 48, n_edges: 160}."""
    out: dict[str, int] = {}
    for name, axes in model.dynamic_axes.items():
        if name in inputs:
            for dim, axis in axes.items():
                out[axis] = int(inputs[name].shape[dim])
    return out


def check_export(model: ExportableModel, path: Path, fmt: str, tolerance: float) -> dict[str, Any]:
    """Run the written file on the example and the check inputs; the sidecar's `check` record. A
    difference above `tolerance` (or NaN) is an ExportError."""
    run = RUNNERS[fmt](path)
    cases = []
    for inputs in (model.inputs, model.check_inputs):
        diff = max_abs_difference(model, run, inputs)
        cases.append({"sizes": sizes(model, inputs), "max_abs_diff": diff})
    worst = max(c["max_abs_diff"] for c in cases)
    if not worst <= tolerance:
        raise ExportError(
            f"{model.name}: the exported {fmt} model's outputs differ from PyTorch's by up to {worst:.3g} "
            f"(tolerance {tolerance:g}) on inputs of sizes {[c['sizes'] for c in cases]}; nothing was written"
        )
    runtime = f"onnxruntime {deploy_modules()[1].__version__}" if fmt == "onnx" else f"torch.jit {torch.__version__}"
    return {"max_abs_diff": worst, "tolerance": tolerance, "runtime": runtime, "cases": cases}


# ----------------------------------------------------------------------------------------------------
# Sidecar and export


def tensor_spec(name: str, value: Tensor, dynamic: dict[int, str]) -> dict[str, Any]:
    shape: list[int | str] = [dynamic.get(i, int(n)) for i, n in enumerate(value.shape)]
    return {"name": name, "dtype": str(value.dtype).removeprefix("torch."), "shape": shape}


def package_version() -> str:
    try:
        return metadata.version("tb-plugin")
    except metadata.PackageNotFoundError:
        return "unknown"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def json_safe(value: Any) -> Any:
    """Infinite floats (a config's open pT range [1000, inf]) as the strings "inf" / "-inf": strict JSON has
    no infinity, and a reader in another language should not meet Python's `Infinity`."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def sidecar_record(model: ExportableModel, fmt: str, model_file: Path, check: dict[str, Any]) -> dict[str, Any]:
    with torch.no_grad():
        example_out = model.module(*model.inputs.values())
    outputs = [example_out] if torch.is_tensor(example_out) else list(example_out)
    record: dict[str, Any] = {
        "file": model_file.name,
        "format": fmt,
        "inputs": [tensor_spec(k, v, model.dynamic_axes.get(k, {})) for k, v in model.inputs.items()],
        "outputs": [tensor_spec(k, v, model.dynamic_axes.get(k, {})) for k, v in zip(model.outputs, outputs)],
        "layout": model.layout,
        "check": check,
        "torch_version": torch.__version__,
        "tb_plugin_version": package_version(),
        **model.metadata,
    }
    if fmt == "onnx":
        record["opset"] = OPSET
        record["exporter"] = "torch.onnx.export(dynamo=False)"
    return json_safe(record)


def export_model(model: ExportableModel, out_dir: str | Path, fmt: str, tolerance: float = TOLERANCE) -> ExportResult:
    """Write out_dir/<name><suffix> and its sidecar <file>.json, checked (see the module docstring)."""
    if fmt not in MODEL_FORMATS:
        raise ExportError(f"unknown model export format '{fmt}'. Allowed: {', '.join(MODEL_FORMATS)}")
    if fmt in model.refuses:
        raise ExportError(f"{model.name}: {model.refuses[fmt]}")
    model.module.eval()
    out_dir = Path(out_dir)
    target = out_dir / f"{model.name}{SUFFIXES[fmt]}"
    sidecar = out_dir / f"{target.name}.json"
    with atomic_path(target) as tmp:
        try:
            WRITERS[fmt](model, tmp)
        except ExportError:
            raise
        except Exception as err:  # an op the exporter cannot write: one line, not the exporter's traceback
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ExportError(
                f"{model.name}: cannot export to {fmt}: {type(err).__name__} {first}; nothing was written"
            ) from None
        check = check_export(model, tmp, fmt, tolerance)
        record = sidecar_record(model, fmt, target, check)
        write_text(sidecar, json.dumps(record, indent=2, allow_nan=False, default=str) + "\n")
    companions = []
    for name, write in model.companions.items():
        write(out_dir / name)
        companions.append(out_dir / name)
    return ExportResult(target, sidecar, check["max_abs_diff"], companions)


def export_models(
    models: list[ExportableModel], out_dir: str | Path, fmt: str, tolerance: float = TOLERANCE
) -> list[ExportResult]:
    """Every network of a stage; prints one line per file, with the checked difference."""
    if fmt == "onnx":
        deploy_modules()  # missing packages are reported before anything is traced
    results = []
    for model in models:
        result = export_model(model, out_dir, fmt, tolerance)
        print(
            f"wrote {result.model_file} (max abs difference from PyTorch {result.max_abs_diff:.2g}) and {result.sidecar}"
        )
        for path in result.companions:
            print(f"wrote {path}")
        results.append(result)
    return results
