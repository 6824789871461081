"""Module-map pair prior: graph efficiency and size against the number of events the map learns from.

    .venv/bin/python benchmarks/module_map_prior.py [--store runs/demo/feature_store]
        [--tb-config runs/prior_bench/tracking_bert.yaml] [--tb-all-config CONFIG]
        [--tables tb_random=runs/prior_bench/tracking_bert_random.yaml
                  tb_shuffled=runs/prior_bench/tracking_bert_shuffled.yaml]
        [--map-events 5 20 90 360] [--test-events 20] [--arms ...]
        [--propose-quantiles 0.5 0.1 0.25 0.75 0.9] [--prune-quantiles 0.1 0.25 0.5] [--budgets 1.1 1.25 1.5]
        [--compare tb-none:tb_random-none tb-none:tb_shuffled-none tb-none:geometry-none-pixel]
        [--out runs/prior_bench]

For each `map_events` the ModuleMap of configs/graph_construction/module_map.yaml (its keys, with
input_dir = --store) learns its pairs and windows from the first map_events training events; then
every arm applies its prior (or none) to that learned map (ModuleMap.with_prior, the code `tb train`
runs), and the map builds the graphs of the test events in memory (written with save_map, read back by
ModuleMap.prepare_inference and removed again; ModuleMap.build_edges, as `tb infer`). Measured per arm
and map_events on the test events: graph efficiency of the truth edges of pT > 1 GeV particles
(target), of all truth edges, and of pT > 1 GeV truth edges between two pixel modules (volumes 7, 8, 9:
the only pairs a pixel-vocabulary TrackingBERT prior can touch), purity, edges per event, and what the
prior did (pairs proposed, pruned, thresholds); per test event also the counts they pool (`per_event`:
target found / total, pixel-pixel target found / total, edges; one entry per test event, in the order
of `test_events`, for every run). For map_events below the largest, the proposed pairs are also
checked against the map learned from the largest map_events (`proposed_in_reference`: the fraction of
proposals that more events would have shown).

Tables: each trained tracking_bert stage (`tb train` it first) gives (module, tokenizer, detector); its
per-module table is written with save_module_table to --out/module_table[_<scorer>].npz (rows by dense
module index, in_vocab = token != [UNK]) and becomes a scorer: `tb` from --tb-config, `tb_all` from
--tb-all-config (a whole-detector vocabulary), and `tb_<name>` from each --tables tb_<name>=CONFIG. A
control stage (key `source`: random = the same model untrained, shuffled = the pretrained table with
its rows permuted among the modules of each volume; tb_plugin/embedding_sources.py) gives the control's
table, so `tb-none` against `tb_random-none` asks whether the pretrained content matters or any distinct
code per module would do the same. The JSON records each table's config, source and seed (`tables`).

Arms (`--arms`; default: none, mincount2 and DEFAULT_ARMS' priors): `none` (the plain map),
`mincount2` (the plain map without the pairs seen once: the count-only way to prune), and
`<scorer>-<head>[-pixel]-<propose|prune>` with a scorer above or geometry, head none, bilinear or mlp,
`-pixel` restricting the prior to pixel modules (volumes 7, 8, 9; a tb scorer is restricted to its
vocabulary anyway). Propose arms run at each --propose-quantiles value, prune arms at each
--prune-quantiles value; the efficiencies of the propose arms are also compared at equal graph sizes
(--budgets x the plain map's edges per event: each arm's quantile sweep read by linear interpolation
between the two measured points around that size, the plain map being the sweep's zero end).

Paired comparisons (`--compare A:B ...`, A and B arm prefixes whose `-propose` arms run, `none` among
the arms): per map_events, A - B of both efficiencies (pT > 1 GeV; pixel-pixel pT > 1 GeV) at each
budget (both sweeps read at the same edges per event, the interpolation weights from the pooled curve
applied to every event's counts; n/a where a sweep does not reach the budget: no extrapolation) and at
the main propose quantile (the first of --propose-quantiles, with the edges-per-event difference).
Intervals: tb_plugin.ab.statistics.paired_bootstrap over the test events (one seed row; 2,000
replicates, 95 %, bootstrap seed 0), so they cover the choice of test events, not training seeds.

Writes --out/module_map_prior.json (command line, arguments, base config, tables, every run,
`matched`, `comparisons`) and --out/module_map_prior.png; progress goes to stderr, the tables
(markdown) to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from stages.graph_construction.module_map import PAIR_SHIFT, ModuleMap, ModuleMapConfig, save_map  # noqa: E402
from stages.graph_construction.truth import GraphBuilderStage  # noqa: E402
from stages.graph_metrics import GraphEvaluation, target_truth_mask, truth_edge_found  # noqa: E402
from tb_plugin.ab.statistics import paired_bootstrap  # noqa: E402
from tb_plugin.config import build, load_yaml  # noqa: E402
from tb_plugin.event_store import list_event_files, load_event  # noqa: E402
from tb_plugin.geometry import detector_for  # noqa: E402
from tb_plugin.injection import ModuleEmbedding, save_module_table  # noqa: E402
from tb_plugin.pipeline import load_stage  # noqa: E402
from tb_plugin.tokenizer import UNK  # noqa: E402

BASE_CONFIG = REPO / "configs" / "graph_construction" / "module_map.yaml"
PIXEL_VOLUMES = [7, 8, 9]
SCORERS = ("geometry", "tb", "tb_all")  # built in; --tables adds tb_<name>
TABLE_NAME = re.compile(r"tb_[A-Za-z0-9_]+")  # no '-': an arm's parts are split on it
HEADS = ("none", "bilinear", "mlp")
PRIOR_ARMS = ("geometry-none", "geometry-mlp", "geometry-none-pixel", "geometry-mlp-pixel", "tb-none", "tb-mlp")
DEFAULT_ARMS = ["none", "mincount2"] + [f"{arm}-{use}" for arm in PRIOR_ARMS for use in ("propose", "prune")]
# the efficiencies compared: metric key -> per-event count prefix (`<prefix>_found` / `<prefix>_total`)
EFFICIENCIES = {"target_efficiency": "target", "pixel_target_efficiency": "pixel"}
BOOTSTRAP = {"n_boot": 2000, "confidence": 0.95, "seed": 0}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------- arguments


def parse_tables(items: Sequence[str]) -> dict[str, Path]:
    """--tables NAME=CONFIG ...: scorer name -> tracking_bert config. Names must read back out of an arm
    name (`<scorer>-<head>...`, split on '-'), and must not shadow the built-in tb / tb_all scorers."""
    tables: dict[str, Path] = {}
    for item in items:
        name, sep, config = item.partition("=")
        if not sep or not config or not TABLE_NAME.fullmatch(name) or name in tables or name == "tb_all":
            raise SystemExit(
                f"--tables: cannot read {item!r}; expected NAME=CONFIG, NAME tb_ then letters, digits or _ "
                "(no '-'), each NAME once and not tb_all (that is --tb-all-config)"
            )
        tables[name] = Path(config)
    return tables


def parse_arm(arm: str, scorers: Sequence[str] = SCORERS) -> dict[str, Any] | None:
    """`none` / `mincount2` -> None; `<scorer>-<head>[-pixel]-<propose|prune>` -> the arm's parts."""
    if arm in ("none", "mincount2"):
        return None
    parts = arm.split("-")
    use = parts[-1]
    pixel = len(parts) == 4 and parts[2] == "pixel"
    if (
        len(parts) not in (3, 4)
        or parts[0] not in scorers
        or parts[1] not in HEADS
        or use not in ("propose", "prune")
        or (len(parts) == 4 and not pixel)
    ):
        pattern = f"<{'|'.join(scorers)}>-<{'|'.join(HEADS)}>[-pixel]-<propose|prune>"
        raise SystemExit(
            f"--arms: cannot read {arm!r}; expected none, mincount2 or {pattern} (tb_<name>: --tables tb_<name>=CONFIG)"
        )
    return {"scorer": parts[0], "head": parts[1], "pixel": pixel, "use": use}


def parse_compare(items: Sequence[str], arms: Sequence[str]) -> list[tuple[str, str]]:
    """--compare A:B ...: pairs of arm prefixes whose propose arms run; checked before hours of runs."""
    pairs = []
    for item in items:
        a, sep, b = item.partition(":")
        missing = [f"{x}-propose" for x in (a, b) if f"{x}-propose" not in arms]
        if not sep or not a or not b or missing:
            raise SystemExit(
                f"--compare: cannot read {item!r}; expected A:B with A-propose and B-propose in --arms"
                + (f" ({', '.join(missing)} not there)" if sep and a and b else "")
            )
        pairs.append((a, b))
    if pairs and "none" not in arms:
        raise SystemExit("--compare needs the arm none in --arms: the plain map is the zero end of every sweep")
    return pairs


def add_prior_options(parser: argparse.ArgumentParser) -> None:
    """The options of the priors and of how their runs are compared."""
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
    parser.add_argument(
        "--compare",
        nargs="+",
        default=[],
        metavar="A:B",
        help="paired A - B of propose arms (prefixes without -propose, e.g. tb-none:tb_random-none), with intervals",
    )


def parse_args() -> argparse.Namespace:
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
    parser.add_argument(
        "--tables",
        nargs="+",
        default=[],
        metavar="NAME=CONFIG",
        help="more trained tracking_bert stages (controls: source random / shuffled), scorer NAME (tb_...)",
    )
    parser.add_argument("--map-events", type=int, nargs="+", default=[5, 20, 90, 360])
    parser.add_argument("--test-events", type=int, default=20)
    add_prior_options(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "prior_bench")
    return parser.parse_args()


# ------------------------------------------------------------------------------------- tables


def write_table(config_path: Path, out: Path) -> dict[str, Any]:
    """The trained tracking_bert stage's per-module table, written with save_module_table; for a control
    config (source random / shuffled) stage.trained() gives the control model, hence the control's table.
    The record keeps the config, source and seed: a table without them cannot be told from another."""
    stage = load_stage(config_path)
    module, tokenizer, detector = stage.trained()
    table = ModuleEmbedding.from_token_embeddings(module.model.module_embeddings(), tokenizer).table  # [M, D]
    in_vocab = tokenizer.module_to_token != UNK
    save_module_table(out, table, in_vocab, detector)
    log(f"module table {tuple(table.shape)} ({int(in_vocab.sum()):,} modules in the vocabulary) -> {out}")
    pretrained_dir = getattr(stage.config, "pretrained_dir", None)
    return {
        "tb_config": str(config_path),
        "source": str(getattr(stage.config, "source", "pretrained")),
        "seed": getattr(stage.config, "seed", None),
        "pretrained_dir": None if pretrained_dir is None else str(pretrained_dir),
        "config": load_yaml(config_path),
        "table": str(out),
        "modules": int(table.shape[0]),
        "dim": int(table.shape[1]),
        "in_vocab": int(in_vocab.sum()),
    }


def write_tables(
    args: argparse.Namespace, arms: dict[str, dict[str, Any] | None], extra: dict[str, Path]
) -> tuple[dict[str, Path], dict[str, Any]]:
    """The table of every tb scorer the arms use: scorer -> npz path, and scorer -> its record."""
    configs: dict[str, Path | None] = {"tb": args.tb_config, "tb_all": args.tb_all_config, **extra}
    tables: dict[str, Path] = {}
    info: dict[str, Any] = {}
    needed = {a["scorer"] for a in arms.values() if a is not None} - {"geometry"}
    for scorer in sorted(needed):
        config = configs[scorer]
        if config is None:
            raise SystemExit(f"--arms asks for {scorer} arms: give --tb-all-config")
        tables[scorer] = args.out / ("module_table.npz" if scorer == "tb" else f"module_table_{scorer}.npz")
        info[scorer] = write_table(config, tables[scorer])
    return tables, info


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


# ------------------------------------------------------------------------------------- runs


def load_map(stage: ModuleMap, arrays: dict[str, np.ndarray]) -> None:
    """Give the stage its map as `tb infer` does: written with save_map, read back by prepare_inference
    (which selects min_count, orders the pairs and puts pairs and windows on the device; build_edges
    reads those, not stage.table), then removed, since the 200 maps of a full run would be 1.3 GB."""
    save_map(stage.map_file, arrays)
    try:
        stage.prepare_inference()
    finally:
        stage.map_file.unlink()
        for folder in stage.map_file.parents[:3]:  # artifacts/, the run's stage_dir, maps/ (when empty)
            with contextlib.suppress(OSError):
                folder.rmdir()


def evaluate(
    stage: ModuleMap, events: list[tuple[Path, Any]], pixel: np.ndarray, target_tracks: dict
) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """Graph metrics of the test events (built in memory with the stage's map), plus the pixel-pixel
    pT > 1 GeV efficiency; and per event the counts those pool, which the paired bootstrap resamples."""
    evaluation = GraphEvaluation(target_tracks)
    per_event: dict[str, list[int]] = {
        k: [] for k in ("target_found", "target_total", "pixel_found", "pixel_total", "edges")
    }
    started = time.perf_counter()
    for path, data in events:
        data = GraphBuilderStage.add_graph(data, stage.build_edges(data, path), path)
        evaluation.add(data, str(path))
        module = data.hit_module_index.numpy()
        truth = data.track_edges.numpy()
        on_pixel = pixel[module[truth[0]]] & pixel[module[truth[1]]]
        target = target_truth_mask(data, target_tracks, str(path)).numpy()
        found = truth_edge_found(data.track_to_edge_map)
        for prefix, mask in (("target", target), ("pixel", target & on_pixel)):
            per_event[f"{prefix}_total"].append(int(mask.sum()))
            per_event[f"{prefix}_found"].append(int((found & mask).sum()))
        per_event["edges"].append(int(data.edge_index.shape[1]))
    metrics = evaluation.metrics()
    keep = ("target_efficiency", "efficiency", "purity", "edges_per_event", "n_target_truth_edges", "n_target_found")
    out = {k: metrics[k] for k in keep}
    pixel_true, pixel_found = sum(per_event["pixel_total"]), sum(per_event["pixel_found"])
    out["pixel_target_efficiency"] = pixel_found / pixel_true if pixel_true else None
    out["pixel_target_truth_edges"] = pixel_true
    out["build_seconds_per_event"] = (time.perf_counter() - started) / max(len(events), 1)
    return out, per_event


def learn_map(base: dict[str, Any], n: int, args: argparse.Namespace) -> tuple[dict[str, np.ndarray], float]:
    """The map's arrays learned from the first n training events, once per map_events for every arm."""
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
    seconds = time.perf_counter() - t0
    log(f"map_events {n}: {len(learned['pairs']):,} module pairs learned from {len(files)} events in {seconds:.1f} s")
    return learned, seconds


def run_arm(
    setting: tuple[str, dict[str, Any] | None, float | None],
    n: int,
    learned: dict[str, np.ndarray],
    context: dict[str, Any],
) -> dict[str, Any]:
    """One arm at one quantile and map_events: its prior on the learned map, the test graphs, the record."""
    name, arm, quantile = setting
    args = context["args"]
    values = {**context["base"], "map_events": n, "stage_dir": str(args.out / "maps" / f"{name}_{quantile}_{n}")}
    if arm is not None:
        values["prior"] = prior_keys(arm, quantile, args, context["tables"])
    if name == "mincount2":  # the count-only reference for pruning: every pair seen once goes
        values["min_count"] = 2
    stage = ModuleMap(build(ModuleMapConfig, values, f"{name} q {quantile} (map_events {n})"))
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the prior's one-line summary goes with the progress
        arrays = stage.with_prior(learned)
    prior_seconds = time.perf_counter() - t0
    load_map(stage, arrays)
    metrics, per_event = evaluate(stage, context["events"], context["pixel"], stage.config.target_tracks)
    record = json.loads(str(arrays["prior"])) if "prior" in arrays else None
    in_reference = None
    if record is not None and record["proposed"] and context["reference"] is not None:
        proposed = arrays["pairs"][arrays["proposed"]]
        in_reference = float(np.isin(proposed[:, 0] * PAIR_SHIFT + proposed[:, 1], context["reference"]).mean())
    return {
        "arm": name,
        "quantile": quantile,
        "main": arm is None or quantile == context["main"][arm["use"]],
        "map_events": n,
        "prior_keys": values.get("prior"),
        "prior": record,
        "pairs": len(stage.table.pairs),
        "proposed_in_reference": in_reference,
        "prior_seconds": prior_seconds,
        "metrics": metrics,
        "per_event": per_event,
    }


def run_all(args: argparse.Namespace, settings: list[tuple[str, Any, Any]], context: dict[str, Any]) -> list[dict]:
    """Every setting at every map_events; the largest map_events first, as the others' reference map."""
    runs: list[dict[str, Any]] = []
    largest = max(args.map_events)
    reference: np.ndarray | None = None
    for n in sorted(args.map_events, reverse=True):
        learned, learn_seconds = learn_map(context["base"], n, args)
        if n == largest:
            reference = learned["pairs"][:, 0] * PAIR_SHIFT + learned["pairs"][:, 1]
        context["reference"] = None if n == largest else reference
        for setting in settings:
            run = run_arm(setting, n, learned, context)
            run["learn_seconds"] = learn_seconds
            runs.append(run)
            m, shown = run["metrics"], "-" if run["quantile"] is None else f"{run['quantile']:g}"
            log(
                f"  {run['arm']:28s} q {shown:<5} pairs {run['pairs']:>8,}  eff pT>1 {fmt(m['target_efficiency'])}  "
                f"pixel {fmt(m['pixel_target_efficiency'])}  all {fmt(m['efficiency'])}  "
                f"edges/event {m['edges_per_event']:,.0f}  prior {run['prior_seconds']:.1f} s"
            )
    return runs


# ------------------------------------------------------------------------------------- equal graph size


def sweep(runs: list[dict[str, Any]], arm: str, n: int) -> list[dict[str, Any]] | None:
    """The arm's quantile sweep at map_events n, by pooled edges per event, with the plain map as its
    zero-proposal end; None without a plain map."""
    plain = next((r for r in runs if r["arm"] == "none" and r["map_events"] == n), None)
    if plain is None:
        return None
    points = [plain] + [r for r in runs if r["arm"] == arm and r["map_events"] == n]
    return sorted(points, key=lambda r: r["metrics"]["edges_per_event"])


def bracket(points: list[dict[str, Any]], size: float) -> list[tuple[dict[str, Any], float]] | None:
    """The sweep points around `size` edges per event with their linear-interpolation weights (as
    np.interp on the pooled curve); None outside the sweep: reading past its ends would be a guess."""
    edges = np.array([p["metrics"]["edges_per_event"] for p in points], dtype=np.float64)
    if not edges.min() <= size <= edges.max():
        return None
    j = int(np.searchsorted(edges, size, side="left"))
    if edges[j] == size:
        return [(points[j], 1.0)]
    w = float((size - edges[j - 1]) / (edges[j] - edges[j - 1]))
    return [(points[j - 1], 1.0 - w), (points[j], w)]


def interpolated(weights: list[tuple[dict[str, Any], float]] | None, key: str) -> float | None:
    """A pooled metric at the bracketed size; None outside the sweep or where a point lacks the value."""
    if weights is None or any(p["metrics"][key] is None for p, _ in weights):
        return None
    return float(sum(w * p["metrics"][key] for p, w in weights))


def matched_edges(runs: list[dict[str, Any]], budgets: list[float]) -> list[dict[str, Any]]:
    """Per map_events and propose arm: the efficiencies at edges per event = budget x the plain map's,
    interpolated linearly along the arm's quantile sweep (the plain map is its zero-proposal end);
    None where the sweep does not reach that size."""
    out = []
    for n in sorted({r["map_events"] for r in runs}):
        for arm in dict.fromkeys(r["arm"] for r in runs if r["arm"].endswith("-propose")):
            points = sweep(runs, arm, n)
            if points is None:
                continue
            plain = next(p for p in points if p["arm"] == "none")
            row: dict[str, Any] = {
                "arm": arm,
                "map_events": n,
                "plain_edges_per_event": plain["metrics"]["edges_per_event"],
            }
            for budget in budgets:
                weights = bracket(points, budget * plain["metrics"]["edges_per_event"])
                for key in EFFICIENCIES:
                    row[f"{key}@{budget:g}"] = interpolated(weights, key)
            out.append(row)
    return out


# ------------------------------------------------------------------------------------- paired comparisons


def event_counts(weights: list[tuple[dict[str, Any], float]], name: str) -> np.ndarray:
    """[1, E] one per-event count of the sweep at the bracketed size: each event's counts weighted as the
    pooled curve's points are, so the pooled ratio of the result is the interpolated efficiency."""
    total = sum(w * np.asarray(p["per_event"][name], dtype=np.float64) for p, w in weights)
    return np.asarray(total, dtype=np.float64)[None, :]


def paired(
    a: list[tuple[dict[str, Any], float]], b: list[tuple[dict[str, Any], float]], num: str, den: str | None
) -> dict[str, Any]:
    """A - B of pooled num / den over the test events with its paired bootstrap interval (A is the `arm`,
    B the `control` of paired_bootstrap); den None: the mean of num per event."""
    a_num, b_num = event_counts(a, num), event_counts(b, num)
    a_den = np.ones_like(a_num) if den is None else event_counts(a, den)
    b_den = np.ones_like(b_num) if den is None else event_counts(b, den)
    return paired_bootstrap(b_num, b_den, a_num, a_den, **BOOTSTRAP).as_dict()


def efficiency_differences(
    a: list[tuple[dict[str, Any], float]] | None, b: list[tuple[dict[str, Any], float]] | None
) -> dict[str, Any]:
    """Both efficiencies' A - B (None each where either sweep misses the size)."""
    return {
        key: None if a is None or b is None else paired(a, b, f"{prefix}_found", f"{prefix}_total")
        for key, prefix in EFFICIENCIES.items()
    }


def point_list(weights: list[tuple[dict[str, Any], float]] | None) -> list[list[Any]] | None:
    """[[quantile (None: the plain map), weight], ...]: which measured runs a value is read from."""
    return None if weights is None else [[p["quantile"], w] for p, w in weights]


def comparison_rows(
    runs: list[dict[str, Any]], pair: tuple[str, str], n: int, budgets: list[float], main: float
) -> list[dict[str, Any]]:
    """The rows of one A:B at one map_events: one per budget (same graph size), one at the main quantile."""
    arm_a, arm_b = f"{pair[0]}-propose", f"{pair[1]}-propose"
    common = {"a": pair[0], "b": pair[1], "arm_a": arm_a, "arm_b": arm_b, "map_events": n}
    sweep_a, sweep_b = sweep(runs, arm_a, n), sweep(runs, arm_b, n)
    plain_edges = next(r for r in runs if r["arm"] == "none" and r["map_events"] == n)["metrics"]["edges_per_event"]
    rows = []
    for budget in budgets:
        size = budget * plain_edges
        a, b = bracket(sweep_a, size), bracket(sweep_b, size)
        rows.append(
            {**common, "at": "budget", "budget": budget, "quantile": None, "edges_per_event": size}
            | {"points_a": point_list(a), "points_b": point_list(b), "edges": None}
            | efficiency_differences(a, b)
        )
    run_a = next(r for r in runs if r["arm"] == arm_a and r["map_events"] == n and r["quantile"] == main)
    run_b = next(r for r in runs if r["arm"] == arm_b and r["map_events"] == n and r["quantile"] == main)
    a, b = [(run_a, 1.0)], [(run_b, 1.0)]
    rows.append(
        {**common, "at": "quantile", "budget": None, "quantile": main, "edges_per_event": None}
        | {"points_a": point_list(a), "points_b": point_list(b), "edges": paired(a, b, "edges", None)}
        | efficiency_differences(a, b)
    )
    return rows


def comparisons(
    runs: list[dict[str, Any]], pairs: list[tuple[str, str]], budgets: list[float], main: float
) -> dict[str, Any]:
    """Every A:B at every map_events, with the bootstrap's settings (JSON `comparisons`)."""
    rows = [
        row
        for pair in pairs
        for n in sorted({r["map_events"] for r in runs})
        for row in comparison_rows(runs, pair, n, budgets, main)
    ]
    return {"bootstrap": {**BOOTSTRAP, "unit": "test event", "seeds": 1}, "rows": rows}


# ------------------------------------------------------------------------------------- report


def fmt(x: float | None, spec: str = ".4f") -> str:
    return "n/a" if x is None else format(x, spec)


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
            f"{'' if ref is None else f'{ref:.3f}'} | {fmt(m['target_efficiency'])} | {fmt(m['pixel_target_efficiency'])} | "
            f"{fmt(m['efficiency'])} | {fmt(m['purity'])} | {m['edges_per_event']:,.0f} |"
        )
    return lines


def matched_lines(rows: list[dict[str, Any]], budgets: list[float]) -> list[str]:
    head = " | ".join(f"x{b:g}: eff. / pixel eff." for b in budgets)
    lines = [f"| arm | map_events | plain edges / event | {head} |", "| --- | ---: | ---: |" + " ---: |" * len(budgets)]
    for r in rows:
        cells = " | ".join(
            f"{fmt(r[f'target_efficiency@{b:g}'])} / {fmt(r[f'pixel_target_efficiency@{b:g}'])}" for b in budgets
        )
        lines.append(f"| {r['arm']} | {r['map_events']} | {r['plain_edges_per_event']:,.0f} | {cells} |")
    return lines


def difference_cells(d: dict[str, Any] | None, spec: str = ".4f", signed: str = "+.4f") -> tuple[str, str]:
    """'A / B' and 'A - B [low, high]' (* when the interval excludes 0) of one paired difference."""
    if d is None:
        return "n/a", "n/a"
    values = f"{fmt(d['arm_value'], spec)} / {fmt(d['control_value'], spec)}"
    star = " *" if d["significant"] else ""
    return values, f"{fmt(d['estimate'], signed)} [{fmt(d['ci_low'], signed)}, {fmt(d['ci_high'], signed)}]{star}"


def comparison_lines(result: dict[str, Any]) -> list[str]:
    boot = result["bootstrap"]
    lines = [
        f"Paired A - B over the test events ({boot['confidence']:.0%} bootstrap interval, {boot['n_boot']:,} "
        f"replicates, seed {boot['seed']}; *: the interval excludes 0). x<budget>: both sweeps read at budget x "
        "the plain map's edges per event; q: the main propose quantile.",
        "",
        "| A vs B | map_events | at | edges / event A / B | edges A - B | eff. pT > 1 GeV A / B | A - B "
        "| eff. pixel pT > 1 GeV A / B | A - B |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        if r["at"] == "budget":
            at, edges = f"x{r['budget']:g}", (f"{r['edges_per_event']:,.0f} (matched)", "")
        else:
            at, edges = f"q {r['quantile']:g}", difference_cells(r["edges"], ",.0f", "+,.0f")
        eff = difference_cells(r["target_efficiency"])
        pixel = difference_cells(r["pixel_target_efficiency"])
        lines.append(
            f"| {r['a']} vs {r['b']} | {r['map_events']} | {at} | {edges[0]} | {edges[1]} | {eff[0]} | {eff[1]} "
            f"| {pixel[0]} | {pixel[1]} |"
        )
    return lines


def report(result: dict[str, Any], args: argparse.Namespace, pairs: list[tuple[str, str]]) -> None:
    """JSON (written before the plot, so a plot failure costs no numbers), plot, and the stdout tables."""
    runs = result["runs"]
    json_path, png_path = args.out / "module_map_prior.json", args.out / "module_map_prior.png"
    result["matched"] = matched_edges(runs, args.budgets)
    result["comparisons"] = comparisons(runs, pairs, args.budgets, args.propose_quantiles[0])
    json_path.write_text(json.dumps(result, indent=1, default=float))
    plot(runs, png_path)
    print("\n".join(table_lines([r for r in runs if r["main"]])))
    print()
    print("\n".join(table_lines([r for r in runs if not r["main"]])))
    print()
    print("\n".join(matched_lines(result["matched"], args.budgets)))
    if pairs:
        print()
        print("\n".join(comparison_lines(result["comparisons"])))
    log(f"{result['seconds']:.0f} s; wrote {json_path} and {png_path}")


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
    colours: dict[str, str] = {}
    for arm in arms:
        colours.setdefault(family(arm), "black" if arm == "none" else f"C{len(colours)}")
    for ax, (key, title) in zip(axes[0], panels):
        for arm in arms:
            rows = sorted((r for r in runs if r["arm"] == arm and r["main"]), key=lambda r: r["map_events"])
            x, y = [r["map_events"] for r in rows], [r["metrics"][key] for r in rows]
            ax.plot(
                x,
                y,
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
        plot_sweeps(ax, runs, arms, n, colours)
    for ax in list(axes[0][len(panels) :]) + list(axes[1][len(map_events) :]):
        ax.axis("off")
    fig.suptitle("ModuleMap pair prior (solid: propose, dashed: prune; row 1 at the main quantiles)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def family(arm: str) -> str:
    """An arm's colour key: its name without -propose / -prune, so both uses of a prior share a colour."""
    return arm.rsplit("-", 1)[0] if arm != "none" else "none"


def style(arm: str) -> str:
    return "-" if arm == "none" or arm.endswith("propose") else "--"


def plot_sweeps(ax: Any, runs: list[dict[str, Any]], arms: list[str], n: int, colours: dict[str, str]) -> None:
    """One map_events' panel: pT > 1 GeV efficiency against edges per event, every arm's quantile sweep."""
    for arm in arms:
        rows = sorted(
            (r for r in runs if r["arm"] == arm and r["map_events"] == n), key=lambda r: r["metrics"]["edges_per_event"]
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


# ------------------------------------------------------------------------------------- main


def settings_of(arms: dict[str, dict[str, Any] | None], args: argparse.Namespace) -> list[tuple[str, Any, Any]]:
    """(arm name, parts, quantile) of every run at one map_events: a prior arm once per its quantiles."""
    return [
        (name, arm, q)
        for name, arm in arms.items()
        for q in (
            [None] if arm is None else args.propose_quantiles if arm["use"] == "propose" else args.prune_quantiles
        )
    ]


def shared_context(args: argparse.Namespace) -> dict[str, Any]:
    """What every run shares: the base map keys, the pixel mask and the test events (loaded once)."""
    base = load_yaml(args.base_config)
    base.update(input_dir=str(args.store), seed=args.seed)
    base.pop("trained_stage_dir", None)  # each run's map is written to (and removed from) its own stage_dir
    pixel = detector_for(args.store).volume_mask(PIXEL_VOLUMES)
    test_files = list_event_files(args.store, "testset")[: args.test_events]
    events = [(path, load_event(path)) for path in test_files]
    log(f"{len(events)} test events loaded from {args.store / 'testset'}")
    return {"base": base, "pixel": pixel, "events": events}


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    extra = parse_tables(args.tables)
    arms = {arm: parse_arm(arm, (*SCORERS, *extra)) for arm in args.arms}
    pairs = parse_compare(args.compare, list(arms))
    args.out.mkdir(parents=True, exist_ok=True)
    tables, table_info = write_tables(args, arms, extra)
    context = shared_context(args)
    context.update(
        args=args,
        tables=tables,
        main={None: None, "propose": args.propose_quantiles[0], "prune": args.prune_quantiles[0]},
    )
    runs = run_all(args, settings_of(arms, args), context)
    runs.sort(
        key=lambda r: (list(arms).index(r["arm"]), r["quantile"] if r["quantile"] is not None else 0, r["map_events"])
    )
    result = {
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "argv": sys.argv,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "base_config": context["base"],
        "tables": table_info,
        "test_events": [str(p) for p, _ in context["events"]],
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "seconds": time.perf_counter() - started,
        "runs": runs,
    }
    report(result, args, pairs)


if __name__ == "__main__":
    main()
