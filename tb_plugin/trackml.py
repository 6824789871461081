"""Reading, writing, weighting and scoring TrackML events (format: REFERENCE.md section 1).

An event is a set of CSV files sharing a prefix, ``event{ID:09d}-{part}.csv`` (or ``.csv.gz``), with
the parts ``hits``, ``cells``, ``particles`` and ``truth``. Every frame this module returns has
exactly the columns of ``PART_COLUMNS`` in that order and with those dtypes, so downstream code never
has to guess whether ``hit_id`` is int32 or int64, or whether ``x`` is float32.

Reading is strict because a silently mis-parsed event (a shifted column, a truncated last line, a
duplicated hit) would poison training or scoring without any visible symptom. Every problem is
raised as a ``TrackMLFormatError`` that names the file and the problem (column, line, expected
value). The good path is one vectorised ``pandas.read_csv`` with explicit dtypes; only when that or
the cheap checks after it fail is the file re-read line by line to say exactly what is wrong.

Columns not in the schema are dropped on reading and on writing, so every frame has the documented
column set. The one exception is the optional ``particle_type`` (i4) column of particles, which
some simulations write and the Kaggle files lack: it is kept, after the documented columns.

Momenta are in GeV/c and lengths in mm, as in the files.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from tb_plugin.atomic import atomic_path
from tb_plugin.csv_text import csv_bytes

_I4 = np.dtype("int32")
_I8 = np.dtype("int64")
_F4 = np.dtype("float32")

PART_COLUMNS: dict[str, dict[str, np.dtype]] = {
    "hits": {"hit_id": _I4, "x": _F4, "y": _F4, "z": _F4, "volume_id": _I4, "layer_id": _I4, "module_id": _I4},
    "cells": {"hit_id": _I4, "ch0": _I4, "ch1": _I4, "value": _F4},
    "particles": {
        "particle_id": _I8,
        "vx": _F4,
        "vy": _F4,
        "vz": _F4,
        "px": _F4,
        "py": _F4,
        "pz": _F4,
        "q": _I4,
        "nhits": _I4,
    },
    "truth": {
        "hit_id": _I4,
        "particle_id": _I8,
        "tx": _F4,
        "ty": _F4,
        "tz": _F4,
        "tpx": _F4,
        "tpy": _F4,
        "tpz": _F4,
        "weight": _F4,
    },
}
"""Ordered columns and dtypes of each event part (REFERENCE.md section 1)."""

OPTIONAL_COLUMNS: dict[str, dict[str, np.dtype]] = {
    "hits": {},
    "cells": {},
    "particles": {"particle_type": _I4},
    "truth": {},
}
"""Columns a part may carry in addition to PART_COLUMNS; kept (after the required ones) when present."""

UNIQUE_KEY: dict[str, str | None] = {
    "hits": "hit_id",
    "cells": None,  # one row per pixel/strip cell: a hit_id repeats once per cell
    "particles": "particle_id",
    "truth": "hit_id",
}
"""The column that must not repeat inside one file of each part."""

_SUFFIXES = (".csv", ".csv.gz")
_EVENT_HITS = re.compile(r"^(event(\d+))-hits\.csv(\.gz)?$")
_WEIGHT_PT_POINTS = (np.array([0.05, 0.5, 3.0]), np.array([0.2, 0.2, 1.0]))
_ORDER_PROFILE = np.array([10.0, 8.0, 6.0, 5.0, 3.0, 3.0, 3.0, 5.0, 6.0])
_ORDER_MIN_HITS = 4
_ORDER_MAX_HITS = 20
_SHOW = 5  # how many offending ids/lines an error message lists


class TrackMLFormatError(ValueError):
    """A TrackML file (or a frame about to be written as one) does not follow the format."""


class SubmissionError(ValueError):
    """A submission cannot be scored: a column is missing, or hits are missing, repeated or unknown."""


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------


def event_prefix(folder: str | os.PathLike, event_id: int) -> Path:
    """The common prefix of an event's files: ``folder/event{ID:09d}``."""
    return Path(folder) / f"event{int(event_id):09d}"


def list_events(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """Every event in `folder` that has a hits file, as sorted ``(event_id, prefix)`` pairs.

    The hits file defines an event because every other part is optional for some use
    (test events have no truth, most pipelines skip cells).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise TrackMLFormatError(f"TrackML folder {folder} does not exist or is not a directory")
    events: dict[int, Path] = {}
    for entry in folder.iterdir():
        match = _EVENT_HITS.match(entry.name)
        if match:
            events.setdefault(int(match.group(2)), folder / match.group(1))
    return sorted(events.items())


def _part_file(prefix: str | os.PathLike, part: str) -> Path:
    """The existing file of one event part; plain ``.csv`` and ``.csv.gz`` are both accepted.

    Both existing at once is refused: one of them is stale and nothing says which.
    """
    candidates = [Path(f"{os.fspath(prefix)}-{part}{suffix}") for suffix in _SUFFIXES]
    found = [path for path in candidates if path.is_file()]
    if not found:
        tried = " or ".join(str(path) for path in candidates)
        raise TrackMLFormatError(f"missing {part} file: tried {tried}")
    if len(found) > 1:
        raise TrackMLFormatError(
            f"both {found[0]} and {found[1]} exist; remove the stale one so the event is unambiguous"
        )
    return found[0]


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _schema(part: str) -> tuple[dict[str, np.dtype], dict[str, np.dtype]]:
    if part not in PART_COLUMNS:
        raise ValueError(f"unknown TrackML part {part!r}; expected one of {sorted(PART_COLUMNS)}")
    return PART_COLUMNS[part], OPTIONAL_COLUMNS[part]


def _read_bytes(path: Path) -> bytes:
    """The file's (decompressed) content; gzip is recognised by its magic bytes, not only the suffix."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise TrackMLFormatError(f"{path}: file not found") from None
    except OSError as exc:
        raise TrackMLFormatError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise TrackMLFormatError(f"{path}: corrupt or truncated gzip data ({exc})") from None
    return raw


def read_part(path: str | os.PathLike, part: str) -> pd.DataFrame:
    """Read and validate one TrackML file of the given part (``hits``, ``cells``, ``particles``, ``truth``).

    Returns the documented columns in order with their exact dtypes (plus optional ones present).
    A file with a header but no rows is a valid, empty table. Raises TrackMLFormatError naming the
    file and the problem for anything else that is not a well-formed file of that part.
    """
    path = Path(path)
    required, optional = _schema(part)
    data = _read_bytes(path)
    if not data.strip():
        raise TrackMLFormatError(f"{path}: file is empty (expected a header line: {','.join(required)})")
    try:
        header = [str(name) for name in pd.read_csv(io.BytesIO(data), nrows=0).columns]
    except (ValueError, UnicodeDecodeError) as exc:
        raise TrackMLFormatError(f"{path}: unreadable header line ({exc})") from None
    missing = [name for name in required if name not in header]
    if missing:
        raise TrackMLFormatError(
            f"{path}: missing column(s) {', '.join(missing)}; {part} files need the columns "
            f"{', '.join(required)} (header read: {','.join(header)})"
        )
    wanted = {**required, **{name: dtype for name, dtype in optional.items() if name in header}}

    try:
        with np.errstate(all="ignore"):  # an overflowing float becomes inf, reported below
            frame = pd.read_csv(io.BytesIO(data), dtype=wanted, index_col=False)
        frame = frame[list(wanted)]
        reason = None if _is_clean(frame, part) else "missing, non-finite or repeated values"
    except (ValueError, OverflowError, TypeError, UnicodeDecodeError) as exc:
        reason = str(exc).strip()
    if reason is None:
        if len(frame):
            _check_final_newline(path, data)
        return frame.reset_index(drop=True)
    raise _diagnose(path, data, header, wanted, part, reason)


def _check_final_newline(path: Path, data: bytes) -> None:
    """Refuse a last row that no newline ends. Every writer ends its rows with one, so its absence
    means the file may have been cut short, and a cut row can still parse (`18,12,96` cut to
    `18,12,9` names another module that may exist); no check of the values can tell."""
    head, newline, last = data.rpartition(b"\n")
    if not last.strip():
        return
    line = head.count(b"\n") + 2 if newline else 1
    text = last.decode("utf-8", errors="replace").rstrip("\r")
    shown = text if len(text) <= 80 else text[:77] + "..."
    raise TrackMLFormatError(
        f"{path}: line {line} does not end with a newline, so it may be truncated "
        f"(it reads {shown!r}); if the file is complete, end it with a newline"
    )


def _is_clean(frame: pd.DataFrame, part: str) -> bool:
    """Whether a correctly typed frame has only finite values and no repeated key.

    Checked on the fast path because pandas silently reads an empty float field (or a line with
    missing fields) as NaN; `_diagnose` then says where.
    """
    floats = [name for name in frame.columns if frame[name].dtype.kind == "f"]
    if floats and not np.isfinite(frame[floats].to_numpy()).all():
        return False
    key = UNIQUE_KEY[part]
    return key is None or not frame[key].duplicated().any()


def _diagnose(
    path: Path, data: bytes, header: list[str], wanted: Mapping[str, np.dtype], part: str, reason: str
) -> TrackMLFormatError:
    """Re-read a file that failed the fast path line by line, to say which line and column is wrong.

    This is only reached for broken files, so a Python pass over the lines is acceptable here.
    `reason` is what the fast path saw, reported only if no single bad line is found.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return TrackMLFormatError(f"{path}: not UTF-8 text (byte {exc.start})")
    lines = [line.rstrip("\r") for line in text.split("\n")]  # the line breaks pandas recognises
    numbered = [(number, line) for number, line in enumerate(lines[1:], start=2) if line.strip()]
    line_numbers = np.array([number for number, _ in numbered], dtype=np.int64)
    rows = [line.split(",") for _, line in numbered]
    counts = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    wrong = np.flatnonzero(counts != len(header))
    if wrong.size:
        first = wrong[0]
        return TrackMLFormatError(
            f"{path}: line {line_numbers[first]} has {counts[first]} fields, expected {len(header)} "
            f"({','.join(header)}); the line may be truncated or merged"
            + (f" ({wrong.size} such lines)" if wrong.size > 1 else "")
        )
    cells = np.array(rows, dtype=object).reshape(len(rows), len(header))
    for name, dtype in wanted.items():
        raw = pd.Series(cells[:, header.index(name)], dtype=object).str.strip()
        problem = _column_problem(raw, dtype)
        if problem is not None:
            index, what = problem
            return TrackMLFormatError(
                f"{path}: column {name}, line {line_numbers[index]}: {what} (expected {_dtype_words(dtype)})"
            )
    key = UNIQUE_KEY[part]
    if key is not None:
        ids = pd.to_numeric(pd.Series(cells[:, header.index(key)], dtype=object).str.strip())
        repeated = ids.duplicated(keep=False).to_numpy()
        if repeated.any():
            values = ids.to_numpy()[repeated]
            lines_hit = line_numbers[repeated]
            distinct = pd.unique(values)
            shown = ", ".join(
                f"{key}={int(v)} (lines {', '.join(map(str, lines_hit[values == v][:_SHOW]))})"
                for v in distinct[:_SHOW]
            )
            return TrackMLFormatError(
                f"{path}: duplicate {key}: {len(distinct)} value(s) repeat, e.g. {shown}; "
                f"each {key} must appear once in a {part} file"
            )
    return TrackMLFormatError(f"{path}: could not be parsed as a {part} file ({reason})")


def _dtype_words(dtype: np.dtype) -> str:
    return {"i": f"an integer ({dtype.name})", "f": f"a finite number ({dtype.name})"}[dtype.kind]


def _column_problem(raw: pd.Series, dtype: np.dtype) -> tuple[int, str] | None:
    """Position and description of the first value in a column of strings that does not fit `dtype`."""
    empty = (raw == "").to_numpy()
    numbers = pd.to_numeric(raw.where(~empty), errors="coerce").to_numpy(dtype=np.float64)
    not_number = np.isnan(numbers) & ~empty
    if dtype.kind == "f":
        too_big = np.isfinite(numbers) & (np.abs(numbers) > np.finfo(dtype).max)
        bad_value = ~np.isfinite(numbers) & ~np.isnan(numbers) | too_big
        non_finite_text = raw.str.lower().isin(["nan", "+nan", "-nan"]).to_numpy()
        not_number &= ~non_finite_text
        bad_value |= non_finite_text
        not_integer = np.zeros_like(empty)
    else:
        info = np.iinfo(dtype)
        finite = np.isfinite(numbers)
        bad_value = (finite & ((numbers < info.min) | (numbers > info.max))) | (~finite & ~np.isnan(numbers))
        not_integer = finite & (numbers != np.round(numbers))
    checks = (
        (empty, "empty value"),
        (not_number, "not a number"),
        (not_integer, "not an integer"),
        (bad_value, "value out of range or not finite"),
    )
    first = [(int(np.flatnonzero(mask)[0]), what) for mask, what in checks if mask.any()]
    if not first:
        return None
    index, what = min(first)
    if what != "empty value":
        what = f"{what}: {raw.iloc[index]!r}"
    return index, what


def load_event(
    prefix: str | os.PathLike, parts: Iterable[str] = ("hits", "cells", "particles", "truth")
) -> tuple[pd.DataFrame, ...]:
    """The frames of one event, in the order of `parts`, read from ``prefix-{part}.csv`` or ``.csv.gz``."""
    parts = tuple(parts)
    for part in parts:
        _schema(part)
    return tuple(read_part(_part_file(prefix, part), part) for part in parts)


def load_dataset(
    path: str | os.PathLike,
    nevents: int | None = None,
    parts: Iterable[str] = ("hits", "cells", "particles", "truth"),
    skip: int = 0,
) -> Iterator[tuple]:
    """Yield ``(event_id, *frames)`` for the events of a folder, in event-id order.

    `skip` events are passed over first, then at most `nevents` are read (all when None). Events are
    read lazily, one at a time, so a large dataset never sits in memory at once.
    """
    if skip < 0 or (nevents is not None and nevents < 0):
        raise ValueError(f"skip and nevents must not be negative (got skip={skip}, nevents={nevents})")
    parts = tuple(parts)
    for part in parts:
        _schema(part)
    events = list_events(path)[skip:]
    if nevents is not None:
        events = events[:nevents]
    for event_id, prefix in events:
        yield (event_id, *load_event(prefix, parts))


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _conform(frame: pd.DataFrame, part: str, target: Path) -> pd.DataFrame:
    """The frame reduced to the part's columns in order and cast to their dtypes, or a format error.

    Writing refuses anything reading would refuse, so a written event always loads back.
    """
    required, optional = _schema(part)
    missing = [name for name in required if name not in frame.columns]
    if missing:
        raise TrackMLFormatError(
            f"{target}: cannot write {part}: missing column(s) {', '.join(missing)}; {part} needs {', '.join(required)}"
        )
    wanted = {**required, **{name: dtype for name, dtype in optional.items() if name in frame.columns}}
    columns = {
        name: _conform_column(frame[name], dtype, f"{target}: cannot write {part}: column {name}")
        for name, dtype in wanted.items()
    }
    conformed = pd.DataFrame(columns)
    key = UNIQUE_KEY[part]
    if key is not None:
        repeated = conformed[key][conformed[key].duplicated()].unique()
        if repeated.size:
            shown = ", ".join(map(str, repeated[:_SHOW]))
            raise TrackMLFormatError(
                f"{target}: cannot write {part}: {repeated.size} duplicate {key} value(s), e.g. {shown}"
            )
    return conformed


def _conform_column(series: pd.Series, dtype: np.dtype, context: str) -> np.ndarray:
    """One column cast to `dtype`, refusing values the cast would change or that reading would refuse."""
    if not (isinstance(series.dtype, np.dtype) and series.dtype.kind in "biuf"):
        series = pd.to_numeric(series, errors="coerce")  # object / nullable columns
        missing = series.isna().to_numpy()
        if missing.any():
            raise TrackMLFormatError(f"{context}: missing or non-numeric value at row {np.flatnonzero(missing)[0]}")
    values = series.to_numpy()
    with np.errstate(over="ignore", invalid="ignore"):
        cast = values.astype(dtype)
    if dtype.kind == "f":
        bad = ~np.isfinite(cast)
        if bad.any():
            raise TrackMLFormatError(
                f"{context}: value {values[bad][0]!r} at row {np.flatnonzero(bad)[0]} is not {_dtype_words(dtype)}"
            )
    else:
        bad = cast != values
        if bad.any():
            raise TrackMLFormatError(
                f"{context}: value {values[bad][0]!r} at row {np.flatnonzero(bad)[0]} is not {_dtype_words(dtype)}"
            )
    return cast


def write_event(prefix: str | os.PathLike, *, compress: bool = False, **frames: pd.DataFrame) -> list[Path]:
    """Write each given part (``hits=..., particles=...``) as ``prefix-{part}.csv[.gz]``; return the paths.

    All frames are checked before the first file is written, so a bad frame leaves the folder
    untouched. Each file is written atomically. A part written with the other compression is removed
    afterwards, so the event never holds two versions of one part. Floats are written with the
    shortest text that reads back to the identical float32 value: the bytes ``DataFrame.to_csv``
    writes, built by `tb_plugin.csv_text` in about a third of its time (benchmarks/README.md).
    """
    suffix = ".csv.gz" if compress else ".csv"
    targets = {part: Path(f"{os.fspath(prefix)}-{part}{suffix}") for part in frames}
    conformed = {part: _conform(frame, part, targets[part]) for part, frame in frames.items()}
    written = []
    for part, frame in conformed.items():
        target = targets[part]
        text = csv_bytes({name: frame[name].to_numpy() for name in frame.columns})
        with atomic_path(target) as tmp:
            tmp.write_bytes(gzip.compress(text, compresslevel=6, mtime=0) if compress else text)
        other = Path(f"{os.fspath(prefix)}-{part}{'.csv' if compress else '.csv.gz'}")
        other.unlink(missing_ok=True)
        written.append(target)
    return written


# --------------------------------------------------------------------------------------------
# Weights and score
# --------------------------------------------------------------------------------------------


def _weight_pt(pt: np.ndarray) -> np.ndarray:
    """Phase-1 pT weight: 0 below 0.05 GeV, 0.2 up to 0.5 GeV, linear to 1 at 3 GeV, 1 above."""
    points, values = _WEIGHT_PT_POINTS
    return np.interp(pt, points, values, left=0.0, right=1.0)


def _order_profile(rank: np.ndarray, nhits: np.ndarray) -> np.ndarray:
    """Unnormalised order weight of the hit of rank `rank` (0 = nearest the vertex) among `nhits`.

    The 9-point profile is stretched evenly over the first ``min(nhits, 20)`` ranks (its first point
    on rank 0, its last on rank min(nhits, 20) - 1) and linearly interpolated in between; hits
    ranked beyond the 20th keep the profile's last value.
    """
    span = np.minimum(nhits, _ORDER_MAX_HITS) - 1
    position = np.minimum(rank, span) * (len(_ORDER_PROFILE) - 1) / np.maximum(span, 1)
    return np.interp(position, np.arange(len(_ORDER_PROFILE)), _ORDER_PROFILE)


def _require_columns(frame: pd.DataFrame, columns: Iterable[str], what: str, error: type[ValueError]) -> None:
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise error(f"{what} is missing column(s) {', '.join(missing)} (has {', '.join(map(str, frame.columns))})")


def hit_weights(truth: pd.DataFrame, particles: pd.DataFrame) -> np.ndarray:
    """Phase-1 TrackML hit weights, float32, aligned with the rows of `truth`, summing to 1.

    weight = weight_pt(pT) * weight_order(rank, nhits), normalised per particle over its hits and
    then over the event, so that every particle contributes in proportion to its pT weight and a
    track finder is rewarded most for a particle's first hits and its last ones.

    Interpretation choices (following the official TrackML library as we read its description):
    - nhits is the number of the particle's rows in `truth`, not the ``nhits`` column of particles:
      the weights must describe the hits that actually exist in this truth table.
    - A hit's rank is its order by ``|tz - vz|`` (vz: the particle's production vertex); ties keep
      the order of the truth rows.
    - The profile [10, 8, 6, 5, 3, 3, 3, 5, 6] is stretched evenly over ranks 0 .. min(nhits, 20) - 1
      and interpolated linearly; ranks beyond the 20th get the last value (6). The order weights are
      then normalised to sum to 1 over each particle's hits.
    - pT = hypot(px, py) from `particles`. A truth particle absent from `particles` has no known pT
      or vertex and gets weight 0 (truth tpx, tpy are momenta at the hit, not at production).
    - Noise (particle_id 0) and particles with fewer than 4 hits get weight 0.
    If nothing weighs (all noise, say), every weight is 0 rather than NaN.
    """
    _require_columns(truth, ("particle_id", "tz"), "truth", ValueError)
    _require_columns(particles, ("particle_id", "vz", "px", "py"), "particles", ValueError)
    if particles["particle_id"].duplicated().any():
        raise ValueError("particles has duplicate particle_id values; each particle must appear once")

    particle_id = truth["particle_id"].to_numpy(dtype=np.int64)
    known = pd.Index(particles["particle_id"].to_numpy(dtype=np.int64))
    row = known.get_indexer(particle_id)
    listed = (row >= 0) & (particle_id != 0)
    pt = np.hypot(particles["px"].to_numpy(np.float64), particles["py"].to_numpy(np.float64))
    vz = particles["vz"].to_numpy(np.float64)
    hit_pt = np.where(listed, pt[row], 0.0)
    distance = np.abs(truth["tz"].to_numpy(np.float64) - np.where(listed, vz[row], 0.0))

    # Rank each hit among its particle's hits: sort by (particle, distance), stable in row order.
    order = np.lexsort((distance, particle_id))
    sorted_ids = particle_id[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    sizes = np.diff(np.r_[starts, len(sorted_ids)])
    group = np.repeat(np.arange(len(starts)), sizes)
    rank = np.empty(len(particle_id), dtype=np.int64)
    nhits = np.empty(len(particle_id), dtype=np.int64)
    rank[order] = np.arange(len(order)) - starts[group]
    nhits[order] = sizes[group]

    weight_order = np.where(listed & (nhits >= _ORDER_MIN_HITS), _order_profile(rank, nhits), 0.0)
    per_particle = np.bincount(group, weights=weight_order[order], minlength=len(starts))
    owner = np.empty(len(particle_id), dtype=np.int64)
    owner[order] = group
    total = per_particle[owner]
    weight_order = np.divide(weight_order, total, out=np.zeros_like(weight_order), where=total > 0)

    weight = weight_order * _weight_pt(hit_pt)
    event_total = weight.sum()
    if event_total > 0:
        weight /= event_total
    return weight.astype(np.float32)


def _check_submission(truth: pd.DataFrame, submission: pd.DataFrame) -> tuple[np.ndarray, pd.Index]:
    """Track code of each truth row and the track labels the codes index, after checking that every
    hit is assigned exactly once."""
    _require_columns(truth, ("hit_id", "particle_id", "weight"), "truth", ValueError)
    _require_columns(submission, ("hit_id", "track_id"), "submission", SubmissionError)
    truth_ids = truth["hit_id"].to_numpy(dtype=np.int64)
    if pd.Series(truth_ids).duplicated().any():
        raise ValueError("truth has duplicate hit_id values; each hit must appear once")
    sub_ids = pd.to_numeric(submission["hit_id"], errors="coerce").to_numpy(dtype=np.float64)
    not_integer = np.isnan(sub_ids) | (sub_ids != np.round(sub_ids))
    if not_integer.any():
        raise SubmissionError(
            f"submission hit_id has {int(not_integer.sum())} missing or non-integer value(s), "
            f"first at row {np.flatnonzero(not_integer)[0]}"
        )

    problems = []
    repeated = pd.Series(sub_ids).duplicated()
    if repeated.any():
        values = np.unique(sub_ids[repeated.to_numpy()]).astype(np.int64)
        problems.append(f"{values.size} hit_id(s) assigned more than once: {_first(values)}")
    missing = np.setdiff1d(truth_ids, sub_ids.astype(np.int64))
    if missing.size:
        problems.append(f"{missing.size} truth hit_id(s) missing from the submission: {_first(missing)}")
    unknown = np.setdiff1d(sub_ids.astype(np.int64), truth_ids)
    if unknown.size:
        problems.append(f"{unknown.size} submitted hit_id(s) not in the truth: {_first(unknown)}")
    if problems:
        raise SubmissionError("invalid submission: " + "; ".join(problems))

    track_codes, track_labels = pd.factorize(submission["track_id"], use_na_sentinel=True)
    if (track_codes < 0).any():
        without = sub_ids[track_codes < 0].astype(np.int64)
        raise SubmissionError(f"{without.size} hit(s) have no track_id: {_first(without)}")
    position = pd.Index(sub_ids.astype(np.int64)).get_indexer(truth_ids)
    return track_codes[position], pd.Index(track_labels)


def _first(values: np.ndarray) -> str:
    shown = ", ".join(str(v) for v in values[:_SHOW])
    return shown + (", ..." if len(values) > _SHOW else "")


def match_tracks(truth: pd.DataFrame, submission: pd.DataFrame) -> pd.DataFrame:
    """Match every submitted track to its majority particle, the way the TrackML score does.

    One row per track, in order of first appearance in the submission, with columns track_id,
    particle_id (the majority particle: most hits in the track, on a tie the smaller particle_id),
    track_nhits, particle_nhits (the particle's hits in the truth), shared_nhits, weight (truth
    weight of the shared hits) and good (strictly more than half of the track is that particle AND
    the track holds strictly more than half of the particle's hits). Noise, particle_id 0, is
    matched like any particle. Efficiency, fake and duplicate rates can be built on this table.
    """
    track, track_labels = _check_submission(truth, submission)
    particle_ids, particle = np.unique(truth["particle_id"].to_numpy(dtype=np.int64), return_inverse=True)
    weight = truth["weight"].to_numpy(dtype=np.float64)

    # One entry per (track, particle) pair present; particle codes follow particle_id order.
    pair_key = track.astype(np.int64) * max(len(particle_ids), 1) + particle
    pairs, pair_of_hit, pair_hits = np.unique(pair_key, return_inverse=True, return_counts=True)
    pair_weight = np.bincount(pair_of_hit, weights=weight, minlength=len(pairs))
    pair_track, pair_particle = np.divmod(pairs, max(len(particle_ids), 1))

    # Majority particle of each track: most hits first, then the smaller particle_id.
    ranked = np.lexsort((pair_particle, -pair_hits, pair_track))
    first_of_track = np.diff(pair_track[ranked], prepend=-1) != 0
    majority = ranked[first_of_track]

    track_nhits = np.bincount(track, minlength=len(track_labels))[pair_track[majority]]
    particle_nhits = np.bincount(particle, minlength=len(particle_ids))[pair_particle[majority]]
    shared = pair_hits[majority]
    return pd.DataFrame(
        {
            "track_id": track_labels[pair_track[majority]],
            "particle_id": particle_ids[pair_particle[majority]],
            "track_nhits": track_nhits,
            "particle_nhits": particle_nhits,
            "shared_nhits": shared,
            "weight": pair_weight[majority],
            "good": (2 * shared > track_nhits) & (2 * shared > particle_nhits),
        }
    )


def score_event(truth: pd.DataFrame, submission: pd.DataFrame) -> float:
    """The official TrackML score of a submission (columns hit_id, track_id) against the truth
    (columns hit_id, particle_id, weight).

    The sum of the truth weights of the majority-particle hits of the good tracks of
    `match_tracks`: a track is good when strictly more than half of it is its majority particle and
    it holds strictly more than half of that particle's hits. A noise-majority track can be good, but
    noise hits weigh 0 in real truth. With weights from `hit_weights`, a perfect submission scores 1.
    Raises SubmissionError unless every truth hit is assigned to exactly one track.
    """
    matched = match_tracks(truth, submission)
    return float(matched["weight"].to_numpy()[matched["good"].to_numpy()].sum())
