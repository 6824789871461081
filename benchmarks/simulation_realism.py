"""How close is a simulated pile-up-200 event to the real TrackML files?

Compares simulated events with the real files in a TrackML folder (default ../shared/trackml beside
the checkout): hits per volume, distinct modules hit, noise fraction, particle nhits, pT and |eta|
quantiles, charge fraction and particles per event; and replays the kinematics of a real particles
file (event 1001 by default) particle by particle, comparing simulated nhits with the file's column.

    .venv/bin/python benchmarks/simulation_realism.py [--real DIR] [--events 4] [--out runs/benchmarks]

Prints a table and writes ``simulation_realism.json`` and PNG plots into --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tb_plugin import trackml  # noqa: E402
from tb_plugin.geometry import Detector  # noqa: E402
from tb_plugin.simulation import SimulationConfig, simulate_event  # noqa: E402
from tb_plugin.simulation.field import TRACKML_HALF_FIELD_Z_MM  # noqa: E402
from tb_plugin.simulation.kinematics import unpack_particle_id  # noqa: E402

VOLUMES = (7, 8, 9, 12, 13, 14, 16, 17, 18)
PT_QUANTILES = (0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.99)
ETA_QUANTILES = (0.10, 0.25, 0.50, 0.75, 0.90, 0.99)
NHITS_QUANTILES = (0.10, 0.25, 0.50, 0.75, 0.90, 0.99)
DISPLACEMENT_Z_BINS = (0, 600, 1100, 1600, 2200, 3100)  # mm
DISPLACEMENT_R_BINS = (0, 200, 500, 750, 1100)  # mm


def particle_summary(particles: list[pd.DataFrame]) -> dict[str, object]:
    """Spectra over all given particles frames, and per-event counts."""
    frame = pd.concat(particles, ignore_index=True)
    pt = np.hypot(frame["px"], frame["py"]).to_numpy()
    eta = np.abs(np.arcsinh(frame["pz"].to_numpy() / pt))
    radius = np.hypot(frame["vx"], frame["vy"]).to_numpy()
    return {
        "particles_per_event": float(np.mean([len(p) for p in particles])),
        "particles_per_event_sd": float(np.std([len(p) for p in particles])),
        "pt_quantiles": [round(float(v), 3) for v in np.quantile(pt, PT_QUANTILES)],
        "abs_eta_quantiles": [round(float(v), 2) for v in np.quantile(eta, ETA_QUANTILES)],
        "positive_fraction": round(float((frame["q"] > 0).mean()), 3),
        "vertex_beyond_10mm_fraction": round(float((radius > 10).mean()), 3),
        "nhits_quantiles": [float(v) for v in np.quantile(frame["nhits"], NHITS_QUANTILES)],
        "no_hit_fraction": round(float((frame["nhits"] == 0).mean()), 3),
        "secondary_no_hit_fraction": secondary_no_hit_fraction(frame),
        "particle_hits_per_event": float(np.mean([p["nhits"].sum() for p in particles])),
        "particle_hits_per_event_range": [
            int(min(p["nhits"].sum() for p in particles)),
            int(max(p["nhits"].sum() for p in particles)),
        ],
        "particles_per_event_range": [int(min(len(p) for p in particles)), int(max(len(p) for p in particles))],
    }


def secondary_no_hit_fraction(frame: pd.DataFrame) -> float:
    """Share of the secondaries (generation > 0) above 0.15 GeV with no hit: the traced ones."""
    generation = unpack_particle_id(frame["particle_id"].to_numpy())["generation"]
    traced = (generation > 0) & (np.hypot(frame["px"], frame["py"]).to_numpy() > 0.15)
    return round(float((frame["nhits"].to_numpy()[traced] == 0).mean()), 3)


def hit_summary(hits: pd.DataFrame, n_signal: int, n_particles: int) -> dict[str, object]:
    per_volume = hits.groupby("volume_id").size().reindex(VOLUMES, fill_value=0)
    return {
        "hits": int(len(hits)),
        "hits_per_volume": {int(v): int(n) for v, n in per_volume.items()},
        "hits_per_1000_particles": round(1000.0 * len(hits) / max(n_particles, 1), 1),
        "distinct_modules": int(hits.groupby(["volume_id", "layer_id", "module_id"]).ngroups),
        "noise_fraction": round(1.0 - n_signal / max(len(hits), 1), 3),
    }


def layer_table(replayed: dict[str, pd.DataFrame], real_hits: pd.DataFrame, detector: Detector) -> pd.DataFrame:
    """Hits per (volume, layer): the real event against the replay of its particles.

    Both sides count every hit, noise included, so they compare like with like: the real files have
    no truth, so their noise cannot be removed. The replay's own split into signal (hits of listed
    particles) and noise is shown beside, with the modules per layer that the noise is spread over.
    """
    key = ["volume_id", "layer_id"]
    is_signal = replayed["truth"]["particle_id"].to_numpy() != 0
    sim = replayed["hits"]
    modules = pd.DataFrame({"volume_id": detector.volume_id, "layer_id": detector.layer_id}).groupby(key).size()
    table = pd.DataFrame(
        {
            "modules": modules,
            "real": real_hits.groupby(key).size(),
            "replayed": sim.groupby(key).size(),
            "replayed_signal": sim[is_signal].groupby(key).size(),
        }
    ).fillna(0)
    table = table.astype(np.int64)
    table["replayed_noise"] = table["replayed"] - table["replayed_signal"]
    table["ratio"] = (table["replayed"] / table["real"].clip(lower=1)).round(3)
    return table


def plot_layers(out: Path, table: pd.DataFrame) -> Path:
    """Hits per (volume, layer), real against replayed, and their ratio underneath."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 6), sharex=True, height_ratios=(2, 1))
    x = np.arange(len(table))
    top.bar(x - 0.2, table["real"], 0.4, label="real event")
    top.bar(x + 0.2, table["replayed"], 0.4, label="replay of its particles (with noise)")
    top.bar(x + 0.2, table["replayed_noise"], 0.4, label="of which noise", color="grey")
    top.set(ylabel="hits", title="hits per (volume, layer)")
    top.legend()
    bottom.axhline(1.0, color="black", lw=0.8)
    bottom.plot(x, table["ratio"], "o")
    low, high = min(0.8, table["ratio"].min() - 0.05), max(1.2, table["ratio"].max() + 0.05)
    bottom.set(ylabel="replayed / real", ylim=(low, high))
    bottom.set_xticks(x, [f"{v}:{layer}" for v, layer in table.index], rotation=90, fontsize=7)
    bottom.set_xlabel("volume_id:layer_id")
    path = out / "simulation_hits_per_layer.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def replay_comparison(simulated: pd.Series, real: pd.Series) -> dict[str, float]:
    diff = simulated.to_numpy() - real.to_numpy()
    return {
        "fraction_equal": round(float(np.mean(diff == 0)), 3),
        "fraction_within_1": round(float(np.mean(np.abs(diff) <= 1)), 3),
        "fraction_within_2": round(float(np.mean(np.abs(diff) <= 2)), 3),
        "mean_difference": round(float(np.mean(diff)), 3),
        "correlation": round(float(np.corrcoef(simulated, real)[0, 1]), 3),
    }


def plot(
    out: Path,
    sim_particles: list[pd.DataFrame],
    real_particles: list[pd.DataFrame],
    sim_hits: dict[str, object],
    real_hits: dict[str, object],
    replay: pd.DataFrame,
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sim = pd.concat(sim_particles, ignore_index=True)
    real = pd.concat(real_particles, ignore_index=True)
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.geomspace(0.1, 100, 60)
    labelled = ((real, f"real ({len(real_particles)} events)"), (sim, f"simulated ({len(sim_particles)} events)"))
    for frame, label in labelled:
        pt = np.hypot(frame["px"], frame["py"])
        ax.hist(pt, bins=bins, histtype="step", density=True, label=label)
    ax.set(xscale="log", yscale="log", xlabel="pT [GeV]", ylabel="density", title="particle pT at PU200")
    ax.legend()
    paths.append(out / "simulation_pt.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    bins = np.arange(-0.5, 26.5)
    for frame, label in ((real, "real"), (sim, "simulated")):
        axes[0].hist(frame["nhits"], bins=bins, histtype="step", density=True, label=label)
    axes[0].set(xlabel="nhits per particle", ylabel="fraction", title="nhits, PU200 events")
    axes[0].legend()
    axes[1].hist(replay["real"], bins=bins, histtype="step", label="real file")
    axes[1].hist(replay["simulated"], bins=bins, histtype="step", label="replayed")
    axes[1].set(xlabel="nhits per particle", title="replay of the real particles")
    axes[1].legend()
    paths.append(out / "simulation_nhits.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(VOLUMES))
    ax.bar(x - 0.2, [real_hits["hits_per_volume"][v] for v in VOLUMES], 0.4, label="real event")
    ax.bar(x + 0.2, [sim_hits["hits_per_volume"][v] for v in VOLUMES], 0.4, label="replay of its particles")
    ax.set_xticks(x, [str(v) for v in VOLUMES])
    ax.set(xlabel="volume_id", ylabel="hits", title="hits per volume")
    ax.legend()
    paths.append(out / "simulation_hits_per_volume.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)
    return paths


def field_displacement(
    replayed: dict[str, pd.DataFrame], source: pd.DataFrame, real_hits: pd.DataFrame, detector: Detector
) -> pd.DataFrame:
    """Where the real hits of fast prompt particles lie from the replayed ones, by (|z|, r).

    For every replayed hit of a prompt particle above 1 GeV, the nearest real hit on the same module
    (within 60 mm); the charge-signed r * dphi from the replayed hit to it, in mm, is positive where
    the real track bent less. Medians per bin: in a field that matched the real one they would be 0
    everywhere (the real files have no truth, so a few wrong pairings blur them but shift no median).
    """
    from scipy.spatial import cKDTree

    def keyed(frame: pd.DataFrame) -> np.ndarray:
        module = detector.index(frame["volume_id"], frame["layer_id"], frame["module_id"])
        return np.c_[frame[["x", "y", "z"]].to_numpy(np.float64), module * 1e7]  # other modules far away

    fields = unpack_particle_id(source["particle_id"].to_numpy())
    fast = (
        (fields["generation"] == 0)
        & (np.hypot(source["px"], source["py"]) > 1.0)
        & (np.hypot(source["vx"], source["vy"]) < 1.0)
    )
    charge = pd.Series(source["q"].to_numpy(), index=source["particle_id"])
    hits = replayed["hits"].merge(replayed["truth"][["hit_id", "particle_id"]], on="hit_id")
    hits = hits[hits["particle_id"].isin(source["particle_id"][fast])]
    distance, nearest = cKDTree(keyed(real_hits)).query(keyed(hits))
    paired = distance < 60.0
    hits, nearest = hits[paired], nearest[paired]
    r = np.hypot(hits["x"], hits["y"]).to_numpy()
    real = real_hits.iloc[nearest]
    dphi = np.arctan2(real["y"].to_numpy(), real["x"].to_numpy()) - np.arctan2(hits["y"], hits["x"]).to_numpy()
    signed = charge.loc[hits["particle_id"]].to_numpy() * r * ((dphi + np.pi) % (2 * np.pi) - np.pi)
    table = pd.DataFrame(
        {
            "abs_z_mm": pd.cut(np.abs(hits["z"].to_numpy()), DISPLACEMENT_Z_BINS),
            "r_mm": pd.cut(r, DISPLACEMENT_R_BINS),
            "signed_r_dphi_mm": signed,
        }
    )
    return table.groupby(["abs_z_mm", "r_mm"], observed=True)["signed_r_dphi_mm"].agg(["median", "count"])


def within_bin_agreement(nhits: np.ndarray, source: pd.DataFrame) -> float:
    """Chance that two different particles of one kinematic bin have the same nhits.

    Bins: generation 0 or later, pT (0.15, 0.2, 0.3, 0.5, 1, 2 GeV edges), eta in steps of 0.2,
    production radius (10, 100, 300, 600 mm edges). It measures how broad nhits is for given
    kinematics: computed on the real file and on its replay, it shows whether the simulation is more
    or less random than the real production.
    """
    pt = np.hypot(source["px"], source["py"]).to_numpy()
    generation = unpack_particle_id(source["particle_id"].to_numpy())["generation"]
    key = pd.DataFrame(
        {
            "secondary": generation > 0,
            "pt": np.digitize(pt, [0.15, 0.2, 0.3, 0.5, 1.0, 2.0]),
            "eta": np.floor(np.arcsinh(source["pz"].to_numpy() / pt) / 0.2),
            "radius": np.digitize(np.hypot(source["vx"], source["vy"]).to_numpy(), [10, 100, 300, 600]),
        }
    )
    pairs = same = 0.0
    for rows in key.groupby(list(key.columns)).indices.values():
        counts = np.bincount(nhits[rows])
        pairs += len(rows) * (len(rows) - 1)
        same += float((counts * (counts - 1)).sum())
    return round(same / max(pairs, 1.0), 3)


def hits_per_event_estimate(real_particles: list[pd.DataFrame], real_noise: int) -> dict[str, object]:
    """Hits per event of the real particles files: their nhits plus the noise of the one hits file.

    Only one hits file is at hand, so the other events' hit counts are not known; each particles
    file's nhits sum plus that event's noise count estimates them (noise taken as fixed per event).
    """
    totals = [int(p["nhits"].sum()) + real_noise for p in real_particles]
    return {
        "estimated_hits_per_event": float(np.mean(totals)),
        "estimated_hits_per_event_each": totals,
        "assumed_noise_per_event": real_noise,
    }


def simulated_summary(config: SimulationConfig, detector: Detector, n_events: int) -> tuple[list, dict, float]:
    """Particles frames, hit figures and seconds per event of `n_events` generated events."""
    started = time.perf_counter()
    events = [simulate_event(config, detector, 1000 + i) for i in tqdm(range(n_events), desc="simulate", unit="event")]
    seconds = (time.perf_counter() - started) / max(n_events, 1)
    rows = [hit_summary(e["hits"], int((e["truth"]["particle_id"] != 0).sum()), len(e["particles"])) for e in events]
    hits = {
        "hits": float(np.mean([h["hits"] for h in rows])),
        "hits_sd": float(np.std([h["hits"] for h in rows])),
        "hits_per_volume": {v: float(np.mean([h["hits_per_volume"][v] for h in rows])) for v in VOLUMES},
        "hits_per_1000_particles": float(np.mean([h["hits_per_1000_particles"] for h in rows])),
        "distinct_modules": float(np.mean([h["distinct_modules"] for h in rows])),
        "noise_fraction": float(np.mean([h["noise_fraction"] for h in rows])),
        "hits_range": [min(h["hits"] for h in rows), max(h["hits"] for h in rows)],
    }
    return [e["particles"] for e in events], hits, seconds


def replays_over_seeds(
    config: SimulationConfig, detector: Detector, event_id: int, source: pd.DataFrame, n: int
) -> list[dict[str, pd.DataFrame]]:
    """The replay of a real particles file with seeds config.seed, config.seed + 1, ... (at least two)."""
    seeds = range(config.seed, config.seed + max(n, 2))
    return [
        simulate_event(replace(config, seed=seed), detector, event_id, replay=source)
        for seed in tqdm(seeds, desc="replay seeds", unit="replay")
    ]


def replay_summary(
    replayed: dict[str, pd.DataFrame],
    again: dict[str, pd.DataFrame],
    detector: Detector,
    source: pd.DataFrame,
    real_hits: pd.DataFrame,
) -> tuple[dict, dict, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Two replays (two seeds) against the file: per-particle figures, hits, layers, field table."""
    table = pd.DataFrame({"simulated": replayed["particles"]["nhits"], "real": source["nhits"]})
    replay = replay_comparison(table["simulated"], table["real"])
    ceiling = replay_comparison(table["simulated"], again["particles"]["nhits"])
    replay["two_replays_fraction_equal"] = ceiling["fraction_equal"]
    replay["two_replays_fraction_within_1"] = ceiling["fraction_within_1"]
    replay["within_bin_agreement_replay"] = within_bin_agreement(table["simulated"].to_numpy(), source)
    replay["within_bin_agreement_file"] = within_bin_agreement(table["real"].to_numpy(), source)
    replay["secondary_no_hit_fraction"] = secondary_no_hit_fraction(replayed["particles"])
    replay["file_secondary_no_hit_fraction"] = secondary_no_hit_fraction(source)
    hits = hit_summary(replayed["hits"], int((replayed["truth"]["particle_id"] != 0).sum()), len(source))
    field = field_displacement(replayed, source, real_hits, detector)
    return replay, hits, table, layer_table(replayed, real_hits, detector), field


def volume_ratios_over_seeds(
    replays: list[dict[str, pd.DataFrame]], real_hits: pd.DataFrame
) -> dict[int, dict[str, float]]:
    """Replayed / real hits per volume over replays with different seeds: mean, min, max."""
    real = real_hits.groupby("volume_id").size().reindex(VOLUMES, fill_value=0).clip(lower=1).to_numpy()
    ratios = np.array(
        [r["hits"].groupby("volume_id").size().reindex(VOLUMES, fill_value=0).to_numpy() / real for r in replays]
    )  # [n, V]
    return {
        v: {
            "mean": round(float(ratios[:, i].mean()), 3),
            "min": round(float(ratios[:, i].min()), 3),
            "max": round(float(ratios[:, i].max()), 3),
        }
        for i, v in enumerate(VOLUMES)
    }


def summary_rows(
    sim_p: dict,
    real_p: dict,
    sim_hits: dict,
    real_hits: dict,
    estimate: dict,
    n_real: int,
    replay_event: int,
    replay_hits: dict,
) -> list[tuple[str, object, object]]:
    """The printed comparison, one (quantity, simulated, real) row each."""
    rows = [
        (
            "particles per event",
            f"{sim_p['particles_per_event']:.0f}",
            f"{real_p['particles_per_event']:.0f} ({n_real} files)",
        ),
        (
            "particles per event, sd",
            f"{sim_p['particles_per_event_sd']:.0f}",
            f"{real_p['particles_per_event_sd']:.0f}",
        ),
        ("pT quantiles 5/10/25/50/75/90/99 %", sim_p["pt_quantiles"], real_p["pt_quantiles"]),
        ("|eta| quantiles 10/25/50/75/90/99 %", sim_p["abs_eta_quantiles"], real_p["abs_eta_quantiles"]),
        ("positive charge", sim_p["positive_fraction"], real_p["positive_fraction"]),
        ("vertex > 10 mm from beam", sim_p["vertex_beyond_10mm_fraction"], real_p["vertex_beyond_10mm_fraction"]),
        ("nhits quantiles 10/25/50/75/90/99 %", sim_p["nhits_quantiles"], real_p["nhits_quantiles"]),
        ("particles without hits", sim_p["no_hit_fraction"], real_p["no_hit_fraction"]),
        (
            "secondaries > 0.15 GeV without hits",
            sim_p["secondary_no_hit_fraction"],
            real_p["secondary_no_hit_fraction"],
        ),
        ("particles per event, min-max", sim_p["particles_per_event_range"], real_p["particles_per_event_range"]),
        (
            "particle hits (sum of nhits) per event, mean [min, max]",
            f"{sim_p['particle_hits_per_event']:.0f} {sim_p['particle_hits_per_event_range']}",
            f"{real_p['particle_hits_per_event']:.0f} {real_p['particle_hits_per_event_range']}",
        ),
        (
            "hits per event, mean [min, max]",
            f"{sim_hits['hits']:.0f} {sim_hits['hits_range']}",
            f"{real_hits['hits']} (event {replay_event})",
        ),
        (
            "hits per event: particle hits + the hits file's noise",
            f"sd {sim_hits['hits_sd']:.0f}",
            f"{estimate['estimated_hits_per_event']:.0f} {estimate['estimated_hits_per_event_each']}",
        ),
        (
            "hits per 1000 particles",
            f"{sim_hits['hits_per_1000_particles']:.0f}",
            f"{real_hits['hits_per_1000_particles']:.0f}",
        ),
        ("distinct modules hit", f"{sim_hits['distinct_modules']:.0f}", real_hits["distinct_modules"]),
        ("noise fraction", f"{sim_hits['noise_fraction']:.3f}", real_hits["noise_fraction"]),
    ]
    for v in VOLUMES:
        rows.append(
            (
                f"hits in volume {v} (replay | event)",
                f"{replay_hits['hits_per_volume'][v]}",
                real_hits["hits_per_volume"][v],
            )
        )
    rows.append(
        (
            "replay hits | distinct modules",
            f"{replay_hits['hits']} | {replay_hits['distinct_modules']}",
            f"{real_hits['hits']} | {real_hits['distinct_modules']}",
        )
    )
    return rows


def print_report(
    rows: list[tuple[str, object, object]],
    replay: dict,
    over_seeds: dict,
    layers: pd.DataFrame,
    field: pd.DataFrame,
    args: argparse.Namespace,
) -> None:
    """The tables on stdout: summary rows, the replay's figures, per layer, the field displacements."""
    width = max(len(r[0]) for r in rows) + 2
    print(f"{'quantity':<{width}}{'simulated':<44}real")
    for name, sim_value, real_value in rows:
        print(f"{name:<{width}}{str(sim_value):<44}{real_value}")
    print(f"\nreplay of event {args.replay_event}, particle by particle (simulated nhits - file nhits):")
    print("  " + ", ".join(f"{k} {v}" for k, v in replay.items()))
    print(f"\nreplayed / real hits per volume over {args.replay_seeds} seeds from {args.seed}, mean [min, max]:")
    print("  " + "; ".join(f"{v}: {r['mean']} [{r['min']}, {r['max']}]" for v, r in over_seeds.items()))
    print(f"\nhits per (volume, layer), event {args.replay_event} against the replay of its particles:")
    print(layers.to_string())
    print("\nreal - replayed hits of prompt particles above 1 GeV, charge-signed r * dphi (mm), medians:")
    print(field["median"].unstack("r_mm").round(2).to_string())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--real",
        type=Path,
        default=REPO.parent / "shared" / "trackml",
        help="folder with detectors.csv, event*-particles.csv and one event*-hits.csv",
    )
    parser.add_argument("--events", type=int, default=4, help="simulated PU200 events to average")
    parser.add_argument("--replay-event", type=int, default=1001, help="real event whose particles are replayed")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--uniform-field", action="store_true", help="simulate in a uniform 2 T field")
    parser.add_argument(
        "--replay-seeds", type=int, default=5, help="replays for the per-volume spread over seeds (at least 2 are made)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "benchmarks")
    args = parser.parse_args(argv)

    detector_path = args.real / "detectors.csv"
    hits_path = args.real / f"event{args.replay_event:09d}-hits.csv"
    replay_path = args.real / f"event{args.replay_event:09d}-particles.csv"
    for path in (detector_path, hits_path, replay_path):
        if not path.is_file():
            print(f"{path}: not found; --real must hold the real TrackML files to compare with", file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    detector = Detector.from_csv(detector_path)
    real_particles = [trackml.read_part(path, "particles") for path in sorted(args.real.glob("event*-particles.csv*"))]
    real_hits_frame = trackml.read_part(hits_path, "hits")
    replay_source = trackml.read_part(replay_path, "particles")
    config = SimulationConfig(seed=args.seed, b_field_half_z_mm=0.0 if args.uniform_field else TRACKML_HALF_FIELD_Z_MM)

    sim_particles, sim_hits, seconds = simulated_summary(config, detector, args.events)
    real_hits = hit_summary(real_hits_frame, int(replay_source["nhits"].sum()), len(replay_source))
    estimate = hits_per_event_estimate(real_particles, real_hits["hits"] - int(replay_source["nhits"].sum()))
    replays = replays_over_seeds(config, detector, args.replay_event, replay_source, args.replay_seeds)
    replay, replay_hits, replay_table, layers, field = replay_summary(
        replays[0], replays[1], detector, replay_source, real_hits_frame
    )
    over_seeds = volume_ratios_over_seeds(replays[: max(args.replay_seeds, 1)], real_hits_frame)
    sim_p, real_p = particle_summary(sim_particles), particle_summary(real_particles)
    result = {
        "machine": "see benchmarks/README.md",
        "config": config.record(),
        "simulated_events": args.events,
        "seconds_per_simulated_event": round(seconds, 3),
        "real_particle_files": len(real_particles),
        "simulated": {**sim_p, **sim_hits},
        "real": {**real_p, **estimate, **{f"event{args.replay_event}_{k}": v for k, v in real_hits.items()}},
        "replay": {**replay, **{f"replayed_{k}": v for k, v in replay_hits.items()}},
        "replay_per_layer": json.loads(layers.reset_index().to_json(orient="records")),
        "replay_volume_ratio_over_seeds": over_seeds,
        "field_displacement": json.loads(
            field.reset_index().astype({"abs_z_mm": str, "r_mm": str}).to_json(orient="records")
        ),
    }
    (args.out / "simulation_realism.json").write_text(json.dumps(result, indent=2))
    plots = plot(args.out, sim_particles, real_particles, replay_hits, real_hits, replay_table)
    plots.append(plot_layers(args.out, layers))

    rows = summary_rows(
        sim_p, real_p, sim_hits, real_hits, estimate, len(real_particles), args.replay_event, replay_hits
    )
    print_report(rows, replay, over_seeds, layers, field, args)
    print("\n" + json.dumps(result))
    print("plots: " + ", ".join(str(p) for p in plots))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
