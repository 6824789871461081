"""The pretraining data as a LightningDataModule.

`prepare_data` does the one-off I/O (feature-store events -> track sentences, cached per split);
`setup` builds the pairs and their token layout. Train batches are masked afresh in every batch
(BERT's dynamic masking); validation and test batches carry one fixed, seeded [MASK] per track so
that every evaluation scores the same positions.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from tb_plugin.event_store import SPLITS, list_event_files, load_event
from tb_plugin.pretraining.masking import eval_mask_positions, mask_for_eval, mask_for_training
from tb_plugin.pretraining.pairs import PairSet, layout_pairs, make_pairs
from tb_plugin.pretraining.tracks import TrackSet, candidate_tracks, event_tracks
from tb_plugin.tokenizer import ModuleTokenizer
from tb_plugin.training import TrainingLoader

log = logging.getLogger(__name__)

SPLIT_SEED_OFFSET = {"trainset": 0, "valset": 1, "testset": 2}


class NoTracksError(ValueError):
    """A split of the feature store without a single track to pretrain or validate on."""


@dataclass(frozen=True)
class SequenceSettings:
    """How tracks become training sentences (the paper: 4..8 hits)."""

    min_hits: int = 4
    max_hits: int = 8
    long_tracks: Literal["truncate", "split"] = "truncate"
    # truth: each particle's hits; track_building: the candidates a track-building stage reconstructed
    # (no truth needed), for training and validation; the test split keeps truth tracks where it has them
    tracks_from: Literal["truth", "track_building"] = "truth"
    mask_rate: float = 0.5
    batch_size: int = 512
    num_workers: int = 0
    seed: int = 0


def split_files(input_dir: Path, split: str, data_split: list[int] | None) -> list[Path]:
    """The split's event files; with the stage's `data_split`, the first n of them (as every stage reads it)."""
    files = list_event_files(input_dir, split)
    return files if data_split is None else files[: data_split[SPLITS.index(split)]]


def read_tracks(
    files: list[Path], split: str, tokenizer: ModuleTokenizer, settings: SequenceSettings, candidates: bool = False
) -> TrackSet:
    """The split's tracks: truth tracks, or with `candidates` the track candidates of the events."""
    reader = candidate_tracks if candidates else event_tracks
    sets = []
    for path in tqdm(files, desc=f"tracks {split}", unit="event", leave=False):
        sets.append(
            reader(load_event(path), tokenizer, settings.min_hits, settings.max_hits, settings.long_tracks, str(path))
        )
    if tokenizer.n_unknown:
        log.warning("%s: %d hits of tracks fell outside the vocabulary and became [UNK]", split, tokenizer.n_unknown)
    return TrackSet.concat(sets, settings.max_hits)


class PairDataset(Dataset):
    """Rows of the pair layout; `fixed_mask` (eval) replaces one module per track by [MASK]."""

    def __init__(self, tracks: TrackSet, pairs: PairSet, fixed_mask_seed: int | None) -> None:
        layout = layout_pairs(tracks, pairs)
        self.rows = {k: torch.from_numpy(v) for k, v in layout.items()}
        self.rows["ntp_labels"] = torch.from_numpy(pairs.label)
        if fixed_mask_seed is not None:
            chosen = eval_mask_positions(layout["segment_ids"], layout["hit_position"], fixed_mask_seed)
            inputs, labels = mask_for_eval(layout["input_ids"], chosen)
            self.rows["unmasked_ids"] = self.rows["input_ids"]
            self.rows["input_ids"] = torch.from_numpy(inputs)
            self.rows["mdm_labels"] = torch.from_numpy(labels)

    def __len__(self) -> int:
        return len(self.rows["ntp_labels"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.rows.items()}


def trim_to_longest(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch without the columns after its longest pair. Pairs are packed left and padding is only a
    key mask, so the trailing all-[PAD] columns change no output; they only cost compute in every layer
    (a batch of short tracks, e.g. split chunks, pays for the longest possible pair otherwise)."""
    mask = batch["attention_mask"]  # [B, L]
    full = mask.shape[1]
    used = mask.any(dim=0).nonzero()  # [n, 1] columns with a real token
    length = int(used.max()) + 1 if len(used) else full
    if length == full:
        return batch
    return {k: v[:, :length] if v.dim() == 2 and v.shape[1] == full else v for k, v in batch.items()}  # [B, l]


def stack_rows(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The dataset rows of one batch, stacked field by field: [B, ...]."""
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def collate_pairs(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack the rows of a batch and trim it to its longest pair (evaluation batches)."""
    return trim_to_longest(stack_rows(rows))


class TrainingMasker:
    """Collate function that masks each training batch afresh and trims it to its longest pair
    (picklable for worker processes)."""

    def __init__(self, rate: float, vocab_size: int) -> None:
        self.rate, self.vocab_size = rate, vocab_size

    def __call__(self, rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        batch = stack_rows(rows)
        batch["input_ids"], batch["mdm_labels"] = mask_for_training(
            batch["input_ids"], batch["hit_position"], self.rate, self.vocab_size
        )
        return trim_to_longest(batch)


class TrackingBERTDataModule(L.LightningDataModule):
    def __init__(
        self,
        input_dir: Path,
        cache_dir: Path,
        tokenizer: ModuleTokenizer,
        settings: SequenceSettings,
        data_split: list[int] | None = None,
        tracks_dir: Path | None = None,
        train_events: int | None = None,
    ) -> None:
        super().__init__()
        self.input_dir, self.cache_dir = Path(input_dir), Path(cache_dir)
        self.data_split = data_split
        self.train_events = train_events  # pretrain on the first n trainset events only; None: all
        self.tracks_dir = None if tracks_dir is None else Path(tracks_dir)
        self.tokenizer, self.settings = tokenizer, settings
        self.tracks: dict[str, TrackSet] = {}
        self.datasets: dict[str, PairDataset] = {}

    def source(self, split: str) -> tuple[Path, bool]:
        """(folder, candidates?) the split's tracks come from: truth of the feature store, or with
        tracks_from: track_building the candidates in tracks_dir, but for a test split with truth,
        which the MDM evaluation keeps."""
        if self.tracks_dir is None:
            return self.input_dir, False
        if split == "testset":
            files = split_files(self.input_dir, split, self.data_split)
            if files and "track_edges" in load_event(files[0]):
                return self.input_dir, False
        return self.tracks_dir, self.settings.tracks_from == "track_building"

    def files(self, folder: Path, split: str) -> list[Path]:
        """The split's event files that pretraining reads: data_split's, and train_events of the trainset."""
        files = split_files(folder, split, self.data_split)
        return files[: self.train_events] if split == "trainset" and self.train_events is not None else files

    def cache_file(self, split: str) -> Path:
        """Cache name keyed by everything that shapes the tracks, so a changed setting never reads stale
        tracks: the settings, the geometry, the input folder and each event file's name, size and
        mtime_ns (a feature store rewritten in place keeps its file names, not their content)."""
        s = self.settings
        folder, candidates = self.source(split)
        files = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in self.files(folder, split)]
        key = json.dumps(
            [
                self.tokenizer.geometry_hash,
                self.tokenizer.volumes,
                s.min_hits,
                s.max_hits,
                s.long_tracks,
                str(folder.resolve()),
                files,
                *(["candidates"] if candidates else []),  # the key of truth tracks stays as before
            ]
        )
        return self.cache_dir / f"tracks_{split}_{hashlib.sha256(key.encode()).hexdigest()[:12]}.npz"

    def prepare_data(self) -> None:
        for split in SPLITS:
            path = self.cache_file(split)
            if not path.exists():
                folder, candidates = self.source(split)
                files = self.files(folder, split)
                read_tracks(files, split, self.tokenizer, self.settings, candidates).save(path)

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS:
            if split in self.datasets:
                continue
            tracks = TrackSet.load(self.cache_file(split))
            seed = self.settings.seed + SPLIT_SEED_OFFSET[split]
            self.tracks[split] = tracks
            fixed = None if split == "trainset" else seed
            self.datasets[split] = PairDataset(tracks, make_pairs(tracks, seed), fixed_mask_seed=fixed)
            log.info("%s: %d tracks, %d pairs", split, len(tracks), len(self.datasets[split]))

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if len(self.datasets[split]) == 0:
            raise NoTracksError(
                f"{self.source(split)[0]}/{split}: no tracks with {self.settings.min_hits}..{self.settings.max_hits} hits; "
                f"check the feature store has truth (track_edges) and events in this split"
            )
        collate = TrainingMasker(self.settings.mask_rate, self.tokenizer.vocab_size) if shuffle else collate_pairs
        return (TrainingLoader if shuffle else DataLoader)(
            self.datasets[split],
            batch_size=self.settings.batch_size,
            shuffle=shuffle,
            num_workers=self.settings.num_workers,
            collate_fn=collate,
            persistent_workers=self.settings.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("trainset", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valset", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("testset", shuffle=False)
