"""Training speed of the MDM softmax over the whole vocabulary against the one over the masked hit's layer
(`mdm_candidates: all` / `layer` of the tracking_bert stage), on a stage config's own training data.

Both run the training step of TrackingBERTModule (pretraining_losses, backward, AdamW with the stage's
parameter groups) on the very same batches of the stage's trainset, from the same initialisation, in
one process; the two alternate block by block so that load from other processes hits both. The epoch
time is the step time times the stage's steps per epoch.

    .venv/bin/python benchmarks/mdm_softmax_speed.py configs/tracking_bert/demo_all_volumes.yaml
    .venv/bin/python benchmarks/mdm_softmax_speed.py configs/tracking_bert/demo.yaml --steps 60

Prints one JSON object. The stage's track cache is built first when missing (reading its events).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from tb_plugin.config import ConfigError, load_yaml
from tb_plugin.model import CandidateSets, TrackingBERT, param_groups, pretraining_losses
from tb_plugin.pipeline import stage_from_mapping


def time_steps(model: TrackingBERT, opt: torch.optim.Optimizer, batches: list[dict], candidates) -> float:
    """Seconds for one training step on each batch."""
    t0 = time.perf_counter()
    for batch in batches:
        opt.zero_grad(set_to_none=True)
        loss = pretraining_losses(model, batch, candidates=candidates)["loss"]
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", type=Path, help="a tracking_bert stage config")
    ap.add_argument("--steps", type=int, default=40, help="timed steps per block and softmax")
    ap.add_argument("--blocks", type=int, default=3, help="alternating timed blocks per softmax")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        stage = stage_from_mapping(load_yaml(args.config), str(args.config))
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    config = stage.config
    tokenizer = stage.tokenizer(stage.detector())
    data = stage.datamodule(tokenizer)
    data.prepare_data()
    data.setup("fit")
    loader = data.train_dataloader()
    steps_per_epoch = len(loader)
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == args.steps + 2:
            break
    warm, batches = batches[:2], batches[2:]
    candidates = CandidateSets(tokenizer.layer_groups())
    runs = {}
    for name, cands in (("all", None), ("layer", candidates)):
        torch.manual_seed(config.seed)
        model = stage.new_module(tokenizer).model.train()
        opt = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr)
        time_steps(model, opt, warm, cands)  # untimed
        runs[name] = (model, opt, cands)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.blocks):
        for name, (model, opt, cands) in runs.items():
            seconds[name].append(time_steps(model, opt, batches, cands) / len(batches))
    step = {name: statistics.median(s) for name, s in seconds.items()}
    print(
        json.dumps(
            {
                "benchmark": "mdm_softmax_speed",
                "config": str(args.config),
                "vocab_size": tokenizer.vocab_size,
                "layer_groups": len(candidates),
                "n_layer": config.n_layer,
                "n_embd": config.n_embd,
                "batch_size": config.batch_size,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "steps_per_epoch": steps_per_epoch,
                "timed_steps": args.steps * args.blocks,
                "step_s": {name: round(s, 5) for name, s in step.items()},
                "step_s_all_blocks": {name: [round(x, 5) for x in s] for name, s in seconds.items()},
                "epoch_min": {name: round(s * steps_per_epoch / 60, 2) for name, s in step.items()},
                "speedup_layer_over_all": round(step["all"] / step["layer"], 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
