"""`stage: data_reading, model: TrackMLReader`: a folder of TrackML events -> the feature store.

Real and simulated folders are read the same way. Events are assigned to train/val/test by a
seeded permutation of the sorted event ids, so the split depends only on the folder and the seed.
Truth is optional: a folder with hits only (like the real hits in ../shared) gives hit features and
no truth fields, which is enough for inference and timing.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch_geometric.data import Data
from tqdm import tqdm

from stages.data_reading.event_features import cell_features, hit_features, truth_features
from tb_plugin import trackml
from tb_plugin.atomic import atomic_path
from tb_plugin.conditions import Condition, parse_conditions, select
from tb_plugin.config import ConfigError
from tb_plugin.event_store import (
    SPLITS,
    SplitError,
    append_config,
    event_file,
    event_id_string,
    event_number,
    iter_events,
    save_event,
    split_files,
    write_split_record,
)
from tb_plugin.geometry import Detector, detector_for
from tb_plugin.stage import EventProcessor, Stage, StageConfig

log = logging.getLogger(__name__)

# hard_cuts may use ACORN's short particle names; they mean the truth-edge fields.
SHORT_NAMES = ("pt", "eta", "nhits", "primary", "pdgId", "radius", "vx", "vy", "vz", "q")
_EVENT_PREFIX = re.compile(r"^event(\d+)$")


@dataclass(kw_only=True)
class TrackMLReaderConfig(StageConfig):
    # Required here although optional in StageConfig (field() without a default makes them so).
    input_dir: Path = field()
    data_split: list[int] = field()
    # detectors.csv of the data; None means input_dir/detectors.csv when present, else the built-in detector.
    detector: Path | None = None
    # Conditions on particles (ACORN syntax, pt in MeV); particles failing them lose their truth edges.
    hard_cuts: dict[str, Any] = field(default_factory=dict)
    # Read cells (cluster size and charge per hit) when the event has a cells file.
    use_cells: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        parse_conditions(self.hard_cuts, "key 'hard_cuts'")

    @property
    def cuts(self) -> list[Condition]:
        conditions = parse_conditions(self.hard_cuts, "key 'hard_cuts'")
        return [Condition(_track_field(c.field), c.op, c.value) for c in conditions]


def _track_field(name: str) -> str:
    return f"track_particle_{name}" if name in SHORT_NAMES else name


def prefix_event_id(prefix: str | Path) -> int:
    """The event id of a TrackML prefix folder/event{ID}; anything else is an error naming the prefix."""
    match = _EVENT_PREFIX.match(Path(prefix).name)
    if match is None:
        raise ValueError(
            f"{prefix}: a TrackML event prefix must end in event<ID> (like folder/event000001000, "
            f"the files being event000001000-hits.csv, ...), got '{Path(prefix).name}'"
        )
    return int(match.group(1))


def _has_part(prefix: Path, part: str) -> bool:
    return any(Path(f"{prefix}-{part}{ext}").is_file() for ext in (".csv", ".csv.gz"))


def assign_splits(event_ids: list[int], data_split: list[int], seed: int, source: str) -> dict[str, list[int]]:
    """Deterministic split: a seeded permutation of the sorted ids, cut into train/val/test."""
    wanted = sum(data_split)
    if wanted > len(event_ids):
        raise ConfigError(
            f"{source}: key 'data_split' {data_split} asks for {wanted} events but the input folder has {len(event_ids)}"
        )
    ids = np.array(sorted(event_ids))
    ids = ids[np.random.default_rng(seed).permutation(len(ids))]
    bounds = np.cumsum([0, *data_split])
    return {split: sorted(ids[bounds[i] : bounds[i + 1]].tolist()) for i, split in enumerate(SPLITS)}


class TrackMLReader(Stage):
    config_class = TrackMLReaderConfig
    config: TrackMLReaderConfig

    def __init__(self, config: TrackMLReaderConfig) -> None:
        super().__init__(config)
        self._detector: Detector | None = None

    @property
    def detector(self) -> Detector:
        if self._detector is None:
            self._detector = detector_for(self.config.input_dir, self.config.detector)
        return self._detector

    def splits(self) -> dict[str, list[tuple[int, Path]]]:
        events = dict(trackml.list_events(self.config.input_dir))
        source = f"data_reading (input_dir {self.config.input_dir})"
        assigned = assign_splits(list(events), self.config.data_split, self.config.seed, source)
        return {split: [(eid, events[eid]) for eid in ids] for split, ids in assigned.items()}

    def input_paths(self) -> list[Path]:
        """Every file of every event this config assigns (hits, cells, truth, particles) and the
        geometry: what the stage record fingerprints."""
        paths = [
            path
            for events in self.splits().values()
            for _, prefix in events
            for path in sorted(prefix.parent.glob(f"{prefix.name}-*"))
        ]
        detector = self.config.detector or Path(self.config.input_dir) / "detectors.csv"
        return paths + ([Path(detector)] if Path(detector).is_file() else [])

    def read_event(self, prefix: str | Path) -> Data:
        """One TrackML event, `prefix` = folder/event{ID:09d}, as the Data that infer writes, in memory:
        where an in-memory inference chain starts. The event id is read off the prefix."""
        return self.build_event(prefix_event_id(prefix), Path(prefix))

    def event_processor(self) -> EventProcessor:
        """Load the geometry once; the function reads the event whose TrackML prefix is `source`.
        Data reading has no event to add to, so the function ignores its Data argument (pass None)."""
        _ = self.detector  # read the geometry now, not inside the first event

        def read(data: Data | None, source: Path) -> Data:
            return self.read_event(source)

        return read

    def build_event(self, event_id: int, prefix: Path) -> Data:
        source = str(prefix)
        (hits,) = trackml.load_event(prefix, parts=("hits",))
        fields = hit_features(hits, self.detector, f"{prefix}-hits")
        if self.config.use_cells and _has_part(prefix, "cells"):
            (cells,) = trackml.load_event(prefix, parts=("cells",))
            fields.update(cell_features(hits, cells))
        if _has_part(prefix, "truth") and _has_part(prefix, "particles"):
            truth, particles = trackml.load_event(prefix, parts=("truth", "particles"))
            fields.update(truth_features(hits, truth, particles, source))
            fields = self.apply_hard_cuts(fields, source)
        data = Data(**fields, num_nodes=len(hits))
        data.event_id = event_id_string(event_id)
        append_config(data, self.config_record())
        return data

    def apply_hard_cuts(self, fields: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
        cuts = self.config.cuts
        if not cuts:
            return fields
        n_edges = fields["track_edges"].shape[1]
        track = {k: v for k, v in fields.items() if k.startswith("track_") and k != "track_edges"}
        keep = select(track, cuts, n_edges, source)
        fields = dict(fields)
        fields["track_edges"] = fields["track_edges"][:, keep]
        for k in track:
            fields[k] = fields[k][keep]
        return fields

    def infer(self, overwrite: bool = False) -> None:
        """Write every assigned event into its split. The config is checked against the input folder
        (data_split, geometry), and the first event read, before anything is written; events of an
        earlier run that this one assigns elsewhere are removed with `overwrite` and refused without,
        so no event is ever in two splits; splits.json records the assignment for later stages. Under
        --shard K/N only the shard's share of each split's events is written (tb_plugin/shard.py);
        splits.json and detectors.csv, the same for every shard, are written by each."""
        splits = self.splits()
        read = self.event_processor()
        assignment = {split: [event_id for event_id, _ in events] for split, events in splits.items()}
        if self.shard is not None:
            splits = {split: self.shard.share(events) for split, events in splits.items()}
        self.remove_temporaries(
            {
                split: {event_file(self.stage_dir, split, event_id).name for event_id, _ in events}
                for split, events in splits.items()
            }
        )
        self.remove_stale_events(assignment, overwrite)
        described = False
        for split, events in splits.items():
            written = skipped = 0
            for event_id, prefix in tqdm(events, desc=f"data_reading {split}", unit="event", leave=False):
                target = event_file(self.stage_dir, split, event_id)
                if target.exists() and not overwrite:
                    skipped += 1
                    continue
                data = read(None, prefix)
                if not described:  # after the first event is known to read, before it is written
                    described = self.describe_store(assignment)
                save_event(data, target)
                written += 1
            log.info("data_reading %s: %d events written, %d already there", split, written, skipped)
        if not described:
            self.describe_store(assignment)

    def describe_store(self, assignment: dict[str, list[int]]) -> bool:
        """splits.json and detectors.csv beside the events: what later stages check and tokenise with."""
        write_split_record(
            self.stage_dir,
            assignment,
            {
                "input_dir": str(self.config.input_dir),
                "seed": self.config.seed,
                "data_split": list(self.config.data_split),
            },
        )
        self.store_detector()
        return True

    def remove_stale_events(self, assignment: dict[str, list[int]], overwrite: bool) -> None:
        """Event files in a split this run does not assign them to (the seed, data_split or input
        folder changed): deleted with `overwrite`, else refused, naming the folder and the remedy."""
        wanted = {split: set(ids) for split, ids in assignment.items()}
        where = {event_id: split for split, ids in assignment.items() for event_id in ids}
        stale = [
            path
            for split, files in split_files(self.stage_dir).items()
            for path in files
            if event_number(path) not in wanted[split]
        ]
        if not stale:
            return
        if not overwrite:
            first = stale[0]
            now = where.get(event_number(first), "no split")
            raise SplitError(
                f"{self.stage_dir}: {len(stale)} event file(s) from an earlier run belong elsewhere under this config "
                f"(e.g. {first.parent.name}/{first.name}, now in {now}); seed, data_split or input_dir changed. "
                f"Rerun with --overwrite to remove them, or delete {self.stage_dir}"
            )
        for path in stale:
            path.unlink(missing_ok=True)  # another shard may have removed it first
        log.info(
            "data_reading: removed %d event files that this config assigns to another split or to none", len(stale)
        )

    def store_detector(self) -> None:
        """Keep the geometry beside the feature store, so later stages tokenise with the same modules."""
        path = self.stage_dir / "detectors.csv"
        if not path.exists() or Detector.from_csv(path).geometry_hash() != self.detector.geometry_hash():
            self.detector.to_csv(path)

    def evaluate(self) -> dict[str, Any]:
        """Per-split summary of the feature store, and plots of what it holds."""
        metrics: dict[str, Any] = {}
        pts: list[np.ndarray] = []
        volumes: Counter[int] = Counter()
        for split in SPLITS:
            rows = []
            for _, data in iter_events(self.stage_dir, split):
                row = {"hits": data.num_nodes}
                volumes.update(data.hit_volume_id.tolist())
                if "track_edges" in data:
                    pid = data.hit_particle_id
                    _, first = np.unique(data.track_particle_id.numpy(), return_index=True)
                    pts.append(data.track_particle_pt.numpy()[first] / 1000.0)
                    row.update(
                        noise_fraction=float((pid == 0).float().mean()),
                        track_edges=int(data.track_edges.shape[1]),
                        particles_with_edges=len(first),
                    )
                rows.append(row)
            if rows:
                metrics[split] = {"events": len(rows)} | {
                    f"mean_{k}": float(np.mean([r[k] for r in rows if k in r])) for k in rows[0]
                }
        self.plot_summary(np.concatenate(pts) if pts else np.array([]), volumes)
        path = self.write_metrics(metrics)
        print(f"data_reading: {json.dumps(metrics)}\n  -> {path}")
        return metrics

    def plot_summary(self, pt_gev: np.ndarray, volumes: Counter[int]) -> None:
        fig, (ax_pt, ax_vol) = plt.subplots(1, 2, figsize=(10, 4))
        if len(pt_gev):
            ax_pt.hist(pt_gev, bins=np.logspace(-1, 1.5, 40), histtype="step")
        ax_pt.set(xscale="log", xlabel="particle pT [GeV]", ylabel="particles (with truth edges)", title="pT spectrum")
        ids = sorted(volumes)
        ax_vol.bar([str(v) for v in ids], [volumes[v] for v in ids])
        ax_vol.set(xlabel="volume_id", ylabel="hits", title="hits per volume")
        fig.tight_layout()
        with atomic_path(self.stage_dir / "eval" / "summary.png") as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
