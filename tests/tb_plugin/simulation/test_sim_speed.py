"""Speed-ups of the propagation that must not change a simulated event: each optimised function is
compared, bit for bit, with the straightforward implementation kept here as the reference."""

from __future__ import annotations

import numpy as np
import pytest

from tb_plugin.geometry import Detector
from tb_plugin.simulation.event import module_order
from tb_plugin.simulation.propagation import (
    Helix,
    _SearchSurfaces,
    curvature,
    cylinder_crossings,
    disk_crossings,
    layer_map,
)


def reference_disk_crossings(helix: Helix, z: np.ndarray, r_lo: np.ndarray, r_hi: np.ndarray) -> np.ndarray:
    """disk_crossings as first written: the radius of every plane crossing, ahead or not, is computed."""
    dz = helix.direction[:, 2:3]
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (z[None, :] - helix.position[:, 2:3]) / dz
    ahead = np.isfinite(s) & (s > 1e-6)
    d, alpha, _ = (a[:, None] for a in helix.circle())
    omega = helix.omega[:, None]
    psi = helix.phi0[:, None] + omega * np.where(ahead, s, 0.0) * helix.sin_theta[:, None]
    r2 = d * d + 1.0 / (omega * omega) + 2.0 * d / omega * np.sin(psi - alpha)
    ok = ahead & (r2 >= (r_lo**2)[None, :]) & (r2 <= (r_hi**2)[None, :])
    return np.where(ok, s, np.inf)


@pytest.fixture(scope="module")
def helices_and_surfaces() -> tuple[Helix, _SearchSurfaces]:
    """Helices from all over the built-in detector, every charge, pT from loopers to stiff tracks and
    directions from the beam line to the endcaps (some exactly transverse, dz = 0)."""
    rng = np.random.default_rng(5)
    n = 20_000
    radius, phi = rng.uniform(0, 1000, n), rng.uniform(-np.pi, np.pi, n)
    position = np.stack([radius * np.cos(phi), radius * np.sin(phi), rng.uniform(-3000, 3000, n)], axis=1)
    direction = rng.normal(size=(n, 3))
    direction[: n // 20, 2] = 0.0
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    pt = rng.lognormal(0.0, 1.0, n) * np.hypot(direction[:, 0], direction[:, 1])
    helix = Helix(position, direction, curvature(rng.choice([-1.0, 1.0], n), pt, 2.0))
    return helix, _SearchSurfaces.of(layer_map(Detector.builtin()))


def test_disk_crossings_are_the_reference_ones(helices_and_surfaces):
    helix, surfaces = helices_and_surfaces
    expected = reference_disk_crossings(helix, surfaces.disk_z, surfaces.disk_r_lo, surfaces.disk_r_hi)
    assert np.isfinite(expected).any(axis=1).mean() > 0.3  # the check is not vacuous
    got = disk_crossings(helix, surfaces.disk_z, surfaces.disk_r_lo, surfaces.disk_r_hi)
    np.testing.assert_array_equal(got, expected)


def test_a_bound_from_the_cylinders_keeps_the_nearest_surface(helices_and_surfaces):
    """propagate passes the nearest cylinder crossing as ``before``: disks beyond it become inf, which
    must leave the nearest surface and its distance exactly as without the bound."""
    helix, surfaces = helices_and_surfaces
    s_cyl = cylinder_crossings(helix, surfaces.cyl_radius, surfaces.cyl_z_lo, surfaces.cyl_z_hi)
    before = s_cyl.min(axis=1)
    expected = reference_disk_crossings(helix, surfaces.disk_z, surfaces.disk_r_lo, surfaces.disk_r_hi)
    got = disk_crossings(helix, surfaces.disk_z, surfaces.disk_r_lo, surfaces.disk_r_hi, before)
    nearer = expected < before[:, None]
    np.testing.assert_array_equal(got[nearer], expected[nearer])
    assert np.isinf(got[~nearer]).all()
    full, bounded = np.concatenate([s_cyl, expected], axis=1), np.concatenate([s_cyl, got], axis=1)
    np.testing.assert_array_equal(np.argmin(bounded, axis=1), np.argmin(full, axis=1))
    assert (np.argmin(full, axis=1) >= s_cyl.shape[1]).mean() > 0.05  # some particles go to a disk next


@pytest.mark.parametrize(
    ("n_modules", "repeated"), [(1, False), (3, False), (18_728, False), (18_728, True), (10**15, False)]
)
def test_module_order_is_lexsort(n_modules, repeated):
    """Distinct keys take the fast path; a repeated (module, tiebreak) pair, or modules so large that
    module + tiebreak rounds keys together, take lexsort's."""
    rng = np.random.default_rng(n_modules % 1000)
    module = rng.integers(0, n_modules, 50_000)
    tiebreak = rng.random(50_000)
    if repeated:  # equal pairs: lexsort orders them by position
        tiebreak[:10], module[:10] = tiebreak[10:20], module[10:20]
    np.testing.assert_array_equal(module_order(module, tiebreak), np.lexsort((tiebreak, module)))
