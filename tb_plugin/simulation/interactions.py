"""Interactions of particles with the detector material: where a particle ends, where secondaries start.

Every material crossing (a module, the beam pipe) may hold a nuclear interaction. The particle is
absorbed there (inelastic), so it leaves no later hits; the interaction makes listed secondaries
(``kinematics.material_interactions``) or only products too soft to be listed. Such soft products
made inside a sensor deposit charge in it: one hit in their production module.

The rates are per radiation length of a layer's material, which is ``LAYER_MATERIAL_FACTOR`` times
its sensor's (supports, cooling, cables: detectors.csv leaves them out), and are effective ones, tuned
on the TrackML particles files (secondary fraction, where secondaries start, how many hits they
have), not on one event.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tb_plugin.simulation import kinematics
from tb_plugin.simulation.kinematics import Particles
from tb_plugin.simulation.propagation import MaterialPoints

INTERACTIONS_PER_X0 = 0.9
"""Interactions with listed products per radiation length of layer material crossed at a module
(``propagation.LAYER_MATERIAL_FACTOR`` times its sensor), tuned so that, as in the TrackML files,
about 27 % of the listed particles are secondaries (3.6 per radiation length of sensor silicon)."""
BEAM_PIPE_INTERACTIONS_PER_X0 = 0.8
"""The same for the beam pipe, per radiation length of its own beryllium: tuned on the 7 % of the
TrackML secondaries that start near its radius. About the layers' rate per radiation length of their
material: the pipe carries no services, so its material is what it is."""
UNSEEN_ABSORPTIONS = 0.67
"""Absorptions whose products are all too soft to be listed (slow nucleons, nuclear fragments), per
interaction with listed products. They end the particle all the same: in the TrackML files a few
per cent of the prompt particles stop early without any listed secondary."""
SENSOR_MATERIAL_SHARE = 0.3
"""Fraction of a layer's material that is sensor silicon: an interaction there leaves its products one
hit in the module where they are made. In the TrackML files 30 % of the secondaries below 150 MeV
(which are not followed further) have exactly one hit, and none has more."""


def interaction_rate(material: MaterialPoints) -> np.ndarray:
    """Probability [C] that each material crossing holds an interaction with listed products."""
    per_x0 = np.where(material.in_beam_pipe, BEAM_PIPE_INTERACTIONS_PER_X0, INTERACTIONS_PER_X0)
    return per_x0 * material.x_over_x0


def generated_interactions(
    rng: np.random.Generator, material: MaterialPoints, n_particles: int
) -> tuple[np.ndarray, np.ndarray]:
    """Interactions of generated particles: (crossings [I] with listed products, end step per particle)."""
    rate = interaction_rate(material)
    chosen, end_step = first_interactions(
        rng, material.particle, material.step, rate * (1.0 + UNSEEN_ABSORPTIONS), n_particles
    )
    seen = rng.random(len(chosen)) * (1.0 + UNSEEN_ABSORPTIONS) < 1.0
    return chosen[seen], end_step


def replay_end_steps(rng: np.random.Generator, particles: Particles, material: MaterialPoints) -> np.ndarray:
    """End step per replayed particle: where its listed products start, or an unseen absorption."""
    _, unseen_end = first_interactions(
        rng, material.particle, material.step, interaction_rate(material) * UNSEEN_ABSORPTIONS, len(particles)
    )
    return np.minimum(replayed_interactions(particles, material), unseen_end)


def production_module_hits(
    rng: np.random.Generator, module: np.ndarray, origin: np.ndarray, followed: np.ndarray
) -> np.ndarray:
    """Products [S] (by index) that leave a hit in their production module.

    ``module`` [I] is the module of each interaction (-1 for the beam pipe), ``origin`` [S] the
    interaction of each product; all products of an interaction in the silicon share its fate.
    Only products too soft to be ``followed`` [S] get this hit: that is the one hit TrackML gives 30 %
    of them. Followed ones get none in the sensor they start in, as in the TrackML files (see
    ``propagation._beyond_production_module``).
    """
    in_sensor = (module >= 0) & (rng.random(len(module)) < SENSOR_MATERIAL_SHARE)  # [I]
    return np.flatnonzero(in_sensor[origin] & ~followed)


def first_interactions(
    rng: np.random.Generator, particle: np.ndarray, step: np.ndarray, probability: np.ndarray, n_particles: int
) -> tuple[np.ndarray, np.ndarray]:
    """Which material crossings [C] hold an interaction, at most one per particle: its first.

    Returns the indices of those crossings and, per particle [P], the step of its interaction (a large
    number where it has none): the particle is absorbed there (inelastic), so it makes no later hits.
    """
    candidate = np.flatnonzero(rng.random(len(particle)) < probability)  # [I']
    end_step = np.full(n_particles, np.iinfo(np.int64).max)
    np.minimum.at(end_step, particle[candidate], step[candidate])
    first = candidate[step[candidate] == end_step[particle[candidate]]]
    _, unique = np.unique(particle[first], return_index=True)  # two points in one step: keep one
    return first[unique], end_step


def replayed_interactions(particles: Particles, material: MaterialPoints) -> np.ndarray:
    """Per replayed particle [P], the step where the file's own secondaries say it interacted.

    A generation-0 particle's interaction point is the nearest production vertex of the generation-1
    particles of its family (same vertex_id and primary_id); the particle ends at its material crossing
    closest to that point. Particles without listed products (and later generations, whose parents the
    ids do not tell apart) are followed to the end.
    """
    fields = kinematics.unpack_particle_id(particles.particle_id)
    family = (fields["vertex_id"] << 16) | fields["primary_id"]  # [P]
    parent = np.flatnonzero(fields["generation"] == 0)
    child = np.flatnonzero(fields["generation"] == 1)
    end_step = np.full(len(particles), np.iinfo(np.int64).max)
    if len(parent) == 0 or len(child) == 0 or len(material.particle) == 0:
        return end_step
    parent_of_family = pd.Series(parent, index=family[parent])
    parent_of_family = parent_of_family[~parent_of_family.index.duplicated()]
    owner = parent_of_family.reindex(family[child]).to_numpy()  # [C] parent index, NaN if none
    has_owner = ~np.isnan(owner)
    owner, child = owner[has_owner].astype(np.int64), child[has_owner]
    # The earliest interaction: the child vertex nearest to the parent's own vertex.
    flight = np.linalg.norm(particles.vertex[child] - particles.vertex[owner], axis=1)  # [C]
    first = np.full(len(particles), np.inf)
    np.minimum.at(first, owner, flight)
    earliest = flight == first[owner]
    point = np.full((len(particles), 3), np.nan)
    point[owner[earliest]] = particles.vertex[child[earliest]]
    # The parent's material crossing nearest to that point ends it.
    distance = np.linalg.norm(material.position - point[material.particle], axis=1)  # [C'] NaN: no point
    distance = np.where(np.isnan(distance), np.inf, distance)
    nearest = np.full(len(particles), np.inf)
    np.minimum.at(nearest, material.particle, distance)
    at_end = np.isfinite(distance) & (distance == nearest[material.particle])
    np.minimum.at(end_step, material.particle[at_end], material.step[at_end])
    return end_step
