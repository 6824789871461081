"""tracking_bert's `source` key: the A/B's controls (random, shuffled, geometry) are written where the
pretrained model would be, so injection, module_table.npz, export and the `tb` scorers read them unchanged."""

import json
import shutil
import time

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from stages.track_building.stitching import TrackingBERTScorer
from tb_plugin.config import ConfigError
from tb_plugin.embedding_sources import GEOMETRY_DESCRIPTORS, SOURCE_RECORD, geometry_descriptors, volume_permutation
from tb_plugin.event_store import list_event_files, load_event
from tb_plugin.geometry import Detector
from tb_plugin.injection import MODULE_TABLE_FILE, load_module_table
from tb_plugin.pipeline import stage_from_mapping
from tb_plugin.tokenizer import N_SPECIAL, UNK
from tb_plugin.training import CheckpointError

# the pixel vocabulary (3 volumes, 4,004 modules) and one event per split keep pretraining to seconds
TINY = {"n_layer": 1, "n_embd": 16, "n_head": 2, "d_ff": 32, "lr": 3e-3, "warmup_steps": 5, "batch_size": 256}
SMALL = {"volumes": [7, 8, 9], "data_split": [1, 1, 1], "max_epochs": 1, **TINY}


def tb_stage(store, stage_dir, **overrides):
    values = {"stage": "tracking_bert", "model": "TrackingBERT", "input_dir": str(store), "stage_dir": str(stage_dir)}
    return stage_from_mapping({**values, **SMALL, **overrides}, "tracking_bert.yaml")


def token_table(stage):
    """[V, D] token table and [V] MDM bias of the stage's checkpoint, through its own trained()."""
    module, tokenizer, _ = stage.trained()
    return module.model.module_embeddings().detach(), module.model.mdm_head.decoder.bias.detach(), tokenizer


@pytest.fixture(scope="module")
def pretrained(simulated_store, tmp_path_factory):
    stage = tb_stage(simulated_store, tmp_path_factory.mktemp("pretrained"))
    stage.train()
    return stage


@pytest.fixture(scope="module")
def random_stage(simulated_store, tmp_path_factory):
    stage = tb_stage(simulated_store, tmp_path_factory.mktemp("random"), source="random")
    start = time.perf_counter()
    stage.train()
    stage.train_seconds = time.perf_counter() - start
    return stage


@pytest.fixture(scope="module")
def shuffled(simulated_store, pretrained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("shuffled")
    stage = tb_stage(simulated_store, folder, source="shuffled", pretrained_dir=str(pretrained.stage_dir), seed=3)
    stage.train()
    return stage


# ------------------------------------------------------------------------------------- every source


def test_each_source_injects_a_table_of_its_width(pretrained, random_stage, shuffled, simulated_store, tmp_path):
    geometry = tb_stage(simulated_store, tmp_path, source="geometry", normalize="standard")
    geometry.train()
    for stage, width in ((pretrained, 16), (random_stage, 16), (shuffled, 16), (geometry, 17)):
        stage.infer(overwrite=True)
        saved = load_module_table(stage.stage_dir / MODULE_TABLE_FILE)
        assert saved.table.shape == (18728, width) and saved.in_vocab.sum() == 4004
        [path] = list_event_files(stage.stage_dir, "testset")
        event = load_event(path)
        assert event.hit_tb_emb.shape == (event.num_nodes, width)
        assert np.array_equal(saved.table[event.hit_module_index.numpy()], event.hit_tb_emb.numpy())
        assert event.config[-1]["source"] == stage.config.source
    # geometry, standardised over the vocabulary's modules: mean 0 there, outside rows have their own values
    rows = saved.table[saved.in_vocab].astype(np.float64)
    assert np.allclose(rows.mean(axis=0), 0.0, atol=1e-4)
    assert len(np.unique(saved.table[~saved.in_vocab][:, 0])) > 100


# ------------------------------------------------------------------------------------- random


def test_random_is_the_untrained_initialisation(random_stage, pretrained):
    assert sorted(p.name for p in random_stage.artifacts.iterdir()) == ["best.ckpt", "vocab.json"]  # no last.ckpt
    assert not (random_stage.stage_dir / "logs").exists()  # no Trainer ran
    assert random_stage.train_seconds < 5
    module, tokenizer, _ = random_stage.trained()
    L.seed_everything(0, verbose=False)
    fresh = random_stage.new_module(tokenizer)  # what pretraining with seed 0 starts from
    for key, value in fresh.state_dict().items():
        assert torch.equal(module.state_dict()[key], value), key
    assert not torch.equal(module.model.module_embeddings(), pretrained.trained()[0].model.module_embeddings())
    assert torch.load(random_stage.best_file, weights_only=True)[SOURCE_RECORD] == {"source": "random", "seed": 0}


def test_random_is_deterministic_for_a_seed(random_stage, simulated_store, tmp_path):
    again = tb_stage(simulated_store, tmp_path / "again", source="random")
    other = tb_stage(simulated_store, tmp_path / "other", source="random", seed=1)
    for stage in (again, other):
        stage.train()
    table = token_table(random_stage)[0]
    assert torch.equal(token_table(again)[0], table)
    assert not torch.allclose(token_table(other)[0], table)
    # a random checkpoint of another seed than the config's is stale
    stale = tb_stage(simulated_store, tmp_path / "other", source="random", seed=2)
    with pytest.raises(CheckpointError, match=r"made with seed 1, but the config has seed: 2; run 'tb train'"):
        stale.trained()


def test_random_evaluates_like_pretrained_with_its_source(random_stage):
    metrics = random_stage.evaluate()
    saved = json.loads((random_stage.stage_dir / "eval" / "metrics.json").read_text())
    assert saved["source"] == metrics["source"] == "random"
    assert 0.0 <= saved["mdm"]["trackingbert"]["top1"] <= 1.0 and "ntp" in saved


# ------------------------------------------------------------------------------------- shuffled


def test_shuffled_permutes_the_token_rows_within_each_volume(shuffled, pretrained):
    table, bias, tokenizer = token_table(pretrained)
    moved, moved_bias, _ = token_table(shuffled)
    permutation = torch.load(shuffled.best_file, weights_only=True)[SOURCE_RECORD]["permutation"].numpy()
    assert np.array_equal(permutation, volume_permutation(tokenizer, 3))  # the config's seed
    volume = np.concatenate([np.full(N_SPECIAL, -1), tokenizer.module_ids()["volume_id"]])  # [V]
    assert np.array_equal(permutation[:N_SPECIAL], np.arange(N_SPECIAL))  # special tokens, [UNK] too, stay
    assert torch.equal(moved[:N_SPECIAL], table[:N_SPECIAL])
    tokens = np.arange(N_SPECIAL, tokenizer.vocab_size)
    assert np.array_equal(volume[permutation[tokens]], volume[tokens])  # within the volume
    assert (permutation[tokens] != tokens).all()  # every module moved (each volume has many)
    index = torch.from_numpy(permutation)
    assert torch.equal(moved, table[index]) and torch.equal(moved_bias, bias[index])
    assert (moved[N_SPECIAL:] != table[N_SPECIAL:]).any(dim=1).float().mean() > 0.99
    for v in (7, 8, 9):  # the same rows per volume, in another order
        rows = volume == v
        assert np.array_equal(np.sort(moved[rows].numpy(), axis=0), np.sort(table[rows].numpy(), axis=0))
    # the tied decoder weight follows: the model predicts the wrong module as its table points at it
    module = shuffled.trained()[0]
    assert module.model.mdm_head.decoder.weight is module.model.embeddings.tok.weight


def test_shuffled_injection_is_the_pretrained_table_at_permuted_modules(shuffled, pretrained):
    table, _, tokenizer = token_table(pretrained)
    permutation = volume_permutation(tokenizer, 3)
    shuffled.infer(overwrite=True)
    [path] = list_event_files(shuffled.stage_dir, "trainset")
    event = load_event(path)
    tokens = tokenizer.encode(event.hit_module_index.numpy())
    assert (tokens != UNK).sum() > 100
    assert torch.equal(event.hit_tb_emb, table[torch.from_numpy(permutation[tokens])])


def test_shuffled_needs_a_trained_pretrained_dir(simulated_store, pretrained, tmp_path):
    with pytest.raises(ConfigError, match=r"key 'pretrained_dir' is required with source: shuffled") as err:
        tb_stage(simulated_store, tmp_path / "s", source="shuffled")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"key 'pretrained_dir' must be another stage_dir than stage_dir"):
        tb_stage(simulated_store, tmp_path / "s", source="shuffled", pretrained_dir=str(tmp_path / "s"))
    with pytest.raises(ConfigError, match=r"key 'pretrained_dir' is read with source: shuffled only"):
        tb_stage(simulated_store, tmp_path / "s", source="random", pretrained_dir=str(tmp_path / "p"))
    stage = tb_stage(simulated_store, tmp_path / "s", source="shuffled", pretrained_dir=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=r"^key 'pretrained_dir': no trained TrackingBERT in .*empty") as err:
        stage.train()
    assert "\n" not in str(err.value) and not (tmp_path / "s" / "artifacts" / "best.ckpt").exists()
    # another vocabulary than the pretrained one: refused before anything is written
    other = tb_stage(
        simulated_store, tmp_path / "o", source="shuffled", pretrained_dir=str(pretrained.stage_dir), volumes=[8]
    )
    with pytest.raises(
        ValueError,
        match=r"has the vocabulary of volumes \[7, 8, 9\], this stage volumes \[8\]; set volumes: \[7, 8, 9\]",
    ):
        other.train()


def test_a_stale_shuffled_checkpoint_is_refused(simulated_store, pretrained, tmp_path):
    source = tmp_path / "pretrained"
    shutil.copytree(pretrained.stage_dir / "artifacts", source / "artifacts")
    stage = tb_stage(simulated_store, tmp_path / "s", source="shuffled", pretrained_dir=str(source))
    stage.train()
    stage.trained()  # current
    with pytest.raises(CheckpointError, match=r"made with seed 0, but the config has seed: 1"):
        tb_stage(simulated_store, tmp_path / "s", source="shuffled", pretrained_dir=str(source), seed=1).trained()
    checkpoint = torch.load(source / "artifacts" / "best.ckpt", weights_only=True)  # the pretrained run again
    checkpoint["state_dict"]["model.mdm_head.decoder.bias"] += 1.0
    torch.save(checkpoint, source / "artifacts" / "best.ckpt")
    pattern = r"best.ckpt: the pretrained checkpoint .*best.ckpt changed since it was shuffled .*; run 'tb train'"
    with pytest.raises(CheckpointError, match=pattern):
        stage.trained()
    with pytest.raises(CheckpointError, match=pattern):  # also where the stage_dir is read as a plain model
        TrackingBERTScorer.from_stage_dir(stage.stage_dir, simulated_store, 2, 64)
    stage.train()  # shuffled again: current
    stage.trained()


# ------------------------------------------------------------------------------------- geometry


def test_geometry_descriptors_of_a_hand_checked_module(tiny_trackml_folder):
    """The tiny detector's module 0: centre (32, 0, 0), local w = global +x (it faces the beam line)."""
    detector = Detector.from_csv(tiny_trackml_folder / "detectors.csv")
    table = geometry_descriptors(detector)
    assert table.shape == (4, len(GEOMETRY_DESCRIPTORS)) == (4, 17)
    row = dict(zip(GEOMETRY_DESCRIPTORS, table[0], strict=True))
    expected = {"cx": 32.0, "cy": 0.0, "cz": 0.0, "r": 32.0, "cos_phi": 1.0, "sin_phi": 0.0}
    expected |= {"normal_x": 1.0, "normal_y": 0.0, "normal_z": 0.0, "pitch_u": 0.05, "pitch_v": 0.05625}
    expected |= {"thickness": 0.15, "min_hu": 8.4, "max_hu": 8.4, "hv": 36.0, "volume": 8.0, "layer": 2.0}
    assert row == pytest.approx(expected)
    builtin = Detector.builtin()  # the normal is the rotation's w column, a unit vector
    normals = geometry_descriptors(builtin)[:, 6:9]
    assert np.allclose(normals, builtin.rotation[:, :, 2]) and np.allclose(np.linalg.norm(normals, axis=1), 1.0)


def test_geometry_dim_is_checked_against_the_descriptor_count(simulated_store, tmp_path):
    assert tb_stage(simulated_store, tmp_path, source="geometry", dim=17).config.dim == 17  # wider than n_embd
    with pytest.raises(ConfigError) as err:
        tb_stage(simulated_store, tmp_path, source="geometry", dim=18)
    assert str(err.value).endswith(
        "key 'dim' must be null or an integer from 1 to the geometry descriptor count = 17, got 18"
    )
    with pytest.raises(ConfigError, match=r"key 'source' has value 'learned'.* Allowed: 'pretrained', 'random'"):
        tb_stage(simulated_store, tmp_path, source="learned")


def test_geometry_has_no_model_but_evaluates_and_exports(simulated_store, tmp_path):
    stage = tb_stage(simulated_store, tmp_path, source="geometry", dim=5)
    stage.train()
    assert sorted(p.name for p in stage.artifacts.iterdir()) == ["vocab.json"]
    with pytest.raises(ValueError, match=r"the geometry source has no TrackingBERT model") as err:
        stage.trained()
    assert "\n" not in str(err.value)
    assert stage.evaluate()["source"] == "geometry"
    metrics = json.loads((stage.stage_dir / "eval" / "metrics.json").read_text())
    assert metrics["descriptors"] == list(GEOMETRY_DESCRIPTORS)
    assert (metrics["source"], metrics["modules"], metrics["dim"]) == ("geometry", 18728, 5)
    table_path, _ = stage.export("csv", tmp_path / "export")
    frame = pd.read_csv(table_path)
    assert list(frame.columns) == ["volume_id", "layer_id", "module_id", "token", *GEOMETRY_DESCRIPTORS]
    tokenizer = stage.tokenizer(stage.detector())
    descriptors = geometry_descriptors(stage.detector())[tokenizer.token_to_module]
    assert len(frame) == 4004 and np.allclose(frame[list(GEOMETRY_DESCRIPTORS)].to_numpy(), descriptors, rtol=1e-6)


# ------------------------------------------------------------------------------------- the tb scorers


def test_the_stitching_scorer_loads_random_and_shuffled_stage_dirs(random_stage, shuffled, simulated_store):
    for stage in (random_stage, shuffled):
        scorer = TrackingBERTScorer.from_stage_dir(stage.stage_dir, simulated_store, 2, 64)
        assert torch.equal(scorer.model.module_embeddings(), token_table(stage)[0])
        assert scorer.tokenizer.vocab_size == 4009


def test_a_control_is_not_stale_when_only_pretraining_keys_change(simulated_store, tmp_path):
    """random trains nothing, so a sweep over epochs or learning rate reuses one finished control; the
    pretrained stage is stale after the same change, and a control is stale after a change of shape."""
    from tb_plugin import stage_record
    from tb_plugin.pipeline import run_stage

    control = tb_stage(simulated_store, tmp_path / "random", source="random")
    run_stage(control)
    assert stage_record.status(control).state == "up to date"
    for key, value in (("max_epochs", 7), ("lr", 1e-2), ("mdm_candidates", "layer"), ("mask_rate", 0.3)):
        same = tb_stage(simulated_store, tmp_path / "random", source="random", **{key: value})
        assert stage_record.status(same).state == "up to date", key
    wider = tb_stage(simulated_store, tmp_path / "random", source="random", n_embd=32)
    assert stage_record.status(wider).state == "stale" and "n_embd" in stage_record.status(wider).reason
    trained = tb_stage(simulated_store, tmp_path / "pretrained")
    run_stage(trained)
    longer = tb_stage(simulated_store, tmp_path / "pretrained", max_epochs=2)
    assert "max_epochs" in stage_record.status(longer).reason
