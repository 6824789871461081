"""Shared pieces of the simulation tests: one replayed particle in an otherwise empty, clean event."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import pytest

CLEAN = dict(
    pileup=0.0,
    noise_fraction=0.0,
    hit_inefficiency=0.0,
    multiple_scattering=False,
    energy_loss=False,
    secondaries=False,
)
"""SimulationConfig options that leave a replayed particle's path to the helix and the geometry alone."""


@pytest.fixture
def clean() -> dict[str, object]:
    return dict(CLEAN)


@pytest.fixture
def one_particle() -> Callable[..., pd.DataFrame]:
    """A particles frame of one particle: momentum (px, py, pz) in GeV from `vertex`, charge `q`."""

    def make(px: float, pz: float, q: int = 1, py: float = 0.0, vertex=(0.0, 0.0, 0.0), particle_id: int = 1 << 52):
        return pd.DataFrame(
            {"particle_id": [int(particle_id)], "vx": [vertex[0]], "vy": [vertex[1]], "vz": [vertex[2]]}
            | {"px": [px], "py": [py], "pz": [pz], "q": [q], "nhits": [0]}
        )

    return make
