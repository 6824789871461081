"""The knobs of the event simulation, validated once where the config is made.

Defaults reproduce a TrackML-like event at pile-up 200: the constants behind them were tuned against
the particles files of several real training events (see ``benchmarks/README.md``), not one event.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields

from tb_plugin.simulation.field import TRACKML_FALLOFF_POWER, TRACKML_HALF_FIELD_Z_MM

LHC_VERTEX_SIGMA_Z_MM = 50.0
"""Longitudinal spread (mm) of the LHC luminous region, the LHC-like alternative to TrackML's 5.5."""


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that decides what ``simulate_event`` produces, besides the detector and event id."""

    n_events: int = 10
    """Number of events ``simulate_dataset`` writes."""
    pileup: float = 200.0
    """Mean number of pp interactions per event (Poisson); 0 leaves only the hard scatter, if on. At
    most 1000, so vertex ids stay within the particle_id bit field (below its sign bit)."""
    seed: int = 0
    """Master seed; each event draws from a generator seeded by (seed, event_id)."""
    first_event: int = 1000
    """Event id of the first event; the rest follow consecutively."""
    hit_inefficiency: float = 0.01
    """Probability that a true module crossing leaves no hit. 1 % is typical of silicon trackers
    (dead channels, threshold losses); TrackML does not state its value."""
    min_cos_incidence: float = 0.1
    """A crossing leaves no hit where the particle meets the sensor at |cos(incidence)| below this,
    nearly along its plane: measured at 0.10 on the TrackML event 1001 (see
    ``digitization.at_readable_incidence``). 0 records every crossing."""
    noise_fraction: float = 0.19
    """Fraction of all hits that are noise (particle_id 0); 19 % in the real TrackML event 1001."""
    with_cells: bool = False
    """Also produce the cells part (pixel/strip channels of each hit)."""
    b_field_tesla: float = 2.0
    """Solenoid field along +z at the centre of the detector, in tesla."""
    b_field_half_z_mm: float = TRACKML_HALF_FIELD_Z_MM
    """|z| (mm) where the field has fallen to half its central value, as fitted to the TrackML hits
    (``field.SolenoidField``); 0 keeps it uniform everywhere (``tb simulate --uniform-field``)."""
    b_field_falloff_power: float = TRACKML_FALLOFF_POWER
    """How sharply the field falls off around ``b_field_half_z_mm``: Bz = B0 / (1 + (|z| / z_half)^n)."""
    hard_scatter: bool = True
    """Add one hard interaction (vertex_id 1, a harder and busier spectrum, like the tt-bar of TrackML)."""
    vertex_sigma_z_mm: float = 5.5
    """Longitudinal spread of the interaction vertices (mm): 5.5, that of the TrackML files (the standard
    deviation of the primary vertices' z is 5.3 to 6.0 mm in events 1000-1004). The LHC luminous region
    is about ten times longer: ``LHC_VERTEX_SIGMA_Z_MM`` (``tb simulate --vertex-sigma-z 50``) gives
    an LHC-like event, whose vertices are easier to tell apart along z."""
    vertex_mean_z_mm: float = 0.0
    """Where the luminous region is centred along the beam (mm): a beam spot moved from the nominal
    centre, as between fills or experiments (``tb simulate --vertex-z-mean``)."""
    vertex_sigma_xy_mm: float = 0.015
    """Transverse spread of the interaction vertices (mm), as in the TrackML files."""
    secondaries: bool = True
    """Simulate nuclear interactions with the material: they absorb particles and make secondaries
    (generation > 0). When replaying a real file, its own secondaries mark where their parents end."""
    min_pt_traced: float = 0.15
    """Particles below this transverse momentum (GeV) are listed but not followed: in the TrackML
    production no particle produced under 150 MeV has more than one hit (a secondary may have one in
    the module where it is made) and 96-98 % of those from the beam have none."""
    max_turns: float = 0.5
    """How far a particle is followed, in turns of its helix seen along z. Half a turn takes a particle
    from its vertex to its largest radius: the TrackML files record no more (their curling particles
    never come back through the inner layers). Above 0.5 a looper curls back and re-crosses the inner
    layers as in a real detector; the cap stops endless loopers."""
    max_crossings: int = 60
    """Upper bound on the surfaces (layers, beam pipe) one particle is followed through."""
    multiple_scattering: bool = True
    """Deflect particles at every crossed module by the Highland angle."""
    energy_loss: bool = True
    """Lower the momentum by the mean ionisation loss in each crossed module (a small effect)."""

    def __post_init__(self) -> None:
        _check_int("n_events", self.n_events, 1, 10_000_000)
        _check_float("pileup", self.pileup, 0.0, 1000.0)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_int("first_event", self.first_event, 0, 999_999_999)
        if self.first_event + self.n_events - 1 > 999_999_999:
            raise ValueError(
                f"first_event + n_events - 1 = {self.first_event + self.n_events - 1}: event ids must stay "
                "within 0..999999999 (nine digits in the file names)"
            )
        _check_float("hit_inefficiency", self.hit_inefficiency, 0.0, 0.99)
        _check_float("min_cos_incidence", self.min_cos_incidence, 0.0, 0.9)
        _check_float("noise_fraction", self.noise_fraction, 0.0, 0.95)
        _check_float("b_field_tesla", self.b_field_tesla, 0.01, 10.0)
        _check_float("b_field_half_z_mm", self.b_field_half_z_mm, 0.0, 100_000.0)
        _check_float("b_field_falloff_power", self.b_field_falloff_power, 1.0, 50.0)
        _check_float("vertex_sigma_z_mm", self.vertex_sigma_z_mm, 0.0, 500.0)
        _check_float("vertex_sigma_xy_mm", self.vertex_sigma_xy_mm, 0.0, 5.0)
        _check_float("vertex_mean_z_mm", self.vertex_mean_z_mm, -500.0, 500.0)
        _check_float("min_pt_traced", self.min_pt_traced, 0.0, 100.0)
        _check_float("max_turns", self.max_turns, 0.05, 100.0)
        _check_int("max_crossings", self.max_crossings, 1, 10_000)
        for flag in ("with_cells", "hard_scatter", "secondaries", "multiple_scattering", "energy_loss"):
            value = getattr(self, flag)
            if not isinstance(value, bool):
                raise ValueError(f"SimulationConfig.{flag} = {value!r}: expected true or false")

    def record(self) -> dict[str, object]:
        """The config as a plain mapping (for provenance records)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise ValueError(f"SimulationConfig.{name} = {value!r}: expected an integer in [{low}, {high}]")


def _check_float(name: str, value: object, low: float, high: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise ValueError(f"SimulationConfig.{name} = {value!r}: expected a number in [{low}, {high}]")
