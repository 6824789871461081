"""Python steps of the bounded GPU check (benchmarks/gpu_check.sh reads like a table of contents; the
work that needs the package is here). Three subcommands:

    configs   the A/B, pipeline and tracking_bert configs of this run, written into OUT/configs: the
              shipped configs/ab/gpu_check.yaml (and the files it names) with every folder moved under
              OUT and the sizes of the script's table; plus OUT/environment.json (versions, device).
    pretrain  data reading and the TrackingBERT pretraining of that A/B, run as the A/B runs them (so
              that `ab` reuses both instead of pretraining again), then OUT/pretrain.json: MDM of
              TrackingBERT against the count baseline on the test events, steps, epochs and seconds.
    ab        the A/B itself (`tb ab`), then OUT/ab.json: per arm the pooled metrics and the in-memory
              inference seconds per stage and event (the chain of both arms), and the paired differences.

    python benchmarks/gpu_check.py configs --out runs/gpu_check --split 92,4,4 ...   (see gpu_check.sh)
    python benchmarks/gpu_check.py pretrain --out runs/gpu_check
    python benchmarks/gpu_check.py ab --out runs/gpu_check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tb_plugin.config import load_yaml  # noqa: E402
from tb_plugin.pipeline import load_pipeline  # noqa: E402

SHIPPED_AB = REPO / "configs" / "ab" / "gpu_check.yaml"
MDM_KEYS = ("top1", "top5", "within_20mm")


def ints(text: str) -> list[int]:
    """'92,4,4' -> [92, 4, 4]: the splits and seeds of the size table come as comma-separated lists."""
    return [int(x) for x in text.split(",") if x.strip()]


def run_configs(args: argparse.Namespace) -> dict[str, Path]:
    """Where this run's configs live: OUT/configs/{ab,pipeline,tracking_bert}.yaml."""
    folder = args.out / "configs"
    return {name: folder / f"{name}.yaml" for name in ("ab", "pipeline", "tracking_bert")}


# ------------------------------------------------------------------------------------- configs


def tracking_bert_values(args: argparse.Namespace, shipped: dict[str, Any]) -> dict[str, Any]:
    """The shipped paper-size config at the table's size, trained for --tb-seconds, in OUT."""
    layers, embd, heads, d_ff = ints(args.tb_size)
    values = dict(shipped)
    values.update(
        input_dir=str(args.out / "feature_store"),
        stage_dir=str(args.out / "tracking_bert"),
        n_layer=layers,
        n_embd=embd,
        n_head=heads,
        d_ff=d_ff,
        batch_size=args.tb_batch,
        max_time_s=args.tb_seconds,
        max_epochs=args.tb_epochs,
        num_workers=args.workers,
        accelerator=args.accelerator,
        precision=args.precision,
    )
    return values


def pipeline_values(args: argparse.Namespace, pipeline: Path) -> list[dict[str, Any]]:
    """The shipped pipeline's stages, resolved to full mappings, at the table's sizes, in OUT. The A/B
    moves every stage after data reading under its ab_dir itself."""
    stages = [dict(entry.values) for entry in load_pipeline(pipeline)]
    for values in stages:  # runs/gpu_check/<folder> -> OUT/<folder>
        for key in ("input_dir", "stage_dir"):
            values[key] = str(args.out / Path(values[key]).name)
    reading, module_map, gnn = stages[0], stages[1], stages[2]
    reading.update(data_split=ints(args.split))
    module_map.update(map_events=args.map_events, data_split=ints(args.graph_split))
    gnn.update(
        hidden=args.gnn_hidden,
        n_graph_iters=args.gnn_iters,
        max_epochs=args.gnn_epochs,
        max_time_s=args.gnn_seconds,
        accelerator=args.accelerator,
        precision=args.precision,
    )
    return stages


def write_configs(args: argparse.Namespace) -> dict[str, Path]:
    """This run's A/B, pipeline and tracking_bert configs, from the shipped ones."""
    shipped = load_yaml(SHIPPED_AB)
    paths = run_configs(args)
    tb = tracking_bert_values(args, load_yaml((SHIPPED_AB.parent / shipped["tracking_bert"]).resolve()))
    stages = pipeline_values(args, (SHIPPED_AB.parent / shipped["pipeline"]).resolve())
    ab = dict(shipped)
    ab.update(
        ab_dir=str(args.out / "ab"),
        pipeline=str(paths["pipeline"]),
        tracking_bert=str(paths["tracking_bert"]),
        tracking_bert_dir=str(args.out / "tracking_bert"),
        seeds=ints(args.seeds),
        timing_events=args.timing_events,
        bootstrap={**shipped.get("bootstrap", {}), "samples": args.bootstrap},
    )
    paths["ab"].parent.mkdir(parents=True, exist_ok=True)
    for name, content in (("tracking_bert", tb), ("pipeline", {"stages": stages}), ("ab", ab)):
        header = f"# written by benchmarks/gpu_check.py from {SHIPPED_AB.relative_to(REPO)} and the files it names\n"
        paths[name].write_text(header + yaml.safe_dump(content, sort_keys=False, default_flow_style=None))
    return paths


def environment() -> dict[str, Any]:
    """What the run ran on: the image's versions and the accelerator (a GPU check on a CPU says so)."""
    import lightning
    import torch
    import torch_geometric

    try:
        import transformers

        hf = transformers.__version__
    except ImportError:
        hf = None
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_geometric": torch_geometric.__version__,
        "lightning": lightning.__version__,
        "transformers": hf,
        "cuda_available": cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


# ------------------------------------------------------------------------------------- pretrain


def checkpoint_progress(stage_dir: Path) -> dict[str, Any]:
    """Optimizer steps and epochs the run reached, from its last checkpoint: how far a time-bounded
    training got is the figure a GPU check is after."""
    import torch

    path = stage_dir / "artifacts" / "last.ckpt"
    if not path.is_file():
        return {"global_step": None, "epochs_started": None}
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return {"global_step": int(ckpt.get("global_step", 0)), "epochs_started": int(ckpt.get("epoch", 0)) + 1}


def mdm_rows(metrics: dict[str, Any]) -> dict[str, Any]:
    """TrackingBERT's MDM next to the count baseline's, on the same masked test positions."""
    bert, count = metrics["mdm"]["trackingbert"], metrics["mdm"]["count_baseline"]
    rows = {key: {"trackingbert": bert[key], "count_baseline": count[key]} for key in MDM_KEYS}
    for row in rows.values():
        row["difference"] = round(row["trackingbert"] - row["count_baseline"], 5)
    return rows


def pretrain(args: argparse.Namespace) -> dict[str, Any]:
    """Data reading and pretraining as the A/B runs them (its ab_stage.json records make `ab` reuse
    them), with their wall seconds; then the evaluation's MDM rows."""
    from tb_plugin.ab.runner import load_runner
    from tb_plugin.ab.stage_runs import run_once

    runner = load_runner(run_configs(args)["ab"])
    start = time.perf_counter()
    run_once(runner.reading_stage())
    reading_s = time.perf_counter() - start
    stage = runner.pretraining_stage()
    start = time.perf_counter()
    record = run_once(stage)
    metrics = json.loads((stage.stage_dir / "eval" / "metrics.json").read_text())
    config = record["config"]
    return {
        "part": "pretrain",
        "mdm_test": mdm_rows(metrics),
        "ntp_test": metrics["ntp"],
        "n_params": metrics["n_params"],
        "n_train_tracks": metrics["n_train_tracks"],
        "n_eval_tracks": metrics["n_eval_tracks"],
        "train_time_s": round(record["train_time_s"], 1),
        "max_time_s": config["max_time_s"],
        **checkpoint_progress(stage.stage_dir),
        "reading_s": round(reading_s, 1),
        "train_infer_eval_s": round(time.perf_counter() - start, 1),
        "events": {"data_split": runner.reading_values["data_split"]},
        "model": {k: config[k] for k in ("n_layer", "n_embd", "n_head", "d_ff", "batch_size", "precision")},
        "accelerator": config["accelerator"],
        "stage_dir": str(stage.stage_dir),
    }


# ------------------------------------------------------------------------------------- ab


def arm_rows(results: dict[str, Any], arm: str) -> dict[str, Any]:
    """One arm's seeds: pooled metrics, train seconds, and inference seconds per stage and event with
    their mean over the seeds (the per-stage chain of this arm)."""
    seeds = results["arms"][arm]["seeds"]
    timing = [s["inference_s_per_event"] for s in seeds]
    return {
        "seeds": [s["seed"] for s in seeds],
        "metrics": [s["metrics"] for s in seeds],
        "train_time_s": [s["train_time_s"] for s in seeds],
        "inference_s_per_event": timing,
        "inference_s_per_event_mean": {k: round(statistics.fmean(t[k] for t in timing), 4) for k in timing[0]},
    }


def ab(args: argparse.Namespace) -> dict[str, Any]:
    """The A/B of this run's configs (data reading and pretraining reused from `pretrain`), summarised."""
    from tb_plugin.ab.runner import load_runner

    path = run_configs(args)["ab"]
    start = time.perf_counter()
    results = load_runner(path).run()
    return {
        "part": "ab",
        "seconds": round(time.perf_counter() - start, 1),
        "arms": {arm: arm_rows(results, arm) for arm in results["arms"]},
        "differences": results["differences"],
        "timed_events": results["config"]["timing_events"],
        "results_json": str(Path(results["config"]["ab_dir"]) / "results.json"),
    }


# ------------------------------------------------------------------------------------- main


def parser() -> argparse.ArgumentParser:
    """The command line; the size options default to the full GPU run (gpu_check.sh passes them all)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=["configs", "pretrain", "ab"])
    ap.add_argument("--out", type=Path, required=True, help="the check's output folder")
    size = ap.add_argument_group("sizes (configs only; gpu_check.sh's table)")
    size.add_argument("--split", default="92,4,4", help="data reading: train,val,test events")
    size.add_argument("--map-events", type=int, default=16, help="events the module map learns from")
    size.add_argument("--graph-split", default="3,1,2", help="module map graphs: train,val,test")
    size.add_argument("--seeds", default="0,1", help="A/B seeds")
    size.add_argument("--timing-events", type=int, default=1, help="A/B test events timed per arm and seed")
    size.add_argument("--bootstrap", type=int, default=1000, help="A/B bootstrap samples")
    size.add_argument("--tb-size", default="12,64,8,512", help="TrackingBERT layers,embedding,heads,feed-forward")
    size.add_argument("--tb-batch", type=int, default=5000, help="TrackingBERT pairs per batch")
    size.add_argument("--tb-seconds", type=float, default=60.0, help="TrackingBERT training wall-clock limit")
    size.add_argument("--tb-epochs", type=int, default=1000, help="TrackingBERT epoch limit")
    size.add_argument("--workers", type=int, default=4, help="TrackingBERT DataLoader workers")
    size.add_argument("--gnn-hidden", type=int, default=64)
    size.add_argument("--gnn-iters", type=int, default=6)
    size.add_argument("--gnn-epochs", type=int, default=5)
    size.add_argument("--gnn-seconds", type=float, default=10.0, help="GNN training wall-clock limit per run")
    size.add_argument("--accelerator", choices=["cpu", "gpu"], default="gpu")
    size.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="bf16-mixed")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand and write its JSON into the output folder (also printed, for the log)."""
    args = parser().parse_args(argv)
    args.out = args.out.resolve()
    if args.command == "configs":
        paths = write_configs(args)
        result = {"part": "configs", "configs": {k: str(v) for k, v in paths.items()}, **environment()}
        name = "environment.json"
    else:
        result = pretrain(args) if args.command == "pretrain" else ab(args)
        name = f"{args.command}.json"
    text = json.dumps(result, indent=2, default=str)
    (args.out / name).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
