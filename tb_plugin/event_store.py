"""The feature store: one PyG `Data` per event, in ACORN's layout.

    stage_dir/{trainset,valset,testset}/event{ID:09d}.pyg

Files are written atomically (temp name, then rename) so an interrupted run never leaves a file
that a resumed run would take for finished. They are loaded with torch's safe-globals mechanism:
`weights_only` stays on, so an event file from elsewhere cannot run code when it is opened.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch_geometric.data.data as pyg_data
import torch_geometric.data.storage as pyg_storage
from torch_geometric.data import Data

from tb_plugin.atomic import atomic_path

SPLITS = ("trainset", "valset", "testset")
EVENT_FILE = re.compile(r"^event(\d+)(?:-graph)?\.pyg$")  # ours, and ACORN data reading's event{ID}-graph.pyg

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


class MissingFieldError(ValueError):
    """An event lacks a field that a config asks for; the message names the field and the file."""


def event_file(stage_dir: str | Path, split: str, event_id: int | str) -> Path:
    return Path(stage_dir) / split / f"event{int(event_id):09d}.pyg"


def event_id_string(event_id: int) -> str:
    """ACORN stores the event id as a zero-padded string."""
    return f"{int(event_id):09d}"


def list_event_files(stage_dir: str | Path, split: str) -> list[Path]:
    """Event files of one split, sorted by event id (an absent split folder is an empty list)."""
    folder = Path(stage_dir) / split
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if EVENT_FILE.match(p.name))


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
    with atomic_path(path) as tmp:
        torch.save(data, tmp)


def load_event(path: str | Path) -> Data:
    path = Path(path)
    if not path.is_file():
        raise EventFileError(f"{path}: event file not found")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            data = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else "unpickling failed"
        raise EventFileError(
            f"{path}: refused to load: the file needs objects outside the PyG Data classes allowed for "
            f"event files ({first_line})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise EventFileError(f"{path}: not a readable event file (truncated or corrupt?): {err}") from None
    if not isinstance(data, Data):
        raise EventFileError(f"{path}: expected a torch_geometric Data object, found {type(data).__name__}")
    return data


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
