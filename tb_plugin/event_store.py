"""The feature store: one PyG `Data` per event, in ACORN's layout.

    stage_dir/{trainset,valset,testset}/event{ID:09d}.pyg
    stage_dir/splits.json          (data reading: which event went to which split, and why)

An event sits in exactly one split: every listing of a store checks that no event id appears in two
split folders, and that the folders agree with splits.json where there is one, so a store left
behind by a run with another seed or data_split is refused instead of leaking test events into
training. Files are written atomically (temp name, then rename) so an interrupted run never leaves a file
that a resumed run would take for finished. They are loaded with torch's safe-globals mechanism:
`weights_only` stays on, so an event file from elsewhere cannot run code when it is opened.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch_geometric.data.data as pyg_data
import torch_geometric.data.storage as pyg_storage
from torch_geometric.data import Data

from tb_plugin.atomic import atomic_path

SPLITS = ("trainset", "valset", "testset")
EVENT_FILE = re.compile(r"^event(\d+)(?:-graph)?\.pyg$")  # ours, and ACORN data reading's event{ID}-graph.pyg
TEMP_FILE = re.compile(r"^\.event\d+(?:-graph)?\.pyg\..+\.tmp$")  # what atomic_path names an event file being written
SPLITS_FILE = "splits.json"
SPLITS_FORMAT = "tb-plugin split assignment v1"

# The PyG classes a saved `Data` refers to; nothing else is allowed through the unpickler.
SAFE_GLOBALS: list[Any] = [
    Data,
    pyg_data.DataEdgeAttr,
    pyg_data.DataTensorAttr,
    pyg_storage.GlobalStorage,
    pyg_storage.NodeStorage,
    pyg_storage.EdgeStorage,
]


class EventFileError(ValueError):
    """An event file that cannot be read: missing, truncated, not a PyG event, or unsafe."""


class SplitError(EventFileError):
    """An event in two splits of a store, or a split folder that disagrees with the store's splits.json."""


class MissingFieldError(ValueError):
    """An event lacks a field that a config asks for; the message names the field and the file."""


def event_file(stage_dir: str | Path, split: str, event_id: int | str) -> Path:
    return Path(stage_dir) / split / f"event{int(event_id):09d}.pyg"


def event_id_string(event_id: int) -> str:
    """ACORN stores the event id as a zero-padded string."""
    return f"{int(event_id):09d}"


def list_event_files(stage_dir: str | Path, split: str) -> list[Path]:
    """Event files of one split, sorted by event id (an absent split folder is an empty list). The
    store is checked first (`check_splits`): a listing is how every stage reads its input."""
    check_splits(stage_dir)
    return split_files(stage_dir)[split]


def split_files(stage_dir: str | Path) -> dict[str, list[Path]]:
    """Event files of every split, unchecked: for the writers that repair a store."""
    listing = {}
    for split in SPLITS:
        folder = Path(stage_dir) / split
        listing[split] = sorted(p for p in folder.iterdir() if EVENT_FILE.match(p.name)) if folder.is_dir() else []
    return listing


def event_number(path: Path) -> int:
    """The event id of an event file name (event{ID}.pyg or ACORN's event{ID}-graph.pyg)."""
    match = EVENT_FILE.match(path.name)
    if match is None:
        raise EventFileError(f"{path}: not an event file name (event<ID>.pyg)")
    return int(match.group(1))


def check_splits(stage_dir: str | Path) -> None:
    """Refuse a store where an event sits in two splits, or in another split than splits.json records:
    either would put the same event in training and in evaluation."""
    stage_dir = Path(stage_dir)
    seen: dict[int, Path] = {}
    for files in split_files(stage_dir).values():
        for path in files:
            first = seen.setdefault(event_number(path), path)
            if first.parent != path.parent:
                raise SplitError(
                    f"{first} and {path}: event {event_number(path):09d} sits in two splits of {stage_dir}; "
                    f"rerun the stage that wrote {stage_dir} with --overwrite, or delete the folder and run it again"
                )
    recorded = read_split_record(stage_dir)
    if recorded is None:
        return
    for event_id, path in seen.items():
        split = recorded.get(event_id)
        if split != path.parent.name:
            where = f"puts event {event_id:09d} in {split}" if split else f"has no event {event_id:09d}"
            raise SplitError(
                f"{path}: {stage_dir / SPLITS_FILE} {where}; rerun data reading on {stage_dir} with --overwrite, "
                f"or delete the folder and run it again"
            )


def read_split_record(stage_dir: str | Path) -> dict[int, str] | None:
    """event id -> split, from stage_dir/splits.json; None where the store has none (older or ACORN stores)."""
    path = Path(stage_dir) / SPLITS_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        splits = record["splits"] if record.get("format") == SPLITS_FORMAT else None
        return {int(event_id): split for split in SPLITS for event_id in splits[split]}
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        raise SplitError(
            f"{path}: not a split record (expected JSON of format '{SPLITS_FORMAT}'); "
            f"rerun data reading on {path.parent} with --overwrite"
        ) from None


def write_split_record(stage_dir: str | Path, assignment: dict[str, list[int]], origin: dict[str, Any]) -> Path:
    """stage_dir/splits.json: the event ids of each split and what decided them (`origin`: input_dir, seed, data_split)."""
    path = Path(stage_dir) / SPLITS_FILE
    record = {
        "format": SPLITS_FORMAT,
        **origin,
        "splits": {split: sorted(int(e) for e in assignment[split]) for split in SPLITS},
    }
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record) + "\n")
    return path


def remove_stale_temporaries(stage_dir: str | Path, owned: Mapping[str, set[str]] | None = None) -> list[Path]:
    """Delete the half-written event files (.event*.pyg.*.tmp) that a killed run leaves in the split
    folders; atomic writes keep them from being read, but nothing else would ever remove them. `owned`
    (per split, the event file names this process writes): only their temporaries, as one shard of
    several must leave the others' events being written alone."""
    removed = []
    for split in SPLITS:
        folder = Path(stage_dir) / split
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if not (TEMP_FILE.match(path.name) and path.is_file()):
                continue
            if owned is not None and path.name[1:].rsplit(".", 2)[0] not in owned.get(split, set()):
                continue
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def hit_count(data: Data) -> int | None:
    """Hits in an event: num_nodes when stored (ours), else the length of hit_id (ACORN's events store
    no num_nodes, and PyG's guess would come from track_edges)."""
    stored = data._store.get("num_nodes") if hasattr(data, "_store") else None
    if stored is not None:
        return int(stored)
    if "hit_id" in data:
        return int(data.hit_id.shape[0])
    return data.num_nodes


def save_event(data: Data, path: str | Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(
            data, f
        )  # a file object, not the temp name: torch names the archive after it, and the same event then has the same bytes


def load_event(path: str | Path) -> Data:
    path = Path(path)
    if not path.is_file():
        raise EventFileError(f"{path}: event file not found")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            data = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        raise EventFileError(
            f"{path}: refused to load: the file needs objects outside the PyG Data classes allowed for "
            f"event files ({unpickling_reason(err)})"
        ) from None
    except Exception as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise EventFileError(
            f"{path}: not a readable event file (truncated or corrupt?): {type(err).__name__} {detail}".rstrip()
        ) from None
    if not isinstance(data, Data):
        raise EventFileError(f"{path}: expected a torch_geometric Data object, found {type(data).__name__}")
    return data


def unpickling_reason(err: pickle.UnpicklingError) -> str:
    """What a refused file needs, in a few words: torch's message starts with advice to load with
    weights_only=False, which is exactly what must not be done with a file from elsewhere."""
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    if found:
        return f"it needs {found.group(1)}"
    lines = [line for line in str(err).splitlines() if line.strip() and "weights_only" not in line]
    return lines[0].strip() if lines else "unpickling failed"


def iter_events(stage_dir: str | Path, split: str) -> Iterator[tuple[Path, Data]]:
    for path in list_event_files(stage_dir, split):
        yield path, load_event(path)


def append_config(data: Data, record: dict[str, Any]) -> None:
    """Record how the file was made: each stage appends its own config, as ACORN does."""
    history = list(getattr(data, "config", None) or [])
    history.append(record)
    data.config = history


def require_field(data: Data, name: str, source: str | Path) -> torch.Tensor:
    if name not in data:
        available = ", ".join(sorted(k for k in data.keys()))
        raise MissingFieldError(f"{source}: the event has no field '{name}'. Available: {available}")
    return data[name]
