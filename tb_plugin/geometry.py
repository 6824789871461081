"""The detector geometry: one planar module per row, read from a TrackML ``detectors.csv``.

Everything downstream (the simulation that intersects helices with module planes, the tokenizer that
turns a module into a vocabulary entry) addresses modules by a *dense index* 0..M-1: the row number
after sorting by (volume_id, layer_id, module_id). Sorting makes the index independent of the row
order of the csv, so token ids do not change between files that describe the same detector.

Local frame of a module (measured on the real file; tests/tb_plugin/test_geometry.py checks it):
``global = center + rotation @ (u, v, w)``; the columns of ``rotation`` are the local u, v, w axes in
global coordinates, right-handed (u = v x w). In the barrels v is +z, w is the outward normal (tilted
a little in phi) and u runs along +phi. In the endcaps v points radially outwards, w points away from
the interaction point (+z in volumes 9, 14, 18; -z in 7, 12, 16), so u is -phi on the +z side and +phi
on the -z side. A trapezoid (endcap) has half-width ``min_hu`` at v = -hv, the end nearer the beam,
and ``max_hu`` at v = +hv, the outer end: the wedges widen outwards so that a ring closes in phi.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tb_plugin.atomic import atomic_path

log = logging.getLogger(__name__)

ID_COLUMNS = ("volume_id", "layer_id", "module_id")
CENTER_COLUMNS = ("cx", "cy", "cz")
ROTATION_COLUMNS = (
    "rot_xu",
    "rot_xv",
    "rot_xw",
    "rot_yu",
    "rot_yv",
    "rot_yw",
    "rot_zu",
    "rot_zv",
    "rot_zw",
)  # row-major: rot_<global axis><local axis>
SIZE_COLUMNS = ("module_t", "module_minhu", "module_maxhu", "module_hv", "pitch_u", "pitch_v")
CSV_COLUMNS = ID_COLUMNS + CENTER_COLUMNS + ROTATION_COLUMNS + SIZE_COLUMNS

BARREL_VOLUMES = (8, 13, 17)
ENDCAP_VOLUMES = (7, 9, 12, 14, 16, 18)

# One int64 key per module: 20 bits each for module and layer ids, the rest for the volume id.
_ID_BITS = 20
_ID_LIMIT = 1 << _ID_BITS
_HASH_DECIMALS = 4  # centres and rotations are hashed rounded to 1e-4 (mm, or unitless)
_UNKNOWN_SHOWN = 5
_ARRAY_FIELDS = (
    "volume_id",
    "layer_id",
    "module_id",
    "center",
    "rotation",
    "thickness",
    "min_hu",
    "max_hu",
    "hv",
    "pitch_u",
    "pitch_v",
)


class DetectorFormatError(ValueError):
    """A detector file that cannot be read as a TrackML detectors.csv."""


class UnknownModuleError(KeyError):
    """Module ids that are not in the detector."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


def _module_keys(volume_id: np.ndarray, layer_id: np.ndarray, module_id: np.ndarray) -> np.ndarray:
    """Pack (volume, layer, module) into one sortable int64; -1 where an id cannot be packed."""
    v = np.asarray(volume_id, dtype=np.int64)
    lay = np.asarray(layer_id, dtype=np.int64)
    m = np.asarray(module_id, dtype=np.int64)
    v, lay, m = np.broadcast_arrays(v, lay, m)
    packable = (v >= 0) & (v < _ID_LIMIT) & (lay >= 0) & (lay < _ID_LIMIT) & (m >= 0) & (m < _ID_LIMIT)
    keys = (v << (2 * _ID_BITS)) | (lay << _ID_BITS) | m  # [...]
    return np.where(packable, keys, -1)


@dataclass(frozen=True, eq=False)
class Detector:
    """All modules of a detector as parallel arrays, one row per module in (volume, layer, module) order.

    Two detectors compare equal when every array is equal exactly; ``geometry_hash`` is the
    rounding-tolerant fingerprint to store beside things (vocabularies, checkpoints) built on a geometry.
    """

    volume_id: np.ndarray  # int32 [M]
    layer_id: np.ndarray  # int32 [M]
    module_id: np.ndarray  # int32 [M]
    center: np.ndarray  # float64 [M, 3]
    rotation: np.ndarray  # float64 [M, 3, 3], columns = local u, v, w in global coordinates
    thickness: np.ndarray  # float64 [M]
    min_hu: np.ndarray  # float64 [M], half-width in u at v = -hv
    max_hu: np.ndarray  # float64 [M], half-width in u at v = +hv
    hv: np.ndarray  # float64 [M]
    pitch_u: np.ndarray  # float64 [M]
    pitch_v: np.ndarray  # float64 [M]
    _keys: np.ndarray = field(init=False, repr=False)  # int64 [M], sorted packed ids
    _inverse: np.ndarray = field(init=False, repr=False)  # float64 [M, 3, 3], inverse of rotation
    _hash: list = field(init=False, repr=False)  # memo of geometry_hash

    def __post_init__(self) -> None:
        m = len(self.volume_id)
        expected = {"center": (m, 3), "rotation": (m, 3, 3)}
        for name in _ARRAY_FIELDS:
            shape = expected.get(name, (m,))
            if np.shape(getattr(self, name)) != shape:
                raise ValueError(f"Detector.{name} has shape {np.shape(getattr(self, name))}, expected {shape}")
        keys = _module_keys(self.volume_id, self.layer_id, self.module_id)
        if (keys < 0).any() or (np.diff(keys) <= 0).any():
            raise ValueError(
                "Detector arrays must hold unique ids in [0, 2**20), sorted by (volume_id, layer_id, module_id); "
                "build detectors with Detector.from_csv or Detector.from_arrays"
            )
        object.__setattr__(self, "_keys", keys)
        # The real file prints rotations to 6 digits, so R^T is only an approximate inverse (40 nm at
        # 30 mm); the true inverse keeps to_local and to_global exact inverses of each other.
        object.__setattr__(self, "_inverse", np.linalg.inv(self.rotation))
        object.__setattr__(self, "_hash", [])
        for name in _ARRAY_FIELDS:
            getattr(self, name).flags.writeable = False  # shared by everyone who holds the detector

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_arrays(
        cls,
        volume_id: np.ndarray,
        layer_id: np.ndarray,
        module_id: np.ndarray,
        center: np.ndarray,
        rotation: np.ndarray,
        thickness: np.ndarray,
        min_hu: np.ndarray,
        max_hu: np.ndarray,
        hv: np.ndarray,
        pitch_u: np.ndarray,
        pitch_v: np.ndarray,
    ) -> Detector:
        """Build from arrays in any row order: sorts into the dense-index order, copies, fixes dtypes."""
        volume_id = np.asarray(volume_id, dtype=np.int32)
        layer_id = np.asarray(layer_id, dtype=np.int32)
        module_id = np.asarray(module_id, dtype=np.int32)
        order = np.lexsort((module_id, layer_id, volume_id))  # [M]

        def f64(a: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(np.asarray(a, dtype=np.float64)[order])

        return cls(
            volume_id=np.ascontiguousarray(volume_id[order]),
            layer_id=np.ascontiguousarray(layer_id[order]),
            module_id=np.ascontiguousarray(module_id[order]),
            center=f64(center).reshape(-1, 3),
            rotation=f64(rotation).reshape(-1, 3, 3),
            thickness=f64(thickness),
            min_hu=f64(min_hu),
            max_hu=f64(max_hu),
            hv=f64(hv),
            pitch_u=f64(pitch_u),
            pitch_v=f64(pitch_v),
        )

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> Detector:
        """Read a TrackML detectors.csv (or .csv.gz), checking what a silent misread would corrupt."""
        path = Path(path)
        try:
            table = pd.read_csv(path, dtype=str, keep_default_na=False)
        except FileNotFoundError:
            raise  # a wrong path is not a format problem
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
            raise DetectorFormatError(f"{path}: not a readable csv table ({err})") from err
        table.columns = [str(c).strip() for c in table.columns]
        missing = [c for c in CSV_COLUMNS if c not in table.columns]
        if missing:
            raise DetectorFormatError(
                f"{path}: missing column(s) {', '.join(missing)}; expected the 21 detectors.csv columns "
                f"{', '.join(CSV_COLUMNS)}"
            )
        if len(table) == 0:
            raise DetectorFormatError(f"{path}: no modules (expected one row per module)")
        ints = {c: parse_column(table[c], path, c, integer=True) for c in ID_COLUMNS}
        floats = {c: parse_column(table[c], path, c, integer=False) for c in CSV_COLUMNS[3:]}
        _check_ids(ints, path)
        _check_sizes(floats, path)
        return cls.from_arrays(
            volume_id=ints["volume_id"],
            layer_id=ints["layer_id"],
            module_id=ints["module_id"],
            center=np.stack([floats[c] for c in CENTER_COLUMNS], axis=1),  # [M, 3]
            rotation=np.stack([floats[c] for c in ROTATION_COLUMNS], axis=1).reshape(-1, 3, 3),  # [M, 3, 3]
            thickness=floats["module_t"],
            min_hu=floats["module_minhu"],
            max_hu=floats["module_maxhu"],
            hv=floats["module_hv"],
            pitch_u=floats["pitch_u"],
            pitch_v=floats["pitch_v"],
        )

    @classmethod
    def builtin(cls) -> Detector:
        """The generated TrackML-like detector, for users without the real file (built once per process)."""
        return _builtin_detector()

    def to_csv(self, path: str | os.PathLike) -> None:
        """Write the 21 detectors.csv columns; floats keep full precision so from_csv gives back ``self``."""
        table = pd.DataFrame(
            {
                "volume_id": self.volume_id,
                "layer_id": self.layer_id,
                "module_id": self.module_id,
                **{c: self.center[:, i] for i, c in enumerate(CENTER_COLUMNS)},
                **{c: self.rotation.reshape(-1, 9)[:, i] for i, c in enumerate(ROTATION_COLUMNS)},
                "module_t": self.thickness,
                "module_minhu": self.min_hu,
                "module_maxhu": self.max_hu,
                "module_hv": self.hv,
                "pitch_u": self.pitch_u,
                "pitch_v": self.pitch_v,
            },
            columns=list(CSV_COLUMNS),
        )
        path = Path(path)
        with atomic_path(path) as tmp:
            compression = "gzip" if path.name.endswith(".gz") else None
            table.to_csv(tmp, index=False, compression=compression)

    # ------------------------------------------------------------------ identity

    def subset(self, rows: np.ndarray | slice) -> Detector:
        """The detector of only these modules (a boolean mask, indices or a slice), in their order:
        a smaller or partly different detector, e.g. for a geometry-mismatch test."""
        return Detector.from_arrays(**{name: getattr(self, name)[rows] for name in _ARRAY_FIELDS})

    def __len__(self) -> int:
        return int(self.volume_id.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Detector):
            return NotImplemented
        if other is self:
            return True
        return all(np.array_equal(getattr(self, name), getattr(other, name)) for name in _ARRAY_FIELDS)

    def __hash__(self) -> int:
        # Equal detectors have equal rounded content, hence equal geometry hashes.
        return hash(self.geometry_hash())

    def __repr__(self) -> str:
        return f"Detector({len(self)} modules, volumes {sorted(set(self.volume_id.tolist()))})"

    def geometry_hash(self) -> str:
        """sha256 of the canonical content: ids, centres and rotations rounded to 1e-4, sizes, pitches.

        Rounding makes the hash survive a csv round trip through a printer with fewer digits; the dense
        (sorted) order makes it independent of the csv row order.
        """
        if not self._hash:
            digest = hashlib.sha256()
            digest.update(b"tb_plugin.Detector/v1")
            for ids in (self.volume_id, self.layer_id, self.module_id):
                digest.update(np.ascontiguousarray(ids, dtype="<i4").tobytes())
            for values in (
                self.center,
                self.rotation,
                self.thickness,
                self.min_hu,
                self.max_hu,
                self.hv,
                self.pitch_u,
                self.pitch_v,
            ):
                rounded = np.round(values, _HASH_DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0
                digest.update(np.ascontiguousarray(rounded, dtype="<f8").tobytes())
            self._hash.append(digest.hexdigest())
        return self._hash[0]

    def ids_hash(self) -> str:
        """sha256 of the sorted (volume_id, layer_id, module_id) keys alone.

        Token ids and dense module indices depend on nothing else (a module's index is the rank of its
        ids), so an artifact keyed on them (a vocabulary, a module table) applies to any detector with
        the same ids, while two geometries that differ by printing noise, like the real file and the
        built-in detector, never share a geometry_hash. Equal ids do not prove that the ids name the
        same places (they do for the real file and the built-in detector, not for any two detectors),
        hence ``artifact_applies`` warns whenever the geometry differs.
        """
        digest = hashlib.sha256(b"tb_plugin.Detector.ids/v1")
        digest.update(np.ascontiguousarray(self._keys, dtype="<i8").tobytes())
        return digest.hexdigest()

    # ------------------------------------------------------------------ lookups

    def index(self, volume_id, layer_id, module_id) -> np.ndarray:
        """Dense module index for each (volume, layer, module); -1 where the module does not exist."""
        keys = _module_keys(volume_id, layer_id, module_id)  # [...]
        pos = np.searchsorted(self._keys, keys)  # [...]
        pos_clipped = np.minimum(pos, len(self._keys) - 1)
        found = (keys >= 0) & (self._keys[pos_clipped] == keys)
        return np.where(found, pos_clipped, -1).astype(np.int64)

    def index_strict(self, volume_id, layer_id, module_id) -> np.ndarray:
        """As ``index``, but unknown modules are an error (for ids that must come from this detector)."""
        idx = self.index(volume_id, layer_id, module_id)
        unknown = idx < 0
        if unknown.any():
            v, lay, m = (np.broadcast_to(np.asarray(a), idx.shape)[unknown] for a in (volume_id, layer_id, module_id))
            shown = ", ".join(
                f"({a}, {b}, {c})"
                for a, b, c in zip(
                    v[:_UNKNOWN_SHOWN].tolist(), lay[:_UNKNOWN_SHOWN].tolist(), m[:_UNKNOWN_SHOWN].tolist()
                )
            )
            more = f" and {int(unknown.sum()) - _UNKNOWN_SHOWN} more" if unknown.sum() > _UNKNOWN_SHOWN else ""
            raise UnknownModuleError(
                f"{int(unknown.sum())} unknown (volume_id, layer_id, module_id) of {idx.size} looked up: "
                f"{shown}{more}; the detector has {len(self)} modules (geometry {self.geometry_hash()[:12]})"
            )
        return idx

    def _checked_index(self, index) -> np.ndarray:
        idx = np.asarray(index, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            bad = idx[(idx < 0) | (idx >= len(self))]
            raise IndexError(f"module index {bad.ravel()[:_UNKNOWN_SHOWN].tolist()} outside 0..{len(self) - 1}")
        return idx

    def centers(self, index) -> np.ndarray:
        """Module centres [K, 3] (mm) of the given dense indices."""
        return self.center[self._checked_index(index)]

    def rotations(self, index) -> np.ndarray:
        """Local-to-global rotations [K, 3, 3] of the given dense indices."""
        return self.rotation[self._checked_index(index)]

    # ------------------------------------------------------------------ frames

    def to_local(self, index, xyz) -> np.ndarray:
        """Global points [K, 3] to the local (u, v, w) frame of modules ``index`` [K]."""
        idx = self._checked_index(index)
        offset = np.asarray(xyz, dtype=np.float64) - self.center[idx]  # [K, 3]
        return np.einsum("...ij,...j->...i", self._inverse[idx], offset)  # R^-1 (x - c), [K, 3]

    def to_global(self, index, uvw) -> np.ndarray:
        """Local (u, v, w) [K, 3] of modules ``index`` [K] to global points."""
        idx = self._checked_index(index)
        local = np.asarray(uvw, dtype=np.float64)
        return self.center[idx] + np.einsum("...ij,...j->...i", self.rotation[idx], local)  # [K, 3]

    def half_width_u(self, index, v) -> np.ndarray:
        """Half-width in u at local v: linear from min_hu at v = -hv to max_hu at v = +hv."""
        idx = self._checked_index(index)
        frac = (np.asarray(v, dtype=np.float64) + self.hv[idx]) / (2.0 * self.hv[idx])  # [K]
        return self.min_hu[idx] + (self.max_hu[idx] - self.min_hu[idx]) * frac

    def contains(self, index, uvw, tol=0.0) -> np.ndarray:
        """Whether local points lie on their module: |u| <= hu(v), |v| <= hv, |w| <= thickness/2, each + tol."""
        idx = self._checked_index(index)
        local = np.asarray(uvw, dtype=np.float64)
        u, v, w = local[..., 0], local[..., 1], local[..., 2]
        inside_v = np.abs(v) <= self.hv[idx] + tol
        inside_u = np.abs(u) <= self.half_width_u(idx, np.clip(v, -self.hv[idx], self.hv[idx])) + tol
        inside_w = np.abs(w) <= self.thickness[idx] / 2.0 + tol
        return inside_u & inside_v & inside_w

    # ------------------------------------------------------------------ summaries

    def volume_mask(self, volumes) -> np.ndarray:
        """Bool [M]: modules in any of ``volumes`` (an id or a list of ids)."""
        return np.isin(self.volume_id, np.atleast_1d(np.asarray(volumes, dtype=np.int64)))

    def layers(self) -> pd.DataFrame:
        """One row per (volume_id, layer_id): kind, module count, extent of module centres, mean position."""
        r = np.hypot(self.center[:, 0], self.center[:, 1])  # [M]
        table = pd.DataFrame(
            {
                "volume_id": self.volume_id,
                "layer_id": self.layer_id,
                "r": r,
                "z": self.center[:, 2],
                "thickness": self.thickness,
            }
        )
        grouped = table.groupby(["volume_id", "layer_id"], sort=True)
        out = grouped.agg(
            n_modules=("r", "size"),
            r_min=("r", "min"),
            r_max=("r", "max"),
            z_min=("z", "min"),
            z_max=("z", "max"),
            r_mean=("r", "mean"),
            z_mean=("z", "mean"),
            thickness=("thickness", "mean"),
        ).reset_index()
        barrel = out["volume_id"].isin(BARREL_VOLUMES).to_numpy()
        out.insert(2, "kind", np.where(barrel, "barrel", "endcap"))
        out["position"] = np.where(barrel, out["r_mean"], out["z_mean"])  # mean r (barrel) or z (endcap)
        out["n_modules"] = out["n_modules"].astype(np.int64)
        out["volume_id"] = out["volume_id"].astype(np.int32)
        out["layer_id"] = out["layer_id"].astype(np.int32)
        return out


def artifact_applies(source: str, geometry_hash: str, ids_hash: str | None, detector: Detector) -> bool:
    """Whether an artifact keyed on module ids, saved with these hashes, applies to ``detector``.

    Same geometry: yes. Same module ids on another geometry: yes, with a warning naming ``source`` and
    both geometries, since a vocabulary trained on the built-in detector is meant to serve real events,
    but a wrong detectors.csv with the same ids would pass unnoticed otherwise. Other ids: no, as token
    ids would point at other modules. An artifact saved before ids hashes were recorded (``ids_hash``
    None) keeps the exact geometry check it was saved under: its ids are unknown.
    """
    if geometry_hash == detector.geometry_hash():
        return True
    if ids_hash is None or ids_hash != detector.ids_hash():
        return False
    log.warning(
        "%s was built on geometry %s…, the data has geometry %s…: same module ids, so it applies; "
        "check that the geometry is the intended one",
        source,
        geometry_hash[:12],
        detector.geometry_hash()[:12],
    )
    return True


def refusal_reason(ids_hash: str | None) -> str:
    """Why ``artifact_applies`` refused an artifact saved with this ids hash, for its error message."""
    return "other module ids" if ids_hash else "no module-ids hash recorded (saved before they were)"


# ---------------------------------------------------------------------- csv checks


def parse_column(column: pd.Series, path: Path, name: str, integer: bool) -> np.ndarray:
    """Parse one csv column of text, naming the first bad row instead of letting NaN slip through."""
    values = pd.to_numeric(column.str.strip(), errors="coerce").to_numpy(dtype=np.float64)  # [M]
    bad = ~np.isfinite(values)
    if integer:
        bad |= np.isfinite(values) & (values != np.round(values))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        kind = "an integer" if integer else "a finite number"
        raise DetectorFormatError(
            f"{path}: column {name} has {int(bad.sum())} value(s) that are not {kind}, first at data row "
            f"{row + 1}: {column.iloc[row]!r}"
        )
    return values.astype(np.int64) if integer else values


def _check_ids(ints: dict[str, np.ndarray], path: Path) -> None:
    for name, ids in ints.items():
        if ids.min() < 0 or ids.max() >= _ID_LIMIT:
            raise DetectorFormatError(f"{path}: column {name} has ids outside 0..{_ID_LIMIT - 1}")
    keys = _module_keys(ints["volume_id"], ints["layer_id"], ints["module_id"])
    unique, counts = np.unique(keys, return_counts=True)
    if (counts > 1).any():
        dup = int(unique[counts > 1][0])
        triple = (dup >> (2 * _ID_BITS), (dup >> _ID_BITS) & (_ID_LIMIT - 1), dup & (_ID_LIMIT - 1))
        raise DetectorFormatError(
            f"{path}: columns volume_id, layer_id, module_id: {int((counts > 1).sum())} duplicate module(s), "
            f"first {triple}; expected each (volume_id, layer_id, module_id) once"
        )


def _check_sizes(floats: dict[str, np.ndarray], path: Path) -> None:
    for name in SIZE_COLUMNS:
        if (floats[name] <= 0).any():
            raise DetectorFormatError(f"{path}: column {name} has values <= 0; expected positive sizes (mm)")
    rotation = np.stack([floats[c] for c in ROTATION_COLUMNS], axis=1).reshape(-1, 3, 3)  # [M, 3, 3]
    error = np.abs(np.einsum("kji,kjl->kil", rotation, rotation) - np.eye(3)).max(axis=(1, 2))  # [M]
    if (error > 1e-3).any():
        row = int(np.argmax(error))
        raise DetectorFormatError(
            f"{path}: columns rot_xu..rot_zw: {int((error > 1e-3).sum())} rotation(s) not orthonormal, "
            f"first at data row {row + 1} (max |R^T R - 1| = {error[row]:.3g}); expected orthonormal matrices"
        )


# ---------------------------------------------------------------------- the built-in detector
#
# Measured on the real TrackML detectors.csv (REFERENCE section 2 gives the coarse picture); the
# generated modules land within 4 micrometres (the real file prints 6 digits) and 1e-6 in rotation of
# the real ones. Every ring of modules starts at phi = -pi + half a step and runs anticlockwise.
# Faithful to the real file, the two pixel endcap rings leave a 2 mm radial gap (r = 102..104 mm) between them.
#
# Identifiers: every module_id equals the real file's. Barrel: 1 + iz * n_phi + iphi, z-rings from -z.
# Endcaps: ``_binned_disk_order`` rebuilds the order in which ACTS met a disk's modules in its surface
# grid (its LayerCreator and SurfaceArrayCreator as of v0.05, 2017, before the grid's rewrite at the
# end of 2017), with the grid's phi bin count from ``_acts_phi_bins``. Checked module by module against the real detectors.csv by
# `pytest tests/tb_plugin/test_geometry.py -k real_detector`.
#
# Barrel layer: modules on a cylinder of radius r, n_phi x n_z of them. z-rings are evenly spaced
# (step z_step, a little less than the module length 2 hv, so neighbours overlap in z) and alternate
# in radius: even z-rings at r + stagger, odd ones at r - stagger, so the overlaps do not collide.
# Each module is turned by `tilt` (rad) about its own long axis (parallel to z) so that neighbours in
# phi overlap like roof tiles. Local axes: v along +z, w the tilted outward normal, u = v x w (along +phi).


@dataclass(frozen=True)
class _Sensor:
    """What all modules of a subdetector share: thickness and readout pitch (mm)."""

    thickness: float
    pitch_u: float
    pitch_v: float


_PIXEL = _Sensor(thickness=0.15, pitch_u=0.05, pitch_v=0.05625)
_SHORT_STRIP = _Sensor(thickness=0.25, pitch_u=0.08, pitch_v=1.2)
_LONG_STRIP_BARREL = _Sensor(thickness=0.35, pitch_u=0.12, pitch_v=10.8)
_LONG_STRIP_ENDCAP = _Sensor(thickness=0.35, pitch_u=0.12, pitch_v=10.4)


@dataclass(frozen=True)
class _BarrelLayer:
    volume_id: int
    layer_id: int
    radius: float  # mean radius of the module centres (mm)
    n_phi: int
    n_z: int
    z_step: float  # distance between neighbouring z-rings (mm)
    stagger: float  # radial offset of alternate z-rings (mm)
    tilt: float  # rotation of the module normal away from the radial direction (rad)
    hu: float
    hv: float
    sensor: _Sensor


_BARREL_LAYERS = (
    # volume 8: pixel barrel, 16..78 x 14 modules of 16.8 x 72 mm
    *(
        _BarrelLayer(8, lay, r, n_phi, 14, 70.0, 0.25, 0.14, 8.4, 36.0, _PIXEL)
        for lay, r, n_phi in ((2, 32.0, 16), (4, 72.0, 32), (6, 116.0, 52), (8, 172.0, 78))
    ),
    # volume 13: short-strip barrel, 48 x 108 mm modules, 21 z-rings
    *(
        _BarrelLayer(13, lay, r, n_phi, 21, 103.0, 1.5, -0.15, 24.0, 54.0, _SHORT_STRIP)
        for lay, r, n_phi in ((2, 260.0, 40), (4, 360.0, 56), (6, 500.0, 78), (8, 660.0, 102))
    ),
    # volume 17: long-strip barrel, same module size with longer strips
    *(
        _BarrelLayer(17, lay, r, n_phi, 21, 103.0, 1.5, -0.15, 24.0, 54.0, _LONG_STRIP_BARREL)
        for lay, r, n_phi in ((2, 820.0, 120), (4, 1020.0, 152))
    ),
)

# Endcap disk: concentric rings of trapezoids pointing at the beam (narrow end, min_hu, inwards).
# Neighbours in a ring sit alternately in front of and behind the disk plane (`z_offsets`, cycled
# along phi, in mm of |z| away from the nominal disk position) so that they can overlap in phi;
# rings overlap slightly in r. Local axes: v radially outwards, w along +z on the +z side and -z on
# the -z side, u = v x w.


@dataclass(frozen=True)
class _Ring:
    radius: float
    n_phi: int
    min_hu: float
    max_hu: float
    z_offsets: tuple[float, ...]


@dataclass(frozen=True)
class _EndcapSet:
    """A pair of endcap volumes (-z, +z) with identical disks; layer_id grows with z."""

    volume_minus: int
    volume_plus: int
    disk_abs_z: tuple[float, ...]  # nominal |z| of each disk, from the centre outwards (mm)
    hv: float
    rings: tuple[_Ring, ...]
    sensor: _Sensor
    # ACTS's posnegLayerBinMultipliers phi factor in the TrackML configuration (GenericDetector of
    # acts-framework, 2017): 1 for the pixel, 2 for both strip subdetectors; see ``_acts_phi_bins``
    phi_bin_multiplier: int


_STRIP_DISKS = (1220.0, 1500.0, 1800.0, 2150.0, 2550.0, 2950.0)
_ENDCAP_SETS = (
    _EndcapSet(
        7,
        9,
        (600.0, 700.0, 820.0, 960.0, 1100.0, 1300.0, 1500.0),
        36.0,
        (_Ring(66.0, 40, 8.4, 8.4, (2.5, -2.0, 2.0, -2.5)), _Ring(140.0, 68, 8.4, 8.4, (2.0, -2.0))),
        _PIXEL,
        phi_bin_multiplier=1,
    ),
    _EndcapSet(
        12,
        14,
        _STRIP_DISKS,
        78.0,
        (
            _Ring(318.0, 54, 16.4, 24.2, (-1.5, -4.5)),
            _Ring(470.0, 56, 24.2, 32.2, (4.5, 1.5)),
            _Ring(622.0, 60, 32.2, 40.0, (-1.5, -4.5)),
        ),
        _SHORT_STRIP,
        phi_bin_multiplier=2,
    ),
    _EndcapSet(
        16,
        18,
        _STRIP_DISKS,
        78.0,
        (_Ring(828.0, 48, 54.0, 64.2, (-2.5, -5.5)), _Ring(942.0, 50, 66.0, 72.0, (5.5, 2.5))),
        _LONG_STRIP_ENDCAP,
        phi_bin_multiplier=2,
    ),
)


def _ring_phi(n_phi: int) -> np.ndarray:
    """Centre phi of the n_phi modules of a ring: half a step after -pi, anticlockwise."""
    step = 2.0 * np.pi / n_phi
    return -np.pi + step * (np.arange(n_phi) + 0.5)  # [n_phi]


def _frames(u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Stack local axes [K, 3] into rotations [K, 3, 3] whose columns are u, v, w."""
    return np.stack([u, v, w], axis=2)  # [K, 3, 3]


def _barrel_layer_arrays(layer: _BarrelLayer) -> dict[str, np.ndarray]:
    """Modules of one barrel layer, numbered 1 + iz * n_phi + iphi like the real file."""
    iz, iphi = np.divmod(np.arange(layer.n_z * layer.n_phi), layer.n_phi)  # [K] each
    phi = _ring_phi(layer.n_phi)[iphi]  # [K]
    radius = layer.radius + np.where(iz % 2 == 0, layer.stagger, -layer.stagger)  # [K]
    z = (iz - (layer.n_z - 1) / 2.0) * layer.z_step  # [K]
    normal_phi = phi + layer.tilt  # [K]
    zeros, ones = np.zeros_like(phi), np.ones_like(phi)
    w = np.stack([np.cos(normal_phi), np.sin(normal_phi), zeros], axis=1)  # [K, 3]
    v = np.stack([zeros, zeros, ones], axis=1)  # [K, 3]
    u = np.cross(v, w)  # [K, 3]
    k = len(phi)
    return {
        "volume_id": np.full(k, layer.volume_id),
        "layer_id": np.full(k, layer.layer_id),
        "module_id": 1 + iz * layer.n_phi + iphi,
        "center": np.stack([radius * np.cos(phi), radius * np.sin(phi), z], axis=1),  # [K, 3]
        "rotation": _frames(u, v, w),
        "min_hu": np.full(k, layer.hu),
        "max_hu": np.full(k, layer.hu),
        "hv": np.full(k, layer.hv),
        **_sensor_arrays(layer.sensor, k),
    }


def _endcap_disk_arrays(endcaps: _EndcapSet, volume_id: int, layer_id: int, disk_z: float) -> dict[str, np.ndarray]:
    """Modules of one disk at signed z, numbered 1..K as the comment above the module tables says."""
    side = np.sign(disk_z)
    parts = []
    for ring in endcaps.rings:
        offsets = np.resize(np.asarray(ring.z_offsets), ring.n_phi)  # [n] cycled along phi
        parts.append(
            (
                _ring_phi(ring.n_phi),
                np.full(ring.n_phi, ring.radius),
                disk_z + side * offsets,
                np.full(ring.n_phi, ring.min_hu),
                np.full(ring.n_phi, ring.max_hu),
            )
        )
    phi, radius, z, min_hu, max_hu = (np.concatenate(p) for p in zip(*parts))  # [K] each, ring-major
    center = np.stack([radius * np.cos(phi), radius * np.sin(phi), z], axis=1)  # [K, 3]
    rings = np.array([ring.radius for ring in endcaps.rings])
    n_bins = _acts_phi_bins([ring.n_phi for ring in endcaps.rings], endcaps.phi_bin_multiplier)
    order = _binned_disk_order(center, rings, n_bins)  # module_id - 1 -> row
    phi, center, min_hu, max_hu = phi[order], center[order], min_hu[order], max_hu[order]
    zeros = np.zeros_like(phi)
    v = np.stack([np.cos(phi), np.sin(phi), zeros], axis=1)  # [K, 3] radially outwards
    w = np.stack([zeros, zeros, np.full_like(phi, side)], axis=1)  # [K, 3] away from the centre
    u = np.cross(v, w)  # [K, 3]
    k = len(phi)
    return {
        "volume_id": np.full(k, volume_id),
        "layer_id": np.full(k, layer_id),
        "module_id": np.arange(1, k + 1),
        "center": center,
        "rotation": _frames(u, v, w),
        "min_hu": min_hu,
        "max_hu": max_hu,
        "hv": np.full(k, endcaps.hv),
        **_sensor_arrays(endcaps.sensor, k),
    }


def _acts_phi_bins(ring_counts: list[int], multiplier: int) -> int:
    """Phi bins of a disk's surface grid, counted as ACTS's GenericLayerBuilder counted them.

    It meant "the densest ring's module count times the multiplier" but multiplies inside its loop
    over the rings, so with multiplier 2 the count doubles once per ring: rings of 54, 56, 60 modules
    give 432 bins (not 120), rings of 48, 50 give 192. With multiplier 1 it is the densest ring's count.
    The real strip endcap ids need these quirky counts; twice the densest ring's count does not give them.
    """
    bins = 0
    for count in ring_counts:
        bins = max(count, bins) * multiplier
    return bins


def _binned_disk_order(center: np.ndarray, rings: np.ndarray, n_bins: int) -> np.ndarray:
    """Rows of one disk in module_id order, numbered the way the TrackML geometry (ACTS) numbered them.

    ACTS gives a layer's sensitive surfaces their ids in the order they first appear in the layer's
    surface grid, read phi bin by phi bin and, within a phi bin, ring by ring outwards. The grid has
    ``n_bins`` phi bins and one radial bin per ring. Its phi range is that of the module centres
    widened by half a bin on each side, with the bin width (max - min) / (n_bins - 1): the bin centres
    run in equal steps from the lowest to the highest module centre phi, both included (a full turn
    spread over n_bins - 1 steps, not n_bins). Every bin then takes the module whose centre is nearest
    in 3D to the bin's point (the ring radius at the bin's central phi, at the disk's mean z), even a
    bin that holds a module's centre (ACTS skipped that only for grids with exactly one bin per module,
    which no TrackML disk has); a module nearest to no bin would get no id. ACTS's radial bins split
    the disk's radial extent evenly, so their centres sit up to 13 mm off the ring radii used here;
    both give the real ids (ACTS's bins: measured once on the real file; the ring radii: the tests).
    ``center`` [K, 3] is in ring-major input order, as ACTS received the modules: a tie goes to the
    first module.
    """
    phi = np.arctan2(center[:, 1], center[:, 0])  # [K]
    bin_phi = np.linspace(phi.min(), phi.max(), n_bins)  # [n_bins]
    points = np.stack(
        np.broadcast_arrays(
            rings[None, :] * np.cos(bin_phi)[:, None], rings[None, :] * np.sin(bin_phi)[:, None], center[:, 2].mean()
        ),
        axis=-1,
    )  # [n_bins, R, 3]
    distance = np.linalg.norm(points[:, :, None, :] - center[None, None, :, :], axis=-1)  # [n_bins, R, K]
    grid = distance.argmin(axis=-1)  # [n_bins, R]; argmin keeps the first of equals, as ACTS
    rows, first_seen = np.unique(grid.ravel(), return_index=True)  # each row's first bin
    if len(rows) < len(phi):
        raise ValueError(f"{len(phi) - len(rows)} endcap module(s) nearest to no bin of a {n_bins}-bin grid")
    return rows[np.argsort(first_seen, kind="stable")]


def _sensor_arrays(sensor: _Sensor, k: int) -> dict[str, np.ndarray]:
    return {
        "thickness": np.full(k, sensor.thickness),
        "pitch_u": np.full(k, sensor.pitch_u),
        "pitch_v": np.full(k, sensor.pitch_v),
    }


def _endcap_disks() -> list[tuple[_EndcapSet, int, int, float]]:
    """(endcap set, volume, layer, signed z) of every disk; layer_id 2, 4, ... in increasing z."""
    disks = []
    for endcaps in _ENDCAP_SETS:
        outwards = sorted(endcaps.disk_abs_z)
        minus_side = [-z for z in reversed(outwards)]  # most negative first
        for volume_id, zs in ((endcaps.volume_minus, minus_side), (endcaps.volume_plus, outwards)):
            disks.extend((endcaps, volume_id, 2 + 2 * i, z) for i, z in enumerate(zs))
    return disks


@functools.lru_cache(maxsize=1)
def _builtin_detector() -> Detector:
    pieces = [_barrel_layer_arrays(layer) for layer in _BARREL_LAYERS]
    pieces += [_endcap_disk_arrays(*disk) for disk in _endcap_disks()]
    merged = {name: np.concatenate([p[name] for p in pieces]) for name in pieces[0]}
    return Detector.from_arrays(**merged)


def detector_for(folder: str | os.PathLike | None, explicit: str | os.PathLike | None = None) -> Detector:
    """The geometry a stage works with: an explicit detectors.csv, else the one stored beside the
    data (``folder/detectors.csv``, written by ``tb simulate`` and by data reading), else the built-in,
    with a warning: the fallback is kept (ACORN stores carry no detectors.csv, and the built-in detector
    is what simulated data is made with) but never silent, since a wrong geometry corrupts everything
    tokenised with it."""
    if explicit is not None:
        return Detector.from_csv(explicit)
    if folder is not None and (Path(folder) / "detectors.csv").is_file():
        return Detector.from_csv(Path(folder) / "detectors.csv")
    detector = Detector.builtin()
    if folder is not None:
        # loud, because the guess is silent otherwise: module indices, the vocabulary and the detectors.csv
        # that stages write for later ones would all be of the built-in geometry (stages keep the detector
        # they get, so this is said once per stage)
        log.warning(
            "%s has no detectors.csv and the config names no 'detector': FALLING BACK to the built-in "
            "TrackML-like detector (geometry %s…), which later stages will inherit. If the data was made "
            "with another detector, set key 'detector' to its detectors.csv",
            folder,
            detector.geometry_hash()[:12],
        )
    return detector
