"""benchmarks/module_map_prior.py end to end on a tiny simulated store: control tables as scorers, per-event
counts and the paired comparisons at equal graph size. The tables are untrained (source: random), so no
pretraining runs: the benchmark's plumbing is what is tested, not the prior's quality."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import load_benchmark, simulated_feature_store

TB_TINY = {
    "stage": "tracking_bert",
    "model": "TrackingBERT",
    "volumes": [7, 8, 9],
    "n_layer": 1,
    "n_embd": 8,
    "n_head": 2,
    "d_ff": 16,
    "accelerator": "cpu",
    "source": "random",
}


def random_table_config(root: Path, store: Path, name: str, seed: int) -> Path:
    """A tracking_bert stage of source random (its checkpoint: the seeded initialisation), trained."""
    from tb_plugin.pipeline import load_stage

    path = root / f"{name}.yaml"
    values = {**TB_TINY, "input_dir": str(store), "stage_dir": str(root / name), "seed": seed}
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    load_stage(path).train()
    return path


@pytest.fixture(scope="module")
def benchmark_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    root = tmp_path_factory.mktemp("prior_bench")
    store = simulated_feature_store(root, n_events=4, pileup=3, seed=5, data_split=[2, 0, 2])
    tb = random_table_config(root, store, "tb_seed0", 0)
    same = random_table_config(root, store, "tb_seed0_again", 0)  # same source and seed: the same table
    other = random_table_config(root, store, "tb_seed1", 1)
    argv = [
        "module_map_prior.py",
        *("--store", str(store), "--tb-config", str(tb), "--out", str(root / "out")),
        *("--tables", f"tb_same={same}", f"tb_other={other}"),
        *("--map-events", "2", "--test-events", "2", "--propose-quantiles", "0.5", "0.25", "--budgets", "1.1", "50"),
        *("--arms", "none", "tb-none-propose", "tb_same-none-propose", "tb_other-none-propose"),
        *("--compare", "tb-none:tb_same-none", "tb-none:tb_other-none"),
    ]
    module = load_benchmark("module_map_prior")
    old = sys.argv
    sys.argv = argv
    try:
        module.main()
    finally:
        sys.argv = old
    return json.loads((root / "out" / "module_map_prior.json").read_text()), str(root)


def test_comparisons_have_intervals_and_a_table_against_itself_differs_by_exactly_zero(
    benchmark_run: tuple[dict, str],
) -> None:
    result, _ = benchmark_run
    assert {k: (t["source"], t["seed"]) for k, t in result["tables"].items()} == {
        "tb": ("random", 0),
        "tb_same": ("random", 0),
        "tb_other": ("random", 1),
    }
    for run in result["runs"]:  # per-event counts, one per test event, pooling to the run's metrics
        counts = run["per_event"]
        assert all(len(v) == 2 for v in counts.values())
        assert sum(counts["target_found"]) == run["metrics"]["n_target_found"]
    rows = result["comparisons"]["rows"]
    assert [(r["b"], r["at"], r["budget"]) for r in rows] == [
        (b, at, budget)
        for b in ("tb_same-none", "tb_other-none")
        for at, budget in (("budget", 1.1), ("budget", 50.0), ("quantile", None))
    ]
    for row in rows:
        if row["budget"] == 50.0:  # past the end of every sweep: no extrapolation
            assert row["target_efficiency"] is None and row["points_a"] is None
            continue
        for key in ("target_efficiency", "pixel_target_efficiency"):
            d = row[key]
            assert d["n_events"] == 2 and d["ci_low"] <= d["estimate"] <= d["ci_high"]
            if row["b"] == "tb_same-none":
                assert d["estimate"] == d["ci_low"] == d["ci_high"] == 0.0
        if row["at"] == "quantile" and row["b"] == "tb_same-none":
            assert row["edges"]["estimate"] == 0.0


def test_bad_table_names_are_refused_with_the_option_named() -> None:
    module = load_benchmark("module_map_prior")
    for item in ("tb-x=a.yaml", "random=a.yaml", "tb_all=a.yaml", "tb_x"):
        with pytest.raises(SystemExit, match="--tables"):
            module.parse_tables([item])
    with pytest.raises(SystemExit, match="--compare"):
        module.parse_compare(["tb-none:tb_x-none"], ["none", "tb-none-propose"])
