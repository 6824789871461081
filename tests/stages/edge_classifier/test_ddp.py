"""The edge classifiers trained by 2 CPU processes under Lightning DDP (gloo), as `tb train` runs them.

What a distributed fit must give (issue 24): one checkpoint that single-process `tb infer` reads, the
stage record finished, the trainset split across the ranks (the weights equal a single-process fit
whose batches are the ranks' batches put together), and the figures chosen on the valset (the
monitored val/loss of best.ckpt, the valset cut) computed on the whole valset, not on a rank's share.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DistributedSampler
from torch_geometric.loader import DataLoader

from stages.edge_classifier.edge_stage import EventGraphs, edge_target_mask, training_graph
from stages.edge_classifier.filter import prune_edges
from stages.edge_classifier.gnn_model import weighted_bce
from stages.edge_classifier.operating_point import cut_for_efficiency
from stages.graph_metrics import target_truth_mask
from tb_plugin.config import ConfigError
from tb_plugin.event_store import list_event_files, load_event, save_event
from tb_plugin.pipeline import load_stage
from tb_plugin.training import launched_as_rank_zero, read_checkpoint
from tests.stages.edge_classifier.test_interaction_gnn import make_event

TRAIN, VAL = [1, 2, 3, 4], [5, 6, 7]  # 3 valset events: they do not divide by 2 ranks


def write_graphs(folder):
    for split, ids in (("trainset", TRAIN), ("valset", VAL), ("testset", [8])):
        for event_id in ids:
            data = make_event(event_id)
            if event_id == VAL[-1]:
                data = prune_edges(data, data.edge_y)  # a valset event of true edges alone: its loss differs clearly
            save_event(data, folder / split / f"event{event_id:09d}.pyg")
    return folder


@pytest.fixture
def graph_folder(tmp_path):
    return write_graphs(tmp_path / "graphs")


def write_config(tmp_path, graph_folder, name: str, model: str = "InteractionGNN", **overrides):
    values = {
        "stage": "edge_classifier",
        "model": model,
        "input_dir": str(graph_folder),
        "stage_dir": str(tmp_path / name),
        "hidden": 8,
        **({"nb_layer": 2} if model == "Filter" else {"n_graph_iters": 1}),
        "max_epochs": 2,
        "lr": 5e-3,
        "edge_features": ["dr", "dphi", "dz"],
        "edge_scales": [100.0, 0.1, 100.0],
        "edge_cut": {"target_efficiency": 0.9},
        "accelerator": "cpu",
        "devices": 2,
        "strategy": "ddp",
        **overrides,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports: the runs started at once must not pick the same MASTER_PORT."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_tb_train(path, log, port: int):
    """`tb train` in a fresh process: Lightning's ddp launcher starts rank 1 as the same command again."""
    env = {**os.environ, "PL_DISABLE_FORK": "1", "MASTER_PORT": str(port)}
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "SLURM_PROCID"):
        env.pop(name, None)  # this test's own process is no rank of anything
    command = [sys.executable, "-m", "tb_plugin.cli", "train", str(path)]
    with open(log, "w") as out:  # its own process group: a run that hangs is ended with its rank 1
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=path.parent, start_new_session=True
        )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The GNN and the filter trained by `tb train` with devices: 2, strategy: ddp, both launched at once
    (most of each run is starting its two processes): {name: (config path, exit status, log)}."""
    root = tmp_path_factory.mktemp("ddp")
    graphs = write_graphs(root / "graphs")
    configs = {
        "gnn": write_config(root, graphs, "gnn"),
        "filter": write_config(root, graphs, "filter", model="Filter", max_epochs=1),
    }
    start = time.perf_counter()
    ports = free_ports(len(configs))
    runs = {
        name: start_tb_train(path, root / f"{name}.log", port) for (name, path), port in zip(configs.items(), ports)
    }
    try:
        codes = {name: run.wait(timeout=300) for name, run in runs.items()}
    finally:
        for run in runs.values():
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
    print(f"\n2-process tb train of the GNN and the filter, at once: {time.perf_counter() - start:.1f} s")
    return {name: (path, codes[name], (root / f"{name}.log").read_text()) for name, path in configs.items()}


def single_process_fit(stage, batch_size: int):
    """The network `stage.train` would start from (same seed), fitted in this process on batches of
    `batch_size` events drawn in the order Lightning's DistributedSampler gives the ranks (seed, epoch):
    2 ranks of batch 1 each take events 2s and 2s+1 of that order at step s, so this fit's batch s
    holds the same two events."""
    c = stage.config
    L.seed_everything(c.seed, workers=True, verbose=False)
    files = stage.input_files("trainset")
    module = stage.build_module(files)
    events = EventGraphs(files, c, cap_edges=True)
    sampler = DistributedSampler(events, num_replicas=1, rank=0, shuffle=True, seed=c.seed)
    trainer = L.Trainer(
        max_epochs=c.max_epochs,
        accelerator="cpu",
        devices=1,
        gradient_clip_val=c.gradient_clip_val,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(events, batch_size=batch_size, sampler=sampler))
    return module


def test_interaction_gnn_trains_on_two_cpu_processes(trained):
    path, code, log = trained["gnn"]
    assert code == 0, log[-3000:]
    assert "distributed_backend=gloo" in log and "MEMBER: 2/2" in log

    stage = load_stage(path)
    graph_folder = stage.config.input_dir
    artifacts = stage.stage_dir / "artifacts"
    record = json.loads((stage.stage_dir / "stage_record.json").read_text())
    assert record["phases"]["train"]["done"] is True
    assert log.count(", 4 training and 3 validation events") == 1  # rank 0 alone prints

    # the trainset split across the ranks: the weights of a single-process fit on their batches put together
    alone = single_process_fit(stage, batch_size=2)
    trained = read_checkpoint(artifacts / "last.ckpt")["state_dict"]
    difference = max((trained[k] - v).abs().max().item() for k, v in alone.state_dict().items())
    print(f"largest weight difference to the single-process fit: {difference:.1e}")
    assert difference < 1e-5, difference
    unsplit = single_process_fit(stage, batch_size=1)  # ranks each fitting the whole trainset would give this
    assert max((trained[k] - v).abs().max().item() for k, v in unsplit.state_dict().items()) > 1e-3

    # best.ckpt's monitored val/loss is the mean over the whole valset (3 events, not a padded 2 + 2)
    best = read_checkpoint(artifacts / "best.ckpt")
    [monitored] = [s["current_score"] for k, s in best["callbacks"].items() if k.startswith("ModelCheckpoint")]
    module = stage.trained()
    losses = []
    for file in list_event_files(graph_folder, "valset"):
        graph = training_graph(load_event(file), stage.config, file, cap_edges=False)
        with torch.no_grad():
            logits = module(graph.x, graph.edge_index, graph.edge_attr)
        losses.append(weighted_bce(logits, graph.edge_y, graph.edge_weights).item())
    # Lightning's default split pads the ranks to [0, 2] and [1, 0] and averages their means
    padded = np.mean([np.mean(losses[0::2]), np.mean([losses[1], losses[0]])])
    assert abs(padded - np.mean(losses)) > 1e-3
    assert float(monitored) == pytest.approx(np.mean(losses), abs=1e-6)

    # the valset cut: chosen by rank 0 on every valset event with the checkpoint inference reads
    chosen = json.loads((artifacts / "edge_cut.json").read_text())
    assert chosen["valset_events"] == len(VAL) and chosen["checkpoint"] == "best.ckpt"
    target_scores = []
    for file in list_event_files(graph_folder, "valset"):
        data = load_event(file)
        scores = stage.score(module, data, file).numpy()
        target = target_truth_mask(data, stage.config.target_conditions(), file)
        target_scores.append(scores[edge_target_mask(data.track_to_edge_map, target, len(scores))])
    target_scores = np.concatenate(target_scores)
    assert chosen["n_target_edges"] == len(target_scores)
    assert chosen["edge_cut"] == cut_for_efficiency(target_scores, 0.9)

    # single-process inference reads that checkpoint and scores every edge
    stage.infer()
    for split in ("trainset", "valset", "testset"):
        for file in list_event_files(graph_folder, split):
            scored = load_event(stage.stage_dir / split / file.name)
            assert scored.edge_scores.shape == (scored.edge_index.shape[1],)
            assert torch.equal(scored.edge_scores, stage.score(module, load_event(file), file))


def test_filter_trains_on_two_cpu_processes(trained):
    path, code, log = trained["filter"]
    assert code == 0, log[-3000:]
    assert "MEMBER: 2/2" in log
    stage = load_stage(path)
    graph_folder = stage.config.input_dir
    assert json.loads((stage.stage_dir / "stage_record.json").read_text())["phases"]["train"]["done"] is True
    assert json.loads((stage.stage_dir / "artifacts" / "edge_cut.json").read_text())["valset_events"] == len(VAL)
    stage.infer()  # prunes at the valset cut: the kept edges' scores are all above it
    cut = stage.operating_cut()
    for file in list_event_files(graph_folder, "valset"):
        scored = load_event(stage.stage_dir / "valset" / file.name)
        assert scored.edge_scores.shape == (scored.edge_index.shape[1],) and bool((scored.edge_scores > cut).all())


@pytest.mark.parametrize(
    "env, zero",
    [
        ({}, True),
        ({"LOCAL_RANK": "0", "NODE_RANK": "0"}, True),  # Lightning's launcher sets these in rank 0 too
        ({"LOCAL_RANK": "1"}, False),  # a local rank Lightning's ddp launcher started
        ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False),  # the first process of the second node
        ({"RANK": "3", "GROUP_RANK": "1"}, False),  # torchrun
        ({"SLURM_PROCID": "2"}, False),  # srun
    ],
)
def test_rank_zero_from_the_launchers_environment(monkeypatch, env, zero):
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert launched_as_rank_zero() is zero


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"num_nodes": 0}, r"key 'num_nodes' must be an integer >= 1, got 0"),
        ({"devices": 0}, r"key 'devices' must be an integer >= 1, -1 \(every device\) or 'auto', got 0"),
        ({"devices": "two"}, r"key 'devices' must be a count, -1, 'auto' or a list of device ids"),
        ({"strategy": "dpp"}, r"key 'strategy' has value 'dpp' \(did you mean 'ddp'\?\)"),
    ],
)
def test_distributed_keys_are_checked_at_load(graph_folder, tmp_path, overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_stage(write_config(tmp_path, graph_folder, "gnn", **overrides))


def test_distributed_keys_lightning_takes(graph_folder, tmp_path):
    for overrides in (
        {"devices": "0,1"},
        {"devices": "1,"},
        {"devices": -1},
        {"devices": "auto"},
        {"num_nodes": 4, "strategy": "auto"},
        {"strategy": "ddp_spawn"},
    ):
        load_stage(write_config(tmp_path, graph_folder, "gnn", **overrides))
