"""Pretraining on reconstructed track candidates (tracks_from: track_building): sentences from
hit_track_labels without truth, their pT from a circle fit, and a tiny stage that trains on them
while its MDM evaluation keeps the test split's truth tracks."""

import math
import shutil

import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from tb_plugin.config import ConfigError
from tb_plugin.event_store import SPLITS, list_event_files, load_event, save_event
from tb_plugin.geometry import Detector
from tb_plugin.pipeline import stage_from_mapping
from tb_plugin.pretraining.tracks import candidate_tracks, circle_pt, particle_hits
from tb_plugin.tokenizer import ModuleTokenizer

TINY = {"n_layer": 1, "n_embd": 16, "n_head": 2, "d_ff": 32, "lr": 3e-3, "warmup_steps": 5, "batch_size": 256}


def test_the_circle_fit_gives_pt_from_the_radius():
    radius = 1667.0  # mm: 1 GeV in 2 T
    angle = np.linspace(0.05, 0.4, 6)
    x, y = radius * np.sin(angle), radius * (1 - np.cos(angle))  # a circle through the origin
    pt = circle_pt(np.r_[x, [1.0, 2.0]], np.r_[y, [1.0, 2.0]], np.r_[np.zeros(6, int), [1, 1]], 2)
    assert pt[0] == pytest.approx(0.3 * 2.0 * radius, rel=1e-6) and math.isinf(pt[1])  # two hits: no circle


def test_candidates_become_sentences_ordered_outwards():
    detector = Detector.builtin()
    tokenizer = ModuleTokenizer(detector)
    modules = np.array([5, 9, 7, 3, 8, 1, 2])  # dense module indices
    radius = np.array([300.0, 100.0, 200.0, 50.0, 400.0, 120.0, 60.0])
    labels = np.array([0, 0, 0, 0, 0, -1, 1])  # candidate 0: five hits; one unassigned; candidate 1: one
    data = Data(
        hit_module_index=torch.from_numpy(modules),
        hit_x=torch.from_numpy(radius).float(),
        hit_y=torch.zeros(7),
        hit_z=torch.zeros(7),
        hit_track_labels=torch.from_numpy(labels),
        event_id="000000007",
    )
    tracks = candidate_tracks(data, tokenizer, min_hits=4, max_hits=8, long_tracks="truncate", source="e")
    assert len(tracks) == 1 and tracks.length.tolist() == [5] and tracks.event_id.tolist() == [7]
    expected = tokenizer.encode(np.array([3, 9, 7, 5, 8]))  # by distance from the origin
    assert tracks.tokens[0, :5].tolist() == expected.tolist()
    assert math.isinf(tracks.pt[0])  # hits on a straight line: stiffer than any


def write_candidates(store, tracks_dir):
    """A track-building stage's output, made by hand: each hit labelled with its particle (truth as a
    perfect track finder would give it), the truth fields removed, as on real data."""
    for split in SPLITS:
        for path in list_event_files(store, split):
            data = load_event(path)
            hit, pid, _, _ = particle_hits(data, str(path))
            labels = torch.full((data.num_nodes,), -1, dtype=torch.long)
            _, label = np.unique(pid, return_inverse=True)
            labels[torch.from_numpy(hit)] = torch.from_numpy(label).long()
            data.hit_track_labels = labels
            for key in [k for k in data.keys() if k.startswith("track_")]:
                del data[key]
            save_event(data, tracks_dir / split / path.name)


def test_a_stage_pretrains_on_candidates_and_evaluates_on_truth(simulated_store, tmp_path):
    write_candidates(simulated_store, tmp_path / "tracks")
    values = {
        "stage": "tracking_bert",
        "model": "TrackingBERT",
        "input_dir": str(simulated_store),
        "stage_dir": str(tmp_path / "tb"),
        "max_epochs": 1,
        "tracks_from": "track_building",
        "tracks_dir": str(tmp_path / "tracks"),
        **TINY,
    }
    stage = stage_from_mapping(values, "tb.yaml")
    datamodule = stage.datamodule(stage.tokenizer(stage.detector()))
    assert datamodule.source("trainset") == (tmp_path / "tracks", True)
    assert datamodule.source("testset") == (simulated_store, False)  # the test split has truth
    stage.train()
    metrics = stage.evaluate()
    assert metrics["n_train_tracks"] > 100 and 0.0 <= metrics["mdm"]["trackingbert"]["top1"] <= 1.0
    # the candidates' events are part of what the stage record fingerprints
    assert str(list_event_files(tmp_path / "tracks", "trainset")[0]) in {str(p) for p in stage.input_paths()}


def test_track_building_needs_tracks_dir(simulated_store, tmp_path):
    values = {"stage": "tracking_bert", "model": "TrackingBERT", "input_dir": str(simulated_store)}
    with pytest.raises(ConfigError, match="track_building needs key 'tracks_dir'"):
        stage_from_mapping({**values, "stage_dir": str(tmp_path / "a"), "tracks_from": "track_building"}, "t.yaml")


def test_truth_tracks_from_another_feature_store(simulated_store, tmp_path):
    """tracks_dir with tracks_from: truth pretrains on another store's truth (e.g. a busier simulated
    sample); the test split stays input_dir's, so the MDM evaluation is on the data the table serves."""
    values = {"stage": "tracking_bert", "model": "TrackingBERT", "input_dir": str(simulated_store)}
    other = tmp_path / "other_store"
    for split in ("trainset", "valset"):  # a copy stands in for a second store: only the folder matters here
        shutil.copytree(simulated_store / split, other / split)
    stage = stage_from_mapping({**values, "stage_dir": str(tmp_path / "s"), "tracks_dir": str(other)}, "t.yaml")
    datamodule = stage.datamodule(stage.tokenizer(stage.detector()))
    assert datamodule.source("trainset") == (other, False)
    assert datamodule.source("testset") == (simulated_store, False)
    datamodule.prepare_data()
    datamodule.setup()
    assert len(datamodule.tracks["trainset"]) > 100
    assert str(list_event_files(other, "trainset")[0]) in {str(p) for p in stage.input_paths()}
