"""`tb export --format onnx|torchscript`: each trained stage's network, exported and run outside PyTorch
on an event of other sizes than the traced example, scores as the stage itself does; the sidecar
says how the inputs are built. Checkpoints are written by hand (an untrained network exports as a
trained one does), so the whole file runs in seconds."""

import json
import warnings
from dataclasses import asdict

import numpy as np
import pytest
import torch
import yaml

from stages.edge_classifier.edge_stage import model_inputs
from stages.graph_construction.embedding_model import MetricLearningModule
from stages.model_exports import EXAMPLE_SIZES, exportable_models, token_inputs
from tb_plugin import stage_record
from tb_plugin.cli import main
from tb_plugin.config import ConfigError
from tb_plugin.event_store import list_event_files, load_event, save_event
from tb_plugin.model_export import SUFFIXES, ExportError, export_models
from tb_plugin.pipeline import stage_from_mapping
from tests.stages.edge_classifier.test_filter import make_event
from tests.tb_plugin.pretraining.test_stage_checks import hand_trained, read_store, tb_stage

TB_DIM, MODULES = 4, 10
FORMATS = ["torchscript", "onnx"]


def needs(fmt: str) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def graph_folder(tmp_path_factory):
    """make_event's graphs with the TrackingBERT arm's hit_tb_emb [N, 4] and a module index per hit."""
    folder = tmp_path_factory.mktemp("export") / "graphs"
    for split, ids in (("trainset", [1, 2]), ("valset", [3]), ("testset", [4])):
        for event_id in ids:
            data = make_event(event_id)
            g = torch.Generator().manual_seed(event_id)
            data.hit_tb_emb = torch.randn(data.num_nodes, TB_DIM, generator=g)
            data.hit_module_index = torch.randint(0, MODULES, (data.num_nodes,), generator=g)
            save_event(data, folder / split / f"event{event_id:09d}.pyg")
    return folder


EDGE_VARIANTS = {
    "filter_tb": {  # the TrackingBERT arm's filter: hit_tb_emb among the node features, tb_sim among the edge features
        "model": "Filter",
        "nb_layer": 2,
        "node_features": ["hit_r", "hit_phi", "hit_z", "hit_tb_emb"],
        "node_scales": [1000.0, 3.14159, 1000.0, 1.0],
        "edge_features": ["dr", "dphi", "dz", "tb_sim"],
        "edge_scales": [100.0, 0.1, 100.0, 1.0],
    },
    "gnn": {"model": "InteractionGNN", "n_graph_iters": 2, "edge_cut": 0.3, "edge_features": []},
    "gnn_learned": {  # the `learned` control: a module embedding, so hit_module is an input
        "model": "InteractionGNN",
        "n_graph_iters": 1,
        "aggregation": "mean",
        "edge_cut": 0.3,
        "edge_features": ["dr", "dz"],
        "edge_scales": [100.0, 100.0],
        "module_embedding": {"dim": 3, "init": "random"},
    },
}


def edge_values(folder, stage_dir, variant):
    return {
        "stage": "edge_classifier",
        "input_dir": str(folder),
        "stage_dir": str(stage_dir),
        "hidden": 8,
        **EDGE_VARIANTS[variant],
    }


def hand_trained_edge_stage(folder, stage_dir, variant):
    """The stage with a best.ckpt as training leaves it (the module embedding over MODULES modules)."""
    from stages.edge_classifier.gnn_model import EdgeClassifierModule

    stage = stage_from_mapping(edge_values(folder, stage_dir, variant), f"{variant}.yaml")
    torch.manual_seed(0)
    embedding = stage.config.module_embedding
    if embedding is None:
        module = stage.build_module(stage.input_files("trainset"))
    else:  # build_module would read the detector of input_dir, which these graphs have none of
        node_dim, edge_dim = stage.feature_dims(stage.input_files("trainset"))
        module = EdgeClassifierModule(
            model=asdict(stage.config.model_config(node_dim, edge_dim)),
            optim=asdict(stage.config.optim_config()),
            architecture=stage.architecture,
            module_embedding={"modules": MODULES, "dim": embedding.dim, "similarity": embedding.similarity},
        )
    stage_record.begin(stage, "train")  # a stage record as `tb train` leaves it: `tb export` refuses stale folders
    stage.artifacts.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, stage.artifacts / "best.ckpt"
    )
    stage_record.finish(stage, "train", 0.0)
    return stage


def run_exported(path, fmt, inputs):
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        return session.run(None, {k: v.numpy() for k, v in inputs.items() if k in names})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        outputs = torch.jit.load(str(path))(*inputs.values())
    return [o.detach().numpy() for o in (outputs if isinstance(outputs, tuple) else (outputs,))]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("variant", list(EDGE_VARIANTS))
def test_an_edge_network_exports_and_scores_an_event_as_the_stage_does(graph_folder, tmp_path, variant, fmt):
    needs(fmt)
    stage = hand_trained_edge_stage(graph_folder, tmp_path / variant, variant)
    (result,) = export_models(exportable_models(stage, "edge.yaml"), tmp_path / "out", fmt)
    sidecar = json.loads(result.sidecar.read_text())
    assert result.model_file.name == f"{'filter' if variant == 'filter_tb' else 'interaction_gnn'}{SUFFIXES[fmt]}"
    assert sidecar["check"]["max_abs_diff"] <= 1e-4 and sidecar["torch_version"] == torch.__version__
    assert [c["sizes"]["n_edges"] for c in sidecar["check"]["cases"]] == [EXAMPLE_SIZES[1], 75]

    path = list_event_files(graph_folder, "testset")[0]
    data = load_event(path)
    graph = model_inputs(data, stage.config, path)
    assert graph.x.shape[0] != EXAMPLE_SIZES[0] and graph.edge_index.shape[1] != EXAMPLE_SIZES[1]
    inputs = {"x": graph.x, "edge_index": graph.edge_index}
    names = [spec["name"] for spec in sidecar["inputs"]]
    if "edge_attr" in names:
        inputs["edge_attr"] = graph.edge_attr
    if "hit_module" in names:
        inputs["hit_module"] = graph.hit_module
    assert list(inputs) == names
    (scores,) = run_exported(result.model_file, fmt, inputs)
    expected = stage.score(stage.trained(), data, path).numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-5)

    layout = sidecar["layout"]
    columns = [(f["field"], f["columns"], f["scale"]) for f in layout["x"]["node_features"]]
    if variant == "filter_tb":
        assert columns == [
            ("hit_r", 1, 1000.0),
            ("hit_phi", 1, 3.14159),
            ("hit_z", 1, 1000.0),
            ("hit_tb_emb", TB_DIM, 1.0),
        ]
        assert [f["name"] for f in layout["edge_attr"]["edge_features"]][-1] == "tb_sim"
        assert layout["edge_cut"]["value"] is None and "tb infer" in layout["edge_cut"]["provenance"]
        assert layout["prunes"] is True
    else:
        assert layout["edge_cut"] == {"value": 0.3, "provenance": "key 'edge_cut' (a fixed number)"}
    if variant == "gnn_learned":
        assert "hit_module_index" in layout["hit_module"]
    shapes = {spec["name"]: spec["shape"] for spec in sidecar["inputs"] + sidecar["outputs"]}
    assert (
        shapes["x"][0] == "n_hits" and shapes["edge_index"] == [2, "n_edges"] and shapes["edge_scores"] == ["n_edges"]
    )
    if fmt == "onnx":
        assert sidecar["opset"] >= 17


def test_the_valset_chosen_cut_and_its_provenance_are_recorded(graph_folder, tmp_path):
    stage = hand_trained_edge_stage(graph_folder, tmp_path / "filter", "filter_tb")
    record = {
        "edge_cut": 0.25,
        "target_efficiency": 0.99,
        "valset_events": 1,
        "n_target_edges": 12,
        "checkpoint": "best.ckpt",
    }
    stage.edge_cut_path.write_text(json.dumps(record))
    (model,) = exportable_models(stage, "filter.yaml")
    cut = model.layout["edge_cut"]
    assert cut["value"] == 0.25 and cut["target_efficiency"] == 0.99 and cut["valset_events"] == 1
    assert "valset" in cut["provenance"] and str(stage.edge_cut_path) in cut["provenance"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_metric_learning_embedding_exports(graph_folder, tmp_path, fmt):
    needs(fmt)
    values = {
        "stage": "graph_construction",
        "model": "MetricLearning",
        "input_dir": str(graph_folder),
        "stage_dir": str(tmp_path / "ml"),
        "node_features": ["hit_r", "hit_phi", "hit_z", "hit_tb_emb"],
        "node_scales": [1000.0, 3.14159, 1000.0, 1.0],
        "emb_hidden": 16,
        "nb_layer": 2,
        "emb_dim": 4,
    }
    stage = stage_from_mapping(values, "ml.yaml")
    module = MetricLearningModule(asdict(stage.config.settings(3 + TB_DIM)))
    (stage.stage_dir / "artifacts").mkdir(parents=True)
    torch.save(
        {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)},
        stage.stage_dir / "artifacts" / "best.ckpt",
    )
    (result,) = export_models(exportable_models(stage, "ml.yaml"), tmp_path / "out", fmt)
    sidecar = json.loads(result.sidecar.read_text())
    assert sidecar["layout"]["x"]["node_features"][-1] == {"field": "hit_tb_emb", "columns": TB_DIM, "scale": 1.0}
    assert sidecar["layout"]["r_infer"] == stage.config.r_infer
    path = list_event_files(graph_folder, "testset")[0]
    data = load_event(path)
    from stages.features import node_feature_matrix

    x = node_feature_matrix(data, stage.config.node_features, stage.config.node_scales, path)
    (embedding,) = run_exported(result.model_file, fmt, {"x": x})
    np.testing.assert_allclose(embedding, stage.embed(data, path).numpy(), atol=1e-5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_tracking_bert_encoder_exports_with_its_vocabulary(tiny_trackml_folder, tmp_path, fmt):
    needs(fmt)
    stage = tb_stage(read_store(tiny_trackml_folder, tmp_path / "fs"), tmp_path / "tb", max_hits=4)
    module = hand_trained(stage)
    (result,) = export_models(exportable_models(stage, "tb.yaml"), tmp_path / "out", fmt)
    assert [p.name for p in result.companions] == ["vocab.json"] and result.companions[0].is_file()
    sidecar = json.loads(result.sidecar.read_text())
    assert sidecar["layout"]["special_tokens"]["[CLS]"] == 2
    assert {s["name"]: s["shape"] for s in sidecar["outputs"]}["hidden"] == ["n_sequences", "seq_len", 16]
    model = module.model.eval()
    inputs = token_inputs(model.config.vocab_size, 5, model.config.max_len - 3, seed=7)  # other B and L
    hidden, ntp = run_exported(result.model_file, fmt, inputs)
    with torch.no_grad():
        expected = model.encode(*inputs.values())
        np.testing.assert_allclose(hidden, expected.numpy(), atol=1e-4)
        np.testing.assert_allclose(ntp, model.ntp_head(expected[:, 0]).numpy(), atol=1e-4)


# ------------------------------------------------------------------------------------- the command


def write_config(path, values):
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_tb_export_writes_the_network_and_keeps_the_table_formats(graph_folder, tmp_path, capsys):
    stage = hand_trained_edge_stage(graph_folder, tmp_path / "gnn", "gnn")
    config = write_config(tmp_path / "gnn.yaml", edge_values(graph_folder, stage.stage_dir, "gnn"))
    assert main(["export", config, "--format", "torchscript"]) == 0
    written = sorted(p.name for p in (stage.stage_dir / "export").iterdir())
    assert written == ["interaction_gnn.torchscript.pt", "interaction_gnn.torchscript.pt.json"]
    assert "max abs difference" in capsys.readouterr().out
    # csv|npz|pt keep their meaning: the embedding table, which an edge classifier has none of
    assert main(["export", config, "--format", "csv"]) == 2
    assert "has no embeddings to export" in capsys.readouterr().err


def test_tb_export_refuses_an_untrained_stage_a_stage_without_a_network_and_an_unknown_format(
    graph_folder, tmp_path, capsys
):
    config = write_config(tmp_path / "gnn.yaml", edge_values(graph_folder, tmp_path / "untrained", "gnn"))
    assert main(["export", config, "--format", "torchscript"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no trained" in err and "tb train" in err
    assert not (tmp_path / "untrained" / "export").exists()

    reading = {
        "stage": "data_reading",
        "model": "TrackMLReader",
        "input_dir": str(tmp_path / "raw"),
        "stage_dir": str(tmp_path / "r"),
        "data_split": [1, 0, 0],
    }
    config = write_config(tmp_path / "reading.yaml", reading)
    assert main(["export", config, "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "reading.yaml" in err and "no trained network to export" in err

    with pytest.raises(SystemExit) as exit_info:
        main(["export", config, "--format", "tflite"])
    assert exit_info.value.code == 2
    assert "onnx" in capsys.readouterr().err


def test_max_aggregation_is_refused_for_onnx_in_one_line(graph_folder, tmp_path):
    values = {**edge_values(graph_folder, tmp_path / "gnn", "gnn"), "aggregation": "max"}
    stage = stage_from_mapping(values, "gnn.yaml")
    module = stage.build_module(stage.input_files("trainset"))
    stage.artifacts.mkdir(parents=True)
    torch.save(
        {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, stage.artifacts / "best.ckpt"
    )
    with pytest.raises(ExportError, match="aggregation.*torchscript"):
        export_models(exportable_models(stage, "gnn.yaml"), tmp_path / "out", "onnx")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    (result,) = export_models(exportable_models(stage, "gnn.yaml"), tmp_path / "out", "torchscript")
    assert result.max_abs_diff <= 1e-4


def test_the_geometry_source_has_no_network(tiny_trackml_folder, tmp_path):
    stage = tb_stage(read_store(tiny_trackml_folder, tmp_path / "fs"), tmp_path / "tb", source="geometry")
    with pytest.raises(ConfigError, match="key 'source' is geometry"):
        exportable_models(stage, "tb.yaml")


def test_the_export_benchmark_compares_on_the_stage_events(graph_folder, tmp_path):
    """benchmarks/export_check.py at tiny size: the exported file against the stage's scores on its events."""
    from tests.conftest import load_benchmark

    bench = load_benchmark("export_check")
    stage = hand_trained_edge_stage(graph_folder, tmp_path / "filter", "filter_tb")
    config = write_config(tmp_path / "filter.yaml", edge_values(graph_folder, stage.stage_dir, "filter_tb"))
    out = tmp_path / "bench"
    assert bench.main([config, "--formats", "torchscript", "--events", "1", "--out", str(out)]) == 0
    (row,) = json.loads((out / "export_check.json").read_text())
    assert row["events"] == 1 and row["max_edges"] > 0 and row["max_abs_diff"] <= 1e-5
