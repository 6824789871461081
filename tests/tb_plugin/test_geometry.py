"""Tests of the detector geometry: the real TrackML file (when present) and the built-in detector."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tb_plugin.geometry import Detector, DetectorFormatError, UnknownModuleError, _acts_phi_bins, _binned_disk_order

# REFERENCE section 2, hard-coded so the built-in tests need no shared files.
MODULES_PER_VOLUME = {7: 756, 8: 2492, 9: 756, 12: 1020, 13: 5796, 14: 1020, 16: 588, 17: 5712, 18: 588}
BARREL_LAYERS = {  # (volume, layer): (radius of module centres, modules, max |z| of centres)
    (8, 2): (32.0, 224, 455.0),
    (8, 4): (72.0, 448, 455.0),
    (8, 6): (116.0, 728, 455.0),
    (8, 8): (172.0, 1092, 455.0),
    (13, 2): (260.0, 840, 1030.0),
    (13, 4): (360.0, 1176, 1030.0),
    (13, 6): (500.0, 1638, 1030.0),
    (13, 8): (660.0, 2142, 1030.0),
    (17, 2): (820.0, 2520, 1030.0),
    (17, 4): (1020.0, 3192, 1030.0),
}
PIXEL_DISKS = (600.0, 700.0, 820.0, 960.0, 1100.0, 1300.0, 1500.0)
STRIP_DISKS = (1220.0, 1500.0, 1800.0, 2150.0, 2550.0, 2950.0)
ENDCAPS = {  # (volume, side): (disk |z| ordered by layer id, modules per disk)
    7: (PIXEL_DISKS[::-1], -1, 108),
    9: (PIXEL_DISKS, 1, 108),
    12: (STRIP_DISKS[::-1], -1, 170),
    14: (STRIP_DISKS, 1, 170),
    16: (STRIP_DISKS[::-1], -1, 98),
    18: (STRIP_DISKS, 1, 98),
}


# Real file facts, read from detectors.csv: the ring (0 = innermost) of modules 1, 2, ..., K of an
# endcap disk, the same on every disk of both volumes of a pair. Within a ring the ids increase with
# centre phi (from -pi), so this sequence fixes every endcap id; the rings interleave neither by
# centre phi nor ring by ring.
REAL_DISK_RINGS = {
    (7, 9): (
        "011010110110101101101101011011010110110110101101101011011010110110101101101101011011010110110110101101101011"
    ),
    (12, 14): (
        "012201201210210210210210210210212012012012012012021021021021"
        "201201201201201201201201201220120121021021021021021021021201"
        "20120120120120210210210212012012012012012012012012"
    ),
    (16, 18): ("01101010101010101010101010101010101010101010101010101010101101010101010101010101010101010101010101"),
}


def expected_layer_counts() -> dict[tuple[int, int], int]:
    counts = {key: n for key, (_, n, _) in BARREL_LAYERS.items()}
    for volume, (disks, _, n) in ENDCAPS.items():
        counts.update({(volume, 2 + 2 * i): n for i in range(len(disks))})
    return counts


@functools.lru_cache(maxsize=1)
def read_real(path: Path) -> Detector:
    return Detector.from_csv(path)


@pytest.fixture
def real(shared_trackml) -> Detector:
    """The real detector, read once per test session (the shared fixture itself is per test)."""
    return read_real(shared_trackml / "detectors.csv")


@pytest.fixture(scope="module")
def builtin() -> Detector:
    return Detector.builtin()


# ---------------------------------------------------------------------- shared checks


def check_dense_order(det: Detector) -> None:
    keys = np.stack([det.volume_id, det.layer_id, det.module_id])  # [3, M]
    order = np.lexsort(keys[::-1])
    assert (order == np.arange(len(det))).all()
    assert det.volume_id.dtype == np.int32 and det.center.dtype == np.float64
    assert det.center.shape == (len(det), 3) and det.rotation.shape == (len(det), 3, 3)


def check_orthonormal(det: Detector) -> None:
    gram = np.einsum("kji,kjl->kil", det.rotation, det.rotation)  # R^T R, [M, 3, 3]
    assert np.abs(gram - np.eye(3)).max() < 1e-5
    assert np.allclose(np.linalg.det(det.rotation), 1.0, atol=1e-5)  # right-handed u, v, w


def check_frames(det: Detector, rng: np.random.Generator) -> None:
    idx = rng.integers(0, len(det), 5000)
    local = rng.uniform(-30, 30, (5000, 3))
    back = det.to_local(idx, det.to_global(idx, local))
    assert np.abs(back - local).max() < 1e-9
    centre_local = det.to_local(idx, det.centers(idx))
    assert np.abs(centre_local).max() < 1e-9
    assert det.contains(idx, centre_local).all()
    # a point a millimetre beyond the v edge, or out of the plane, is outside
    assert not det.contains(idx, np.stack([0 * det.hv[idx], det.hv[idx] + 1, 0 * det.hv[idx]], 1)).any()
    assert not det.contains(idx, np.stack([0 * det.hv[idx], 0 * det.hv[idx], det.thickness[idx]], 1)).any()


def check_lookups(det: Detector, rng: np.random.Generator) -> None:
    idx = rng.integers(0, len(det), 100_000)
    start = time.perf_counter()
    found = det.index(det.volume_id[idx], det.layer_id[idx], det.module_id[idx])
    assert time.perf_counter() - start < 0.5
    assert found.dtype == np.int64 and (found == idx).all()
    assert (det.index_strict(det.volume_id[idx], det.layer_id[idx], det.module_id[idx]) == idx).all()
    assert int(det.index(int(det.volume_id[7]), int(det.layer_id[7]), int(det.module_id[7]))) == 7
    assert det.index([8, 99, -1, 8], [2, 2, 2, 2], [1, 1, 1, 10_000_000]).tolist() == [det.index(8, 2, 1), -1, -1, -1]
    with pytest.raises(UnknownModuleError, match=r"2 unknown .*\(8, 2, 99999\).*\(99, 2, 1\)"):
        det.index_strict([8, 8, 99], [2, 2, 2], [1, 99999, 1])


def radial_coverage(det: Detector, volume: int, layer: int, n_points: int, rng: np.random.Generator) -> np.ndarray:
    """Number of modules of a barrel layer crossed by radial lines through random points on it [P].

    Each point (phi, z) on the layer cylinder defines the line from (0, 0, z) outwards at phi; it is
    intersected with the planes of the modules nearest the point and each crossing tested with
    ``contains``. A line that crosses none is a hole in the layer.
    """
    idx = np.flatnonzero((det.volume_id == volume) & (det.layer_id == layer))  # [K]
    radius = np.hypot(*det.center[idx, :2].T).mean()
    z_limit = np.abs(det.center[idx, 2]).max() + det.hv[idx].min() - 0.5
    phi = rng.uniform(-np.pi, np.pi, n_points)  # [P]
    z = rng.uniform(-z_limit, z_limit, n_points)  # [P]
    direction = np.stack([np.cos(phi), np.sin(phi), np.zeros_like(phi)], axis=1)  # [P, 3]
    origin = np.stack([np.zeros_like(z), np.zeros_like(z), z], axis=1)  # [P, 3]
    on_layer = origin + radius * direction  # [P, 3]
    distance = np.linalg.norm(on_layer[:, None, :] - det.center[idx][None, :, :], axis=2)  # [P, K]
    modules = idx[np.argpartition(distance, 12, axis=1)[:, :12]]  # [P, 12] nearest centres
    normal = det.rotation[modules][..., 2]  # [P, 12, 3]
    along = np.einsum("pi,pki->pk", direction, normal)  # [P, 12]
    reach = np.einsum("pki,pki->pk", det.center[modules] - origin[:, None, :], normal)  # [P, 12]
    t = reach / along  # [P, 12] path length to each plane (modules are never parallel to the line)
    points = origin[:, None, :] + t[..., None] * direction[:, None, :]  # [P, 12, 3]
    local = det.to_local(modules.ravel(), points.reshape(-1, 3))  # [P*12, 3]
    inside = det.contains(modules.ravel(), local, tol=1e-6).reshape(modules.shape) & (t > 0)  # [P, 12]
    return inside.sum(axis=1)


# ---------------------------------------------------------------------- the real file


def test_real_file_counts_and_order(real):
    assert len(real) == 18_728
    volumes, counts = np.unique(real.volume_id, return_counts=True)
    assert dict(zip(volumes.tolist(), counts.tolist())) == MODULES_PER_VOLUME
    check_dense_order(real)
    layers = real.layers()
    assert dict(zip(zip(layers.volume_id, layers.layer_id), layers.n_modules)) == expected_layer_counts()


def test_real_file_lookups_frames_and_conventions(real):
    rng = np.random.default_rng(0)
    check_lookups(real, rng)
    check_orthonormal(real)
    check_frames(real, rng)
    barrel = real.volume_mask([8, 13, 17])
    assert np.allclose(real.rotation[barrel][:, :, 1], [0, 0, 1])  # v along +z in the barrels
    endcap = ~barrel
    radial = real.center[endcap, :2] / np.hypot(*real.center[endcap, :2].T)[:, None]
    assert np.allclose(real.rotation[endcap][:, :2, 1], radial, atol=1e-4)  # v radially outwards
    # trapezoids widen outwards: min_hu belongs to the inner end (v = -hv)
    assert (real.min_hu[endcap] <= real.max_hu[endcap]).all() and (real.min_hu[endcap] < real.max_hu[endcap]).any()


def test_real_file_barrel_layers_are_tiled(real):
    rng = np.random.default_rng(3)
    for volume, layer in BARREL_LAYERS:
        crossed = radial_coverage(real, volume, layer, 400, rng)
        assert (crossed >= 1).all(), (volume, layer)


def test_real_file_hash_ignores_row_order(real, shared_trackml, tmp_path):
    table = pd.read_csv(shared_trackml / "detectors.csv")
    shuffled = tmp_path / "shuffled.csv"
    table.sample(frac=1.0, random_state=1).to_csv(shuffled, index=False)
    again = Detector.from_csv(shuffled)
    assert again == real and again.geometry_hash() == real.geometry_hash()


# ---------------------------------------------------------------------- the built-in detector


def test_builtin_counts_order_and_speed(builtin):
    assert Detector.builtin() is builtin  # built once per process
    import tb_plugin.geometry as geometry

    geometry._builtin_detector.cache_clear()
    start = time.perf_counter()
    fresh = Detector.builtin()
    assert time.perf_counter() - start < 1.0
    assert fresh == builtin
    assert len(builtin) == 18_728
    volumes, counts = np.unique(builtin.volume_id, return_counts=True)
    assert dict(zip(volumes.tolist(), counts.tolist())) == MODULES_PER_VOLUME
    layers = builtin.layers()
    assert dict(zip(zip(layers.volume_id, layers.layer_id), layers.n_modules)) == expected_layer_counts()
    check_dense_order(builtin)


def test_builtin_positions_follow_the_layer_table(builtin):
    layers = builtin.layers().set_index(["volume_id", "layer_id"])
    for key, (radius, _, z_max) in BARREL_LAYERS.items():
        row = layers.loc[key]
        assert row.kind == "barrel"
        assert abs(row.position - radius) < 3.0 and abs(row.z_max - z_max) < 3.0 and abs(row.z_min + z_max) < 3.0
    for volume, (disks, side, _) in ENDCAPS.items():
        for i, abs_z in enumerate(disks):
            row = layers.loc[(volume, 2 + 2 * i)]
            assert row.kind == "endcap" and abs(row.position - side * abs_z) < 3.0
    # sizes, thickness and pitch per subdetector (REFERENCE section 2)
    pixel = builtin.volume_mask([7, 8, 9])
    assert np.all(builtin.min_hu[pixel] == 8.4) and np.all(builtin.hv[pixel] == 36.0)
    assert np.all(builtin.thickness[pixel] == 0.15) and np.all(builtin.pitch_v[pixel] == 0.05625)
    strips = builtin.volume_mask([13, 17])
    assert np.all(builtin.min_hu[strips] == 24.0) and np.all(builtin.hv[strips] == 54.0)
    assert set(builtin.pitch_v[builtin.volume_mask([16, 18])]) == {10.4}
    assert set(builtin.thickness[builtin.volume_mask([12, 13, 14])]) == {0.25}


def test_builtin_lookups_frames_and_tilt(builtin):
    rng = np.random.default_rng(1)
    check_lookups(builtin, rng)
    check_orthonormal(builtin)
    check_frames(builtin, rng)
    pixel = builtin.volume_mask(8)
    radial = builtin.center[pixel, :2] / np.hypot(*builtin.center[pixel, :2].T)[:, None]
    cos_tilt = np.einsum("ki,ki->k", builtin.rotation[pixel][:, :2, 2], radial)
    assert np.allclose(cos_tilt, np.cos(0.14))  # w leans 0.14 rad off the radial direction


def test_builtin_barrel_layers_are_tiled_with_overlaps(builtin):
    """Every radial line crosses a module; some cross two (the overlaps that give double hits)."""
    rng = np.random.default_rng(2)
    for volume, layer in BARREL_LAYERS:
        crossed = radial_coverage(builtin, volume, layer, 400, rng)
        assert (crossed >= 1).all(), (volume, layer)
        assert 0.05 < (crossed >= 2).mean() < 0.5, (volume, layer)


def test_builtin_endcap_rings_overlap_in_phi(builtin):
    """Neighbours in an endcap ring overlap at both ends of the trapezoid, so the disk has no phi gaps."""
    for volume in ENDCAPS:
        idx = np.flatnonzero((builtin.volume_id == volume) & (builtin.layer_id == 2))
        radius = np.round(np.hypot(*builtin.center[idx, :2].T))
        for ring_radius in np.unique(radius):
            ring = idx[radius == ring_radius]
            step = 2 * np.pi / len(ring)
            inner, outer = ring_radius - builtin.hv[ring], ring_radius + builtin.hv[ring]
            assert (2 * builtin.min_hu[ring] > inner * step).all(), (volume, ring_radius)
            assert (2 * builtin.max_hu[ring] > outer * step).all(), (volume, ring_radius)


def test_builtin_csv_round_trip_and_hash(builtin, tmp_path):
    path = tmp_path / "detectors.csv"
    builtin.to_csv(path)
    header = path.read_text().splitlines()[0].split(",")
    assert len(header) == 21 and header[:3] == ["volume_id", "layer_id", "module_id"]
    again = Detector.from_csv(path)
    assert again == builtin and again.geometry_hash() == builtin.geometry_hash()
    assert hash(again) == hash(builtin)
    gz = tmp_path / "detectors.csv.gz"
    builtin.to_csv(gz)
    assert Detector.from_csv(gz) == builtin
    assert sorted(tmp_path.iterdir()) == sorted([path, gz])  # atomic writes leave no temporary files

    table = pd.read_csv(path)
    table.loc[100, "cx"] += 0.01  # a hundredth of a millimetre is a different geometry
    moved = tmp_path / "moved.csv"
    table.to_csv(moved, index=False)
    perturbed = Detector.from_csv(moved)
    assert perturbed != builtin and perturbed.geometry_hash() != builtin.geometry_hash()
    assert perturbed.ids_hash() == builtin.ids_hash()  # ids alone: what token ids and module indices depend on
    assert builtin.subset(slice(1, None)).ids_hash() != builtin.ids_hash()
    table.loc[100, "cx"] -= 0.01
    table.loc[100, "cx"] += 1e-7  # printing noise far below the hash's 1e-4 mm rounding
    table.to_csv(moved, index=False)
    assert Detector.from_csv(moved).geometry_hash() == builtin.geometry_hash()


def test_binned_disk_order_follows_the_grid_not_the_centre_phi():
    """A hand-worked disk: 2 inner modules, 4 outer, 4 phi bins, whose centres run from the lowest to
    the highest module phi (-3pi/4 .. 3pi/4, steps of pi/2). The inner module just after -pi/2 is the
    nearest one to the inner point of the first bin, so it comes before the outer module that has the
    lower centre phi; pushed 9 mm out of the disk plane it is no longer nearest (3D distance, as ACTS)."""
    inner = np.array([-np.pi / 2 + 0.1, np.pi / 2 + 0.1])
    outer = -np.pi + (np.arange(4) + 0.5) * np.pi / 2  # at the centres of the 4 bins
    phi = np.concatenate([inner, outer])
    radius = np.array([10.0, 10.0, 20.0, 20.0, 20.0, 20.0])
    center = np.stack([radius * np.cos(phi), radius * np.sin(phi), np.zeros(6)], axis=1)
    rings = np.array([10.0, 20.0])
    assert _binned_disk_order(center, rings, 4).tolist() == [0, 2, 3, 1, 4, 5]
    assert np.argsort(phi).tolist() == [2, 0, 3, 4, 1, 5]  # what ordering by centre phi would give
    center[0, 2] = 9.0
    assert _binned_disk_order(center, rings, 4).tolist() == [2, 0, 3, 1, 4, 5]


def test_binned_disk_order_spreads_the_bins_between_the_extreme_centres():
    """Inner modules A, B at -pi/2, pi/2 (r 10), outer C, D, E at -2pi/3, 0, 2pi/3 (r 20), 4 bins. Their
    centres are -2pi/3, -2pi/9, 2pi/9, 2pi/3 (3 steps between C and E, as ACTS): D, 2pi/9 from the
    second bin's outer point (13.7 mm), is nearer than A (15.6 mm) and is met there. Bins of 2pi/4 from
    -pi would put that point at -pi/4, where A (14.7 mm) beats D (15.3 mm) and D would be met nowhere.
    With 2 bins (at C and E) D is nearest to no bin: an error, not a module without an id."""
    phi = np.array([-np.pi / 2, np.pi / 2, -2 * np.pi / 3, 0.0, 2 * np.pi / 3])
    radius = np.array([10.0, 10.0, 20.0, 20.0, 20.0])
    center = np.stack([radius * np.cos(phi), radius * np.sin(phi), np.zeros(5)], axis=1)
    rings = np.array([10.0, 20.0])
    assert _binned_disk_order(center, rings, 4).tolist() == [0, 2, 3, 1, 4]  # A C D B E; by phi: C A D B E
    with pytest.raises(ValueError, match="1 endcap module"):
        _binned_disk_order(center, rings, 2)


def test_acts_phi_bins_double_once_per_ring():
    """ACTS's GenericLayerBuilder multiplied inside its loop over the rings: the strip disks' grids
    have 432 and 192 phi bins, not twice the densest ring (120, 100); the pixel's (factor 1) has 68."""
    assert _acts_phi_bins([54, 56, 60], 2) == 432
    assert _acts_phi_bins([48, 50], 2) == 192
    assert _acts_phi_bins([40, 68], 1) == 68
    assert _acts_phi_bins([60, 56, 54], 2) == 480  # the ring order matters: 120, 240, 480


def test_builtin_endcap_ids_are_dense_and_follow_the_rings(builtin):
    """Every endcap layer numbers its modules 1..K; each ring is numbered in increasing phi; the rings
    of modules 1..K follow the real file's sequence, so every endcap id is the real one."""
    for volume in ENDCAPS:
        sequence = next(rings for pair, rings in REAL_DISK_RINGS.items() if volume in pair)
        for layer in np.unique(builtin.layer_id[builtin.volume_id == volume]):
            idx = np.flatnonzero((builtin.volume_id == volume) & (builtin.layer_id == layer))
            assert builtin.module_id[idx].tolist() == list(range(1, len(idx) + 1)), (volume, layer)
            radius = np.round(np.hypot(*builtin.center[idx, :2].T))
            phi = np.arctan2(builtin.center[idx, 1], builtin.center[idx, 0])
            for ring_radius in np.unique(radius):
                assert (np.diff(phi[radius == ring_radius]) > 0).all(), (volume, layer, ring_radius)
            ring = np.searchsorted(np.unique(radius), radius)  # 0 = innermost
            assert "".join(map(str, ring.tolist())) == sequence, (volume, layer)


# ---------------------------------------------------------------------- builtin vs real


def print_tolerance(values: np.ndarray) -> np.ndarray:
    """What the real file's 6 significant digits allow (half a unit of the last digit) plus 1 um."""
    magnitude = np.floor(np.log10(np.maximum(np.abs(values), 1e-3)))
    return 1e-3 + 0.5 * 10.0 ** (magnitude - 5)


def test_builtin_ids_match_the_real_detector(builtin, real):
    """Every real module has a built-in namesake (same ids) at the same place, endcaps included, so data
    and artifacts keyed on ids carry over between the two geometries."""
    assert real.ids_hash() == builtin.ids_hash() and real.geometry_hash() != builtin.geometry_hash()
    twins = builtin.index_strict(real.volume_id, real.layer_id, real.module_id)
    offset = np.abs(builtin.center[twins] - real.center)  # [M, 3] mm
    assert (offset <= print_tolerance(real.center)).all()
    assert np.abs(builtin.rotation[twins] - real.rotation).max() < 1e-5


def test_builtin_matches_the_real_detector(builtin, real):
    """Same layers, positions, orientations and sizes as the real file (ids: the test above)."""
    assert (builtin.volume_id == real.volume_id).all() and (builtin.layer_id == real.layer_id).all()
    mine, theirs = builtin.layers(), real.layers()
    assert (mine.n_modules.to_numpy() == theirs.n_modules.to_numpy()).all()
    assert np.abs(mine.position.to_numpy() - theirs.position.to_numpy()).max() < 0.01  # mm
    for column in ("r_min", "r_max", "z_min", "z_max"):
        assert np.abs(mine[column].to_numpy() - theirs[column].to_numpy()).max() < 0.01
    barrel = real.volume_mask([8, 13, 17])
    assert (builtin.module_id[barrel] == real.module_id[barrel]).all()
    assert np.abs(builtin.center[barrel] - real.center[barrel]).max() < 0.01
    assert np.abs(builtin.rotation[barrel] - real.rotation[barrel]).max() < 1e-5
    for name in ("thickness", "min_hu", "max_hu", "hv", "pitch_u", "pitch_v"):
        assert np.array_equal(np.sort(getattr(builtin, name)), np.sort(getattr(real, name))), name
    # endcap modules: each real module has a built-in twin at the same place with the same frame
    for volume in ENDCAPS:
        for layer in (2, 12):
            a = np.flatnonzero((real.volume_id == volume) & (real.layer_id == layer))
            b = np.flatnonzero((builtin.volume_id == volume) & (builtin.layer_id == layer))
            distance = np.linalg.norm(real.center[a][:, None, :] - builtin.center[b][None, :, :], axis=2)
            twin = b[distance.argmin(axis=1)]
            assert distance.min(axis=1).max() < 0.01
            assert len(set(twin.tolist())) == len(a)
            assert np.abs(builtin.rotation[twin] - real.rotation[a]).max() < 1e-5
            assert (builtin.min_hu[twin] == real.min_hu[a]).all() and (builtin.max_hu[twin] == real.max_hu[a]).all()


# ---------------------------------------------------------------------- malformed files


def small_table(builtin: Detector, tmp_path) -> pd.DataFrame:
    """The first 50 modules of the built-in detector as a detectors.csv table, to be spoiled by a test."""
    path = tmp_path / "small.csv"
    if not path.exists():
        builtin.to_csv(path)
    return pd.read_csv(path, nrows=50)


def write(table: pd.DataFrame, path) -> str:
    table.to_csv(path, index=False)
    return str(path)


def test_missing_column_names_file_and_column(builtin, tmp_path):
    path = write(small_table(builtin, tmp_path).drop(columns=["rot_yv"]), tmp_path / "no_rot.csv")
    with pytest.raises(DetectorFormatError, match=r"no_rot\.csv.*missing column.*rot_yv"):
        Detector.from_csv(path)


def test_non_numeric_value_names_file_and_column(builtin, tmp_path):
    table = small_table(builtin, tmp_path).astype({"module_hv": object})
    table.loc[7, "module_hv"] = "wide"
    path = write(table, tmp_path / "text.csv")
    with pytest.raises(DetectorFormatError, match=r"text\.csv.*module_hv.*row 8.*'wide'"):
        Detector.from_csv(path)
    table = small_table(builtin, tmp_path)
    table["module_id"] = table["module_id"].astype(float) + 0.5
    with pytest.raises(DetectorFormatError, match=r"module_id.*integer"):
        Detector.from_csv(write(table, tmp_path / "fraction.csv"))
    table = small_table(builtin, tmp_path).astype({"cx": object})
    table.loc[3, "cx"] = ""
    with pytest.raises(DetectorFormatError, match=r"blank\.csv.*column cx"):
        Detector.from_csv(write(table, tmp_path / "blank.csv"))


def test_duplicate_module_names_file_and_columns(builtin, tmp_path):
    table = small_table(builtin, tmp_path)
    table = pd.concat([table, table.iloc[[4]]])
    path = write(table, tmp_path / "twice.csv")
    with pytest.raises(DetectorFormatError, match=r"twice\.csv.*volume_id, layer_id, module_id.*duplicate"):
        Detector.from_csv(path)


def test_bad_rotation_and_size_are_rejected(builtin, tmp_path):
    table = small_table(builtin, tmp_path)
    table.loc[2, "rot_xu"] = 3.0
    with pytest.raises(DetectorFormatError, match=r"skew\.csv.*not orthonormal"):
        Detector.from_csv(write(table, tmp_path / "skew.csv"))
    table = small_table(builtin, tmp_path)
    table.loc[2, "module_t"] = 0.0
    with pytest.raises(DetectorFormatError, match=r"flat\.csv.*module_t"):
        Detector.from_csv(write(table, tmp_path / "flat.csv"))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DetectorFormatError, match=r"empty\.csv"):
        Detector.from_csv(tmp_path / "empty.csv")


def test_subset_keeps_the_chosen_modules_in_order():
    detector = Detector.builtin()
    pixels = detector.subset(detector.volume_mask([8]))
    assert len(pixels) == int(detector.volume_mask([8]).sum()) and set(pixels.volume_id.tolist()) == {8}
    assert np.array_equal(pixels.center, detector.center[detector.volume_mask([8])])
    assert detector.subset(slice(None)) == detector
