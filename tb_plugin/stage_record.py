"""Whether a stage's outputs still match its config and its input: the stage record.

Why: a rerun skips the events it has already written, which is how an interrupted run resumes. Without
a record, a rerun after a config edit, or after its input was rewritten, would keep the old outputs and
exit 0. So every stage run through `tb` (train, infer, eval, run, ab) keeps `stage_dir/stage_record.json`:

- `keys`: the config keys that change the outputs (all but `stage_dir`, which only says where);
- `inputs`: each file it reads (the events of its input splits, detectors.csv, the artifacts of a
  `trained_stage_dir`, any file a key names), with its size, mtime and a content hash;
- `upstream`: the digest of the record of every stage folder its keys name (input_dir,
  trained_stage_dir, pretrained_dir...), so a stage downstream of a rerun one is stale too;
- `phases`: which of train / infer / eval have finished, and how long training took.

A sharded inference (`--shard K/N`, shard.py) records `phases.infer = {"shards": N}` and each shard,
when it finishes, writes its own marker `stage_dir/shards/infer-K-of-N.json` (atomically, a file per
shard: concurrent shards never rewrite one file in turn, so no shard's news is lost, and no lock is
needed on a shared filesystem). The marker holds the digest of the record it finished for; inference
counts as finished only when all N markers match the record, so `tb status`, `tb eval` and every
downstream stage see the stage complete only then.

Like make, a changed input makes a stage stale; unlike make's timestamps, a file rewritten with the
same bytes does not (the hash is recomputed only when size or mtime moved, as git's index does). A
run whose record differs is refused with one line naming the first change, until `--overwrite`
clears the stage's outputs and reruns it from scratch. `tb status` lists every stage of a pipeline
as up to date, incomplete, stale (and why) or missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tb_plugin.atomic import atomic_path, write_text
from tb_plugin.config import ConfigError, to_record
from tb_plugin.event_store import SPLITS

log = logging.getLogger(__name__)

RECORD = "stage_record.json"
SHARDS = "shards"  # stage_dir/shards/infer-K-of-N.json: the shards of a sharded inference that finished
FORMAT = "tb-plugin stage record v1"
PHASES = ("train", "infer", "eval")
NEUTRAL_KEYS = frozenset({"stage_dir"})  # where the outputs go, not what they are
# Everything a stage writes into its stage_dir: what `--overwrite` removes from a stale stage. The
# record goes first: a clearing cut short leaves outputs without a record, which count as stale.
OUTPUTS = (
    RECORD,
    SHARDS,
    *SPLITS,
    "artifacts",
    "eval",
    "export",
    "logs",
    "lightning_logs",
    "cache",
    "submissions",
    "splits.json",
    "detectors.csv",
    "ab_stage.json",
)


class StaleOutputError(ConfigError):
    """A stage folder whose outputs were made from another config or input: one line naming the first
    difference and the remedy."""


@dataclass(frozen=True)
class Status:
    """What `tb status` says of one stage: up to date, incomplete (a run stopped), stale, or missing."""

    state: str
    reason: str = ""
    unfinished: str = ""  # the first phase a rerun still has to run, for an incomplete stage

    @property
    def rewrites(self) -> bool:
        """Whether running the stage will write events, which makes every stage reading them stale."""
        return self.state in ("stale", "missing") or self.unfinished in ("train", "infer")

    def __str__(self) -> str:
        return f"{self.state}: {self.reason}" if self.reason else self.state


def json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def plain_keys(config: Any) -> dict[str, Any]:
    """The config as it reads back from JSON (tuples as lists, paths as strings)."""
    return json.loads(json.dumps(to_record(config), default=json_default))


def config_paths(value: Any) -> Iterator[Path]:
    """The paths among a stage config's values, nested mappings and lists included (YAML gives strings,
    so every string is taken for a path: callers keep those that exist)."""
    if isinstance(value, dict):
        for v in value.values():
            yield from config_paths(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from config_paths(v)
    elif isinstance(value, (str, Path)) and str(value):
        yield Path(value)


def field_defaults(config_class: type) -> dict[str, Any]:
    """The declared plain defaults of a config dataclass, as they read in JSON: a key added in a later
    version, at its default, keeps the old behaviour and is no change."""
    out = {}
    for f in dataclasses.fields(config_class):
        if f.default is not dataclasses.MISSING:
            try:
                out[f.name] = json.loads(json.dumps(f.default, default=json_default))
            except TypeError:
                continue
    return out


def file_hash(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_HASHES: dict[tuple[str, int, int], str] = {}  # this process's hashes: `tb run` checks, then runs


def file_entry(path: Path, previous: list[Any] | None) -> list[Any]:
    """[size, mtime_ns, hash]; the hash is reused while size and mtime stay, as git's index does."""
    stat = path.stat()
    if previous is not None and previous[:2] == [stat.st_size, stat.st_mtime_ns]:
        return previous
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = file_hash(path)
    return [stat.st_size, stat.st_mtime_ns, _HASHES[key]]


def read_record(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # unreadable: stale, with a reason that says so
    return record if isinstance(record, dict) else {}


def digest(record: dict[str, Any]) -> str:
    """What a downstream stage keeps of this record: everything that decides the outputs."""
    kept = {k: record.get(k) for k in ("stage", "model", "keys", "upstream")}
    kept["inputs"] = {path: entry[2] for path, entry in (record.get("inputs") or {}).items()}
    return hashlib.blake2b(json.dumps(kept, sort_keys=True).encode(), digest_size=16).hexdigest()


def fingerprint(stage: Any, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record this stage would write now: its keys, its input files and its upstream records."""
    unread = NEUTRAL_KEYS | getattr(stage, "unread_keys", frozenset)()
    keys = {k: v for k, v in plain_keys(stage.config).items() if k not in unread}
    known = (previous or {}).get("inputs") or {}
    files: dict[str, list[Any]] = {}
    for path in stage.input_paths():
        files[str(path)] = file_entry(path, known.get(str(path)))
    upstream: dict[str, str] = {}
    own = Path(stage.config.stage_dir).resolve()
    for path in sorted(set(config_paths(keys))):
        if path.resolve() == own:
            continue
        if path.is_file():
            files.setdefault(str(path), file_entry(path, known.get(str(path))))
        elif path.is_dir() and (record := read_record(path)) is not None:
            upstream[str(path)] = digest(record)
    return {
        "format": FORMAT,
        "stage": stage.config.stage,
        "model": stage.config.model,
        "keys": keys,
        "inputs": dict(sorted(files.items())),
        "upstream": upstream,
    }


def difference(previous: dict[str, Any], current: dict[str, Any], config_class: type) -> str | None:
    """The first reason the outputs of `previous` are not those `current` would make; None if none."""
    if previous.get("format") != FORMAT:
        return f"{RECORD} is unreadable or from another version of tb"
    for key in ("stage", "model"):
        if previous.get(key) != current[key]:
            return f"it holds the outputs of {key} {previous.get(key)!r}, the config says {current[key]!r}"
    old, new, defaults = previous.get("keys") or {}, current["keys"], field_defaults(config_class)
    unread = {f.name for f in dataclasses.fields(config_class)} - set(new)  # fields the stage ignores as configured
    for key in sorted((set(old) | set(new)) - unread):
        if old.get(key) != new.get(key) and not (key not in old and key in defaults and new.get(key) == defaults[key]):
            return f"key '{key}' changed: {_short(old.get(key))} -> {_short(new.get(key))}"
    old_files, new_files = previous.get("inputs") or {}, current["inputs"]
    for path in sorted(set(old_files) | set(new_files)):
        if path not in new_files:
            return f"input {path} is gone"
        if path not in old_files:
            return f"input {path} is new"
        if old_files[path][0] != new_files[path][0] or old_files[path][2] != new_files[path][2]:
            return f"input {path} was rewritten with other contents"
    old_up, new_up = previous.get("upstream") or {}, current["upstream"]
    for folder in sorted(set(old_up) | set(new_up)):
        if old_up.get(folder) != new_up.get(folder):
            return f"the upstream stage {folder} was rerun with other keys or input"
    return None


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def has_outputs(folder: Path) -> bool:
    """Whether a folder holds what a stage writes (events in a split folder, or artifacts)."""
    folder = Path(folder)
    return any((folder / name).is_dir() and any((folder / name).iterdir()) for name in (*SPLITS, "artifacts"))


def clear_outputs(folder: Path) -> None:
    """Remove everything a stage writes into its folder (and nothing else a user may keep there)."""
    for name in OUTPUTS:
        path = Path(folder) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def trains_here(stage: Any) -> bool:
    return bool(stage.trainable) and not stage.trained_elsewhere


def needed_phases(stage: Any) -> tuple[str, ...]:
    return PHASES if trains_here(stage) else PHASES[1:]


def status(stage: Any) -> Status:
    """Up to date (every phase it runs finished, nothing changed), incomplete, stale (why), or missing."""
    previous = read_record(stage.stage_dir)
    if previous is None:
        if has_outputs(stage.stage_dir):
            return Status("stale", "its outputs have no stage record (an older version of tb, or made by hand)")
        return Status("missing")
    reason = difference(previous, fingerprint(stage, previous), type(stage.config))
    if reason:
        return Status("stale", reason)
    unfinished = [p for p in needed_phases(stage) if not phase_finished(stage.stage_dir, previous, p)]
    if unfinished and (progress := shard_progress(stage.stage_dir, previous)) and unfinished[0] == "infer":
        return Status("incomplete", shards_unfinished(progress), "infer")
    if unfinished:
        return Status("incomplete", f"{unfinished[0]} has not finished; a rerun resumes", unfinished[0])
    return Status("up to date")


def phase_done(stage: Any, phase: str) -> bool:
    """Whether this phase finished for exactly the current keys and input."""
    previous = read_record(stage.stage_dir)
    return (
        previous is not None
        and difference(previous, fingerprint(stage, previous), type(stage.config)) is None
        and phase_finished(stage.stage_dir, previous, phase)
    )


def phase_finished(folder: Path, record: dict[str, Any], phase: str) -> bool:
    """Whether the record says `phase` finished: its own flag, or for a sharded inference, every
    shard's marker (the main record is never told: N shards rewriting one file would lose news)."""
    if ((record.get("phases") or {}).get(phase) or {}).get("done"):
        return True
    progress = shard_progress(folder, record) if phase == "infer" else None
    return progress is not None and progress.complete


@dataclass(frozen=True)
class ShardProgress:
    """Where a sharded inference stands: N, the shards finished for this very record, those that failed."""

    count: int
    done: tuple[int, ...]
    failed: dict[int, str]

    @property
    def complete(self) -> bool:
        return len(self.done) == self.count

    @property
    def missing(self) -> list[int]:
        return [k for k in range(1, self.count + 1) if k not in self.done]


def shard_marker(folder: Path, index: int, count: int) -> Path:
    return Path(folder) / SHARDS / f"infer-{index}-of-{count}.json"


def shard_progress(folder: Path, record: dict[str, Any] | None) -> ShardProgress | None:
    """The markers of a sharded inference that match `record` (its keys, inputs and upstream); None
    when the record's inference is not sharded. A marker left by another config, input or N counts
    for nothing."""
    count = (((record or {}).get("phases") or {}).get("infer") or {}).get("shards")
    if not isinstance(count, int) or count < 1:
        return None
    want = digest(record or {})
    done, failed = [], {}
    for index in range(1, count + 1):
        marker = read_record_file(shard_marker(folder, index, count))
        if not marker or marker.get("digest") != want:
            continue
        if marker.get("failed"):
            failed[index] = str(marker["failed"])
        elif marker.get("done"):
            done.append(index)
    return ShardProgress(count, tuple(done), failed)


def shards_unfinished(progress: ShardProgress) -> str:
    """Why a sharded inference is not finished, in one clause: which shards to (re)run."""
    missing = ", ".join(f"{k}/{progress.count}" for k in progress.missing)
    failed = next(iter(progress.failed.items()), None)
    why = f"; shard {failed[0]}/{progress.count} failed: {failed[1]}" if failed else ""
    return f"infer has finished in {len(progress.done)} of {progress.count} shards (to run: --shard {missing}){why}"


def read_record_file(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def refuse_partial_upstream(folder: Path, current: dict[str, Any]) -> None:
    """A stage reading the folder of a sharded inference that has not finished in every shard would
    fingerprint, and process, part of its input: refused until the missing shards have run."""
    for upstream in current.get("upstream") or {}:
        progress = shard_progress(Path(upstream), read_record(Path(upstream)))
        if progress is not None and not progress.complete:
            raise StaleOutputError(
                f"{folder}: its input {upstream} is not complete: {shards_unfinished(progress)}; "
                f"run those first, then this stage"
            )


def begin(stage: Any, phase: str, overwrite: bool = False) -> bool:
    """Check the stage folder before `phase` writes into it, and record that the phase started.

    A stale folder is refused, or with `overwrite` (train, and infer of a stage that does not train
    here) emptied of its outputs so the stage reruns from scratch. Inference of a stage whose own
    training is stale is refused either way: its model has to be retrained first. Returns whether the
    phase must rewrite the outputs it finds (a shard of an inference begun over stale outputs:
    `_begin_shard`); otherwise False."""
    folder = Path(stage.stage_dir)
    previous = read_record(folder)
    current = fingerprint(stage, previous)
    refuse_partial_upstream(folder, current)
    shard = getattr(stage, "shard", None)
    if shard is not None and phase == "infer":
        return _begin_shard(stage, shard, previous, current, overwrite)
    if previous is None:
        reason = "its outputs have no stage record (an older version of tb, or made by hand)"
        if phase == "eval":
            raise StaleOutputError(f"{folder}: nothing to evaluate yet: run 'tb infer' (or 'tb run') first")
        if has_outputs(folder):
            if not overwrite:
                raise StaleOutputError(f"{folder}: {reason}; rerun with --overwrite to rewrite this stage")
            clear_outputs(folder)
        previous = {**current, "phases": {}}
    elif reason := difference(previous, current, type(stage.config)):
        _refuse_or_clear(stage, phase, reason, overwrite)
        previous = {**current, "phases": {}}
    elif phase == "eval" and (progress := shard_progress(folder, previous)) and not progress.complete:
        raise StaleOutputError(f"{folder}: nothing complete to evaluate yet: {shards_unfinished(progress)}")
    earlier = PHASES[: PHASES.index(phase)]
    phases = {p: v for p, v in (previous.get("phases") or {}).items() if p in earlier}
    phases[phase] = {"done": False}  # a rerun of a phase makes the later ones unfinished too
    _write(folder, {**current, "phases": phases})
    return False


def _begin_shard(
    stage: Any, shard: Any, previous: dict[str, Any] | None, current: dict[str, Any], overwrite: bool
) -> bool:
    """`begin` for shard K/N of an inference, which shares stage_dir with the other shards: nothing is
    ever cleared, since another shard may have written its events already. A stale folder is refused
    without `overwrite`; with it, the record says so (`rewrite`) and every shard rewrites its own events
    until it has finished once for the new record, whichever shards were given --overwrite; event files
    that no shard writes are removed by Stage.prepare_outputs. The main record is written only where it
    changes, and the same way by every shard. Returns whether this shard must rewrite its events."""
    folder = Path(stage.stage_dir)
    if previous is None and has_outputs(folder):
        previous = read_record(folder)  # a shard begun since the first read wrote its record before any output
    if trains_here(stage) and not (
        previous is not None
        and difference(previous, current, type(stage.config)) is None
        and phase_finished(folder, previous, "train")
    ):
        raise StaleOutputError(
            f"{folder}: --shard {shard}: this stage trains here and has not finished training for this config "
            f"and input; training is not sharded: train it once first ('tb train CONFIG', or 'tb run PIPELINE' "
            f"without --shard), then shard its inference"
        )
    if previous is None:
        stale = (
            "its outputs have no stage record (an older version of tb, or made by hand)"
            if has_outputs(folder)
            else None
        )
    else:
        stale = difference(previous, current, type(stage.config))
    if stale is not None and not overwrite:
        raise StaleOutputError(
            f"{folder}: its outputs were made from another config or input ({stale}); rerun the shards with "
            f"--overwrite (each rewrites its own events, none deletes another's), or delete {folder} before they start"
        )
    entry = (((previous or {}).get("phases") or {}).get("infer") or {}) if stale is None else {}
    rewrite = stale is not None or (bool(entry.get("rewrite")) and not phase_finished(folder, previous or {}, "infer"))
    marker = shard_marker(folder, shard.index, shard.count)
    own = read_record_file(marker) or {}
    finished_once = own.get("done") is True and own.get("digest") == digest(current)
    marker.unlink(missing_ok=True)  # while it runs, this shard is unfinished
    kept = {p: v for p, v in ((previous or {}).get("phases") or {}).items() if p == "train" and stale is None}
    infer = {"done": False, "shards": shard.count, **({"rewrite": True} if rewrite else {})}
    record = {**current, "phases": {**kept, "infer": infer}}
    if record != previous:
        _write(folder, record)
    return rewrite and not finished_once


def _refuse_or_clear(stage: Any, phase: str, reason: str, overwrite: bool) -> None:
    folder = Path(stage.stage_dir)
    if phase == "eval":
        raise StaleOutputError(
            f"{folder}: its outputs are stale ({reason}); rerun the stage with --overwrite ('tb run' or 'tb infer')"
        )
    if phase == "infer" and trains_here(stage):
        raise StaleOutputError(
            f"{folder}: its model was trained before a change ({reason}); retrain it: 'tb train CONFIG "
            f"--overwrite' or 'tb run PIPELINE --overwrite'"
        )
    if not overwrite:
        raise StaleOutputError(
            f"{folder}: its outputs were made from another config or input ({reason}); rerun with --overwrite "
            f"to rewrite this stage, or delete {folder}"
        )
    clear_outputs(folder)


@contextlib.contextmanager
def running(stage: Any, phase: str, overwrite: bool = False) -> Iterator[bool]:
    """`begin`, the phase, then `finish` with its wall time; yields begin's answer (whether the phase
    must rewrite the outputs it finds). A phase that fails having written nothing (bad input found
    before the first output) leaves the folder as it found it, record included."""
    shard = getattr(stage, "shard", None)
    if shard is not None and phase == "infer":
        with _running_shard(stage, shard, overwrite) as rewrite:
            yield rewrite
        return
    folder = Path(stage.stage_dir)
    before, record, existed = _files(folder), _record_state(folder), folder.exists()
    start = time.perf_counter()
    try:
        yield begin(stage, phase, overwrite)
    except BaseException:
        if _files(folder) == before:
            _restore(folder, record, existed)
        raise
    finish(stage, phase, time.perf_counter() - start)


@contextlib.contextmanager
def _running_shard(stage: Any, shard: Any, overwrite: bool) -> Iterator[bool]:
    """`running` for one shard of an inference. The folder is not restored when the shard fails: the
    other shards share it (and its record); the shard's marker says that it failed and why, which
    `tb status` shows and a `tb run --shard` waiting for it reports."""
    start = time.perf_counter()
    rewrite = begin(stage, "infer", overwrite)  # refused: nothing written, nothing to mark
    try:
        yield rewrite
    except BaseException as err:
        try:
            _mark_shard(stage, shard, {"failed": f"{type(err).__name__}: {err}".strip()[:500]})
        except Exception as marking:  # the shard's own error is the one to report
            log.warning("%s: could not mark shard %s as failed: %s", stage.stage_dir, shard, marking)
        raise
    _mark_shard(stage, shard, {"done": True, "seconds": round(time.perf_counter() - start, 3)})


def _mark_shard(stage: Any, shard: Any, state: dict[str, Any]) -> None:
    """This shard's marker, for the record as it now reads (an input rewritten while the shard ran makes
    it count for nothing, as the events written from it would be stale)."""
    folder = Path(stage.stage_dir)
    current = fingerprint(stage, read_record(folder))
    marker = {"format": FORMAT, "shard": shard.index, "of": shard.count, "digest": digest(current), **state}
    write_text(shard_marker(folder, shard.index, shard.count), json.dumps(marker, indent=1) + "\n")


def _files(folder: Path) -> dict[str, int]:
    """Every file under the folder but the record, with its mtime."""
    if not folder.is_dir():
        return {}
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and p.name != RECORD}


def _record_state(folder: Path) -> tuple[bytes, int] | None:
    path = folder / RECORD
    return (path.read_bytes(), path.stat().st_mtime_ns) if path.is_file() else None


def _restore(folder: Path, record: tuple[bytes, int] | None, existed: bool) -> None:
    path = folder / RECORD
    if record is not None:
        with atomic_path(path) as tmp:
            tmp.write_bytes(record[0])
            os.utime(tmp, ns=(record[1], record[1]))
        return
    path.unlink(missing_ok=True)
    if not existed:  # the folders begin made, now empty
        for sub in sorted(folder.rglob("*"), reverse=True):
            if sub.is_dir() and not any(sub.iterdir()):
                sub.rmdir()
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def finish(stage: Any, phase: str, seconds: float) -> None:
    """Record that `phase` finished, with its wall time (the A/B reports training's)."""
    folder = Path(stage.stage_dir)
    record = read_record(folder) or {**fingerprint(stage), "phases": {}}
    record.setdefault("phases", {})[phase] = {"done": True, "seconds": round(seconds, 3)}
    _write(folder, record)


def finished(folder: Path) -> bool:
    """Whether a stage folder's record says every phase finished (its config and input unchecked: the
    cheap test a scheduler makes before the full one)."""
    record = read_record(folder) or {}
    return bool(((record.get("phases") or {}).get("eval") or {}).get("done"))


def train_seconds(stage: Any) -> float:
    record = read_record(stage.stage_dir) or {}
    return float(((record.get("phases") or {}).get("train") or {}).get("seconds", 0.0))


def _write(folder: Path, record: dict[str, Any]) -> None:
    write_text(Path(folder) / RECORD, json.dumps(record, indent=1, default=json_default) + "\n")
