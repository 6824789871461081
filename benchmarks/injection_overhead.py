"""Inference overhead of the TrackingBERT arm, per injection option, timed interleaved on the same events.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/injection_overhead.py AB.yaml [AB2.yaml ...]
        [--seed 0] [--events 10] [--rounds 5] [--out runs/bench/injection_overhead.json]

Each A/B config must have run already (`tb ab AB.yaml`): its trained stages are loaded, nothing is
trained. The chains timed are the baseline arm of the first config and the first arm with a table of
every config (the pretrained arm of today's configs, the `trackingbert` arm of two-arm ones: one per
injection option, `normalize`, `dim` of its tracking_bert config), for `--seed`, each with its
tracking_bert stage's inference first, as `tb ab` times it.

Why a separate benchmark: `tb ab` times each arm once, right after training it, so the two arms are
timed minutes apart, and on a 2-core machine the load drifts by more than the 2 % the target allows.
Here every round runs each test event through every chain, in a rotated order, so drift hits all
chains alike; per chain and event the median over rounds is kept. The ratio of a chain to the baseline
is the ratio of the mean per-event totals, with a 95 % bootstrap interval that resamples events (the
events are shared, so the ratio is paired).

Prints a table and writes JSON (the command line, the machine's load, per-chain per-stage seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from stages.inference_chain import InferenceChain  # noqa: E402
from tb_plugin.ab.runner import load_runner  # noqa: E402
from tb_plugin.event_store import list_event_files, load_event  # noqa: E402

BOOTSTRAP = 2000


def option_label(runner: Any) -> str:
    """The injection option of an A/B's trackingbert arm, from its tracking_bert config."""
    values = runner.tb_values
    dim = values.get("dim")
    width = dim if dim is not None else values.get("n_embd")
    return f"normalize {values.get('normalize', 'none')}, dim {width}"


def build_chains(configs: list[Path], runners: list[Any], seed: int) -> dict[str, InferenceChain]:
    """The baseline chain of the first config, then the chain of each config's first arm that reads a
    table (its tracking_bert stage first)."""
    chains = {"baseline": InferenceChain(runners[0].plan("baseline", seed).stages)}
    for path, runner in zip(configs, runners):
        arm = next((a for a in runner.names[1:] if runner.arms.reads_table(a)), None)
        if arm is None:
            raise SystemExit(f"{path}: no arm reads a table (hit_tb_emb): nothing to time")
        stages = [runner.arms.embedding_stage(runner.source(arm)), *runner.plan(arm, seed).stages]
        chains[f"{arm} ({option_label(runner)}; {path.stem})"] = InferenceChain(stages)
    return chains


def time_chains(chains: dict[str, InferenceChain], files: list[Path], rounds: int) -> dict[str, list[dict[str, float]]]:
    """Per chain, per event: the median over rounds of each stage's seconds (and their total)."""
    names = list(chains)
    per_event: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for path in tqdm(files, desc="events", file=sys.stderr):
        data = load_event(path)
        with torch.inference_mode():
            for name in names:  # warm-up: first touch of this event's tensors and of each chain's caches
                chains[name].run(data, path)
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
            for r in range(rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                for name in order:
                    out, seconds = chains[name].run(data, path)
                    edges = float(out.edge_index.shape[1])  # what the GNN scored: its cost follows the filter's cut
                    runs[name].append({**seconds, "total": sum(seconds.values()), "edges_after_filter": edges})
        for name in names:
            per_event[name].append({k: statistics.median(run[k] for run in runs[name]) for k in runs[name][0]})
    return per_event


def ratio_interval(chain: np.ndarray, base: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Ratio of mean totals and its 95 % percentile interval over events resampled with replacement."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(base), size=(BOOTSTRAP, len(base)))
    boot = chain[idx].mean(axis=1) / base[idx].mean(axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return float(chain.mean() / base.mean()), float(low), float(high)


def summarise(per_event: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    base = np.array([e["total"] for e in per_event["baseline"]])
    out = {}
    for name, events in per_event.items():
        totals = np.array([e["total"] for e in events])
        ratio, low, high = ratio_interval(totals, base)
        out[name] = {
            "s_per_event": {k: float(np.mean([e[k] for e in events])) for k in events[0] if k != "edges_after_filter"},
            "edges_after_filter_per_event": float(np.mean([e["edges_after_filter"] for e in events])),
            "ratio_to_baseline": ratio,
            "ratio_ci95": [low, high],
        }
    return out


def print_table(chains: dict[str, Any]) -> None:
    """Markdown: per chain, seconds per event (total and per stage), edges into the GNN, ratio [CI]."""
    stages = list(dict.fromkeys(k for row in chains.values() for k in row["s_per_event"] if k != "total"))
    print(f"| chain | s per event | {' | '.join(stages)} | edges into the GNN | ratio to baseline [95% CI] |")
    print("| --- |" + " ---: |" * (len(stages) + 3))
    for name, row in chains.items():
        low, high = row["ratio_ci95"]
        per_stage = " | ".join(f"{row['s_per_event'].get(k, 0.0):.4f}" for k in stages)
        print(
            f"| {name} | {row['s_per_event']['total']:.4f} | {per_stage} | {row['edges_after_filter_per_event']:,.0f} "
            f"| {row['ratio_to_baseline']:.3f} [{low:.3f}, {high:.3f}] |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="+", type=Path, help="A/B configs that have run (tb ab)")
    parser.add_argument("--seed", type=int, default=0, help="the seed whose trained stages are timed")
    parser.add_argument("--events", type=int, default=10, help="test events timed")
    parser.add_argument("--rounds", type=int, default=5, help="timed runs of each event through each chain")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "injection_overhead.json")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.configs if not p.is_file()]
    if missing:
        print(f"error: A/B config not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.events < 1 or args.rounds < 1:
        print("error: --events and --rounds must be at least 1", file=sys.stderr)
        return 2
    runners = [load_runner(path) for path in args.configs]
    chains = build_chains(args.configs, runners, args.seed)
    runner = runners[0]
    files = list_event_files(runner.reading_stage().stage_dir, "testset")[: args.events]
    if not files:
        print(f"error: no test events in {runner.reading_stage().stage_dir / 'testset'}", file=sys.stderr)
        return 2
    per_event = time_chains(chains, files, args.rounds)
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
        "events": [p.name for p in files],
        "rounds": args.rounds,
        "chains": summarise(per_event),
        "per_event": per_event,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)
    print_table(result["chains"])
    print(f"  -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
