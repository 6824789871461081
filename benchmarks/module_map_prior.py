"""Module-map pair prior: graph efficiency and size against the number of events the map learns from.

    .venv/bin/python benchmarks/module_map_prior.py [--store runs/demo/feature_store]
        [--tb-config runs/prior_bench/tracking_bert.yaml] [--map-events 5 20 90 360]
        [--arms ...] [--out runs/prior_bench]

For each `map_events` the ModuleMap of configs/graph_construction/module_map.yaml (its keys, with
input_dir = --store) learns its pairs and windows from the first map_events training events; then
every arm applies its prior (or none) to that learned map (ModuleMap.with_prior, the code `tb train`
runs), and the map builds the graphs of the test events in memory (ModuleMap.build_edges, as
`tb infer`). Measured per arm and map_events on the test events: graph efficiency of the truth edges
of pT > 1 GeV particles (target), of all truth edges, and of pT > 1 GeV truth edges between two pixel
modules (volumes 7, 8, 9: the only pairs a pixel-vocabulary TrackingBERT prior can touch), purity,
edges per event, and what the prior did (pairs proposed, pruned, thresholds). For map_events below
the largest, the proposed pairs are also checked against the map learned from the largest
map_events (`proposed_in_reference`: the fraction of proposals that more events would have shown).

The TrackingBERT table: the trained tracking_bert stage of --tb-config (`tb train` it first) gives
(module, tokenizer, detector); its per-module table is written with save_module_table to
--out/module_table[_<name>].npz (rows by dense module index, in_vocab = token != [UNK]).

Arms (`--arms`; default: none, mincount2 and DEFAULT_ARMS' priors): `none` (the plain map),
`mincount2` (the plain map without the pairs seen once: the count-only way to prune), and
`<scorer>-<head>[-pixel]-<propose|prune>` with scorer geometry or tb (tb_all with --tb-all-config: a
whole-detector vocabulary), head none, bilinear or mlp, `-pixel` restricting the prior to pixel
modules (volumes 7, 8, 9; the tb scorer is restricted to its vocabulary anyway). Propose arms run at
each --propose-quantiles value, prune arms at each --prune-quantiles value; the efficiencies of the
propose arms are also compared at equal graph sizes (--budgets x the plain map's edges per event).
Maps are kept in memory, not written.

Writes --out/module_map_prior.json (command line, arguments, base config, every run) and
--out/module_map_prior.png; progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from stages.graph_construction.module_map import PAIR_SHIFT, ModuleMap, ModuleMapConfig, ModuleMapTable  # noqa: E402
from stages.graph_construction.truth import GraphBuilderStage  # noqa: E402
from stages.graph_metrics import GraphEvaluation, target_truth_mask, truth_edge_found  # noqa: E402
from tb_plugin.config import build, load_yaml  # noqa: E402
from tb_plugin.event_store import list_event_files, load_event  # noqa: E402
from tb_plugin.geometry import detector_for  # noqa: E402
from tb_plugin.injection import ModuleEmbedding, save_module_table  # noqa: E402
from tb_plugin.pipeline import load_stage  # noqa: E402
from tb_plugin.tokenizer import UNK  # noqa: E402

BASE_CONFIG = REPO / "configs" / "graph_construction" / "module_map.yaml"
PIXEL_VOLUMES = [7, 8, 9]
SCORERS = ("geometry", "tb", "tb_all")
HEADS = ("none", "bilinear", "mlp")
PRIOR_ARMS = ("geometry-none", "geometry-mlp", "geometry-none-pixel", "geometry-mlp-pixel", "tb-none", "tb-mlp")
DEFAULT_ARMS = ["none", "mincount2"] + [f"{arm}-{use}" for arm in PRIOR_ARMS for use in ("propose", "prune")]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_arm(arm: str) -> dict[str, Any] | None:
    """`none` / `mincount2` -> None; `<scorer>-<head>[-pixel]-<propose|prune>` -> the arm's parts."""
    if arm in ("none", "mincount2"):
        return None
    parts = arm.split("-")
    use = parts[-1]
    pixel = len(parts) == 4 and parts[2] == "pixel"
    if (
        len(parts) not in (3, 4)
        or parts[0] not in SCORERS
        or parts[1] not in HEADS
        or use not in ("propose", "prune")
        or (len(parts) == 4 and not pixel)
    ):
        pattern = f"<{'|'.join(SCORERS)}>-<{'|'.join(HEADS)}>[-pixel]-<propose|prune>"
        raise SystemExit(f"--arms: cannot read {arm!r}; expected none, mincount2 or {pattern}")
    return {"scorer": parts[0], "head": parts[1], "pixel": pixel, "use": use}


def write_table(config_path: Path, out: Path) -> dict[str, Any]:
    """The trained tracking_bert stage's per-module table, written with save_module_table."""
    stage = load_stage(config_path)
    module, tokenizer, detector = stage.trained()
    table = ModuleEmbedding.from_token_embeddings(module.model.module_embeddings(), tokenizer).table  # [M, D]
    in_vocab = tokenizer.module_to_token != UNK
    save_module_table(out, table, in_vocab, detector)
    log(f"module table {tuple(table.shape)} ({int(in_vocab.sum()):,} modules in the vocabulary) -> {out}")
    return {
        "tb_config": str(config_path),
        "table": str(out),
        "modules": int(table.shape[0]),
        "dim": int(table.shape[1]),
        "in_vocab": int(in_vocab.sum()),
    }


def prior_keys(
    arm: dict[str, Any], quantile: float, args: argparse.Namespace, tables: dict[str, Path]
) -> dict[str, Any]:
    propose = arm["use"] == "propose"
    keys: dict[str, Any] = {
        "scorer": "geometry" if arm["scorer"] == "geometry" else "tb",
        "head": arm["head"],
        "propose": propose,
        "prune": not propose,
        "propose_quantile": quantile if propose else 0.5,
        "prune_quantile": 0.1 if propose else quantile,
        "prune_max_count": args.prune_max_count,
        "threshold": args.threshold,
        "head_steps": args.head_steps,
        "head_folds": args.head_folds,
    }
    if arm["scorer"] != "geometry":
        keys["table"] = str(tables[arm["scorer"]])
    if arm["pixel"]:
        keys["volumes"] = PIXEL_VOLUMES
    return keys


def evaluate(
    stage: ModuleMap, events: list[tuple[Path, Any]], pixel: np.ndarray, target_tracks: dict
) -> dict[str, Any]:
    """Graph metrics of the test events (built in memory with the stage's map), plus the pixel-pixel
    pT > 1 GeV efficiency."""
    evaluation = GraphEvaluation(target_tracks)
    pixel_true = pixel_found = 0
    started = time.perf_counter()
    for path, data in events:
        data = GraphBuilderStage.add_graph(data, stage.build_edges(data, path), path)
        evaluation.add(data, str(path))
        module = data.hit_module_index.numpy()
        truth = data.track_edges.numpy()
        on_pixel = pixel[module[truth[0]]] & pixel[module[truth[1]]]
        target = target_truth_mask(data, target_tracks, str(path)).numpy() & on_pixel
        found = truth_edge_found(data.track_to_edge_map)
        pixel_true += int(target.sum())
        pixel_found += int((found & target).sum())
    metrics = evaluation.metrics()
    keep = ("target_efficiency", "efficiency", "purity", "edges_per_event", "n_target_truth_edges", "n_target_found")
    out = {k: metrics[k] for k in keep}
    out["pixel_target_efficiency"] = pixel_found / pixel_true if pixel_true else None
    out["pixel_target_truth_edges"] = pixel_true
    out["build_seconds_per_event"] = (time.perf_counter() - started) / max(len(events), 1)
    return out


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    """Row 1: metrics against map_events at the main quantiles (solid: propose, dashed: prune). Row 2,
    one panel per map_events: pT > 1 GeV efficiency against edges per event over the quantile sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("target_efficiency", "efficiency, pT > 1 GeV truth edges"),
        ("pixel_target_efficiency", "efficiency, pT > 1 GeV pixel-pixel truth edges"),
        ("efficiency", "efficiency, all truth edges"),
        ("edges_per_event", "edges per event"),
    ]
    map_events = sorted({r["map_events"] for r in runs})
    columns = max(len(panels), len(map_events))
    fig, axes = plt.subplots(2, columns, figsize=(5.0 * columns, 8.8), squeeze=False)
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    family = lambda arm: arm.rsplit("-", 1)[0] if arm != "none" else "none"  # noqa: E731
    colours: dict[str, str] = {}
    for arm in arms:
        colours.setdefault(family(arm), "black" if arm == "none" else f"C{len(colours)}")
    style = lambda arm: "-" if arm == "none" or arm.endswith("propose") else "--"  # noqa: E731
    for ax, (key, title) in zip(axes[0], panels):
        for arm in arms:
            rows = sorted(
                (r for r in runs if r["arm"] == arm and r["main"] is not False), key=lambda r: r["map_events"]
            )
            ax.plot(
                [r["map_events"] for r in rows],
                [r["metrics"][key] for r in rows],
                style(arm),
                marker="o",
                ms=3,
                color=colours[family(arm)],
                label=arm,
                lw=2 if arm == "none" else 1.2,
            )
        ax.set_xscale("log")
        ax.set_xlabel("map_events (training events the map learns from)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower right")
    for ax, n in zip(axes[1], map_events):
        for arm in arms:
            rows = sorted(
                (r for r in runs if r["arm"] == arm and r["map_events"] == n),
                key=lambda r: r["metrics"]["edges_per_event"],
            )
            ax.plot(
                [r["metrics"]["edges_per_event"] for r in rows],
                [r["metrics"]["target_efficiency"] for r in rows],
                style(arm),
                marker="*" if arm == "none" else "o",
                ms=9 if arm == "none" else 3,
                color=colours[family(arm)],
                label=arm,
            )
        ax.set_xlabel("edges per event")
        ax.set_ylabel("efficiency, pT > 1 GeV truth edges")
        ax.set_title(f"map_events {n}: quantile sweep", fontsize=10)
        ax.grid(alpha=0.3)
    for ax in list(axes[0][len(panels) :]) + list(axes[1][len(map_events) :]):
        ax.axis("off")
    fig.suptitle("ModuleMap pair prior (solid: propose, dashed: prune; row 1 at the main quantiles)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table_lines(runs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| arm | quantile | map_events | pairs | proposed | pruned | proposed in reference | eff. pT > 1 GeV "
        "| eff. pixel pT > 1 GeV | eff. all | purity | edges / event |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        m, p = r["metrics"], r.get("prior") or {}
        ref = r.get("proposed_in_reference")
        q = "" if r["quantile"] is None else f"{r['quantile']:g}"
        lines.append(
            f"| {r['arm']} | {q} | {r['map_events']} | {r['pairs']:,} | {p.get('proposed', 0):,} | {p.get('pruned', 0):,} | "
            f"{'' if ref is None else f'{ref:.3f}'} | {m['target_efficiency']:.4f} | {m['pixel_target_efficiency']:.4f} | "
            f"{m['efficiency']:.4f} | {m['purity']:.4f} | {m['edges_per_event']:,.0f} |"
        )
    return lines


def matched_edges(runs: list[dict[str, Any]], budgets: list[float]) -> list[dict[str, Any]]:
    """Per map_events and propose arm: the efficiencies at edges per event = budget x the plain map's,
    interpolated linearly along the arm's quantile sweep (the plain map is its zero-proposal end);
    None where the sweep does not reach that size."""
    out = []
    for n in sorted({r["map_events"] for r in runs}):
        plain = next((r for r in runs if r["arm"] == "none" and r["map_events"] == n), None)
        if plain is None:
            continue
        for arm in dict.fromkeys(r["arm"] for r in runs if r["arm"].endswith("-propose")):
            points = [plain] + [r for r in runs if r["arm"] == arm and r["map_events"] == n]
            points.sort(key=lambda r: r["metrics"]["edges_per_event"])
            edges = np.array([p["metrics"]["edges_per_event"] for p in points])
            row: dict[str, Any] = {
                "arm": arm,
                "map_events": n,
                "plain_edges_per_event": plain["metrics"]["edges_per_event"],
            }
            for budget in budgets:
                size = budget * plain["metrics"]["edges_per_event"]
                for key in ("target_efficiency", "pixel_target_efficiency"):
                    values = np.array([p["metrics"][key] for p in points])
                    row[f"{key}@{budget:g}"] = (
                        float(np.interp(size, edges, values)) if edges.min() <= size <= edges.max() else None
                    )
            out.append(row)
    return out


def matched_lines(rows: list[dict[str, Any]], budgets: list[float]) -> list[str]:
    head = " | ".join(f"x{b:g}: eff. / pixel eff." for b in budgets)
    lines = [f"| arm | map_events | plain edges / event | {head} |", "| --- | ---: | ---: |" + " ---: |" * len(budgets)]
    fmt = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
    for r in rows:
        cells = " | ".join(
            f"{fmt(r[f'target_efficiency@{b:g}'])} / {fmt(r[f'pixel_target_efficiency@{b:g}'])}" for b in budgets
        )
        lines.append(f"| {r['arm']} | {r['map_events']} | {r['plain_edges_per_event']:,.0f} | {cells} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, default=REPO / "runs" / "demo" / "feature_store")
    parser.add_argument(
        "--base-config",
        type=Path,
        default=BASE_CONFIG,
        help="ModuleMap keys (input_dir, stage_dir, map_events replaced)",
    )
    parser.add_argument(
        "--tb-config",
        type=Path,
        default=REPO / "runs" / "prior_bench" / "tracking_bert.yaml",
        help="the trained tracking_bert stage whose table the tb arms use",
    )
    parser.add_argument(
        "--tb-all-config", type=Path, default=None, help="a whole-detector tracking_bert stage, for tb_all-* arms"
    )
    parser.add_argument("--map-events", type=int, nargs="+", default=[5, 20, 90, 360])
    parser.add_argument("--test-events", type=int, default=20)
    parser.add_argument("--arms", nargs="+", default=DEFAULT_ARMS)
    parser.add_argument(
        "--propose-quantiles",
        type=float,
        nargs="+",
        default=[0.5, 0.1, 0.25, 0.75, 0.9],
        help="propose arms run once per value; the first is the main table's",
    )
    parser.add_argument(
        "--prune-quantiles",
        type=float,
        nargs="+",
        default=[0.1, 0.25, 0.5],
        help="prune arms run once per value; the first is the main table's",
    )
    parser.add_argument("--prune-max-count", type=int, default=1)
    parser.add_argument("--threshold", choices=("layer_pair", "global"), default="layer_pair")
    parser.add_argument("--head-steps", type=int, default=300)
    parser.add_argument("--head-folds", type=int, default=3)
    parser.add_argument(
        "--budgets",
        type=float,
        nargs="+",
        default=[1.1, 1.25, 1.5],
        help="edges per event, as multiples of the plain map's, at which the propose curves are compared",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "prior_bench")
    args = parser.parse_args()
    started = time.perf_counter()
    arms = {arm: parse_arm(arm) for arm in args.arms}
    main = {None: None, "propose": args.propose_quantiles[0], "prune": args.prune_quantiles[0]}
    settings = [
        (name, arm, q)
        for name, arm in arms.items()
        for q in (
            [None] if arm is None else args.propose_quantiles if arm["use"] == "propose" else args.prune_quantiles
        )
    ]
    args.out.mkdir(parents=True, exist_ok=True)

    tables: dict[str, Path] = {}
    table_info = {}
    needed = {a["scorer"] for a in arms.values() if a is not None} - {"geometry"}
    for scorer in sorted(needed):
        config = args.tb_config if scorer == "tb" else args.tb_all_config
        if config is None:
            raise SystemExit(f"--arms asks for {scorer} arms: give --tb-all-config")
        tables[scorer] = args.out / ("module_table.npz" if scorer == "tb" else f"module_table_{scorer}.npz")
        table_info[scorer] = write_table(config, tables[scorer])

    base = load_yaml(args.base_config)
    base.update(input_dir=str(args.store), seed=args.seed)
    detector = detector_for(args.store)
    pixel = detector.volume_mask(PIXEL_VOLUMES)
    test_files = list_event_files(args.store, "testset")[: args.test_events]
    events = [(path, load_event(path)) for path in test_files]
    log(f"{len(events)} test events loaded from {args.store / 'testset'}")

    runs: list[dict[str, Any]] = []
    reference_keys: dict[int, np.ndarray] = {}
    largest = max(args.map_events)
    for n in sorted(args.map_events, reverse=True):  # the largest first: it is the reference for the others
        learn_stage = ModuleMap(
            build(
                ModuleMapConfig,
                {**base, "map_events": n, "stage_dir": str(args.out / "maps" / f"learn_{n}")},
                f"{args.base_config} (map_events {n})",
            )
        )
        t0 = time.perf_counter()
        learner, files = learn_stage.learn()
        learned = learner.arrays(learn_stage.config.window_coverage)
        learn_seconds = time.perf_counter() - t0
        log(
            f"map_events {n}: {len(learned['pairs']):,} module pairs learned from {len(files)} events in {learn_seconds:.1f} s"
        )
        if n == largest:
            reference_keys[n] = learned["pairs"][:, 0] * PAIR_SHIFT + learned["pairs"][:, 1]
        for name, arm, quantile in settings:
            values = {
                **base,
                "map_events": n,
                "stage_dir": str(args.out / "maps" / f"{name}_{quantile}_{n}"),
            }  # not written
            if arm is not None:
                values["prior"] = prior_keys(arm, quantile, args, tables)
            if name == "mincount2":  # the count-only reference for pruning: every pair seen once goes
                values["min_count"] = 2
            stage = ModuleMap(build(ModuleMapConfig, values, f"{name} q {quantile} (map_events {n})"))
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(sys.stderr):  # the prior's one-line summary goes with the progress
                arrays = stage.with_prior(learned)
            prior_seconds = time.perf_counter() - t0
            # the map in memory, as prepare_inference would load it from the saved file (200 maps are 1.3 GB)
            stage.table = ModuleMapTable(
                arrays["pairs"],
                arrays["counts"],
                arrays["window"],
                arrays["low"],
                arrays["high"],
                arrays.get("proposed"),
            ).select(stage.config.min_count)
            metrics = evaluate(stage, events, pixel, stage.config.target_tracks)
            record = json.loads(str(arrays["prior"])) if "prior" in arrays else None
            in_reference = None
            if record is not None and record["proposed"] and n != largest:
                proposed = arrays["pairs"][arrays["proposed"]]
                in_reference = float(
                    np.isin(proposed[:, 0] * PAIR_SHIFT + proposed[:, 1], reference_keys[largest]).mean()
                )
            n_pairs = len(stage.table.pairs)
            runs.append(
                {
                    "arm": name,
                    "quantile": quantile,
                    "main": arm is None or quantile == main[arm["use"]],
                    "map_events": n,
                    "prior_keys": values.get("prior"),
                    "prior": record,
                    "pairs": n_pairs,
                    "proposed_in_reference": in_reference,
                    "learn_seconds": learn_seconds,
                    "prior_seconds": prior_seconds,
                    "metrics": metrics,
                }
            )
            m = metrics
            shown = "-" if quantile is None else f"{quantile:g}"
            log(
                f"  {name:28s} q {shown:<5} pairs {n_pairs:>8,}  eff pT>1 {m['target_efficiency']:.4f}  "
                f"pixel {m['pixel_target_efficiency']:.4f}  "
                f"all {m['efficiency']:.4f}  edges/event {m['edges_per_event']:,.0f}  prior {prior_seconds:.1f} s"
            )

    runs.sort(
        key=lambda r: (list(arms).index(r["arm"]), r["quantile"] if r["quantile"] is not None else 0, r["map_events"])
    )
    result = {
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "argv": sys.argv,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "base_config": base,
        "tables": table_info,
        "test_events": [str(p) for p, _ in events],
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": __import__("os").cpu_count(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "seconds": time.perf_counter() - started,
        "runs": runs,
    }
    json_path, png_path = args.out / "module_map_prior.json", args.out / "module_map_prior.png"
    json_path.write_text(json.dumps(result, indent=1, default=float))
    plot(runs, png_path)
    result["matched"] = matched_edges(runs, args.budgets)
    json_path.write_text(json.dumps(result, indent=1, default=float))
    print("\n".join(table_lines([r for r in runs if r["main"]])))
    print()
    print("\n".join(table_lines([r for r in runs if not r["main"]])))
    print()
    print("\n".join(matched_lines(result["matched"], args.budgets)))
    log(f"{time.perf_counter() - started:.0f} s; wrote {json_path} and {png_path}")


if __name__ == "__main__":
    main()
