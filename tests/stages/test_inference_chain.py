"""InferenceChain: the stages' processors run in memory give exactly what their `infer` wrote to disk."""

from pathlib import Path

import pytest
import torch
import yaml

from stages.data_reading.trackml_reader import prefix_event_id
from stages.inference_chain import InferenceChain, chain_from_pipeline, unique_names
from tb_plugin.event_store import list_event_files, load_event
from tb_plugin.geometry import Detector
from tb_plugin.pipeline import stage_from_mapping
from tb_plugin.simulation import SimulationConfig, simulate_dataset
from tb_plugin.trackml import event_prefix

TB_TINY = {"n_layer": 1, "n_embd": 8, "n_head": 2, "d_ff": 16, "batch_size": 256, "max_epochs": 1, "warmup_steps": 0}
NAMES = ["data_reading", "tracking_bert", "graph_construction", "edge_classifier", "track_building"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict:
    """A tiny simulated folder (pile-up 1) through data reading -> TrackingBERT -> ModuleMap ->
    InteractionGNN (with the tb_sim edge feature) -> ConnectedComponents, each trained then run by `infer`."""
    root = tmp_path_factory.mktemp("chain")
    detector = Detector.builtin()
    simulate_dataset(
        SimulationConfig(n_events=5, pileup=1, seed=7), detector, root / "events", progress=False, workers=1
    )
    detector.to_csv(root / "events" / "detectors.csv")
    configs = [
        {
            "stage": "data_reading",
            "model": "TrackMLReader",
            "input_dir": str(root / "events"),
            "stage_dir": str(root / "store"),
            "data_split": [2, 1, 2],
        },
        {
            "stage": "tracking_bert",
            "model": "TrackingBERT",
            "input_dir": str(root / "store"),
            "stage_dir": str(root / "tb"),
            **TB_TINY,
        },
        {
            "stage": "graph_construction",
            "model": "ModuleMap",
            "input_dir": str(root / "tb"),
            "stage_dir": str(root / "mm"),
            "window_tracks": {},
        },
        {
            "stage": "edge_classifier",
            "model": "InteractionGNN",
            "input_dir": str(root / "mm"),
            "stage_dir": str(root / "gnn"),
            "hidden": 8,
            "n_graph_iters": 1,
            "max_epochs": 1,
            "edge_features": ["dr", "dphi", "tb_sim"],
            "edge_scales": [100.0, 0.1, 1.0],
        },
        {
            "stage": "track_building",
            "model": "ConnectedComponents",
            "input_dir": str(root / "gnn"),
            "stage_dir": str(root / "cc"),
        },
    ]
    stages = []
    for i, values in enumerate(configs):
        stage = stage_from_mapping(values, f"config {i}")
        if stage.trainable:
            stage.train()
        stage.infer()
        stages.append(stage)
    (root / "pipeline.yaml").write_text(yaml.safe_dump({"stages": configs}))
    return {"root": root, "stages": stages, "pipeline": root / "pipeline.yaml"}


def assert_same_fields(memory, disk, where: str) -> None:
    """Every field of the file equals the in-memory one (the config history aside: the chain writes none)."""
    keys = set(disk.keys()) - {"config"}
    assert keys == set(memory.keys()) - {"config"}, where
    for key in sorted(keys):
        if torch.is_tensor(disk[key]):
            assert memory[key].dtype == disk[key].dtype and torch.equal(memory[key], disk[key]), f"{where}: {key}"
        else:
            assert memory[key] == disk[key], f"{where}: {key}"


def test_chain_from_csv_equals_what_infer_wrote(pipeline):
    root = pipeline["root"]
    chain = InferenceChain(pipeline["stages"])
    assert chain.stage_names == NAMES
    written = list_event_files(root / "cc", "testset")
    assert len(written) == 2
    for path in written:
        prefix = event_prefix(root / "events", int(path.stem.removeprefix("event")))
        data, seconds = chain.run(None, prefix)
        disk = load_event(path)
        assert_same_fields(data, disk, str(path))
        assert data.edge_index.shape[1] == data.edge_scores.shape[0] > 0
        assert data.hit_track_labels.shape == (data.num_nodes,) and data.hit_tb_emb.shape == (data.num_nodes, 8)
        assert list(seconds) == NAMES
        assert all(isinstance(s, float) and s >= 0.0 for s in seconds.values())


def test_chain_from_pipeline_starts_from_a_loaded_event_and_leaves_it_unchanged(pipeline):
    root = pipeline["root"]
    chain = chain_from_pipeline(pipeline["pipeline"])
    assert chain.stage_names == NAMES[1:] and not chain.starts_from_files
    for path in list_event_files(root / "store", "testset"):
        loaded = load_event(path)
        keys_before = set(loaded.keys())
        data, seconds = chain.run(loaded, path)
        assert set(loaded.keys()) == keys_before and "edge_index" not in loaded  # the input is not changed
        assert_same_fields(data, load_event(root / "cc" / "testset" / path.name), str(path))
        assert list(seconds) == NAMES[1:] and min(seconds.values()) >= 0.0

    with_reading = chain_from_pipeline(pipeline["pipeline"], include_reading=True)
    assert with_reading.stage_names == NAMES and with_reading.starts_from_files


def test_repeated_stage_names_get_a_suffix_and_each_runs(pipeline):
    cc = pipeline["stages"][-1]
    chain = InferenceChain([cc, cc])
    assert chain.stage_names == ["track_building", "track_building_2"]
    path = list_event_files(pipeline["root"] / "gnn", "testset")[0]
    data, seconds = chain.run(load_event(path), path)
    assert torch.equal(
        data.hit_track_labels, load_event(pipeline["root"] / "cc" / "testset" / path.name).hit_track_labels
    )
    assert set(seconds) == {"track_building", "track_building_2"}
    assert unique_names(["a", "b", "a", "a"]) == ["a", "b", "a_2", "a_3"]


def test_bad_chains_and_inputs_are_named(pipeline):
    reader, tb = pipeline["stages"][:2]
    with pytest.raises(ValueError, match="at least one stage"):
        InferenceChain([])
    with pytest.raises(ValueError, match="can only be the first stage"):
        InferenceChain([tb, reader])
    with pytest.raises(ValueError, match="event000000001.pyg: the chain starts with tracking_bert"):
        InferenceChain([tb]).run(None, Path("somewhere/event000000001.pyg"))
    with pytest.raises(ValueError, match="must end in event<ID>.*got 'hits'"):
        InferenceChain([reader]).run(None, Path("folder/hits"))
    assert prefix_event_id("folder/event000001001") == 1001
