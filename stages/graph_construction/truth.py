"""Truth of a constructed graph, in ACORN's contract.

    edge_index         int64 [2, E]  each edge oriented inner -> outer by r^2 + z^2, no duplicates, no self loops
    edge_y             bool  [E]     the edge equals a column of track_edges, in the same direction
    track_to_edge_map  int64 [T]     the graph edge equal to truth edge t, -1 where the graph lacks it

Edges are compared through int64 keys src * N + dst, so deduplication and matching are one sort and
one searchsorted, whatever the graph size. Orientation uses the rank of each hit in (r^2 + z^2, hit
index) order: ties in r^2 + z^2 (rare, but possible on the disks of a hand-made event) still give one
direction, the same for the graph and the truth, so a truth edge and its graph edge always agree.
The data reader already orients track_edges this way; a file from elsewhere whose truth edges point
outside-in still matches, because the truth is compared in its oriented form (the file's
track_edges are left as they are).

`GraphBuilderStage` is what the graph-construction stages share: the infer loop that writes graph
files in this contract, and their evaluation.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Data
from tqdm import tqdm

from stages.graph_metrics import GraphEvaluation
from stages.run_conditions import check_for
from tb_plugin.event_store import list_event_files, load_event
from tb_plugin.stage import EventProcessor, NoTruthError, Stage

log = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor


def _np(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def hit_order(hit_r2z2: ArrayLike) -> np.ndarray:
    """int64 [N]: each hit's rank from the beam line outwards (r^2 + z^2, ties by hit index)."""
    r2z2 = _np(hit_r2z2).astype(np.float64)
    order = np.lexsort((np.arange(r2z2.size), r2z2))  # [N] hits, innermost first
    rank = np.empty(r2z2.size, dtype=np.int64)
    rank[order] = np.arange(r2z2.size)
    return rank


def sorted_unique(keys: np.ndarray) -> np.ndarray:
    """np.unique(keys) by one sort: numpy 2's np.unique hashes first, 15x slower on a pile-up-200 graph
    (1.4 s against 0.09 s for 1.6 M edges)."""
    keys = np.sort(keys)
    return keys[np.concatenate([[True], keys[1:] != keys[:-1]])] if keys.size else keys


def orient_edges(edges: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """[2, E] with each edge pointing from its inner hit to its outer hit."""
    src, dst = edges  # [E] each
    flip = rank[src] > rank[dst]
    return np.stack([np.where(flip, dst, src), np.where(flip, src, dst)])


def graph_truth(
    edge_index: ArrayLike, track_edges: ArrayLike, hit_r2z2: ArrayLike
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(edge_index [2, E'] oriented and deduplicated, edge_y bool [E'], track_to_edge_map int64 [T]).

    The edges come back sorted by (src, dst), so the output does not depend on the order in which a
    builder found them.
    """
    edges = _np(edge_index).astype(np.int64).reshape(2, -1)  # [2, E]
    truth = _np(track_edges).astype(np.int64).reshape(2, -1)  # [2, T]
    rank = hit_order(hit_r2z2)
    n = np.int64(max(rank.size, 1))
    for name, e in (("edge_index", edges), ("track_edges", truth)):
        if e.size and (e.min() < 0 or e.max() >= rank.size):
            raise ValueError(f"{name} refers to hits outside 0..{rank.size - 1}")

    edges = orient_edges(edges, rank)
    edges = edges[:, edges[0] != edges[1]]  # self loops are never track segments
    keys = sorted_unique(edges[0] * n + edges[1])  # [E']
    oriented_truth = orient_edges(truth, rank)  # [2, T]
    truth_keys = oriented_truth[0] * n + oriented_truth[1]  # [T]

    pos = np.searchsorted(keys, truth_keys)  # [T]
    pos_clipped = np.minimum(pos, max(keys.size - 1, 0))
    found = (pos < keys.size) & (keys[pos_clipped] == truth_keys) if keys.size else np.zeros(truth_keys.size, bool)
    track_to_edge_map = np.where(found, pos, -1).astype(np.int64)  # [T]
    edge_y = np.zeros(keys.size, dtype=bool)
    edge_y[track_to_edge_map[found]] = True

    oriented = np.stack([keys // n, keys % n]).astype(np.int64)  # [2, E']
    return torch.from_numpy(oriented), torch.from_numpy(edge_y), torch.from_numpy(track_to_edge_map)


def hit_r2z2(data: Data) -> torch.Tensor:
    """[N] r^2 + z^2 of each hit in float64: from hit_x, hit_y, hit_z when present (the data reader
    orients track_edges by x^2 + y^2 + z^2), else from hit_r, hit_z."""
    if all(k in data for k in ("hit_x", "hit_y", "hit_z")):
        return data.hit_x.double() ** 2 + data.hit_y.double() ** 2 + data.hit_z.double() ** 2
    return data.hit_r.double() ** 2 + data.hit_z.double() ** 2


# ------------------------------------------------------------------------------------- the stage loop


class GraphBuilderStage(Stage):
    """What the graph-construction stages share: the infer loop that writes graph files in the contract
    above (every input field passes through, the config is appended, finished events are skipped) and
    the evaluation of the graphs of one split. Subclasses implement `build_edges`."""

    trainable = True

    def build_edges(self, data: Data, source: Path) -> np.ndarray:
        """[2, E] candidate edges of one event (any orientation; duplicates allowed)."""
        raise NotImplementedError

    def input_paths_learning_from(self, n_train: int | None) -> list[Path]:
        """What the stage record fingerprints when training reads the first `n_train` trainset events
        (map_events, train_events), more than data_split writes graphs for: those events too."""
        paths = super().input_paths()
        if n_train is None or self.trained_elsewhere:
            return paths
        learned = list_event_files(self.config.input_dir, "trainset")[:n_train]
        return paths + sorted(set(learned) - set(paths))

    def prepare_inference(self) -> None:
        """Load what build_edges needs (a model, a map); called once before the event loop."""

    def event_processor(self) -> EventProcessor:
        """Load the map or model once; the function builds one event's graph in the contract above,
        after checking the event against the run conditions of the training events (run_conditions)."""
        self.prepare_inference()
        self.conditions = check_for(self.config.model, self.trained_dir / "artifacts")

        def add_edges(data: Data, source: Path) -> Data:
            self.conditions(data, source)
            return self.add_graph(data, self.build_edges(data, source), source)

        return add_edges

    def infer(self, overwrite: bool = False) -> None:
        """The graphs of every event; rewrite_events keeps the input's detectors.csv beside them
        (Stage.copy_detector). Ends with the run's verdict on its run conditions."""
        self.rewrite_events(self.event_processor(), overwrite)
        self.conditions.summary()

    @staticmethod
    def add_graph(data: Data, edges: np.ndarray, source: Path) -> Data:
        """Set edge_index, edge_y and (with truth) track_to_edge_map on `data`, in the contract."""
        truth = data.track_edges if "track_edges" in data else torch.zeros((2, 0), dtype=torch.long)
        edge_index, edge_y, track_to_edge_map = graph_truth(edges, truth, hit_r2z2(data))
        data.edge_index = edge_index
        data.edge_y = edge_y
        if "track_edges" in data:
            data.track_to_edge_map = track_to_edge_map
        return data

    def evaluate(self) -> dict[str, Any]:
        split = self.config.dataset
        files = list_event_files(self.stage_dir, split)
        if not files:
            raise FileNotFoundError(f"no event files in {self.stage_dir / split}: run infer first")
        evaluation = GraphEvaluation(self.config.target_tracks)
        skipped = 0
        for path in tqdm(files, desc=f"{self.config.stage} eval {split}", unit="event", leave=False):
            data = load_event(path)
            if "track_edges" not in data:
                skipped += 1
                continue
            evaluation.add(data, str(path))
        if skipped == len(files):
            raise NoTruthError(
                f"none of the {len(files)} events in {self.stage_dir / split} has truth (track_edges): nothing to evaluate"
            )
        metrics = {"dataset": split, "events_without_truth": skipped, **evaluation.metrics()}
        evaluation.plot(self.stage_dir / "eval", title=self.config.model)
        path = self.write_metrics(metrics)
        print(
            f"{self.config.stage} {self.config.model} ({split}, {metrics['events']} events): "
            f"efficiency {_fmt(metrics['efficiency'])}, target efficiency {_fmt(metrics['target_efficiency'])}, "
            f"purity {_fmt(metrics['purity'])}, {_fmt(metrics['edges_per_event'], '.0f')} edges per event\n  -> {path}"
        )
        return metrics


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)
