"""`runtime: onnx`: an edge classifier scored by onnxruntime on the export of its checkpoint gives the
scores (within 1e-4) and the pruned graphs of `runtime: torch`; the export is made once, reused while
it belongs to the checkpoint and made again when the checkpoint changes; keys it cannot work with are
refused where the config is loaded, in one line. Checkpoints are written by hand (an untrained network
scores as a trained one does), so the file runs in seconds."""

import importlib.util
import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from stages.edge_classifier import Filter, FilterConfig, InteractionGNN, InteractionGNNConfig
from stages.edge_classifier.gnn_model import EdgeClassifierModule
from stages.run_conditions import save_profile
from tb_plugin.config import ConfigError
from tb_plugin.event_store import list_event_files, load_event, save_event
from tb_plugin.model_export import file_sha256
from tests.stages.edge_classifier.test_filter import make_event, stage_config

pytest.importorskip("onnxruntime")

SPLITS = {"trainset": [1, 2], "valset": [3], "testset": [4]}
STAGES = {FilterConfig: Filter, InteractionGNNConfig: InteractionGNN}


@pytest.fixture(scope="module")
def graph_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runtime") / "graphs"
    for split, ids in SPLITS.items():
        for event_id in ids:
            save_event(make_event(event_id), folder / split / f"event{event_id:09d}.pyg")
    return folder


def event_files(folder):
    return [path for split in SPLITS for path in list_event_files(folder, split)]


def write_checkpoint(stage, seed):
    """best.ckpt as training leaves it, with the run-conditions profile inference checks against."""
    torch.manual_seed(seed)
    module = stage.build_module(stage.input_files("trainset"))
    stage.artifacts.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, stage.artifacts / "best.ckpt"
    )
    save_profile(stage.artifacts, stage.input_files("trainset"))


def make_stage(cls, folder, stage_dir, **overrides):
    return STAGES[cls](stage_config(cls, folder, stage_dir, **overrides))


def cut_in_a_gap(scores):
    """A cut between two of the scores, far from each, near their median: a 1e-4 difference cannot move
    an edge across it."""
    s = np.sort(scores)
    gaps = [(s[i + 1] - s[i], i) for i in range(len(s) // 4, 3 * len(s) // 4)]
    gap, i = max(gaps)
    assert gap > 1e-3
    return float(s[i] + s[i + 1]) / 2


def processed(stage, folder):
    """{file name: the event after the stage's event processor} for every input event."""
    process = stage.event_processor()
    return {path.name: process(load_event(path), path) for path in event_files(folder)}


@pytest.mark.parametrize("cls", [FilterConfig, InteractionGNNConfig])
def test_onnx_scores_and_prunes_as_torch(graph_folder, tmp_path, cls, capsys):
    stage_dir = tmp_path / "stage"
    chunk = {"inference_chunk_edges": 7} if cls is FilterConfig else {}  # the filter scores in chunks
    write_checkpoint(make_stage(cls, graph_folder, stage_dir, **chunk), seed=0)
    torch_stage = make_stage(cls, graph_folder, stage_dir, **chunk)
    module = torch_stage.inference_module()
    scores = np.concatenate([torch_stage.score(module, load_event(p), p).numpy() for p in event_files(graph_folder)])
    cut = cut_in_a_gap(scores)

    expected = processed(make_stage(cls, graph_folder, stage_dir, edge_cut=cut, **chunk), graph_folder)
    stage = make_stage(cls, graph_folder, stage_dir, edge_cut=cut, runtime="onnx", **chunk)
    stage.infer()  # what `tb infer` runs: export, then every event scored by onnxruntime and checked
    name = "filter" if cls is FilterConfig else "interaction_gnn"
    assert f"runtime onnx: exported {stage_dir / 'artifacts' / 'best.ckpt'}" in capsys.readouterr().out
    sidecar = json.loads((stage_dir / "artifacts" / "onnx" / f"{name}.onnx.json").read_text())
    assert sidecar["checkpoint_sha256"] == file_sha256(stage_dir / "artifacts" / "best.ckpt")
    assert sidecar["check"]["max_abs_diff"] <= 1e-4
    assert stage.conditions.profile is not None and stage.conditions.checked == len(event_files(graph_folder))

    for path in event_files(graph_folder):
        got, want = load_event(stage_dir / path.parent.name / path.name), expected[path.name]
        np.testing.assert_allclose(got.edge_scores.numpy(), want.edge_scores.numpy(), atol=1e-4, rtol=0)
        assert torch.equal(got.edge_index, want.edge_index)  # the filter's pruned graph, the GNN's whole one
        assert torch.equal(got.track_to_edge_map, want.track_to_edge_map)
    if cls is FilterConfig:
        assert sum(
            load_event(stage_dir / p.parent.name / p.name).edge_index.shape[1] for p in event_files(graph_folder)
        ) < sum(load_event(p).edge_index.shape[1] for p in event_files(graph_folder))


def scores_of(stage, folder):
    """{file name: edge_scores [E] of the whole input event} by the stage's inference module."""
    module = stage.inference_module()
    return {path.name: stage.score(module, load_event(path), path) for path in event_files(folder)}


def test_the_export_is_reused_and_made_again_for_another_checkpoint(graph_folder, tmp_path, capsys):
    stage_dir = tmp_path / "filter"
    write_checkpoint(make_stage(FilterConfig, graph_folder, stage_dir), seed=0)
    onnx_values = {"edge_cut": 0.5, "runtime": "onnx"}
    model_file = stage_dir / "artifacts" / "onnx" / "filter.onnx"
    sidecar = stage_dir / "artifacts" / "onnx" / "filter.onnx.json"
    first = scores_of(make_stage(FilterConfig, graph_folder, stage_dir, **onnx_values), graph_folder)
    assert "exported" in capsys.readouterr().out
    stamp = (model_file.stat().st_mtime_ns, sidecar.read_text())

    again = scores_of(make_stage(FilterConfig, graph_folder, stage_dir, **onnx_values), graph_folder)
    assert "exported" not in capsys.readouterr().out
    assert (model_file.stat().st_mtime_ns, sidecar.read_text()) == stamp
    assert all(torch.equal(again[name], scores) for name, scores in first.items())

    write_checkpoint(make_stage(FilterConfig, graph_folder, stage_dir), seed=1)  # another training
    new = scores_of(make_stage(FilterConfig, graph_folder, stage_dir, **onnx_values), graph_folder)
    assert "exported" in capsys.readouterr().out
    assert json.loads(sidecar.read_text())["checkpoint_sha256"] == file_sha256(stage_dir / "artifacts" / "best.ckpt")
    want = scores_of(make_stage(FilterConfig, graph_folder, stage_dir, edge_cut=0.5), graph_folder)
    for name, scores in new.items():
        assert not torch.allclose(scores, first[name], atol=1e-4)  # the new checkpoint's, not the old export's
        np.testing.assert_allclose(scores.numpy(), want[name].numpy(), atol=1e-4, rtol=0)

    sidecar.unlink()  # a model file without its sidecar is not trusted either
    make_stage(FilterConfig, graph_folder, stage_dir, **onnx_values).event_processor()
    assert "exported" in capsys.readouterr().out and sidecar.is_file()


def test_runtime_onnx_on_a_stage_with_a_module_embedding(graph_folder, tmp_path):
    """hit_module is an input of the export: the `learned` control scores alike in both runtimes."""
    folder = tmp_path / "graphs"
    for path in event_files(graph_folder):
        data = load_event(path)
        data.hit_module_index = torch.arange(data.num_nodes) % 5
        save_event(data, folder / path.parent.name / path.name)
    values = {"module_embedding": {"dim": 3, "init": "random"}, "aggregation": "mean"}
    stage = make_stage(InteractionGNNConfig, folder, tmp_path / "gnn", **values)
    torch.manual_seed(0)
    node_dim, edge_dim = stage.feature_dims(stage.input_files("trainset"))
    module = EdgeClassifierModule(
        model=asdict(stage.config.model_config(node_dim, edge_dim)),
        optim=asdict(stage.config.optim_config()),
        architecture=stage.architecture,
        module_embedding={"modules": 5, "dim": 3, "similarity": True},
    )
    stage.artifacts.mkdir(parents=True)
    torch.save(
        {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, stage.artifacts / "best.ckpt"
    )
    onnx_stage = make_stage(InteractionGNNConfig, folder, tmp_path / "gnn", runtime="onnx", **values)
    scorer, module = onnx_stage.inference_module(), stage.inference_module()
    for path in event_files(folder):
        data = load_event(path)
        want, got = stage.score(module, data, path), onnx_stage.score(scorer, data, path)
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("cls", "overrides", "words"),
    [
        (FilterConfig, {"runtime": "tensorrt"}, ["runtime", "torch", "onnx"]),
        (FilterConfig, {"accelerator": "gpu"}, ["runtime", "accelerator", "gpu", "cpu"]),
        (InteractionGNNConfig, {"accelerator": "cuda"}, ["runtime", "accelerator", "cuda"]),
        (FilterConfig, {"precision": "bf16-mixed"}, ["runtime", "precision", "bf16-mixed", "32-true"]),
        (InteractionGNNConfig, {"precision": "16-mixed"}, ["runtime", "precision", "16-mixed"]),
        (FilterConfig, {"compile_inference": True}, ["runtime", "compile_inference"]),
        (InteractionGNNConfig, {"aggregation": "max"}, ["runtime", "aggregation", "max", "sum or mean"]),
    ],
)
def test_combinations_that_cannot_work_are_refused_in_one_line(tmp_path, cls, overrides, words):
    values = {"runtime": "onnx", **overrides}
    with pytest.raises(ConfigError) as err:
        stage_config(cls, tmp_path / "graphs", tmp_path / "stage", **values)
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words), message
    if overrides.get("runtime") != "tensorrt":
        assert "runtime: torch" in message
    stage_config(cls, tmp_path / "graphs", tmp_path / "stage", **overrides | {"runtime": "torch"})  # fine with torch


def test_runtime_onnx_without_onnxruntime_names_the_extra(tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a)
    )
    with pytest.raises(ConfigError, match=r"onnxruntime is missing.*tb-plugin\[deploy\]") as err:
        stage_config(FilterConfig, tmp_path / "graphs", tmp_path / "stage", runtime="onnx")
    assert "\n" not in str(err.value)
    assert stage_config(FilterConfig, tmp_path / "graphs", tmp_path / "stage").runtime == "torch"  # torch needs neither


def test_runtime_is_an_output_key_whose_default_keeps_old_records(graph_folder, tmp_path):
    """A stage record written before the key existed stays current at runtime torch; onnx changes it."""
    from tb_plugin import stage_record

    torch_stage = make_stage(FilterConfig, graph_folder, tmp_path / "stage")
    old = stage_record.fingerprint(torch_stage)
    del old["keys"]["runtime"]
    assert stage_record.difference(old, stage_record.fingerprint(torch_stage), FilterConfig) is None
    onnx_stage = make_stage(FilterConfig, graph_folder, tmp_path / "stage", runtime="onnx")
    assert "runtime" in stage_record.difference(old, stage_record.fingerprint(onnx_stage), FilterConfig)
