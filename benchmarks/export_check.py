"""Export the demo's trained stages and measure how far the exported files score from PyTorch on real events.

    make demo-pipeline                                  # trains runs/demo (as shipped)
    .venv/bin/python benchmarks/export_check.py configs/edge_classifier/filter.yaml \\
        configs/edge_classifier/interaction_gnn.yaml [...] [--formats onnx torchscript] [--split testset]
        [--events 5] [--out runs/export_check]

`tb export --format onnx|torchscript` already checks every file on small random inputs (the sidecar's
`check`); this runs each exported network on the first --events events of the stage's input --split
instead, built as the stage builds them (stages/model_exports.py names the inputs): the edge classifiers'
edge_scores, metric learning's embedding. TrackingBERT's encoder takes token sequences, not events: its
row gives the export's own check. Prints a markdown table (stage, format, events, hits and edges of the
largest event, max abs difference) and writes it with the JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages.edge_classifier.edge_stage import EdgeClassifierStage, model_inputs  # noqa: E402
from stages.features import node_feature_matrix  # noqa: E402
from stages.graph_construction.metric_learning import MetricLearning  # noqa: E402
from stages.model_exports import exportable_models  # noqa: E402
from tb_plugin.atomic import write_text  # noqa: E402
from tb_plugin.event_store import load_event  # noqa: E402
from tb_plugin.model_export import MODEL_FORMATS, ExportResult, export_models  # noqa: E402
from tb_plugin.pipeline import load_stage  # noqa: E402


def run_file(result: ExportResult, fmt: str, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    """The first output of an exported file on named inputs (those its sidecar lists, in order)."""
    names = [spec["name"] for spec in json.loads(result.sidecar.read_text())["inputs"]]
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(result.model_file), providers=["CPUExecutionProvider"])
        return session.run(None, {n: inputs[n].numpy() for n in names})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.jit.load(str(result.model_file))
    with torch.no_grad():
        out = loaded(*(inputs[n] for n in names))
    return (out[0] if isinstance(out, tuple) else out).numpy()


def event_difference(stage: Any, result: ExportResult, fmt: str, path: Path) -> tuple[float, int, int]:
    """(max abs difference, hits, edges) of one event: the stage's own scores against the file's."""
    data = load_event(path)
    if isinstance(stage, EdgeClassifierStage):
        graph = model_inputs(data, stage.config, path)
        inputs = {"x": graph.x, "edge_index": graph.edge_index, "edge_attr": graph.edge_attr}
        if "hit_module" in graph:
            inputs["hit_module"] = graph.hit_module
        expected = stage.score(stage.trained(), data, path).numpy()
        n_edges = int(graph.edge_index.shape[1])
    else:
        inputs = {"x": node_feature_matrix(data, stage.config.node_features, stage.config.node_scales, path)}
        expected = stage.embed(data, path).numpy()
        n_edges = 0
    got = run_file(result, fmt, inputs)
    diff = float(np.max(np.abs(got - expected))) if expected.size else 0.0
    return diff, int(inputs["x"].shape[0]), n_edges


def check_config(config: str, fmt: str, split: str, n_events: int, out: Path) -> dict[str, Any]:
    stage = load_stage(config)
    (result,) = export_models(exportable_models(stage, config), out / Path(config).stem, fmt)
    row: dict[str, Any] = {"config": config, "format": fmt, "export_check": result.max_abs_diff}
    if not isinstance(stage, (EdgeClassifierStage, MetricLearning)):
        return {**row, "events": 0, "max_hits": None, "max_edges": None, "max_abs_diff": result.max_abs_diff}
    files = stage.input_files(split)[:n_events]
    figures = [event_difference(stage, result, fmt, path) for path in files]
    return {
        **row,
        "events": len(files),
        "max_hits": max((f[1] for f in figures), default=None),
        "max_edges": max((f[2] for f in figures), default=None),
        "max_abs_diff": max((f[0] for f in figures), default=None),
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| config | format | events | hits (largest) | edges (largest) | max abs difference | export check |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        diff = "n/a" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.2g}"
        lines.append(
            f"| {r['config']} | {r['format']} | {r['events']} | {r['max_hits'] or ''} | {r['max_edges'] or ''} | "
            f"{diff} | {r['export_check']:.2g} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", help="stage configs of trained stages")
    parser.add_argument("--formats", nargs="+", choices=MODEL_FORMATS, default=list(MODEL_FORMATS))
    parser.add_argument("--split", default="testset", choices=("trainset", "valset", "testset"))
    parser.add_argument("--events", type=int, default=5, help="events of the split to compare on")
    parser.add_argument("--out", type=Path, default=Path("runs/export_check"))
    args = parser.parse_args(argv)
    rows = [check_config(c, fmt, args.split, args.events, args.out) for c in args.configs for fmt in args.formats]
    text = table(rows)
    print(text)
    write_text(args.out / "export_check.md", text + "\n")
    write_text(args.out / "export_check.json", json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
