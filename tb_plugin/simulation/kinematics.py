"""Which particles an event holds: where they are produced, with what momentum and charge.

Three sources, each modelled on what the TrackML particles files show at pile-up 200:

* prompt particles of the pp interactions (generation 0): Poisson(pile-up) minimum-bias vertices plus
  an optional hard scatter, a Tsallis transverse-momentum spectrum, a nearly flat pseudorapidity
  plateau up to |eta| = 4 and equal charges;
* decay products of neutral kaons (also generation 0 in TrackML, which lists generator decays as
  primaries): displaced by the K0s flight length, which gives the ~9 % of generation-0 particles
  produced more than a millimetre from the beam;
* secondaries from interactions in the detector material (generation >= 1), made by
  ``material_interactions`` at crossings found by the propagation: soft, nearly isotropic, mostly
  positive (nuclear fragments), as the TrackML secondaries are.

Only particles with pT >= 0.1 GeV and |eta| <= 4 are produced, because the TrackML files list only
those. ``particles_from_frame`` instead replays the kinematics of a real particles file.

Particle ids pack (vertex_id, primary_id, generation, secondary_id, process) with the TrackML bit
masks (REFERENCE.md section 1).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd

# ---------------------------------------------------------------- particle id bit fields
_VERTEX_SHIFT, _PRIMARY_SHIFT, _GENERATION_SHIFT, _SECONDARY_SHIFT = 52, 36, 24, 12
_PRIMARY_MASK, _GENERATION_MASK, _SECONDARY_MASK, _PROCESS_MASK = 0xFFFF, 0xFFF, 0xFFF, 0xFFF

# ---------------------------------------------------------------- spectra (tuned on TrackML events 1000-1004)
PT_MIN = 0.1  # GeV; the TrackML particles files list nothing softer
ETA_MAX = 4.0  # the TrackML files list nothing beyond
PION_MASS = 0.13957  # GeV
PROTON_MASS = 0.93827  # GeV
KAON_MASS = 0.49761  # GeV, K0s
KAON_CTAU = 26.84  # mm, K0s
KAON_DECAY_MOMENTUM = 0.2061  # GeV, pion momentum in the K0s rest frame (K0s -> pi+ pi-)
# Minimum bias: Tsallis pT spectrum fitted (maximum likelihood) to generation-0 prompt particles of
# pile-up vertices; hard scatter: the same form fitted to vertex 1 (a tt-bar event in TrackML).
MINBIAS_TSALLIS = (7.10, 0.170)  # (n, T / GeV)
HARD_TSALLIS = (3.45, 0.161)
# dN/d|eta| falls slowly over the plateau: density ~ 1 - slope * |eta| on [0, ETA_MAX].
MINBIAS_ETA_SLOPE = 0.025
HARD_ETA_SLOPE = 0.17
# Listed charged multiplicity per interaction: negative binomial (mean, k). About 30 % of the
# inelastic interactions are diffractive and often put no particle at all into |eta| < 4 (the
# TrackML files list particles from about 150 vertices at pile-up 200).
MINBIAS_MULTIPLICITY = (55.0, 1.25)
DIFFRACTIVE_FRACTION = 0.30
DIFFRACTIVE_MULTIPLICITY = (1.5, 0.2)
HARD_MULTIPLICITY = (240.0, 25.0)
KAONS_PER_PROMPT = 0.060  # produced K0s per listed prompt particle, tuned to the displaced fraction
# Material interactions: soft products (pT^a exp(-pT / b) above PT_MIN), isotropic, 73 % positive:
# the positive excess is nuclear protons, so positive products are protons (slow ones lose energy
# much faster than pions), negative ones pions.
SECONDARY_PT_SHAPE = (1.19, 0.0884)  # (a, b / GeV)
SECONDARY_POSITIVE_FRACTION = 0.73
SECONDARY_EXTRA_PRODUCTS = 0.88  # products per interaction = 1 + Poisson(this)
MAX_GENERATION = 4


@dataclass
class Particles:
    """A set of particles as parallel arrays (mm, GeV/c)."""

    particle_id: np.ndarray  # int64 [P]
    vertex: np.ndarray  # float64 [P, 3]
    momentum: np.ndarray  # float64 [P, 3]
    charge: np.ndarray  # int32 [P]
    mass: np.ndarray | None = None  # float64 [P] GeV, for energy loss and scattering; pions if None

    def __post_init__(self) -> None:
        if self.mass is None:
            self.mass = np.full(len(self.particle_id), PION_MASS)

    def __len__(self) -> int:
        return int(self.particle_id.shape[0])

    @property
    def pt(self) -> np.ndarray:
        return np.hypot(self.momentum[:, 0], self.momentum[:, 1])  # [P]

    def subset(self, mask_or_index: np.ndarray) -> Particles:
        return Particles(
            self.particle_id[mask_or_index],
            self.vertex[mask_or_index],
            self.momentum[mask_or_index],
            self.charge[mask_or_index],
            self.mass[mask_or_index],
        )

    @staticmethod
    def concat(parts: list[Particles]) -> Particles:
        return Particles(
            np.concatenate([p.particle_id for p in parts]).astype(np.int64),
            np.concatenate([p.vertex for p in parts]).reshape(-1, 3),
            np.concatenate([p.momentum for p in parts]).reshape(-1, 3),
            np.concatenate([p.charge for p in parts]).astype(np.int32),
            np.concatenate([p.mass for p in parts]).astype(np.float64),
        )

    @staticmethod
    def empty() -> Particles:
        return Particles(np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0, np.int32))

    def to_frame(self, nhits: np.ndarray) -> pd.DataFrame:
        """The particles part of an event (REFERENCE section 1 columns and dtypes)."""
        return pd.DataFrame(
            {
                "particle_id": self.particle_id.astype(np.int64),
                "vx": self.vertex[:, 0].astype(np.float32),
                "vy": self.vertex[:, 1].astype(np.float32),
                "vz": self.vertex[:, 2].astype(np.float32),
                "px": self.momentum[:, 0].astype(np.float32),
                "py": self.momentum[:, 1].astype(np.float32),
                "pz": self.momentum[:, 2].astype(np.float32),
                "q": self.charge.astype(np.int32),
                "nhits": np.asarray(nhits, dtype=np.int32),
            }
        )


# ---------------------------------------------------------------- particle ids


def pack_particle_id(vertex_id, primary_id, generation, secondary_id, process) -> np.ndarray:
    """The TrackML particle_id of each particle from its bit fields."""
    parts = [np.asarray(a, dtype=np.int64) for a in (vertex_id, primary_id, generation, secondary_id, process)]
    v, p, g, s, c = np.broadcast_arrays(*parts)
    return (
        (v << _VERTEX_SHIFT) | (p << _PRIMARY_SHIFT) | (g << _GENERATION_SHIFT) | (s << _SECONDARY_SHIFT) | c
    ).astype(np.int64)


def unpack_particle_id(particle_id) -> dict[str, np.ndarray]:
    """The bit fields of TrackML particle ids: vertex_id, primary_id, generation, secondary_id, process."""
    pid = np.asarray(particle_id, dtype=np.int64)
    return {
        "vertex_id": pid >> _VERTEX_SHIFT,
        "primary_id": (pid >> _PRIMARY_SHIFT) & _PRIMARY_MASK,
        "generation": (pid >> _GENERATION_SHIFT) & _GENERATION_MASK,
        "secondary_id": (pid >> _SECONDARY_SHIFT) & _SECONDARY_MASK,
        "process": pid & _PROCESS_MASK,
    }


# ---------------------------------------------------------------- samplers


@functools.lru_cache(maxsize=8)
def _tsallis_table(n: float, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative distribution of dN/dpT ~ pT (1 + (mT - m) / (n T))^-n above PT_MIN, on a log grid."""
    pt = np.geomspace(PT_MIN, 200.0, 6000)  # [G]
    mt = np.sqrt(pt**2 + PION_MASS**2)
    density = pt * (1.0 + (mt - PION_MASS) / (n * temperature)) ** (-n)  # [G]
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(pt))])
    return cdf / cdf[-1], pt


def sample_tsallis_pt(rng: np.random.Generator, size: int, shape: tuple[float, float]) -> np.ndarray:
    """Transverse momenta (GeV) from a Tsallis spectrum above PT_MIN, by inverting its tabulated CDF."""
    cdf, pt = _tsallis_table(*shape)
    return np.interp(rng.random(size), cdf, pt)  # [size]


def sample_eta(rng: np.random.Generator, size: int, slope: float) -> np.ndarray:
    """Pseudorapidities on [-ETA_MAX, ETA_MAX] with density ~ 1 - slope |eta| (a slowly falling plateau)."""
    # Invert F(x) = (x - slope x^2 / 2) / (ETA_MAX - slope ETA_MAX^2 / 2) for |eta|.
    norm = ETA_MAX - 0.5 * slope * ETA_MAX**2
    target = rng.random(size) * norm  # [size]
    abs_eta = target if slope == 0 else (1.0 - np.sqrt(1.0 - 2.0 * slope * target)) / slope
    return np.where(rng.random(size) < 0.5, -abs_eta, abs_eta)


def momentum_from(pt: np.ndarray, eta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Cartesian momenta [P, 3] from (pT, eta, phi)."""
    return np.stack([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)], axis=1)


def _negative_binomial(rng: np.random.Generator, mean: float, k: float, size: int) -> np.ndarray:
    return rng.negative_binomial(k, k / (k + mean), size=size)


def _rank_within(groups: np.ndarray) -> np.ndarray:
    """0-based rank of each element among the elements with the same group value (stable order)."""
    order = np.argsort(groups, kind="stable")  # [P]
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])  # [G]
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(groups)]))  # [P]
    rank = np.empty(len(groups), dtype=np.int64)
    rank[order] = np.arange(len(groups)) - run_start
    return rank


# ---------------------------------------------------------------- generation 0


def generate_primaries(
    rng: np.random.Generator, pileup: float, hard_scatter: bool, sigma_xy: float, sigma_z: float, mean_z: float = 0.0
) -> Particles:
    """Generation-0 particles of one bunch crossing: prompt particles and K0s decay products; the
    vertices spread around (0, 0, mean_z)."""
    n_pileup = int(rng.poisson(pileup))
    n_vertices = n_pileup + int(hard_scatter)
    vertex_position = np.stack(
        [
            rng.normal(0.0, sigma_xy, n_vertices),
            rng.normal(0.0, sigma_xy, n_vertices),
            rng.normal(mean_z, sigma_z, n_vertices),
        ],
        axis=1,
    )  # [V, 3]
    is_hard = np.zeros(n_vertices, dtype=bool)
    is_hard[: int(hard_scatter)] = True
    diffractive = ~is_hard & (rng.random(n_vertices) < DIFFRACTIVE_FRACTION)  # [V]
    multiplicity = np.where(
        is_hard,
        _negative_binomial(rng, *HARD_MULTIPLICITY, n_vertices),
        np.where(
            diffractive,
            _negative_binomial(rng, *DIFFRACTIVE_MULTIPLICITY, n_vertices),
            _negative_binomial(rng, *MINBIAS_MULTIPLICITY, n_vertices),
        ),
    )  # [V]
    vertex_of = np.repeat(np.arange(n_vertices), multiplicity)  # [P]
    hard = is_hard[vertex_of]  # [P]
    n = len(vertex_of)
    pt = np.where(hard, sample_tsallis_pt(rng, n, HARD_TSALLIS), sample_tsallis_pt(rng, n, MINBIAS_TSALLIS))
    eta = np.where(hard, sample_eta(rng, n, HARD_ETA_SLOPE), sample_eta(rng, n, MINBIAS_ETA_SLOPE))
    phi = rng.uniform(-np.pi, np.pi, n)
    prompt_momentum = momentum_from(pt, eta, phi)  # [P, 3]
    prompt_charge = np.where(rng.random(n) < 0.5, 1, -1).astype(np.int32)

    kaon_vertex_of, kaon_origin, daughter_momentum, daughter_charge = _kaon_decays(rng, multiplicity, vertex_position)
    all_vertex_of = np.concatenate([vertex_of, kaon_vertex_of])  # [P + D]
    primary_id = _rank_within(all_vertex_of) + 1
    particle_id = pack_particle_id(all_vertex_of + 1, primary_id, 0, 0, 0)
    return Particles(
        particle_id=particle_id,
        vertex=np.concatenate([vertex_position[vertex_of], kaon_origin]),
        momentum=np.concatenate([prompt_momentum, daughter_momentum]),
        charge=np.concatenate([prompt_charge, daughter_charge]).astype(np.int32),
    )


def _kaon_decays(
    rng: np.random.Generator, multiplicity: np.ndarray, vertex_position: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """K0s -> pi+ pi- decays: (vertex index, decay point, momentum, charge) of the listed daughters.

    The kaon flies an exponential distance with mean beta*gamma*c*tau before decaying; each pion gets
    the two-body momentum in the kaon frame, emitted isotropically, boosted to the lab.
    """
    n_kaons = rng.poisson(KAONS_PER_PROMPT * multiplicity)  # [V]
    kaon_vertex = np.repeat(np.arange(len(multiplicity)), n_kaons)  # [K]
    k = len(kaon_vertex)
    kaon_p = momentum_from(
        sample_tsallis_pt(rng, k, MINBIAS_TSALLIS), sample_eta(rng, k, MINBIAS_ETA_SLOPE), rng.uniform(-np.pi, np.pi, k)
    )  # [K, 3]
    p_abs = np.linalg.norm(kaon_p, axis=1)  # [K]
    flight = rng.exponential(KAON_CTAU * p_abs / KAON_MASS)  # [K] mm
    decay_point = vertex_position[kaon_vertex] + kaon_p / p_abs[:, None] * flight[:, None]  # [K, 3]

    # Rest frame: back-to-back pions along an isotropic axis.
    cos_t = rng.uniform(-1.0, 1.0, k)
    phi = rng.uniform(-np.pi, np.pi, k)
    sin_t = np.sqrt(1.0 - cos_t**2)
    axis = np.stack([sin_t * np.cos(phi), sin_t * np.sin(phi), cos_t], axis=1)  # [K, 3]
    energy_star = 0.5 * KAON_MASS
    kaon_energy = np.sqrt(p_abs**2 + KAON_MASS**2)  # [K]
    beta = kaon_p / kaon_energy[:, None]  # [K, 3]
    gamma = kaon_energy / KAON_MASS  # [K]
    daughters = []
    for sign in (1.0, -1.0):
        p_star = sign * KAON_DECAY_MOMENTUM * axis  # [K, 3]
        beta_dot_p = np.einsum("ki,ki->k", beta, p_star)  # [K]
        beta2 = np.einsum("ki,ki->k", beta, beta)
        coefficient = np.where(beta2 > 0, (gamma - 1.0) * beta_dot_p / np.maximum(beta2, 1e-30), 0.0)
        lab = p_star + beta * (coefficient + gamma * energy_star)[:, None]  # [K, 3] Lorentz boost
        daughters.append(lab)
    momentum = np.concatenate(daughters)  # [2K, 3]
    charge = np.concatenate([np.ones(k, np.int32), -np.ones(k, np.int32)])
    origin = np.concatenate([decay_point, decay_point])
    vertex_of = np.concatenate([kaon_vertex, kaon_vertex])
    listed = _listed(momentum)
    return vertex_of[listed], origin[listed], momentum[listed], charge[listed]


def _listed(momentum: np.ndarray) -> np.ndarray:
    """Bool [P]: the particle would appear in a TrackML particles file (pT >= 0.1 GeV, |eta| <= 4)."""
    pt = np.hypot(momentum[:, 0], momentum[:, 1])
    eta = np.arcsinh(momentum[:, 2] / np.maximum(pt, 1e-12))
    return (pt >= PT_MIN) & (np.abs(eta) <= ETA_MAX)


# ---------------------------------------------------------------- generations >= 1


def material_interactions(
    rng: np.random.Generator, parent_id: np.ndarray, position: np.ndarray
) -> tuple[Particles, np.ndarray]:
    """Secondaries made at interactions of particles of one generation with the detector material.

    ``parent_id`` [I] is the interacting particle's id, ``position`` [I, 3] the interaction point. The
    products share the parent's vertex_id and primary_id and have its generation + 1; their
    secondary_id numbers them within the primary's family, so ids are unique when the parents are all
    of one generation (as the generation loop of the event calls this). Also returns, per product,
    the index of its interaction.
    """
    n_products = 1 + rng.poisson(SECONDARY_EXTRA_PRODUCTS, len(parent_id))  # [I]
    of = np.repeat(np.arange(len(parent_id)), n_products)  # [S]
    first = np.r_[True, of[1:] != of[:-1]] if len(of) else np.zeros(0, dtype=bool)  # [S]
    fields = unpack_particle_id(parent_id[of])
    generation = fields["generation"] + 1
    vertex_id, primary_id = fields["vertex_id"], fields["primary_id"]
    s = len(of)
    secondary_id = _rank_within((vertex_id << 16) | primary_id) + 1  # [S]

    pt = _sample_secondary_pt(rng, s)
    cos_t = rng.uniform(-1.0, 1.0, s)  # isotropic directions
    eta = np.arctanh(np.clip(cos_t, -0.999999, 0.999999))
    phi = rng.uniform(-np.pi, np.pi, s)
    momentum = momentum_from(pt, eta, phi)  # [S, 3]
    charge = np.where(rng.random(s) < SECONDARY_POSITIVE_FRACTION, 1, -1).astype(np.int32)
    process = np.where(first, 1, 2)
    particle_id = pack_particle_id(vertex_id, primary_id, generation, secondary_id, process)
    mass = np.where(charge > 0, PROTON_MASS, PION_MASS)
    keep = (secondary_id <= _SECONDARY_MASK) & (generation <= MAX_GENERATION) & _listed(momentum)
    return Particles(particle_id[keep], position[of][keep], momentum[keep], charge[keep], mass[keep]), of[keep]


def _sample_secondary_pt(rng: np.random.Generator, size: int) -> np.ndarray:
    """pT ~ pT^a exp(-pT / b) above PT_MIN: a gamma distribution, redrawn below the cut."""
    shape, scale = SECONDARY_PT_SHAPE
    pt = rng.gamma(shape + 1.0, scale, size)  # [size]
    low = pt < PT_MIN
    while low.any():  # loops over redraw rounds (a handful), not over particles
        pt[low] = rng.gamma(shape + 1.0, scale, int(low.sum()))
        low = pt < PT_MIN
    return pt


# ---------------------------------------------------------------- replay


def particles_from_frame(frame: pd.DataFrame) -> Particles:
    """Kinematics of a real particles file (particle_id, vx..pz, q), to replay through the detector."""
    missing = [c for c in ("particle_id", "vx", "vy", "vz", "px", "py", "pz", "q") if c not in frame.columns]
    if missing:
        raise ValueError(f"replay particles lack column(s) {', '.join(missing)}")
    particle_id = frame["particle_id"].to_numpy(dtype=np.int64)
    charge = frame["q"].to_numpy(dtype=np.int32)
    # The file names no species: as for generated ones, a positive product of a material interaction
    # is taken for a proton (slow ones stop within a few layers), every other particle for a pion.
    secondary = unpack_particle_id(particle_id)["generation"] > 0
    return Particles(
        particle_id=particle_id,
        vertex=frame[["vx", "vy", "vz"]].to_numpy(dtype=np.float64),
        momentum=frame[["px", "py", "pz"]].to_numpy(dtype=np.float64),
        charge=charge,
        mass=np.where(secondary & (charge > 0), PROTON_MASS, PION_MASS),
    )
