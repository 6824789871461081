"""The trainable per-module vectors of the edge classifiers (`module_embedding`): the learned and
finetune controls of the frozen TrackingBERT feature hit_tb_emb."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from stages.edge_classifier import Filter, FilterConfig, InteractionGNN, InteractionGNNConfig
from stages.edge_classifier.edge_stage import training_graph
from stages.edge_classifier.gnn_model import EdgeClassifierModule, weighted_bce
from stages.edge_classifier.module_embedding import ModuleVectors
from stages.inference_chain import InferenceChain
from tb_plugin.config import ConfigError
from tb_plugin.event_store import MissingFieldError, list_event_files, load_event, save_event
from tb_plugin.geometry import Detector
from tb_plugin.injection import save_module_table
from tb_plugin.training import CheckpointError
from tests.stages.edge_classifier.test_filter import make_event, stage_config

DIM = 4
LAYERS = ((2, 32.0), (4, 72.0), (6, 116.0), (8, 172.0), (10, 260.0))
N_MODULES = 3 * len(LAYERS)  # three modules per layer
# make_event's hits: particle p (0..3) on layer k (0..4) is hit p * 5 + k, then two noise hits. Particles
# 0 and 2 hit module 0 of each layer, 1 and 3 module 1; the noise hits modules 5 and 8 (module 2 of
# layers 1 and 2). Modules 2, 11 and 14 are never hit.
HIT_MODULES = [3 * k + p % 2 for p in range(4) for k in range(len(LAYERS))] + [5, 8]
FROZEN = torch.randn(N_MODULES, DIM, generator=torch.Generator().manual_seed(7))  # a pretrained table's rows


def write_detector(path: Path, extra_module: bool = False) -> Path:
    """Three barrel modules per layer in the detectors.csv format (tests/conftest.py's tiny detector);
    extra_module adds a fourth to the first layer: other module ids, another geometry."""
    header = (
        "volume_id,layer_id,module_id,cx,cy,cz,rot_xu,rot_xv,rot_xw,rot_yu,rot_yv,rot_yw,"
        "rot_zu,rot_zv,rot_zw,module_t,module_minhu,module_maxhu,module_hv,pitch_u,pitch_v"
    )
    modules = [(layer, m, r) for layer, r in LAYERS for m in (1, 2, 3)] + ([(2, 4, 32.0)] if extra_module else [])
    rows = [f"8,{layer},{m},{r},{20.0 * m},0,0,0,1,1,0,0,0,1,0,0.15,8.4,8.4,36,0.05,0.05625" for layer, m, r in modules]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def module_event(event_id: int):
    """test_filter's hand-made event with the module index and the frozen TrackingBERT feature."""
    data = make_event(event_id)
    data.hit_module_index = torch.tensor(HIT_MODULES)
    data.hit_tb_emb = FROZEN[data.hit_module_index]  # [N, DIM]
    return data


@pytest.fixture
def module_folder(tmp_path):
    """A graph folder with hit_module_index and its detectors.csv."""
    folder = tmp_path / "graphs"
    for split, ids in (("trainset", [1, 2]), ("valset", [3, 5]), ("testset", [4])):
        for event_id in ids:
            save_event(module_event(event_id), folder / split / f"event{event_id:09d}.pyg")
    write_detector(folder / "detectors.csv")
    return folder


def table_file(folder: Path, name: str = "module_table.npz", width: int = DIM, extra_module: bool = False) -> Path:
    """A tracking_bert module table with FROZEN's rows (or random ones of another width / detector)."""
    detector = Detector.from_csv(write_detector(folder / f"{name}.detectors.csv", extra_module))
    rows = FROZEN if width == DIM and not extra_module else torch.randn(len(detector), width)
    return save_module_table(folder / name, rows, np.ones(len(detector), dtype=bool), detector)


def embedding_config(cls, input_dir, stage_dir, table: Path | None = None, **overrides):
    init = {"init": "table", "table": str(table)} if table is not None else {}
    return stage_config(cls, input_dir, stage_dir, module_embedding={"dim": DIM, **init}, **overrides)


# ------------------------------------------------------------------------------------- the model


@pytest.mark.parametrize("stage_class, config_class", [(Filter, FilterConfig), (InteractionGNN, InteractionGNNConfig)])
@pytest.mark.parametrize("init", ["random", "table"])
def test_only_the_rows_of_modules_in_the_graph_get_gradients(module_folder, tmp_path, stage_class, config_class, init):
    table = table_file(tmp_path) if init == "table" else None
    stage = stage_class(embedding_config(config_class, module_folder, tmp_path / "stage", table))
    files = stage.input_files("trainset")
    module = stage.build_module(files)
    weight = module.model.embedding.weight
    assert weight.shape == (N_MODULES, DIM) and weight.requires_grad
    assert module.data_widths() == (3, 3) and module.hparams["model"]["node_dim"] == 3 + DIM
    assert module.hparams["model"]["edge_dim"] == 3 + 1  # dr, dphi, dz and the vectors' cosine
    graph = training_graph(load_event(files[0]), stage.config, files[0], cap_edges=False)
    assert torch.equal(graph.hit_module, torch.tensor(HIT_MODULES))
    batch = Batch.from_data_list([graph, graph])  # batching offsets *index* attributes, not hit_module
    assert torch.equal(batch.hit_module, torch.tensor(HIT_MODULES * 2))
    logits = module(graph.x, graph.edge_index, graph.edge_attr, graph.hit_module)  # [E]
    weighted_bce(logits, graph.edge_y, graph.edge_weights).backward()
    present = torch.zeros(N_MODULES, dtype=torch.bool)
    present[graph.hit_module[graph.edge_index.unique()]] = True
    assert present.sum() == N_MODULES - 3  # modules 2, 11 and 14 are in no event
    norms = weight.grad.norm(dim=1)  # [M]
    assert (norms[present] > 0).all() and (norms[~present] == 0).all()


def test_a_frozen_data_feature_is_no_parameter(module_folder, tmp_path):
    """The pretrained arm: hit_tb_emb is read from the events, so no table is among the parameters."""
    stage = InteractionGNN(
        stage_config(
            InteractionGNNConfig,
            module_folder,
            tmp_path / "gnn",
            node_features=["hit_r", "hit_phi", "hit_z", "hit_tb_emb"],
            node_scales=[1000.0, 3.14159, 1000.0, 1.0],
        )
    )
    module = stage.build_module(stage.input_files("trainset"))
    assert module.vectors is None and module.data_widths() == (3 + DIM, 3)
    assert not any(p.shape[0] == N_MODULES for p in module.parameters())
    assert sum(p.numel() for p in module.parameters()) == module.model.num_params()
    assert not isinstance(module.model, ModuleVectors)


def test_finetune_starts_at_the_table_and_learned_at_seeded_random_rows(module_folder, tmp_path):
    finetune = Filter(embedding_config(FilterConfig, module_folder, tmp_path / "f", table_file(tmp_path)))
    files = finetune.input_files("trainset")
    assert torch.equal(finetune.build_module(files).model.embedding.weight.detach(), FROZEN)
    learned = [Filter(embedding_config(FilterConfig, module_folder, tmp_path / "l", seed=s)) for s in (0, 0, 1)]
    rows = [stage.build_module(files).model.embedding.weight.detach() for stage in learned]
    assert torch.equal(rows[0], rows[1]) and not torch.equal(rows[0], rows[2])  # from the stage's seed
    assert abs(float(rows[0].std()) - 1.0) < 0.5  # N(0, 1)


def test_a_module_index_outside_the_detector_is_a_one_line_error(module_folder, tmp_path):
    stage = Filter(embedding_config(FilterConfig, module_folder, tmp_path / "f"))
    module = stage.build_module(stage.input_files("trainset"))
    graph = training_graph(module_event(1), stage.config, "event", cap_edges=False)
    beyond = graph.hit_module.clone()
    beyond[0] = N_MODULES
    with pytest.raises(ValueError, match="another detector geometry") as err:
        module(graph.x, graph.edge_index, graph.edge_attr, beyond)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="pass hit_module"):
        module(graph.x, graph.edge_index, graph.edge_attr)


def test_events_without_the_module_index_name_the_field(tmp_path):
    folder = tmp_path / "graphs"
    save_event(make_event(1), folder / "trainset" / "event000000001.pyg")
    stage = Filter(embedding_config(FilterConfig, folder, tmp_path / "f"))
    with pytest.raises(MissingFieldError, match=r"event000000001\.pyg.*'hit_module_index'"):
        stage.build_module(stage.input_files("trainset"))


# ------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "value, message",
    [
        ({"init": "table"}, r"key 'module_embedding\.table' is required with init: table"),
        ({"dim": 0}, r"key 'module_embedding\.dim' must be an integer >= 1"),
        ({"init": "pretrained"}, r"key 'init' has value 'pretrained'.*Allowed: 'random', 'table'"),
        (
            {"init": "random", "table": "t.npz"},
            r"key 'module_embedding\.table' \(t\.npz\) is only read with init: table",
        ),
        ({"dimension": 4}, r"unknown key 'dimension'"),
        (16, r"key 'module_embedding' must be"),
    ],
)
def test_config_errors_are_one_line_naming_the_key(tmp_path, value, message):
    with pytest.raises(ConfigError, match=message) as err:
        stage_config(InteractionGNNConfig, tmp_path / "in", tmp_path / "out", module_embedding=value)
    assert "\n" not in str(err.value)


def test_a_table_of_another_width_or_geometry_is_refused_naming_the_file(module_folder, tmp_path):
    files = sorted((module_folder / "trainset").glob("*.pyg"))
    cases = [
        (
            table_file(tmp_path, "wide.npz", width=DIM + 1),
            r"wide\.npz holds vectors of width 5.*'module_embedding\.dim' is 4",
        ),
        (
            table_file(tmp_path, "other.npz", extra_module=True),
            r"other\.npz was built for geometry .* \(other module ids\)",
        ),
        (tmp_path / "missing.npz", r"missing\.npz: no module embedding table"),
    ]
    for table, message in cases:
        stage = Filter(embedding_config(FilterConfig, module_folder, tmp_path / "f", table))
        with pytest.raises(ConfigError, match=rf"key 'module_embedding\.table': .*{message}") as err:
            stage.build_module(files)
        assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------- end to end


def test_filter_then_gnn_with_module_embeddings_train_infer_and_evaluate(module_folder, tmp_path):
    """learned in the filter, finetune in the GNN after it: train, infer, evaluate; the GNN finds the
    geometry beside the filter's output; checkpoints round-trip; chunked and in-memory scoring agree."""
    table = table_file(tmp_path)
    filter_dir, gnn_dir = tmp_path / "filter", tmp_path / "gnn"
    filt = Filter(embedding_config(FilterConfig, module_folder, filter_dir, max_epochs=1))
    filt.train()
    filt.infer()
    assert (filter_dir / "detectors.csv").read_bytes() == (module_folder / "detectors.csv").read_bytes()
    assert "output" in filt.evaluate()
    gnn = InteractionGNN(embedding_config(InteractionGNNConfig, filter_dir, gnn_dir, table, max_epochs=1))
    gnn.train()
    gnn.infer()
    assert "target_auc" in gnn.evaluate()

    # finetune: the rows of the modules the training graphs hit moved away from the table, the others not
    rows = gnn.trained().model.embedding.weight.detach()
    present = torch.zeros(N_MODULES, dtype=torch.bool)
    for path in list_event_files(filter_dir, "trainset"):
        event = load_event(path)
        present[event.hit_module_index[event.edge_index.unique()]] = True
    assert present.any() and not present.all()
    assert torch.equal(rows[~present], FROZEN[~present])
    assert not torch.isclose(rows[present], FROZEN[present]).all(dim=1).any()

    # the checkpoint round-trips: a fresh stage's trained() scores what infer wrote
    name = "event000000004.pyg"
    filtered = load_event(filter_dir / "testset" / name)
    written = load_event(gnn_dir / "testset" / name).edge_scores
    again = InteractionGNN(gnn.config)
    assert torch.equal(again.score(again.trained(), filtered, name), written)
    # the filter scores in chunks with the module index alike
    source = load_event(module_folder / "testset" / name)
    chunked = Filter(embedding_config(FilterConfig, module_folder, filter_dir, inference_chunk_edges=3))
    whole = filt.score(filt.trained(), source, name)
    assert torch.allclose(chunked.score(chunked.trained(), source, name), whole, atol=1e-6)
    # the in-memory chain (event processors) gives what the stages wrote
    chained, _ = InferenceChain([Filter(filt.config), InteractionGNN(gnn.config)]).run(source, name)
    assert torch.allclose(chained.edge_scores, written, atol=1e-6)
    # a config without the embedding cannot use the checkpoint
    plain = InteractionGNN(stage_config(InteractionGNNConfig, filter_dir, gnn_dir))
    with pytest.raises(CheckpointError, match=r"trained with module_embedding \{dim: 4, similarity: true\}.* null"):
        plain.trained()


def test_a_checkpoint_from_before_module_embeddings_still_loads(module_folder, tmp_path):
    stage = Filter(stage_config(FilterConfig, module_folder, tmp_path / "old", edge_cut=0.5))
    module = EdgeClassifierModule(model=asdict(stage.config.model_config(3, 3)), optim={}, architecture="Filter")
    hparams = {k: v for k, v in module.hparams.items() if k != "module_embedding"}  # as written before it existed
    path = tmp_path / "old" / "artifacts" / "best.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams}, path)
    loaded = stage.trained()
    assert loaded.vectors is None and loaded.hparams.get("module_embedding") is None
    event = module_event(4)
    assert torch.equal(stage.score(loaded, event, "event"), stage.score(module.eval(), event, "event"))
