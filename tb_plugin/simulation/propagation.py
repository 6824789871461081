"""Charged particles through the solenoid field and the module planes of the detector.

A particle moves on a helix along the field (+z), whose strength is taken at the middle of each step
(``field.SolenoidField``: it falls off towards the ends of the solenoid). The propagation goes from
surface to surface: each layer is represented by one surface (a cylinder at the mean radius of a
barrel layer, a plane at the mean z of an endcap disk) plus the beam pipe. For every live particle the next surface along the helix
is found in closed form; there the few modules that can be hit are looked up in a precomputed grid of
the layer, and the exact crossing of the helix with each module plane is found by Newton's method on
the signed distance to the plane as a function of path length. A crossing inside the module bounds is
a hit (overlapping modules give two hits in one layer). Multiple scattering (Highland) and the mean
ionisation loss, for the layer's whole material (``LAYER_MATERIAL_FACTOR``), are applied at each
crossed surface, then the helix is restarted from there. A particle gets no hit in the sensor it
starts in.

A particle stops when no surface is ahead of it (it left the detector), after ``max_turns`` turns of its
helix or after ``max_crossings`` surfaces. Loops run over these steps, never over particles or hits.

Sign convention: with B along +z the Lorentz force q v x B turns a positive particle clockwise seen
from +z, so the azimuth of its direction changes as d(phi)/ds_T = -q * 0.3 B / pT.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from tb_plugin.geometry import Detector
from tb_plugin.simulation.field import SolenoidField

SILICON_X0_MM = 93.7
LAYER_MATERIAL_FACTOR = 4.0
"""A layer's material per crossing, in units of its sensor's silicon: supports, electronics, cooling
and cables, which detectors.csv leaves out, scatter and slow particles too. Measured on the replay of
event 1001: with 4 the distance from each replayed hit of a prompt particle to the nearest real hit
matches the distance to the nearest hit of a second replay (other seed), layer by layer from r = 72
to 1020 mm, to within 10 % on average, for pT 0.4-0.8 GeV as for pT > 1 GeV (sensors alone: the real
hits lay up to twice as far, 5.7 against 3.0 mm at r = 660 mm for pT 0.4-0.8 GeV; 3 and 5 bracket
it)."""
SILICON_DEDX = 0.3876e-3  # GeV per mm, mean ionisation loss of a minimum-ionising particle in silicon
GEV_PER_TESLA_METRE = 0.299792458  # pT [GeV] = 0.3 B [T] R [m] for unit charge
ELECTRON_MASS = 0.000511  # GeV
SILICON_EXCITATION = 173e-9  # GeV, mean excitation energy I of silicon
BEAM_PIPE_RADIUS = 19.0  # mm, where the TrackML secondaries show the beam pipe
BEAM_PIPE_X0_FRACTION = 0.0023  # 0.8 mm of beryllium
GRID_MARGIN_MM = 2.0  # modules are listed in grid cells within this distance of their outline
NEWTON_WINDOW_MM = 150.0  # a module crossing further than this from the layer surface is not trusted
SURFACE_MARGIN_MM = 10.0  # surfaces extend this far beyond the modules they stand for
STEP_TOLERANCE_MM = 0.01  # a step is searched again in the field at its middle if that moves its end further


@dataclass(frozen=True)
class LayerMap:
    """Per-detector lookup structures, built once and reused by every event.

    Coordinates: a barrel layer is addressed by (phi, z), an endcap layer by (phi, r); ``a`` below is
    the coordinate across the layer (r for barrels, z for endcaps), ``b`` the one along it.
    """

    detector: Detector
    module_layer: np.ndarray  # int64 [M], layer index of each module
    normal: np.ndarray  # float64 [M, 3], module w axis
    barrel: np.ndarray  # bool [L]
    a_mid: np.ndarray  # float64 [L], radius (barrel) or z (endcap) of the layer surface
    a_lo: np.ndarray  # float64 [L], extent of the module material across the layer
    a_hi: np.ndarray  # float64 [L]
    b_lo: np.ndarray  # float64 [L], extent of the modules along the layer (z or r), with margin
    b_hi: np.ndarray  # float64 [L]
    n_phi: np.ndarray  # int64 [L], grid cells in phi
    b_cell: np.ndarray  # float64 [L], grid cell size in b
    n_b: np.ndarray  # int64 [L], grid cells in b
    cell_offset: np.ndarray  # int64 [L], first row of the layer in ``candidates``
    candidates: np.ndarray  # int64 [cells, K], module indices per grid cell, -1 padded
    exit_r: float  # a particle beyond this radius or |z| has left the detector
    exit_z: float

    @property
    def n_layers(self) -> int:
        return int(self.barrel.shape[0])


_CACHE: dict[int, LayerMap] = {}
_CACHE_LOCK = threading.Lock()


def layer_map(detector: Detector) -> LayerMap:
    """The lookup structures of `detector`, built on first use and kept for the process."""
    with _CACHE_LOCK:
        cached = _CACHE.get(id(detector))
        if cached is None or cached.detector is not detector:
            cached = _build_layer_map(detector)
            _CACHE[id(detector)] = cached
        return cached


def module_outline(detector: Detector) -> np.ndarray:
    """Nine points of each module (corners, edge middles, centre) in global coordinates [M, 9, 3]."""
    v = np.array([-1.0, -1.0, -1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0])  # in units of hv
    u = np.array([-1.0, 0.0, 1.0, -1.0, 0.0, 1.0, -1.0, 0.0, 1.0])  # in units of hu(v)
    local_v = detector.hv[:, None] * v[None, :]  # [M, 9]
    frac = (v[None, :] + 1.0) / 2.0
    half_u = detector.min_hu[:, None] + (detector.max_hu - detector.min_hu)[:, None] * frac  # [M, 9]
    local = np.stack([half_u * u[None, :], local_v, np.zeros_like(local_v)], axis=2)  # [M, 9, 3]
    return detector.center[:, None, :] + np.einsum("mij,mkj->mki", detector.rotation, local)


def _build_layer_map(detector: Detector) -> LayerMap:
    """Group modules into layers and grid each layer's modules by the cells their outlines touch."""
    keys = detector.volume_id.astype(np.int64) * 100_000 + detector.layer_id  # [M]
    _, module_layer = np.unique(keys, return_inverse=True)  # modules are sorted, so layers are too
    n_layers = int(module_layer.max()) + 1
    normal = detector.rotation[:, :, 2]  # [M, 3]
    barrel = (
        np.bincount(module_layer, weights=np.abs(normal[:, 2]), minlength=n_layers)
        / np.bincount(module_layer, minlength=n_layers)
        < 0.5
    )  # [L] normals radial, not along z

    outline = module_outline(detector)  # [M, 9, 3]
    radius = np.hypot(outline[..., 0], outline[..., 1])  # [M, 9]
    z = outline[..., 2]
    is_barrel = barrel[module_layer]  # [M]
    a_pts = np.where(is_barrel[:, None], radius, z)  # [M, 9]
    b_pts = np.where(is_barrel[:, None], z, radius)
    half_t = detector.thickness / 2.0
    a_centre = np.where(is_barrel, np.hypot(detector.center[:, 0], detector.center[:, 1]), detector.center[:, 2])
    a_lo = _group_min(a_pts.min(axis=1) - half_t, module_layer, n_layers)
    a_hi = _group_max(a_pts.max(axis=1) + half_t, module_layer, n_layers)
    a_mid = np.bincount(module_layer, weights=a_centre, minlength=n_layers) / np.bincount(module_layer)
    b_min_m, b_max_m = b_pts.min(axis=1) - GRID_MARGIN_MM, b_pts.max(axis=1) + GRID_MARGIN_MM  # [M]
    b_lo = _group_min(b_min_m, module_layer, n_layers)
    b_hi = _group_max(b_max_m, module_layer, n_layers)

    # Phi extent of each module around its centre's phi (modules never span more than pi).
    phi_c = np.arctan2(detector.center[:, 1], detector.center[:, 0])  # [M]
    dphi = _wrap(np.arctan2(outline[..., 1], outline[..., 0]) - phi_c[:, None])  # [M, 9]
    margin_phi = GRID_MARGIN_MM / np.maximum(radius.min(axis=1), 1.0)  # [M]
    phi_lo = phi_c + dphi.min(axis=1) - margin_phi
    phi_hi = phi_c + dphi.max(axis=1) + margin_phi

    # Cells of about half a module in each direction.
    phi_width = np.array([np.median((phi_hi - phi_lo)[module_layer == i]) for i in range(n_layers)])
    b_width = np.array([np.median((b_max_m - b_min_m)[module_layer == i]) for i in range(n_layers)])
    n_phi = np.maximum(1, np.ceil(2.0 * 2.0 * np.pi / phi_width)).astype(np.int64)  # [L]
    b_cell = b_width / 2.0
    n_b = np.maximum(1, np.ceil((b_hi - b_lo) / b_cell)).astype(np.int64)
    cell_offset = np.r_[0, np.cumsum(n_phi * n_b)[:-1]].astype(np.int64)

    # Every (cell, module) pair where the module's box touches the cell.
    lay = module_layer
    i_phi0 = np.floor((phi_lo + np.pi) / (2 * np.pi) * n_phi[lay]).astype(np.int64)  # [M]
    i_phi1 = np.floor((phi_hi + np.pi) / (2 * np.pi) * n_phi[lay]).astype(np.int64)
    i_b0 = np.clip(np.floor((b_min_m - b_lo[lay]) / b_cell[lay]), 0, n_b[lay] - 1).astype(np.int64)
    i_b1 = np.clip(np.floor((b_max_m - b_lo[lay]) / b_cell[lay]), 0, n_b[lay] - 1).astype(np.int64)
    span_phi = i_phi1 - i_phi0 + 1
    span_b = i_b1 - i_b0 + 1
    count = span_phi * span_b  # [M]
    module = np.repeat(np.arange(len(detector)), count)  # [Q]
    k = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)  # rank inside each module
    cell_phi = (i_phi0[module] + k // span_b[module]) % n_phi[lay[module]]
    cell_b = i_b0[module] + k % span_b[module]
    cell = cell_offset[lay[module]] + cell_phi * n_b[lay[module]] + cell_b  # [Q]
    n_cells = int((n_phi * n_b).sum())
    per_cell = np.bincount(cell, minlength=n_cells)
    order = np.argsort(cell, kind="stable")
    rank = np.arange(len(cell)) - np.repeat(np.cumsum(per_cell) - per_cell, per_cell)
    candidates = np.full((n_cells, int(per_cell.max())), -1, dtype=np.int64)
    candidates[cell[order], rank] = module[order]

    corner_r = np.hypot(outline[..., 0], outline[..., 1]).max()
    return LayerMap(
        detector=detector,
        module_layer=module_layer.astype(np.int64),
        normal=normal,
        barrel=barrel,
        a_mid=a_mid,
        a_lo=a_lo,
        a_hi=a_hi,
        b_lo=b_lo,
        b_hi=b_hi,
        n_phi=n_phi,
        b_cell=b_cell,
        n_b=n_b,
        cell_offset=cell_offset,
        candidates=candidates,
        exit_r=float(corner_r + SURFACE_MARGIN_MM),
        exit_z=float(np.abs(outline[..., 2]).max() + SURFACE_MARGIN_MM),
    )


def _group_min(values: np.ndarray, group: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, np.inf)
    np.minimum.at(out, group, values)
    return out


def _group_max(values: np.ndarray, group: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, -np.inf)
    np.maximum.at(out, group, values)
    return out


def _wrap(angle: np.ndarray) -> np.ndarray:
    """Angles to [-pi, pi)."""
    return (angle + np.pi) % (2 * np.pi) - np.pi


# ---------------------------------------------------------------------------- helix


@dataclass
class Helix:
    """Helix states at their start points: everything the closed-form position needs."""

    position: np.ndarray  # [N, 3] mm
    direction: np.ndarray  # [N, 3] unit
    omega: np.ndarray  # [N] signed curvature per unit transverse path (1/mm)

    def __post_init__(self) -> None:
        self.sin_theta = np.maximum(np.hypot(self.direction[:, 0], self.direction[:, 1]), 1e-12)  # [N]
        self.phi0 = np.arctan2(self.direction[:, 1], self.direction[:, 0])  # [N]

    def circle(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The helix seen along z: distance d of its centre from the beam, azimuth alpha of the centre,
        and p.n, the start point projected on the left normal of the direction (all [N])."""
        normal_x, normal_y = -np.sin(self.phi0), np.cos(self.phi0)
        inv_omega = 1.0 / self.omega
        cx = self.position[:, 0] + normal_x * inv_omega
        cy = self.position[:, 1] + normal_y * inv_omega
        p_dot_n = self.position[:, 0] * normal_x + self.position[:, 1] * normal_y
        return np.hypot(cx, cy), np.arctan2(cy, cx), p_dot_n

    def at(self, s: np.ndarray, rows: np.ndarray | slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """Position and unit direction after path length `s` (3D, mm); `rows` picks the helices of `s`."""
        x0, dz = self.position[rows], self.direction[rows, 2]
        sin_t, phi0, omega = self.sin_theta[rows], self.phi0[rows], self.omega[rows]
        s_t = s * sin_t  # transverse path
        half = 0.5 * omega * s_t  # half the turning angle
        small = np.abs(half) < 1e-6
        ratio = np.where(small, 1.0 - half * half / 6.0, np.sin(half) / np.where(small, 1.0, half))
        chord = s_t * ratio  # 2 sin(half) / omega, stable for straight tracks
        mid_angle = phi0 + half
        psi = mid_angle + half
        position = np.empty(x0.shape)
        position[:, 0] = x0[:, 0] + chord * np.cos(mid_angle)
        position[:, 1] = x0[:, 1] + chord * np.sin(mid_angle)
        position[:, 2] = x0[:, 2] + s * dz
        direction = np.empty(x0.shape)
        direction[:, 0] = sin_t * np.cos(psi)
        direction[:, 1] = sin_t * np.sin(psi)
        direction[:, 2] = dz
        return position, direction


def curvature(charge: np.ndarray, pt: np.ndarray, b_field: float | np.ndarray) -> np.ndarray:
    """Signed omega = d(phi)/d(s_T) in 1/mm: negative (clockwise) for positive charges in +z field."""
    return -charge * GEV_PER_TESLA_METRE * b_field * 1e-3 / np.maximum(pt, 1e-9)


def cylinder_crossings(helix: Helix, radius: np.ndarray, z_lo: np.ndarray, z_hi: np.ndarray) -> np.ndarray:
    """Path length (3D, mm) to the next crossing of each cylinder [N, C], inf where none ahead.

    The helix is a circle of centre c and radius 1/|omega| seen along z; it meets the cylinder where
    sin(psi - alpha) = S, alpha the azimuth of c, psi the direction azimuth at the crossing.
    """
    p = helix.position
    omega = helix.omega[:, None]  # [N, 1]
    d, alpha, p_dot_n = (a[:, None] for a in helix.circle())  # [N, 1] each
    p2 = (p[:, 0] ** 2 + p[:, 1] ** 2)[:, None]
    inv_omega = 1.0 / omega
    with np.errstate(divide="ignore", invalid="ignore"):
        sine = (omega * (radius[None, :] ** 2 - p2) - 2.0 * p_dot_n - 2.0 * inv_omega) / (2.0 * d)  # [N, C]
    meets = np.abs(sine) <= 1.0
    arc = np.arcsin(np.clip(sine, -1.0, 1.0))
    turn = 2.0 * np.pi / np.abs(omega)  # transverse length of a full turn [N, 1]
    best = np.full(sine.shape, np.inf)
    dz_per_st = (helix.direction[:, 2] / helix.sin_theta)[:, None]
    for psi in (alpha + arc, alpha + np.pi - arc):
        s_t = ((psi - helix.phi0[:, None]) * np.sign(omega)) % (2.0 * np.pi) / np.abs(omega)  # [N, C]
        z = p[:, 2:3] + s_t * dz_per_st
        ok = meets & (s_t > 1e-4) & (s_t < turn - 1e-4) & (z >= z_lo[None, :]) & (z <= z_hi[None, :])
        best = np.where(ok & (s_t < best), s_t, best)
    return best / helix.sin_theta[:, None]


def disk_crossings(
    helix: Helix, z: np.ndarray, r_lo: np.ndarray, r_hi: np.ndarray, before: np.ndarray | None = None
) -> np.ndarray:
    """Path length (3D, mm) to the crossing of each plane z = const [N, D] within r_lo..r_hi, else inf.

    ``before`` [N]: a path length already reached on another surface; planes at or beyond it are
    reported as inf without computing their radius (the sine below is most of the cost), which
    cannot change the nearest surface.
    """
    dz = helix.direction[:, 2:3]  # [N, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (z[None, :] - helix.position[:, 2:3]) / dz  # [N, D]
    ahead = np.isfinite(s) & (s > 1e-6)
    if before is not None:
        ahead &= s < before[:, None]
    # Radius on the circle: r^2 = d^2 + 1/omega^2 + 2 (d / omega) sin(psi - alpha).
    row, disk = np.nonzero(ahead)
    d, alpha, _ = (a[row] for a in helix.circle())
    omega = helix.omega[row]
    psi = helix.phi0[row] + omega * s[row, disk] * helix.sin_theta[row]
    r2 = d * d + 1.0 / (omega * omega) + 2.0 * d / omega * np.sin(psi - alpha)
    ok = (r2 >= r_lo[disk] ** 2) & (r2 <= r_hi[disk] ** 2)
    out = np.full(s.shape, np.inf)
    out[row[ok], disk[ok]] = s[row[ok], disk[ok]]
    return out


# ---------------------------------------------------------------------------- propagation


@dataclass
class Crossings:
    """True module crossings (one per hit before digitisation)."""

    particle: np.ndarray  # int64 [H], index into the propagated particles
    module: np.ndarray  # int64 [H], dense module index
    position: np.ndarray  # float64 [H, 3], on the module mid-plane
    momentum: np.ndarray  # float64 [H, 3], GeV at the crossing
    x_over_x0: np.ndarray  # float64 [H], material traversed (radiation lengths)
    step: np.ndarray  # int64 [H], surface count along the particle's path (orders its crossings)


@dataclass
class MaterialPoints:
    """Every place where a particle went through material: modules and the beam pipe."""

    particle: np.ndarray  # int64 [C]
    position: np.ndarray  # float64 [C, 3]
    x_over_x0: np.ndarray  # float64 [C]
    step: np.ndarray  # int64 [C], as Crossings.step
    in_beam_pipe: np.ndarray  # bool [C], the crossing is the beam pipe's (not a module's)
    module: np.ndarray  # int64 [C], the module crossed; -1 for the beam pipe


@dataclass(frozen=True)
class PropagationOptions:
    field: SolenoidField
    max_turns: float
    max_crossings: int
    multiple_scattering: bool
    energy_loss: bool


@dataclass(frozen=True)
class _SearchSurfaces:
    """Surfaces searched at every step: barrel layers, the beam pipe and the outer boundary
    (cylinders), endcap layers and the two end boundaries (planes). Reaching a boundary ends the
    particle. ``surface_id`` is the layer index, ``pipe`` or ``boundary`` per cylinder then plane."""

    cyl_radius: np.ndarray  # [C]
    cyl_z_lo: np.ndarray
    cyl_z_hi: np.ndarray
    disk_z: np.ndarray  # [D]
    disk_r_lo: np.ndarray
    disk_r_hi: np.ndarray
    surface_id: np.ndarray  # [C + D]
    pipe: int
    boundary: int

    @staticmethod
    def of(layers: LayerMap) -> _SearchSurfaces:
        barrel, endcap = np.flatnonzero(layers.barrel), np.flatnonzero(~layers.barrel)
        pipe, boundary = layers.n_layers, layers.n_layers + 1
        return _SearchSurfaces(
            cyl_radius=np.r_[layers.a_mid[barrel], BEAM_PIPE_RADIUS, layers.exit_r],
            cyl_z_lo=np.r_[layers.b_lo[barrel] - SURFACE_MARGIN_MM, -layers.exit_z, -layers.exit_z],
            cyl_z_hi=np.r_[layers.b_hi[barrel] + SURFACE_MARGIN_MM, layers.exit_z, layers.exit_z],
            disk_z=np.r_[layers.a_mid[endcap], -layers.exit_z, layers.exit_z],
            disk_r_lo=np.r_[layers.b_lo[endcap] - SURFACE_MARGIN_MM, 0.0, 0.0],
            disk_r_hi=np.r_[layers.b_hi[endcap] + SURFACE_MARGIN_MM, layers.exit_r, layers.exit_r],
            surface_id=np.r_[barrel, pipe, boundary, endcap, boundary, boundary],
            pipe=pipe,
            boundary=boundary,
        )


def propagate(
    vertex: np.ndarray,
    momentum: np.ndarray,
    charge: np.ndarray,
    mass: np.ndarray,
    layers: LayerMap,
    options: PropagationOptions,
    rng: np.random.Generator,
) -> tuple[Crossings, MaterialPoints]:
    """Follow particles [P] from their vertices through the detector; module crossings and material."""
    surfaces = _SearchSurfaces.of(layers)
    p_abs = np.linalg.norm(momentum, axis=1)
    alive = p_abs > 0
    index = np.flatnonzero(alive)  # [A] particle of each live state
    position = vertex[alive].astype(np.float64)
    direction = momentum[alive] / p_abs[alive, None]
    p_abs = p_abs[alive]
    q = charge[alive].astype(np.float64)
    m = mass[alive].astype(np.float64)
    turned = np.zeros(len(index))  # turning angle so far (rad)
    hits: list[tuple[np.ndarray, ...]] = []
    material: list[tuple[np.ndarray, ...]] = []
    max_angle = 2.0 * np.pi * options.max_turns

    for step in range(options.max_crossings):  # one surface per step
        if len(index) == 0:
            break
        pt = p_abs * np.hypot(direction[:, 0], direction[:, 1])
        helix, nearest, s_next = _step_helix(position, direction, q, pt, options.field, surfaces)
        angle = turned + np.abs(helix.omega) * s_next * helix.sin_theta
        go = np.isfinite(s_next) & (angle <= max_angle) & (surfaces.surface_id[nearest] != surfaces.boundary)
        index, helix_rows, s_next = index[go], np.flatnonzero(go), s_next[go]
        turned = angle[go]
        surface = surfaces.surface_id[nearest[go]]  # [A'] layer index, or pipe
        position, direction = helix.at(s_next, helix_rows)
        p_abs, q, m = p_abs[go], q[go], m[go]
        omega = helix.omega[go]

        x_over_x0 = np.zeros(len(index))  # material crossed at this step, per live particle
        on_layer = np.flatnonzero(surface < layers.n_layers)
        if len(on_layer):
            found = _module_crossings(
                layers, Helix(position[on_layer], direction[on_layer], omega[on_layer]), surface[on_layer]
            )
            beyond = _beyond_production_module(vertex[index[on_layer[found[0]]]], found[2], found[4])
            row, module, hit_pos, hit_dir, hit_x0 = (column[beyond] for column in found)
            state = on_layer[row]
            step_of = np.full(len(state), step)
            hits.append((index[state], module, hit_pos, hit_dir * p_abs[state, None], hit_x0, step_of))
            material.append((index[state], hit_pos, hit_x0, step_of, np.zeros(len(state), dtype=bool), module))
            x_over_x0 += np.bincount(state, weights=hit_x0, minlength=len(index))
        in_pipe = np.flatnonzero(surface == surfaces.pipe)
        if len(in_pipe):
            radial = np.abs(radial_rate(position[in_pipe], direction[in_pipe]))  # cosine of incidence
            pipe_x0 = BEAM_PIPE_X0_FRACTION / np.maximum(radial, 0.05)
            material.append(
                (
                    index[in_pipe],
                    position[in_pipe],
                    pipe_x0,
                    np.full(len(in_pipe), step),
                    np.ones(len(in_pipe), dtype=bool),
                    np.full(len(in_pipe), -1),
                )
            )
            x_over_x0[in_pipe] += pipe_x0

        direction, p_abs = _interact_with_material(direction, p_abs, m, x_over_x0, options, rng)
        keep = p_abs > 0.05 * m + 0.005  # stopped (kinetic energy below about a MeV): dropped
        index, position, direction, p_abs, q, m, turned = (
            index[keep],
            position[keep],
            direction[keep],
            p_abs[keep],
            q[keep],
            m[keep],
            turned[keep],
        )

    return _stack_crossings(hits), _stack_material(material)


def _next_surface(helix: Helix, surfaces: _SearchSurfaces) -> tuple[np.ndarray, np.ndarray]:
    """Index [A] of the nearest surface ahead of each helix and the path length to it [A] (inf: none)."""
    s_cyl = cylinder_crossings(helix, surfaces.cyl_radius, surfaces.cyl_z_lo, surfaces.cyl_z_hi)
    s_disk = disk_crossings(helix, surfaces.disk_z, surfaces.disk_r_lo, surfaces.disk_r_hi, s_cyl.min(axis=1))
    s_all = np.concatenate([s_cyl, s_disk], axis=1)  # [A, C + D]
    nearest = np.argmin(s_all, axis=1)
    return nearest, s_all[np.arange(len(nearest)), nearest]


def _step_helix(
    position: np.ndarray,
    direction: np.ndarray,
    charge: np.ndarray,
    pt: np.ndarray,
    field: SolenoidField,
    surfaces: _SearchSurfaces,
) -> tuple[Helix, np.ndarray, np.ndarray]:
    """The helix [A] of each state up to its next surface, the surface and the path length to it.

    The field is held constant over a step, so a step is a helix. Where it is not uniform, the step
    is searched twice: first in the field where the particle is, then in the field halfway along that
    first step (z grows linearly with path length, whatever the curvature), which is the step taken.
    Taking the field at the start only would bend particles too much wherever it falls off, since a
    step between two endcap disks can be 400 mm long. The second search is skipped where the two
    curvatures would end the step less than ``STEP_TOLERANCE_MM`` apart (most central particles).
    """
    helix = Helix(position, direction, curvature(charge, pt, field.bz(position[:, 2])))
    nearest, s_next = _next_surface(helix, surfaces)
    if field.uniform:
        return helix, nearest, s_next
    s_done = np.where(np.isfinite(s_next), s_next, 0.0)
    omega_mid = curvature(charge, pt, field.bz(position[:, 2] + direction[:, 2] * s_done / 2.0))
    s_t = s_done * helix.sin_theta
    redo = np.flatnonzero(np.abs(omega_mid - helix.omega) * s_t * s_t / 2.0 > STEP_TOLERANCE_MM)
    if len(redo) == 0:
        return helix, nearest, s_next
    nearest[redo], s_next[redo] = _next_surface(Helix(position[redo], direction[redo], omega_mid[redo]), surfaces)
    omega = helix.omega.copy()
    omega[redo] = omega_mid[redo]
    return Helix(position, direction, omega), nearest, s_next


def _module_crossings(
    layers: LayerMap, helix: Helix, layer: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Module planes hit near the layer-surface points of `helix` [S].

    Returns (row into helix, module, crossing position, direction, x/X0) per crossing inside bounds.
    """
    det = layers.detector
    n = len(layer)
    barrel = layers.barrel[layer]  # [S]
    a_rate = np.where(barrel, radial_rate(helix.position, helix.direction), helix.direction[:, 2])  # da/ds [S]
    a_now = np.where(barrel, np.hypot(helix.position[:, 0], helix.position[:, 1]), helix.position[:, 2])
    # Look up the grid where the straight tangent enters, crosses and leaves the layer's material.
    rows, cells = [], []
    for a_target in (layers.a_lo[layer], a_now, layers.a_hi[layer]):
        with np.errstate(divide="ignore", invalid="ignore"):
            ds = np.clip((a_target - a_now) / a_rate, -NEWTON_WINDOW_MM / 3, NEWTON_WINDOW_MM / 3)
        ds = np.where(np.isfinite(ds), ds, 0.0)
        point = helix.position + helix.direction * ds[:, None]  # [S, 3]
        rows.append(np.arange(n))
        cells.append(_grid_cell(layers, layer, point))
    repeated = [np.zeros(n, dtype=bool), cells[1] == cells[0], (cells[2] == cells[0]) | (cells[2] == cells[1])]
    fresh = ~np.concatenate(repeated)  # a cell met twice is looked up once
    cell = np.concatenate(cells)[fresh]
    row = np.concatenate(rows)[fresh]
    candidate = layers.candidates[cell]  # [3S, K]
    pair_row = np.repeat(row, candidate.shape[1])
    pair_module = candidate.ravel()
    valid = pair_module >= 0
    pair_row, pair_module = pair_row[valid], pair_module[valid]
    # Cheap cut first: where the straight tangent meets the plane must lie within the module outline,
    # widened by the helix's sagitta over that distance and a safety margin.
    normal = layers.normal[pair_module]  # [Q, 3]
    to_centre = det.center[pair_module] - helix.position[pair_row]
    slope = np.einsum("qi,qi->q", normal, helix.direction[pair_row])
    with np.errstate(divide="ignore", invalid="ignore"):
        s_line = np.einsum("qi,qi->q", normal, to_centre) / slope  # [Q]
    offset = helix.direction[pair_row] * s_line[:, None] - to_centre  # tangent point - centre [Q, 3]
    local = np.einsum("qji,qj->qi", det.rotation[pair_module], offset)
    slack = 1.0 + 0.5 * np.abs(helix.omega[pair_row]) * s_line**2
    with np.errstate(invalid="ignore"):
        near = (
            (np.abs(s_line) < NEWTON_WINDOW_MM)
            & (np.abs(local[:, 1]) <= det.hv[pair_module] + slack)
            & (np.abs(local[:, 0]) <= det.max_hu[pair_module] + slack)
        )
    key = np.unique(pair_row[near] * len(det) + pair_module[near])  # distinct (row, module)
    pair_row, pair_module = key // len(det), key % len(det)

    # Newton on f(s) = n . (x(s) - c) = 0, starting on the layer surface (s = 0).
    normal = layers.normal[pair_module]  # [Q, 3]
    centre = det.center[pair_module]
    s = np.zeros(len(pair_row))
    for _ in range(3):
        x, t = helix.at(s, pair_row)
        slope = np.einsum("qi,qi->q", normal, t)
        f = np.einsum("qi,qi->q", normal, x - centre)
        with np.errstate(divide="ignore", invalid="ignore"):
            s = s - np.where(np.abs(slope) > 1e-3, f / slope, np.nan)
    x, t = helix.at(s, pair_row)
    local = np.einsum("qji,qj->qi", det.rotation[pair_module], x - centre)  # R^T (x - c) [Q, 3]
    cos_incidence = np.abs(np.einsum("qi,qi->q", normal, t))
    with np.errstate(invalid="ignore"):
        good = np.isfinite(s) & (np.abs(s) < NEWTON_WINDOW_MM) & (np.abs(local[:, 2]) < 1e-3) & (cos_incidence > 1e-3)
    half_u = det.min_hu[pair_module] + (det.max_hu - det.min_hu)[pair_module] * (
        np.clip(local[:, 1], -det.hv[pair_module], det.hv[pair_module]) + det.hv[pair_module]
    ) / (2 * det.hv[pair_module])
    good &= (np.abs(local[:, 0]) <= half_u) & (np.abs(local[:, 1]) <= det.hv[pair_module])
    x0 = LAYER_MATERIAL_FACTOR * det.thickness[pair_module] / np.maximum(cos_incidence, 1e-3) / SILICON_X0_MM
    return pair_row[good], pair_module[good], x[good], t[good], x0[good]


def _beyond_production_module(vertex: np.ndarray, crossing: np.ndarray, x_over_x0: np.ndarray) -> np.ndarray:
    """Bool [H]: the crossing is not of the sensor the particle was made in.

    A secondary made inside a sensor (a third of the TrackML secondaries start within one) would
    otherwise "cross" its mid-plane at once, or even behind its vertex. The TrackML files give it no
    hit there: their secondaries above 150 MeV made in the endcap disks (|z| > 1100 mm) have no hit at
    all 39-85 % of the time. A crossing within half the sensor's path of the vertex is that one.
    """
    half_path = 0.5 * x_over_x0 * SILICON_X0_MM / LAYER_MATERIAL_FACTOR + 1e-3  # mm  [H]
    return np.linalg.norm(crossing - vertex, axis=1) > half_path


def radial_rate(position: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """d(r)/ds [N]: the radial component of unit directions at points [N, 3]."""
    radius = np.maximum(np.hypot(position[:, 0], position[:, 1]), 1e-9)
    return (position[:, 0] * direction[:, 0] + position[:, 1] * direction[:, 1]) / radius


def _grid_cell(layers: LayerMap, layer: np.ndarray, point: np.ndarray) -> np.ndarray:
    """Row of ``layers.candidates`` for each point [S, 3] in its layer [S]."""
    phi = np.arctan2(point[:, 1], point[:, 0])
    b = np.where(layers.barrel[layer], point[:, 2], np.hypot(point[:, 0], point[:, 1]))
    i_phi = np.floor((phi + np.pi) / (2 * np.pi) * layers.n_phi[layer]).astype(np.int64) % layers.n_phi[layer]
    i_b = np.clip(np.floor((b - layers.b_lo[layer]) / layers.b_cell[layer]), 0, layers.n_b[layer] - 1).astype(np.int64)
    return layers.cell_offset[layer] + i_phi * layers.n_b[layer] + i_b


def _interact_with_material(
    direction: np.ndarray,
    p_abs: np.ndarray,
    mass: np.ndarray,
    x_over_x0: np.ndarray,
    options: PropagationOptions,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Highland multiple-scattering kick and mean ionisation loss for the material just crossed."""
    crossed = x_over_x0 > 0
    if not crossed.any():
        return direction, p_abs
    energy = np.sqrt(p_abs**2 + mass**2)
    beta = p_abs / energy
    if options.multiple_scattering:
        x = np.where(crossed, x_over_x0, 1.0)
        theta0 = np.where(crossed, 0.0136 / (beta * p_abs) * np.sqrt(x) * (1.0 + 0.038 * np.log(x / beta**2)), 0.0)
        theta0 = np.maximum(theta0, 0.0)
        # Two independent kicks in the plane perpendicular to the direction.
        helper = np.where(np.abs(direction[:, 2:3]) < 0.9, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]])  # [A, 3]
        e1 = np.cross(direction, helper)
        e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
        e2 = np.cross(direction, e1)
        kick = rng.standard_normal((len(p_abs), 2)) * theta0[:, None]  # [A, 2]
        direction = direction + kick[:, :1] * e1 + kick[:, 1:] * e2
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    if options.energy_loss:
        path_mm = x_over_x0 * SILICON_X0_MM  # silicon-equivalent path
        energy_after = np.maximum(energy - SILICON_DEDX * bethe_factor(p_abs / mass) * path_mm, mass)
        p_abs = np.sqrt(energy_after**2 - mass**2)
    return direction, p_abs


def bethe_factor(beta_gamma: np.ndarray) -> np.ndarray:
    """Mean dE/dx in units of its minimum (Bethe formula without density effect, silicon).

    Fast particles lose the minimum-ionising amount; slow ones (a 200 MeV/c proton: beta = 0.2) lose
    twenty times more, so soft protons from nuclear interactions stop after a few layers.
    """

    def bethe(bg: np.ndarray) -> np.ndarray:
        beta2 = bg**2 / (1.0 + bg**2)
        return (np.log(2.0 * ELECTRON_MASS * bg**2 / SILICON_EXCITATION) - beta2) / beta2

    # Above beta*gamma = 3.5 the density effect flattens the rise: taken as the minimum.
    return np.where(beta_gamma < 3.5, bethe(np.clip(beta_gamma, 0.05, 3.5)) / bethe(np.array(3.5)), 1.0)


def _stack_crossings(parts: list[tuple[np.ndarray, ...]]) -> Crossings:
    if not parts:
        return Crossings(
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros((0, 3)),
            np.zeros((0, 3)),
            np.zeros(0),
            np.zeros(0, np.int64),
        )
    return Crossings(*(np.concatenate(column) for column in zip(*parts)))


def _stack_material(parts: list[tuple[np.ndarray, ...]]) -> MaterialPoints:
    if not parts:
        return MaterialPoints(
            np.zeros(0, np.int64),
            np.zeros((0, 3)),
            np.zeros(0),
            np.zeros(0, np.int64),
            np.zeros(0, dtype=bool),
            np.zeros(0, np.int64),
        )
    return MaterialPoints(*(np.concatenate(column) for column in zip(*parts)))
