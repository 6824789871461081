"""`runtime: onnx`: an edge classifier's inference scored by onnxruntime on an ONNX export of its checkpoint.

The network is exported once, by the machinery of `tb export --format onnx` (stages/model_exports.py,
tb_plugin/model_export.py, with its check that the exported model scores within 1e-4 of PyTorch), into
the stage's artifacts/onnx/ (filter.onnx or interaction_gnn.onnx, and its JSON sidecar). It is reused
while the sidecar's checkpoint_sha256 is the hash of the checkpoint inference loads, and exported
again when it is not: a model file without a sidecar, or a sidecar of another checkpoint, is never
read. Before a new export the old pair is removed, so an export cut short leaves nothing that could
pass for current.

Scoring is EdgeClassifierStage.score's: the same inputs (x, edge_index, edge_attr, hit_module, built
by stages.features), the same chunks (the filter scores `inference_chunk_edges` edges per run, the GNN
the whole graph), the run-conditions check before each event. Only the forward pass differs: one
onnxruntime CPU session, torch.get_num_threads() intra-op threads, operators run one at a time. The
scores equal PyTorch's within the export's tolerance, not bit for bit, so `runtime` is a key that
changes a stage's outputs. onnx and onnxruntime are the optional extra `deploy` (tb-plugin[deploy]).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from stages.edge_classifier.edge_stage import EdgeClassifierStage
from stages.edge_classifier.gnn_model import EdgeClassifierModule
from stages.model_exports import edge_classifier_export, edge_network_name
from tb_plugin.model_export import SUFFIXES, export_model, file_sha256, inference_session
from tb_plugin.training import trained_checkpoint

log = logging.getLogger(__name__)

OUTPUT = "edge_scores"


class OnnxEdgeScorer:
    """What EdgeClassifierStage.score reads of a module (device, vectors, data_widths) and the edge
    scores of one chunk, from an onnxruntime session on the exported network."""

    device = torch.device("cpu")

    def __init__(self, model_file: Path, module: EdgeClassifierModule, threads: int) -> None:
        self.model_file = model_file
        self.session = inference_session(model_file, threads)
        self.input_names = {i.name for i in self.session.get_inputs()}  # an input the graph does not read is left out
        self.vectors = module.vectors  # whether the network reads hit_module
        self.widths = module.data_widths()

    def data_widths(self) -> tuple[int, int]:
        return self.widths

    def edge_scores(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor, hit_module: Tensor | None) -> Tensor:
        """float32 [E']: the sigmoid edge scores of these edges (edge_index [2, E'], edge_attr [E', F_e])."""
        feed = {"x": x, "edge_index": edge_index, "edge_attr": edge_attr, "hit_module": hit_module}
        arrays = {k: np.ascontiguousarray(v.numpy()) for k, v in feed.items() if k in self.input_names}
        (scores,) = self.session.run([OUTPUT], arrays)
        return torch.from_numpy(scores)  # [E']


def exported_checkpoint(sidecar: Path) -> str | None:
    """The checkpoint_sha256 a sidecar records, None when it is missing or unreadable."""
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    return record.get("checkpoint_sha256") if isinstance(record, dict) else None


def onnx_model(stage: EdgeClassifierStage) -> Path:
    """The stage's checked ONNX export of the checkpoint inference loads: reused when its sidecar names
    that checkpoint's sha256, else exported (again) now."""
    model_file = stage.onnx_dir / f"{edge_network_name(stage)}{SUFFIXES['onnx']}"
    sidecar = Path(f"{model_file}.json")
    checkpoint = trained_checkpoint(stage.trained_dir, stage.config.model)
    sha = file_sha256(checkpoint)
    if model_file.is_file() and exported_checkpoint(sidecar) == sha:
        log.info("%s: reusing %s (exported from %s)", stage.title, model_file, checkpoint)
        return model_file
    for path in (sidecar, model_file):
        path.unlink(missing_ok=True)
    result = export_model(edge_classifier_export(stage), stage.onnx_dir, "onnx")
    print(
        f"{stage.title}: runtime onnx: exported {checkpoint} to {result.model_file} "
        f"(max abs difference from PyTorch {result.max_abs_diff:.2g})"
    )
    return result.model_file


def onnx_scorer(stage: EdgeClassifierStage, module: EdgeClassifierModule) -> OnnxEdgeScorer:
    """The scorer EdgeClassifierStage.inference_module returns under `runtime: onnx`."""
    return OnnxEdgeScorer(onnx_model(stage), module, torch.get_num_threads())
