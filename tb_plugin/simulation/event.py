"""One simulated event from start to files, and the loop over a dataset of events.

Order of work in an event: particles of generation 0 (generated, or replayed from a real file) are
traced through the detector; their interactions with the material end some of them and spawn
generation-1 secondaries, which are traced in turn, and so on. Then the crossings are digitised
(inefficiency, smearing), noise is added, and the hits are numbered in (volume, layer, module)
order as in the real files, so that hit_id order says nothing about the order along a trajectory.

Detector conditions (``detector_conditions``), when given: particles are traced through the true,
misaligned modules, dead and inefficient modules lose hits (from a random stream of their own), and
the measured hits are reported through the nominal module frames, as reconstruction would.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from tb_plugin import trackml
from tb_plugin.atomic import write_text
from tb_plugin.geometry import Detector
from tb_plugin.simulation import digitization, interactions, kinematics
from tb_plugin.simulation.config import SimulationConfig
from tb_plugin.simulation.detector_conditions import (
    CONDITIONS_FILE,
    AppliedConditions,
    DetectorConditions,
    hit_loss_rng,
    write_conditions,
)
from tb_plugin.simulation.field import SolenoidField
from tb_plugin.simulation.kinematics import Particles
from tb_plugin.simulation.propagation import PropagationOptions, layer_map, propagate


def event_rng(seed: int, event_id: int) -> np.random.Generator:
    """The event's own random stream: the same (seed, event_id) always gives the same event."""
    return np.random.default_rng([int(seed), int(event_id)])


@dataclass
class TrueHits:
    """True crossings of particles with modules, before digitisation."""

    particle: np.ndarray  # int64 [H], index into the event's particles
    module: np.ndarray  # int64 [H]
    position: np.ndarray  # float64 [H, 3]
    momentum: np.ndarray  # float64 [H, 3]

    @staticmethod
    def concat(parts: list[TrueHits]) -> TrueHits:
        empty = TrueHits(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros((0, 3)))
        parts = [empty, *parts]
        return TrueHits(
            *(
                np.concatenate([getattr(p, name) for p in parts])
                for name in ("particle", "module", "position", "momentum")
            )
        )

    def subset(self, mask: np.ndarray) -> TrueHits:
        return TrueHits(self.particle[mask], self.module[mask], self.position[mask], self.momentum[mask])


def simulate_event(
    config: SimulationConfig,
    detector: Detector,
    event_id: int,
    replay: pd.DataFrame | None = None,
    conditions: DetectorConditions | None = None,
) -> dict[str, pd.DataFrame]:
    """Frames ``hits``, ``particles``, ``truth`` (and ``cells`` when configured) of one event.

    ``replay``: a particles frame whose vertices, momenta, charges and particle_ids are traced instead
    of generated ones. No further secondaries are made, since a real file already lists its own; they
    say where their parents were absorbed. ``conditions``: dead, inefficient and misaligned modules
    (``detector_conditions``); `detector` stays the nominal geometry the hits are reported in.
    """
    applied = conditions.applied(detector) if conditions is not None and conditions.active else None
    sensed = detector if applied is None else applied.true_detector  # the modules the particles meet
    rng = event_rng(config.seed, event_id)
    if replay is None:
        first = kinematics.generate_primaries(
            rng,
            config.pileup,
            config.hard_scatter,
            config.vertex_sigma_xy_mm,
            config.vertex_sigma_z_mm,
            config.vertex_mean_z_mm,
        )
    else:
        first = kinematics.particles_from_frame(replay)
    particles, true_hits = trace_generations(config, sensed, first, replay is not None, rng)
    recorded = rng.random(len(true_hits.particle)) >= config.hit_inefficiency
    recorded &= digitization.at_readable_incidence(
        sensed, true_hits.module, true_hits.momentum, config.min_cos_incidence
    )
    if applied is not None:  # its own stream: the main one makes the same draws with or without
        recorded &= applied.kept(hit_loss_rng(config.seed, event_id), true_hits.module)
    true_hits = true_hits.subset(recorded)
    return digitise(config, detector, particles, true_hits, rng, applied)


def trace_generations(
    config: SimulationConfig, detector: Detector, first: Particles, replayed: bool, rng: np.random.Generator
) -> tuple[Particles, TrueHits]:
    """Trace generation 0, then the secondaries its interactions make, and so on until none is left."""
    layers = layer_map(detector)
    options = PropagationOptions(
        field=SolenoidField(config.b_field_tesla, config.b_field_half_z_mm, config.b_field_falloff_power),
        max_turns=config.max_turns,
        max_crossings=config.max_crossings,
        multiple_scattering=config.multiple_scattering,
        energy_loss=config.energy_loss,
    )
    generations: list[Particles] = []
    hits: list[TrueHits] = []
    offset = 0  # index of the current generation's first particle in the event
    current = first
    while len(current):  # one pass per generation
        traced = np.flatnonzero(current.pt >= config.min_pt_traced)  # [T]
        found, material = propagate(
            current.vertex[traced],
            current.momentum[traced],
            current.charge[traced],
            current.mass[traced],
            layers,
            options,
            rng,
        )
        chosen = np.zeros(0, dtype=np.int64)  # material crossings that make listed secondaries
        end_step = np.full(len(traced), np.iinfo(np.int64).max)
        if config.secondaries and not replayed:
            chosen, end_step = interactions.generated_interactions(rng, material, len(traced))
        elif config.secondaries:
            end_step = interactions.replay_end_steps(rng, current.subset(traced), material)
        kept = found.step <= end_step[found.particle]  # an absorbed particle has no later hits
        hits.append(
            TrueHits(
                offset + traced[found.particle[kept]], found.module[kept], found.position[kept], found.momentum[kept]
            )
        )
        generations.append(current)
        offset += len(current)

        current, origin = kinematics.material_interactions(
            rng, current.particle_id[traced][material.particle[chosen]], material.position[chosen]
        )
        followed = current.pt >= config.min_pt_traced  # [S] traced in the next pass
        made_here = interactions.production_module_hits(rng, material.module[chosen], origin, followed)  # [S']
        hits.append(
            TrueHits(
                offset + made_here,
                material.module[chosen][origin[made_here]],
                current.vertex[made_here],
                current.momentum[made_here],
            )
        )
    particles = Particles.concat(generations) if generations else Particles.empty()
    return particles, TrueHits.concat(hits)


def digitise(
    config: SimulationConfig,
    detector: Detector,
    particles: Particles,
    true_hits: TrueHits,
    rng: np.random.Generator,
    applied: AppliedConditions | None = None,
) -> dict[str, pd.DataFrame]:
    """Smear the true hits, add noise, number all hits in module order and build the event frames.

    With conditions, `true_hits` lie on the true modules: they are measured there and reported
    through the nominal frames of `detector`; noise hits are made on the nominal frames directly
    (a uniform point of a module, wherever it is) and dead modules have none.
    """
    sensed = detector if applied is None else applied.true_detector
    measured, local = digitization.smear_on_module(
        rng, sensed, true_hits.module, true_hits.position, reported_by=detector
    )
    noise_module, noise_position = noise(config, detector, len(true_hits.particle), rng, applied)
    n_noise = len(noise_module)

    module = np.concatenate([true_hits.module, noise_module])  # [N]
    order = module_order(module, rng.random(len(module)))  # module order, random inside a module
    hit_id = np.arange(1, len(module) + 1)  # [N] in sorted order
    module = module[order]
    position = np.concatenate([measured, noise_position])[order]  # [N, 3]
    truth_position = np.concatenate([true_hits.position, noise_position])[order]
    truth_momentum = np.concatenate([true_hits.momentum, np.zeros((n_noise, 3))])[order]
    particle_id = np.concatenate([particles.particle_id[true_hits.particle], np.zeros(n_noise, np.int64)])[order]

    hits = pd.DataFrame(
        {
            "hit_id": hit_id.astype(np.int32),
            **{axis: position[:, i].astype(np.float32) for i, axis in enumerate("xyz")},
            "volume_id": detector.volume_id[module],
            "layer_id": detector.layer_id[module],
            "module_id": detector.module_id[module],
        }
    )
    particles_frame = particles.to_frame(np.bincount(true_hits.particle, minlength=len(particles)))
    truth = pd.DataFrame(
        {
            "hit_id": hit_id.astype(np.int32),
            "particle_id": particle_id,
            **{f"t{axis}": truth_position[:, i].astype(np.float32) for i, axis in enumerate("xyz")},
            **{f"tp{axis}": truth_momentum[:, i].astype(np.float32) for i, axis in enumerate("xyz")},
        }
    )
    truth["weight"] = trackml.hit_weights(truth, particles_frame).astype(np.float32)
    frames = {"hits": hits, "particles": particles_frame, "truth": truth}
    if config.with_cells:
        # Noise clusters are made as if by a track along the module normal.
        local_all = np.concatenate([local, detector.to_local(noise_module, noise_position)])[order]
        direction = np.concatenate([true_hits.momentum, sensed.rotation[noise_module, :, 2]])[order]
        frames["cells"] = digitization.make_cells(rng, sensed, module, local_all, direction, hit_id)
    return frames


def noise(
    config: SimulationConfig,
    detector: Detector,
    n_signal: int,
    rng: np.random.Generator,
    applied: AppliedConditions | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Noise hits (module [K], position [K, 3]): `noise_fraction` of all hits, none on a dead module."""
    mean_noise = config.noise_fraction / (1.0 - config.noise_fraction) * n_signal
    module, position = digitization.noise_hits(rng, detector, int(rng.poisson(mean_noise)))
    if applied is None:
        return module, position
    live = ~applied.dead[module]
    return module[live], position[live]


def module_order(module: np.ndarray, tiebreak: np.ndarray) -> np.ndarray:
    """``np.lexsort((tiebreak, module))`` for integer modules and tiebreaks in [0, 1), in a third of
    the time: one argsort of ``module + tiebreak``. Rounding keeps that key in the same order, but
    may make two keys equal, and then lexsort itself decides."""
    key = module + tiebreak
    order = np.argsort(key)
    ordered = key[order]
    if (ordered[1:] == ordered[:-1]).any():
        return np.lexsort((tiebreak, module))
    return order


def active_conditions(conditions: DetectorConditions | None, detector: Detector) -> DetectorConditions | None:
    """None for no conditions or an empty table (the files are then those of a plain simulation);
    else the table, checked against the detector before any event is made."""
    if conditions is None or not conditions.active:
        return None
    conditions.applied(detector)  # refuses unknown modules
    return conditions


def simulate_dataset(
    config: SimulationConfig,
    detector: Detector,
    out_dir: str | os.PathLike,
    replay_particles: str | os.PathLike | None = None,
    progress: bool = True,
    workers: int | None = None,
    conditions: DetectorConditions | None = None,
) -> list[Path]:
    """Simulate and write ``config.n_events`` events as ``out_dir/event{ID:09d}-{part}.csv``.

    ``replay_particles``: a real particles file (csv or csv.gz) whose kinematics every event replays
    (each event with its own scattering, inefficiency and noise). ``workers``: processes simulating
    and writing events side by side (default: up to the CPU count, one for a single event); every
    event has its own random stream, so the files do not depend on it. ``conditions``: dead,
    inefficient and misaligned modules, written to ``out_dir/detector_conditions.csv`` and recorded
    in simulation.json; none (or an empty table) writes exactly what a simulation without them does.
    Returns the event prefixes.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    conditions = active_conditions(conditions, detector)
    replay = None
    if replay_particles is not None:
        path = Path(replay_particles)
        if not path.is_file():
            raise FileNotFoundError(f"replay particles file {path} not found (expected an event...-particles.csv)")
        replay = trackml.read_part(path, "particles")
    event_ids = list(range(config.first_event, config.first_event + config.n_events))
    if workers is None:
        workers = min(len(event_ids), os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"workers = {workers}: expected at least 1")
    if "fork" not in multiprocessing.get_all_start_methods():
        workers = 1  # spawned workers would re-import the caller's main script: stay in this process
    bar = tqdm(total=len(event_ids), desc="simulate", unit="event", disable=not progress)
    prefixes = []
    if workers == 1:
        for event_id in event_ids:
            prefixes.append(_simulate_and_write(config, detector, event_id, replay, out_dir, conditions))
            bar.update()
    else:
        # Forked workers need no import guard in the caller's script (spawned ones would), and they
        # inherit the detector and its lookup tables, built here once rather than once per worker.
        layer_map(detector if conditions is None else conditions.applied(detector).true_detector)
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=_set_worker_state,
            initargs=(config, detector, replay, out_dir, conditions),
        ) as pool:
            futures = [pool.submit(_worker_event, event_id) for event_id in event_ids]
            for _ in as_completed(futures):
                bar.update()
            prefixes = [future.result() for future in futures]
    bar.close()
    if conditions is not None:
        write_conditions(conditions, out_dir / CONDITIONS_FILE)
    write_provenance(config, detector, out_dir, replay_particles, conditions)
    return prefixes


def write_provenance(
    config: SimulationConfig,
    detector: Detector,
    out_dir: Path,
    replay_particles: str | os.PathLike | None,
    conditions: DetectorConditions | None = None,
) -> Path:
    """``out_dir/simulation.json``: the config, geometry and replayed file the events were made with.

    Written after the events, so a folder with this file holds every event it describes. Detector
    conditions add a ``detector_conditions`` entry (where the table came from: the drawing options
    and seed, or a file; its file name; counts); without them the record is what it always was.
    """
    record: dict[str, object] = {
        "simulation": config.record(),
        "geometry_hash": detector.geometry_hash(),
        "ids_hash": detector.ids_hash(),
        "replay_particles": None if replay_particles is None else str(replay_particles),
    }
    if conditions is not None:
        record["detector_conditions"] = {
            "file": CONDITIONS_FILE,
            **conditions.source,
            "modules": len(conditions),
            "dead": int(conditions.dead.sum()),
        }
    path = out_dir / "simulation.json"
    write_text(path, json.dumps(record, indent=2) + "\n")
    return path


_WORKER_STATE: tuple = ()


def _set_worker_state(
    config: SimulationConfig,
    detector: Detector,
    replay: pd.DataFrame | None,
    out_dir: Path,
    conditions: DetectorConditions | None,
) -> None:
    global _WORKER_STATE
    _WORKER_STATE = (config, detector, replay, out_dir, conditions)


def _worker_event(event_id: int) -> Path:
    config, detector, replay, out_dir, conditions = _WORKER_STATE
    return _simulate_and_write(config, detector, event_id, replay, out_dir, conditions)


def _simulate_and_write(
    config: SimulationConfig,
    detector: Detector,
    event_id: int,
    replay: pd.DataFrame | None,
    out_dir: Path,
    conditions: DetectorConditions | None = None,
) -> Path:
    frames = simulate_event(config, detector, event_id, replay=replay, conditions=conditions)
    prefix = trackml.event_prefix(out_dir, event_id)
    trackml.write_event(prefix, **frames)
    return prefix
