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
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tb_plugin import trackml  # noqa: E402
from tb_plugin.geometry import Detector  # noqa: E402
from tb_plugin.simulation import SimulationConfig, simulate_event  # noqa: E402
from tb_plugin.simulation.kinematics import unpack_particle_id  # noqa: E402

VOLUMES = (7, 8, 9, 12, 13, 14, 16, 17, 18)
PT_QUANTILES = (0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.99)
ETA_QUANTILES = (0.10, 0.25, 0.50, 0.75, 0.90, 0.99)
NHITS_QUANTILES = (0.10, 0.25, 0.50, 0.75, 0.90, 0.99)


def particle_summary(particles: list[pd.DataFrame]) -> dict[str, object]:
    """Spectra over all given particles frames, and per-event counts."""
    frame = pd.concat(particles, ignore_index=True)
    pt = np.hypot(frame["px"], frame["py"]).to_numpy()
    eta = np.abs(np.arcsinh(frame["pz"].to_numpy() / pt))
    radius = np.hypot(frame["vx"], frame["vy"]).to_numpy()
    return {
        "particles_per_event": float(np.mean([len(p) for p in particles])),
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
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "benchmarks")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    detector_path = args.real / "detectors.csv"
    if not detector_path.is_file():
        print(f"no real TrackML files at {args.real}: nothing to compare with", file=sys.stderr)
        return 2
    detector = Detector.from_csv(detector_path)
    real_particles = [trackml.read_part(path, "particles") for path in sorted(args.real.glob("event*-particles.csv*"))]
    hits_path = args.real / f"event{args.replay_event:09d}-hits.csv"
    replay_path = args.real / f"event{args.replay_event:09d}-particles.csv"
    real_hits_frame = trackml.read_part(hits_path, "hits")
    replay_source = trackml.read_part(replay_path, "particles")

    config = SimulationConfig(seed=args.seed)
    started = time.perf_counter()
    sim_events = [simulate_event(config, detector, 1000 + i) for i in range(args.events)]
    seconds = time.perf_counter() - started
    sim_particles = [e["particles"] for e in sim_events]
    sim_hit_rows = [
        hit_summary(e["hits"], int((e["truth"]["particle_id"] != 0).sum()), len(e["particles"])) for e in sim_events
    ]
    sim_hits = {
        "hits": float(np.mean([h["hits"] for h in sim_hit_rows])),
        "hits_per_volume": {v: float(np.mean([h["hits_per_volume"][v] for h in sim_hit_rows])) for v in VOLUMES},
        "hits_per_1000_particles": float(np.mean([h["hits_per_1000_particles"] for h in sim_hit_rows])),
        "distinct_modules": float(np.mean([h["distinct_modules"] for h in sim_hit_rows])),
        "noise_fraction": float(np.mean([h["noise_fraction"] for h in sim_hit_rows])),
        "hits_range": [min(h["hits"] for h in sim_hit_rows), max(h["hits"] for h in sim_hit_rows)],
    }
    real_hits = hit_summary(real_hits_frame, int(replay_source["nhits"].sum()), len(replay_source))

    replayed = simulate_event(config, detector, args.replay_event, replay=replay_source)
    replay_hits = hit_summary(replayed["hits"], int((replayed["truth"]["particle_id"] != 0).sum()), len(replay_source))
    replay_table = pd.DataFrame({"simulated": replayed["particles"]["nhits"], "real": replay_source["nhits"]})
    replay = replay_comparison(replay_table["simulated"], replay_table["real"])
    replay["secondary_no_hit_fraction"] = secondary_no_hit_fraction(replayed["particles"])
    replay["file_secondary_no_hit_fraction"] = secondary_no_hit_fraction(replay_source)
    layers = layer_table(replayed, real_hits_frame, detector)

    result = {
        "machine": "see benchmarks/README.md",
        "simulated_events": args.events,
        "seconds_per_simulated_event": round(seconds / args.events, 3),
        "real_particle_files": len(real_particles),
        "simulated": {**particle_summary(sim_particles), **sim_hits},
        "real": {
            **particle_summary(real_particles),
            **{f"event{args.replay_event}_{k}": v for k, v in real_hits.items()},
        },
        "replay": {**replay, **{f"replayed_{k}": v for k, v in replay_hits.items()}},
        "replay_per_layer": json.loads(layers.reset_index().to_json(orient="records")),
    }
    (args.out / "simulation_realism.json").write_text(json.dumps(result, indent=2))
    plots = plot(args.out, sim_particles, real_particles, replay_hits, real_hits, replay_table)
    plots.append(plot_layers(args.out, layers))

    sim_p, real_p = particle_summary(sim_particles), particle_summary(real_particles)
    rows = [
        (
            "particles per event",
            f"{sim_p['particles_per_event']:.0f}",
            f"{real_p['particles_per_event']:.0f} ({len(real_particles)} files)",
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
            f"{real_hits['hits']} (event {args.replay_event})",
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
    width = max(len(r[0]) for r in rows) + 2
    print(f"{'quantity':<{width}}{'simulated':<44}real")
    for name, sim_value, real_value in rows:
        print(f"{name:<{width}}{str(sim_value):<44}{real_value}")
    print(f"\nreplay of event {args.replay_event}, particle by particle (simulated nhits - file nhits):")
    print("  " + ", ".join(f"{k} {v}" for k, v in replay.items()))
    print(f"\nhits per (volume, layer), event {args.replay_event} against the replay of its particles:")
    print(layers.to_string())
    print("\n" + json.dumps(result))
    print("plots: " + ", ".join(str(p) for p in plots))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
