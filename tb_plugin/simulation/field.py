"""The solenoid field particles bend in: Bz along the beam, falling off towards the ends of the solenoid.

The TrackML files were not simulated in a uniform field. Replaying event 1001's prompt particles
above 1 GeV through a uniform 2 T field puts their hits on the side of more bending than the real
hits, by nothing in the central barrel but by a charge-signed r * dphi of +2 mm at |z| = 1.1-1.6 m
and r > 0.75 m, and of +2, +7 and +12 mm at |z| = 2.2-3.1 m and r = 0.2-0.5, 0.5-0.75 and 0.75-1.1 m
(medians over 100-2,900 hits per bin; ``benchmarks/simulation_realism.py``). The profile below was
fitted to those displacements with this simulation's own stepping (the field at the middle of each
step, see ``propagation._step_helix``): Bz(z) = B0 / (1 + (|z| / z_half)^n) with z_half = 2.0 m and
n = 3.5 takes the largest median from 12.4 mm to 0.3 mm and their hit-weighted RMS from 2.0 to
0.11 mm. Its neighbours fit worse: (1.9 m, 3.5) 0.36 mm, (2.1 m, 3.5) 0.25 mm, (2.0 m, 3.25)
0.25 mm, (2.0 m, 3.75) 0.17 mm. It is an effective profile along z only: the real field also has
radial components and varies with r, which one event of hits without truth cannot pin down.

What it changes besides positions: low-pT particles curl less at large |z|, so the long-strip endcaps
get the hits the uniform field gave to smaller radii (volumes 16 and 18 of the replay: 0.88 and 0.93
of the real counts in a uniform field, 0.96 and 1.00 in this one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TRACKML_HALF_FIELD_Z_MM = 2000.0
"""|z| (mm) where the fitted TrackML field has fallen to half its central value."""
TRACKML_FALLOFF_POWER = 3.5
"""How sharply it falls there: the exponent n of 1 / (1 + (|z| / z_half)^n)."""


@dataclass(frozen=True)
class SolenoidField:
    """Bz(z) = central_tesla / (1 + (|z| / half_field_z_mm)^falloff_power); uniform if half_field_z_mm is 0."""

    central_tesla: float
    half_field_z_mm: float = TRACKML_HALF_FIELD_Z_MM
    falloff_power: float = TRACKML_FALLOFF_POWER

    @property
    def uniform(self) -> bool:
        return self.half_field_z_mm <= 0.0

    def bz(self, z: np.ndarray) -> np.ndarray:
        """Field (tesla) at positions with these z (mm), [N] -> [N]."""
        if self.uniform:
            return np.full(np.shape(z), self.central_tesla)
        return self.central_tesla / (1.0 + (np.abs(z) / self.half_field_z_mm) ** self.falloff_power)
