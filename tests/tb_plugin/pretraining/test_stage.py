"""The tracking_bert stage end to end: train, resume, eval, infer, export, DDP, and its errors."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tb_plugin.config import ConfigError
from tb_plugin.event_store import list_event_files, load_event
from tb_plugin.injection import MODULE_TABLE_FILE, load_module_table
from tb_plugin.pipeline import stage_from_mapping
from tb_plugin.tokenizer import N_SPECIAL, UNK, GeometryMismatchError

TINY = {"n_layer": 1, "n_embd": 16, "n_head": 2, "d_ff": 32, "lr": 3e-3, "warmup_steps": 5, "batch_size": 256}


def tb_stage(store, stage_dir, **overrides):
    values = {
        "stage": "tracking_bert",
        "model": "TrackingBERT",
        "input_dir": str(store),
        "stage_dir": str(stage_dir),
        "max_epochs": 1,
        **TINY,
        **overrides,
    }
    return stage_from_mapping(values, "tracking_bert.yaml")


@pytest.fixture(scope="module")
def trained(simulated_store, tmp_path_factory):
    stage = tb_stage(simulated_store, tmp_path_factory.mktemp("tb"), flat_columns=True)
    stage.train()
    return stage


def test_eval_writes_the_metrics_and_plots(trained):
    metrics = trained.evaluate()
    saved = json.loads((trained.stage_dir / "eval" / "metrics.json").read_text())
    for model in ("trackingbert", "count_baseline"):
        for key in ("top1", "top5", "within_20mm"):
            assert 0.0 <= saved["mdm"][model][key] <= 1.0
        assert saved["mdm"][model]["top1"] <= saved["mdm"][model]["top5"]
    assert 0.0 <= saved["ntp"]["accuracy"] <= 1.0 and 0.0 <= saved["ntp"]["auc"] <= 1.0
    assert saved["n_params"] == metrics["n_params"] > 0
    assert saved["n_eval_tracks"] > 100
    assert saved["config"]["stage"] == "tracking_bert"
    # both models are scored on the same hidden positions
    assert (
        saved["mdm"]["trackingbert"]["n_masked"] == saved["mdm"]["count_baseline"]["n_masked"] == saved["n_eval_tracks"]
    )
    for name in ("mdm_accuracy_by_volume.png", "mdm_accuracy_by_position.png", "ntp_roc.png", "embedding_pca.png"):
        assert (trained.stage_dir / "eval" / name).stat().st_size > 5000


def test_infer_adds_the_module_embedding_and_keeps_every_field(trained, simulated_store):
    trained.infer()
    module, tokenizer, _ = trained.trained()
    table = module.model.module_embeddings().detach()
    for split in ("trainset", "valset", "testset"):
        inputs = list_event_files(simulated_store, split)
        outputs = list_event_files(trained.stage_dir, split)
        assert [p.name for p in inputs] == [p.name for p in outputs]
    before, after = load_event(inputs[0]), load_event(outputs[0])
    for key in before.keys():
        if key != "config":
            assert (
                torch.equal(torch.as_tensor(before[key]), torch.as_tensor(after[key]))
                if key != "event_id"
                else before[key] == after[key]
            )
    tokens = torch.from_numpy(tokenizer.encode(after.hit_module_index.numpy()))
    assert after.hit_tb_emb.shape == (after.num_nodes, 16)
    assert torch.allclose(after.hit_tb_emb, table[tokens])
    assert torch.equal(after.hit_tb_emb_3, after.hit_tb_emb[:, 3])
    assert [c["stage"] for c in after.config] == ["data_reading", "tracking_bert"]
    assert after.config[-1]["normalize"] == "none" and after.config[-1]["dim"] is None
    # beside the events: the table as injected (here the raw one, bit for bit), every module, with its flags
    saved = load_module_table(trained.stage_dir / MODULE_TABLE_FILE)
    assert np.array_equal(saved.table, table[torch.from_numpy(tokenizer.module_to_token)].numpy())
    assert np.array_equal(saved.table[after.hit_module_index.numpy()], after.hit_tb_emb.numpy())
    assert np.array_equal(saved.in_vocab, tokenizer.module_to_token != UNK)
    assert saved.geometry_hash == tokenizer.geometry_hash and saved.ids_hash == tokenizer.ids_hash


def test_infer_normalises_and_reduces_the_table_once(trained, simulated_store, tmp_path):
    shutil.copytree(trained.artifacts, tmp_path / "artifacts")  # the same checkpoint, other injection options
    stage = tb_stage(simulated_store, tmp_path, normalize="standard", dim=4, data_split=[1, 1, 1])
    stage.infer()
    assert repr(stage.injection).startswith("ModuleEmbedding(modules=18728, dim=4, normalize='standard', pca_dim=4,")
    saved = load_module_table(tmp_path / MODULE_TABLE_FILE)
    assert saved.table.shape == (18728, 4) and np.array_equal(saved.table, stage.injection.table.numpy())
    rows = saved.table[saved.in_vocab].astype(np.float64)
    var = rows.var(axis=0)
    assert np.all(var[:-1] > var[1:])  # principal components of the standardised table
    for split in ("trainset", "valset", "testset"):
        [path] = list_event_files(tmp_path, split)
        event = load_event(path)
        assert event.hit_tb_emb.shape == (event.num_nodes, 4) and "hit_tb_emb_0" not in event
        assert np.array_equal(saved.table[event.hit_module_index.numpy()], event.hit_tb_emb.numpy())
        assert event.config[-1]["normalize"] == "standard" and event.config[-1]["dim"] == 4
    stage.infer(overwrite=True)  # written again on every infer: the same table
    assert np.array_equal(load_module_table(tmp_path / MODULE_TABLE_FILE).table, saved.table)


@pytest.mark.parametrize("fmt", ["csv", "npz", "pt"])
def test_export_writes_table_and_vocabulary(trained, tmp_path, fmt):
    table_path, vocab_path = trained.export(fmt, tmp_path)
    module, tokenizer, _ = trained.trained()
    emb = module.model.module_embeddings().detach().numpy()[N_SPECIAL:]
    if fmt == "csv":
        frame = pd.read_csv(table_path)
        assert list(frame.columns[:4]) == ["volume_id", "layer_id", "module_id", "token"]
        values, tokens = frame[[f"e{i}" for i in range(16)]].to_numpy(), frame["token"].to_numpy()
    elif fmt == "npz":
        with np.load(table_path) as arrays:
            values, tokens = arrays["embedding"], arrays["token"]
    else:
        loaded = torch.load(table_path, weights_only=True)
        values, tokens = loaded["embedding"].numpy(), loaded["token"].numpy()
    assert len(tokens) == tokenizer.vocab_size - N_SPECIAL == 18728
    assert np.allclose(values, emb, atol=1e-6)
    assert json.loads(vocab_path.read_text())["geometry_hash"] == tokenizer.geometry_hash


def test_training_resumes_from_the_last_checkpoint(simulated_store, tmp_path):
    tb_stage(simulated_store, tmp_path).train()
    first = torch.load(tmp_path / "artifacts" / "last.ckpt", weights_only=False)
    tb_stage(simulated_store, tmp_path, max_epochs=2).train()
    second = torch.load(tmp_path / "artifacts" / "last.ckpt", weights_only=False)
    assert second["epoch"] == first["epoch"] + 1
    assert second["global_step"] == 2 * first["global_step"]


def test_refuses_a_vocabulary_of_other_module_ids(trained, tmp_path):
    """Other ids are refused (a moved module with the same ids is accepted with a warning: test_tokenizer)."""
    other = tmp_path / "detectors.csv"
    lines = (trained.config.input_dir / "detectors.csv").read_text().splitlines()
    fields = lines[1].split(",")
    fields[2] = "999999"  # renumber one module
    other.write_text("\n".join([lines[0], ",".join(fields), *lines[2:]]) + "\n")
    stage = tb_stage(trained.config.input_dir, trained.stage_dir, detector=str(other))
    with pytest.raises(GeometryMismatchError, match="was built on detector geometry"):
        stage.infer()


def test_missing_checkpoint_is_a_clear_error(simulated_store, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no trained TrackingBERT in .*artifacts.*run 'tb train'"):
        tb_stage(simulated_store, tmp_path).infer()


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"min_hits": 9}, "need 2 <= min_hits <= max_hits"),
        ({"n_embd": 30, "n_head": 4}, "n_embd"),
        ({"mask_rate": 1.5}, "key 'mask_rate' must be between 0 and 1"),
        ({"precision": "bf16"}, "key 'precision' has value 'bf16'"),
        ({"dim": 0}, r"key 'dim' must be null or an integer from 1 to n_embd = 16, got 0$"),
        ({"dim": 17}, r"key 'dim' must be null or an integer from 1 to n_embd = 16, got 17$"),
        ({"normalize": "zscore"}, r"key 'normalize' has value 'zscore'.* Allowed: 'none', 'standard'$"),
        ({"mdm_candidates": "sampled"}, r"key 'mdm_candidates' has value 'sampled'.* Allowed: 'all', 'layer'$"),
        ({"train_events": 0}, r"key 'train_events' must be at least 1 or null"),
    ],
)
def test_config_errors(simulated_store, tmp_path, overrides, pattern):
    with pytest.raises(ConfigError, match=pattern) as err:
        tb_stage(simulated_store, tmp_path, **overrides)
    assert "\n" not in str(err.value)  # one line


def test_ddp_on_two_cpu_processes(simulated_store, tmp_path):
    config = {
        "stage": "tracking_bert",
        "model": "TrackingBERT",
        "input_dir": str(simulated_store),
        "stage_dir": str(tmp_path / "tb"),
        "max_epochs": 1,
        **TINY,
        "accelerator": "cpu",
        "devices": 2,
        "strategy": "ddp",
    }
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PL_DISABLE_FORK": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "tb_plugin.cli", "train", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "distributed_backend=gloo" in log
    assert "MEMBER: 2/2" in log
    assert (tmp_path / "tb" / "artifacts" / "last.ckpt").is_file()


def test_a_killed_training_resumes_to_the_same_weights(simulated_store, tmp_path, run_tb):
    """kill -9 in the second epoch, rerun `tb train`: the final weights equal an uninterrupted run's
    (the shuffle order, the MDM masks and dropout continue where they were, not from the seed)."""

    def config(name):
        values = {
            "stage": "tracking_bert",
            "model": "TrackingBERT",
            "input_dir": str(simulated_store),
            "stage_dir": str(tmp_path / name),
            "max_epochs": 3,
            **TINY,
            "dropout": 0.1,
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(values))
        return path

    whole, killed = config("whole"), config("killed")
    assert run_tb(["train", str(whole)]).returncode == 0
    interrupted = run_tb(["train", str(killed)], kill_in_epoch=1)
    assert interrupted.returncode == -9, interrupted.stderr[-2000:]
    assert torch.load(tmp_path / "killed" / "artifacts" / "last.ckpt", weights_only=True)["epoch"] == 0
    resumed = run_tb(["train", str(killed)])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = torch.load(tmp_path / "whole" / "artifacts" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "artifacts" / "last.ckpt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2 and a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key


def test_data_split_limits_the_events_pretraining_reads(simulated_store, tmp_path):
    # the store holds 4 / 1 / 1 events: data_split [2, 1, 1] keeps half of the training events
    full_stage, half_stage = (
        tb_stage(simulated_store, tmp_path / name, **extra)
        for name, extra in (("all", {}), ("half", {"data_split": [2, 1, 1]}))
    )
    tokenizer = full_stage.tokenizer(full_stage.detector())
    full, half = full_stage.datamodule(tokenizer), half_stage.datamodule(tokenizer)
    for module in (full, half):
        module.prepare_data()
        module.setup()
    assert 0 < len(half.tracks["trainset"]) < len(full.tracks["trainset"])
    assert len(half.tracks["valset"]) == len(full.tracks["valset"])
    assert half.cache_file("trainset").name != full.cache_file("trainset").name  # never the other's cache


def test_train_events_limits_pretraining_not_inference(simulated_store, tmp_path):
    """train_events: the first n trainset events feed pretraining (a sweep's "fewer tracks" point); every
    event is still written with its embedding, so the stages downstream see the same data."""
    full_stage = tb_stage(simulated_store, tmp_path / "all")
    some_stage = tb_stage(simulated_store, tmp_path / "some", train_events=2)
    tokenizer = full_stage.tokenizer(full_stage.detector())
    full, some = full_stage.datamodule(tokenizer), some_stage.datamodule(tokenizer)
    for module in (full, some):
        module.prepare_data()
        module.setup()
    assert 0 < len(some.tracks["trainset"]) < len(full.tracks["trainset"])
    assert len(some.tracks["valset"]) == len(full.tracks["valset"])
    assert some.cache_file("trainset").name != full.cache_file("trainset").name
    assert some_stage.input_paths() == full_stage.input_paths()  # inference reads (and writes) every event


def test_layer_softmax_trains_and_is_evaluated_both_ways(simulated_store, tmp_path):
    stage = tb_stage(simulated_store, tmp_path / "layer", mdm_candidates="layer")
    stage.train()
    module, _, _ = stage.trained()
    assert module.hparams["mdm_candidates"] == "layer"
    metrics = stage.evaluate()
    for task in ("mdm", "mdm_layer"):  # every model is scored over all modules and within the layer
        for model in ("trackingbert", "count_baseline"):
            assert 0.0 <= metrics[task][model]["top1"] <= metrics[task][model]["top5"] <= 1.0
    # within the layer the count baseline cannot do worse: its candidates are a subset, its ranks the same
    assert metrics["mdm_layer"]["count_baseline"]["top1"] >= metrics["mdm"]["count_baseline"]["top1"]


def test_a_record_from_before_mdm_candidates_means_the_full_softmax(simulated_store, tmp_path):
    """Records written before the key existed trained the full softmax, the default: such a record is up
    to date for the default and for mdm_candidates: all, and stale for layer."""
    from tb_plugin import stage_record
    from tb_plugin.pipeline import run_stage

    stage = tb_stage(simulated_store, tmp_path / "old")
    run_stage(stage)
    path = stage.stage_dir / "stage_record.json"
    record = json.loads(path.read_text())
    assert record["keys"]["mdm_candidates"] == "all"
    del record["keys"]["mdm_candidates"]  # as written before the key existed
    path.write_text(json.dumps(record))
    assert stage_record.status(tb_stage(simulated_store, tmp_path / "old")).state == "up to date"
    assert stage_record.status(tb_stage(simulated_store, tmp_path / "old", mdm_candidates="all")).state == "up to date"
    layer = stage_record.status(tb_stage(simulated_store, tmp_path / "old", mdm_candidates="layer"))
    assert layer.state == "stale" and "mdm_candidates" in layer.reason
