"""Detector conditions: dead modules, per-module hit efficiency and module misalignment.

Real detectors differ module by module; the nominal geometry (detectors.csv) is what reconstruction
is told, not what the particles meet. A ``DetectorConditions`` table says, for the modules that differ,
how: ``dead`` (no hits at all, noise included), ``efficiency`` (the probability that a hit the nominal
module would record is recorded: a factor on top of ``SimulationConfig.hit_inefficiency``) and the
module's true placement, shifted by (du, dv, dw) mm along its own nominal local axes and turned by
small angles (angle_u, angle_v, angle_w) rad about them.

Misalignment, physically. The true module has centre c' = c + R (du, dv, dw) and rotation
R' = R Rw(angle_w) Rv(angle_v) Ru(angle_u) (R, c: the nominal frame of detectors.csv; Ru, Rv, Rw:
rotations about the local u, v, w axes, the one about u applied first). Particles cross the true
plane, and the sensor measures where they crossed it in its own strips and pixels: the local (u', v')
on the true module. Reconstruction does not know the module moved, so it reports that measurement
through the NOMINAL transform, x = c + R (u', v', 0). A module shifted by +du along u therefore shows
its hits moved by -du along u, as seen from the tracks; a shift along w or a rotation also changes
where the particle crosses, and the hit lands where the track met the true plane, expressed in the
nominal one. The truth files (tx, ty, tz) keep the true crossing: the point the particle really passed.

Randomness. The table is drawn once per detector from its own seed (``DetectorConditionsConfig.seed``,
not the event seed: a detector stays the same detector across datasets), each quantity from its own
stream so that asking for one does not change another. The hits an inefficient module loses in an
event are drawn from a stream of their own (``hit_loss_rng``), so the events' main random stream
makes the same draws whatever the conditions, and with no conditions nothing changes at all: the
files are byte for byte those of a simulation without this module.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tb_plugin.atomic import atomic_path
from tb_plugin.geometry import ID_COLUMNS, Detector, DetectorFormatError, parse_column

CONDITIONS_FILE = "detector_conditions.csv"
"""Name of the conditions table, written beside detectors.csv when any condition is on."""

SHIFT_COLUMNS = ("du", "dv", "dw")
ANGLE_COLUMNS = ("angle_u", "angle_v", "angle_w")
CONDITION_COLUMNS = (*ID_COLUMNS, "dead", "efficiency", *SHIFT_COLUMNS, *ANGLE_COLUMNS)
"""Columns of ``CONDITIONS_FILE``: ids, dead (0 or 1), efficiency (0..1), shifts (mm), angles (rad)."""

_TAG = 0x636F6E64  # "cond": keeps the conditions' random streams apart from the events' own
_DEAD, _EFFICIENCY, _SHIFT, _ANGLE, _HIT_LOSS = range(5)
MAX_MISALIGNMENT_MM = 5.0
MAX_MISALIGNMENT_MRAD = 50.0


class ConditionsError(ValueError):
    """A condition option or a conditions / dead-modules file that cannot be used.

    ``option``: the config field at fault (empty for a file), so the command line can name its option.
    """

    def __init__(self, message: str, option: str = "") -> None:
        super().__init__(message)
        self.option = option


@dataclass(frozen=True)
class DetectorConditionsConfig:
    """How to draw a detector's conditions; all zero or empty (the default) means an ideal detector."""

    seed: int = 0
    """Seed of the conditions (``tb simulate --conditions-seed``); the event seed does not enter."""
    dead_fraction: float = 0.0
    """Fraction of the modules that are dead: exactly round(fraction x modules), chosen at random."""
    dead_modules: tuple[tuple[int, int, int], ...] = ()
    """(volume_id, layer_id, module_id) of modules dead in any case (``--dead-modules FILE``)."""
    efficiency_spread: float = 0.0
    """Each module's efficiency is 1 - |N(0, spread)|, clipped at 0, drawn once: a half-normal loss,
    since the nominal inefficiency already covers a module as designed and real modules fall short
    of it (dead strips, threshold drifts, noisy channels masked) far more than they exceed it. The
    mean loss is spread x sqrt(2 / pi), about 0.8 spread."""
    misalignment_mm: float = 0.0
    """Standard deviation (mm) of each module's shifts du, dv, dw along its local axes."""
    misalignment_mrad: float = 0.0
    """Standard deviation (mrad) of each module's rotations about its local u, v and w axes."""

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or not 0 <= self.seed < 2**63:
            raise ConditionsError(f"seed = {self.seed!r}: expected an integer in [0, 2**63)", "seed")
        _check_float("dead_fraction", self.dead_fraction, 1.0)
        _check_float("efficiency_spread", self.efficiency_spread, 1.0)
        _check_float("misalignment_mm", self.misalignment_mm, MAX_MISALIGNMENT_MM)
        _check_float("misalignment_mrad", self.misalignment_mrad, MAX_MISALIGNMENT_MRAD)

    @property
    def active(self) -> bool:
        """Whether anything differs from the ideal detector."""
        return bool(
            self.dead_fraction
            or self.dead_modules
            or self.efficiency_spread
            or self.misalignment_mm
            or self.misalignment_mrad
        )

    def record(self) -> dict[str, object]:
        """The options as a plain mapping, for simulation.json."""
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        record["dead_modules"] = [list(ids) for ids in self.dead_modules]
        return record

    def draw(self, detector: Detector) -> DetectorConditions:
        """The conditions of `detector` these options give: the same seed always gives the same table."""
        m = len(detector)
        dead = np.zeros(m, dtype=bool)
        n_dead = round(self.dead_fraction * m)
        if n_dead:
            dead[_stream(self.seed, _DEAD).permutation(m)[:n_dead]] = True
        if self.dead_modules:
            dead[_dead_rows(self.dead_modules, detector, "dead_modules")] = True
        efficiency = np.ones(m)
        if self.efficiency_spread:
            loss = np.abs(_stream(self.seed, _EFFICIENCY).standard_normal(m)) * self.efficiency_spread
            efficiency = np.maximum(1.0 - loss, 0.0)
        shift = np.zeros((m, 3))
        if self.misalignment_mm:
            shift = _stream(self.seed, _SHIFT).standard_normal((m, 3)) * self.misalignment_mm
        angle = np.zeros((m, 3))
        if self.misalignment_mrad:
            angle = _stream(self.seed, _ANGLE).standard_normal((m, 3)) * self.misalignment_mrad * 1e-3
        return DetectorConditions.for_modules(
            detector, np.arange(m), dead, efficiency, shift, angle, source={"drawn": self.record()}
        )


@dataclass(frozen=True, eq=False)
class DetectorConditions:
    """The modules that differ from the nominal detector, and how: one row each (a typed table).

    Rows are in (volume, layer, module) order; a module absent from the table is ideal. ``source``
    says where the table came from (the drawing options, or the file it was read from).
    """

    volume_id: np.ndarray  # int32 [K]
    layer_id: np.ndarray  # int32 [K]
    module_id: np.ndarray  # int32 [K]
    dead: np.ndarray  # bool [K]
    efficiency: np.ndarray  # float64 [K], 0..1, a factor on the nominal efficiency
    shift: np.ndarray  # float64 [K, 3], du, dv, dw in mm along the nominal local axes
    angle: np.ndarray  # float64 [K, 3], rad about the local u, v, w axes
    source: dict[str, object] = field(default_factory=dict)
    _applied: list = field(default_factory=list, init=False, repr=False)  # memo of ``applied``

    @classmethod
    def for_modules(
        cls,
        detector: Detector,
        module: np.ndarray,
        dead: np.ndarray,
        efficiency: np.ndarray,
        shift: np.ndarray,
        angle: np.ndarray,
        source: dict[str, object] | None = None,
    ) -> DetectorConditions:
        """The table for dense module indices of `detector`, keeping only the modules that differ."""
        module = np.asarray(module, dtype=np.int64)
        dead = np.asarray(dead, dtype=bool)
        efficiency = np.asarray(efficiency, dtype=np.float64)
        shift = np.asarray(shift, dtype=np.float64).reshape(-1, 3)
        angle = np.asarray(angle, dtype=np.float64).reshape(-1, 3)
        differs = dead | (efficiency != 1.0) | (shift != 0.0).any(axis=1) | (angle != 0.0).any(axis=1)
        rows = np.argsort(module[differs], kind="stable")
        keep = module[differs][rows]
        return cls(
            volume_id=detector.volume_id[keep].copy(),
            layer_id=detector.layer_id[keep].copy(),
            module_id=detector.module_id[keep].copy(),
            dead=dead[differs][rows],
            efficiency=efficiency[differs][rows],
            shift=shift[differs][rows],
            angle=angle[differs][rows],
            source=dict(source or {}),
        )

    def __len__(self) -> int:
        return len(self.volume_id)

    @property
    def active(self) -> bool:
        """Whether any module differs from the nominal detector."""
        return len(self) > 0

    def to_frame(self) -> pd.DataFrame:
        """The table with the columns of ``CONDITION_COLUMNS`` (dead as 0 or 1)."""
        return pd.DataFrame(
            {
                "volume_id": self.volume_id,
                "layer_id": self.layer_id,
                "module_id": self.module_id,
                "dead": self.dead.astype(np.int8),
                "efficiency": self.efficiency,
                **{c: self.shift[:, i] for i, c in enumerate(SHIFT_COLUMNS)},
                **{c: self.angle[:, i] for i, c in enumerate(ANGLE_COLUMNS)},
            },
            columns=list(CONDITION_COLUMNS),
        )

    def applied(self, detector: Detector) -> AppliedConditions:
        """Per-module arrays over all of `detector` (built once per detector and kept)."""
        for nominal, applied in self._applied:
            if nominal is detector:
                return applied
        applied = _apply(self, detector)
        self._applied.append((detector, applied))
        return applied


@dataclass(frozen=True, eq=False)
class AppliedConditions:
    """Conditions spread over every module of one detector, as the event simulation uses them."""

    efficiency: np.ndarray  # float64 [M], 0 for a dead module
    dead: np.ndarray  # bool [M]
    true_detector: Detector  # the modules where they really are (the nominal detector if aligned)

    def kept(self, rng: np.random.Generator, module: np.ndarray) -> np.ndarray:
        """Bool [H]: which hits on `module` [H] the modules' efficiencies let through."""
        return rng.random(len(module)) < self.efficiency[module]


def hit_loss_rng(seed: int, event_id: int) -> np.random.Generator:
    """The event's stream for the hits lost to module inefficiency, apart from its main stream."""
    return np.random.default_rng([int(seed), int(event_id), _TAG, _HIT_LOSS])


def true_detector(detector: Detector, module: np.ndarray, shift: np.ndarray, angle: np.ndarray) -> Detector:
    """`detector` with modules [K] moved by `shift` [K, 3] (mm, local axes) and turned by `angle` [K, 3]."""
    if not (np.any(shift) or np.any(angle)):
        return detector
    center = detector.center.copy()
    rotation = detector.rotation.copy()
    nominal = detector.rotation[module]  # [K, 3, 3]
    center[module] += np.einsum("kij,kj->ki", nominal, shift)
    rotation[module] = nominal @ local_rotation(angle)
    return dataclasses.replace(detector, center=center, rotation=rotation)


def local_rotation(angle: np.ndarray) -> np.ndarray:
    """Rw(angle_w) Rv(angle_v) Ru(angle_u) [K, 3, 3] for angles [K, 3] about the local u, v, w axes."""
    cos, sin = np.cos(angle), np.sin(angle)  # [K, 3]
    k = len(angle)
    ru, rv, rw = (np.tile(np.eye(3), (k, 1, 1)) for _ in range(3))
    for r, (a, b), i in ((ru, (1, 2), 0), (rv, (2, 0), 1), (rw, (0, 1), 2)):
        r[:, a, a], r[:, a, b], r[:, b, a], r[:, b, b] = cos[:, i], -sin[:, i], sin[:, i], cos[:, i]
    return rw @ rv @ ru


def write_conditions(conditions: DetectorConditions, path: str | os.PathLike) -> Path:
    """Write the table as csv; floats keep full precision, so ``read_conditions`` gives it back."""
    path = Path(path)
    with atomic_path(path) as tmp:
        conditions.to_frame().to_csv(tmp, index=False)
    return path


def read_conditions(path: str | os.PathLike, detector: Detector | None = None) -> DetectorConditions:
    """The table of a conditions file (``CONDITION_COLUMNS``), checked; with `detector`, every module
    must be one of its modules (a typo would otherwise leave the module silently ideal)."""
    path = Path(path)
    table = _read_table(path, CONDITION_COLUMNS)
    ints = {c: _column(table, c, path, integer=True) for c in (*ID_COLUMNS, "dead")}
    floats = {c: _column(table, c, path, integer=False) for c in ("efficiency", *SHIFT_COLUMNS, *ANGLE_COLUMNS)}
    if not np.isin(ints["dead"], (0, 1)).all():
        raise ConditionsError(f"{path}: column dead holds values other than 0 and 1")
    if ((floats["efficiency"] < 0.0) | (floats["efficiency"] > 1.0)).any():
        raise ConditionsError(f"{path}: column efficiency holds values outside [0, 1]")
    keys = pd.MultiIndex.from_arrays([ints[c] for c in ID_COLUMNS])
    if keys.has_duplicates:
        raise ConditionsError(f"{path}: a module is listed more than once")
    order = np.lexsort((ints["module_id"], ints["layer_id"], ints["volume_id"]))
    conditions = DetectorConditions(
        volume_id=ints["volume_id"][order].astype(np.int32),
        layer_id=ints["layer_id"][order].astype(np.int32),
        module_id=ints["module_id"][order].astype(np.int32),
        dead=ints["dead"][order].astype(bool),
        efficiency=floats["efficiency"][order],
        shift=np.stack([floats[c] for c in SHIFT_COLUMNS], axis=1)[order],
        angle=np.stack([floats[c] for c in ANGLE_COLUMNS], axis=1)[order],
        source={"file": str(path)},
    )
    if detector is not None:
        _module_rows(conditions, detector, path)
    return conditions


def read_dead_modules(path: str | os.PathLike, detector: Detector | None = None) -> tuple[tuple[int, int, int], ...]:
    """(volume_id, layer_id, module_id) of each row of a csv with those columns (others are ignored);
    with `detector`, each must be one of its modules."""
    path = Path(path)
    table = _read_table(path, ID_COLUMNS)
    ints = [_column(table, c, path, integer=True).tolist() for c in ID_COLUMNS]
    ids = tuple(zip(*ints))
    if detector is not None:
        _dead_rows(ids, detector, str(path))
    return ids


def _apply(conditions: DetectorConditions, detector: Detector) -> AppliedConditions:
    module = _module_rows(conditions, detector, None)
    dead = np.zeros(len(detector), dtype=bool)
    dead[module] = conditions.dead
    efficiency = np.ones(len(detector))
    efficiency[module] = np.where(conditions.dead, 0.0, conditions.efficiency)
    return AppliedConditions(efficiency, dead, true_detector(detector, module, conditions.shift, conditions.angle))


def _dead_rows(ids: tuple[tuple[int, int, int], ...], detector: Detector, where: str) -> np.ndarray:
    array = np.array(ids, dtype=np.int64).reshape(-1, 3)
    try:
        return detector.index_strict(array[:, 0], array[:, 1], array[:, 2])
    except KeyError as err:
        raise ConditionsError(f"{where}: {err}") from None


def _module_rows(conditions: DetectorConditions, detector: Detector, path: Path | None) -> np.ndarray:
    try:
        return detector.index_strict(conditions.volume_id, conditions.layer_id, conditions.module_id)
    except KeyError as err:
        where = f"{path}: " if path is not None else "detector conditions: "
        raise ConditionsError(f"{where}{err}") from None


def _read_table(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found (expected a csv with columns {', '.join(columns)})") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise ConditionsError(f"{path}: not a readable csv table ({err})") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ConditionsError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(columns)}")
    return table


def _column(table: pd.DataFrame, name: str, path: Path, integer: bool) -> np.ndarray:
    """geometry.parse_column (the first bad row named), as a ConditionsError for `tb simulate`'s message."""
    try:
        return parse_column(table[name], path, name, integer)
    except DetectorFormatError as err:
        raise ConditionsError(str(err)) from None


def _stream(seed: int, quantity: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _TAG, quantity])


def _check_float(name: str, value: object, high: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or not 0.0 <= value <= high
    ):
        raise ConditionsError(f"{name} = {value!r}: expected a number in [0, {high}]", name)
