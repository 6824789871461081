"""`stage: edge_classifier, model: Filter`: score every edge with an MLP and prune the graph (ACORN's Filter).

A filter sits between graph construction and the GNN: the module map keeps nearly every true edge
but most of its edges are fake, and the GNN's cost grows with the edges. The filter sees each edge
alone ([x_src, x_dst, edge_attr], filter_model.FilterNetwork), so it is cheap and scores any graph in
chunks of `inference_chunk_edges` edges.

    tb train   as the GNN (edge_stage.EdgeClassifierStage: weighted BCE, weighting, hard_cuts,
               target_tracks, max_train_edges); with `edge_cut: {target_efficiency: e}` (the default,
               e = 0.99) the cut is then chosen on the valset and saved to artifacts/edge_cut.json
    tb infer   writes the PRUNED graph: only the edges with score > cut. edge_index, edge_scores and
               every per-edge field (`edge_*` with first dim E) are sliced alike, track_to_edge_map
               is remapped to the new edge positions (-1 where the graph no longer has the truth
               edge); every other field passes through. The event's config record gets `edge_cut_used`.
    tb eval    edges per event, target efficiency and purity before (the input graph, read from
               input_dir/<split>/<same file>) and after the filter; efficiency after the filter is
               relative to the target truth edges of the input graph. ROC and score histogram score
               the input graph again, since the written graph holds the kept edges only.

Unlike ACORN, whose Filter writes scores and lets the next stage cut them on loading, the pruned graph
is what is written: every later stage (and ACORN's own, reading our files) sees a plain smaller graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Data
from tqdm import tqdm

from stages.edge_classifier.edge_stage import (
    SCORES_FIELD,
    EdgeClassifierConfig,
    EdgeClassifierStage,
    TargetEfficiency,
    auc_or_none,
    edge_target_mask,
    format_rate,
    merge_arrays,
)
from stages.edge_classifier.filter_model import FilterNetworkConfig
from stages.edge_classifier.operating_point import rates
from stages.graph_metrics import target_truth_mask, truth_edge_found
from tb_plugin.event_store import load_event, require_field
from tb_plugin.stage import EventProcessor


@dataclass(kw_only=True)
class FilterConfig(EdgeClassifierConfig):
    # model (ACORN Filter names); layernorm, hidden_activation and dropout: EdgeClassifierConfig
    hidden: int = 128
    nb_layer: int = 3
    # a filter exists to keep nearly every target edge: by default the cut keeping 99 % of them on the valset
    edge_cut: float | TargetEfficiency = field(default_factory=lambda: TargetEfficiency(target_efficiency=0.99))
    inference_chunk_edges: int = 1_000_000  # edges per forward pass in inference: bounds memory on pile-up-200 graphs

    positive_keys = EdgeClassifierConfig.positive_keys + ("hidden", "nb_layer", "inference_chunk_edges")

    def model_config(self, node_dim: int, edge_dim: int) -> FilterNetworkConfig:
        return FilterNetworkConfig(
            node_dim=node_dim,
            edge_dim=edge_dim,
            hidden=self.hidden,
            nb_layer=self.nb_layer,
            layernorm=self.layernorm,
            hidden_activation=self.hidden_activation,
            dropout=self.dropout,
        )


def prune_edges(data: Data, keep: torch.Tensor) -> Data:
    """The event with only the edges where keep [E] is true: edge_index and every `edge_*` field whose
    first dim is E sliced alike, track_to_edge_map remapped to the new edge positions (-1 where its
    edge is gone or was never there). Other fields pass through; tensors are replaced, never changed
    in place, so a shallow copy of an event (InferenceChain) leaves the original whole."""
    edge_index = require_field(data, "edge_index", "event")
    E = int(edge_index.shape[1])
    keep = keep.bool().reshape(-1)
    if keep.shape != (E,):
        raise ValueError(f"keep has shape {list(keep.shape)}, expected [{E}] (one per edge)")
    for key in list(data.keys()):
        value = data[key]
        if (
            key != "edge_index"
            and key.startswith("edge_")
            and torch.is_tensor(value)
            and value.dim() > 0
            and value.shape[0] == E
        ):
            data[key] = value[keep]  # [E'] or [E', D]
    data.edge_index = edge_index[:, keep]  # [2, E']
    if "track_to_edge_map" in data:
        new_position = torch.full((E + 1,), -1, dtype=torch.long)  # the last slot answers the -1 entries
        new_position[:E][keep] = torch.arange(int(keep.sum()))
        mapping = data.track_to_edge_map.long()  # [T]
        data.track_to_edge_map = new_position[torch.where(mapping >= 0, mapping, E)]  # [T]
    return data


class Filter(EdgeClassifierStage):
    """The edge filter: scores every edge with an MLP, writes the graph of the edges above the cut."""

    config_class = FilterConfig
    config: FilterConfig
    architecture = "Filter"
    title = "edge filter"

    def score_chunk(self, n_edges: int) -> int:
        """inference_chunk_edges: each edge is scored alone, so chunks give the same scores in bounded memory."""
        return self.config.inference_chunk_edges

    def event_processor(self) -> EventProcessor:
        """Load the checkpoint and fix the cut once; the function scores an event and prunes it."""
        module = self.inference_module()
        cut = self.operating_cut(module)
        check = self.conditions_check()

        def filter_event(data: Data, source: Path) -> Data:
            check(data, source)
            scores = self.score(module, data, source)  # [E]
            data[SCORES_FIELD] = scores
            return prune_edges(data, scores > cut)

        return filter_event

    def config_record(self) -> dict[str, Any]:
        """The config, plus the cut the written graphs were pruned at (it may come from edge_cut.json)."""
        return {**super().config_record(), "edge_cut_used": self.operating_cut()}

    def input_path(self, path: Path) -> Path:
        """The input graph of an output event: input_dir/<split>/<same file name>."""
        return Path(self.config.input_dir) / path.parent.name / path.name

    # --------------------------------------------------------------------------------- evaluate

    def event_arrays(self, path: Path) -> dict[str, Any]:
        """InteractionGNN's per-event arrays of the filter's output (every edge in it was kept), with
        truth_in_graph taken from the input graph, and the input graph's counts: n_input_edges,
        n_input_true (true edges) and n_input_target (target truth edges: the denominator of the
        filter's efficiency)."""
        return self.filtered_arrays(load_event(path), path, load_event(self.input_path(path)))

    def filtered_arrays(self, output: Data, path: Path, source: Data) -> dict[str, Any]:
        """event_arrays of one loaded output event and its loaded input event."""
        scores = require_field(output, SCORES_FIELD, path).float().numpy()  # [E'] every one above the cut used
        a = self.scored_arrays(output, path, -np.inf, scores)  # kept: all of them
        in_path = self.input_path(path)
        mapping = require_field(source, "track_to_edge_map", in_path).long()  # [T]
        target = target_truth_mask(source, self.config.target_conditions(), in_path)  # [T]
        edge_y = require_field(source, "edge_y", in_path).bool()  # [E]
        if mapping.shape != require_field(output, "track_to_edge_map", path).shape:
            raise ValueError(
                f"{path} and {in_path} have different truth edges: is input_dir the graph this stage filtered?"
            )
        a["truth_in_graph"] = truth_edge_found(mapping)[target.numpy()]
        a["n_input_edges"] = int(edge_y.numel())
        a["n_input_true"] = int(edge_y.sum())
        a["n_input_target"] = int(edge_target_mask(mapping, target, int(edge_y.numel())).sum())
        return a

    def evaluate(self) -> dict[str, Any]:
        """Before / after metrics, the ROC of the input graph scored again, plots, metrics.json."""
        split, files = self.config.dataset, self.eval_files()
        module = self.inference_module()
        cut = self.operating_cut(module)
        after, before = [], []
        for path in tqdm(files, desc=f"{self.title} eval {split}", unit="event", leave=False):
            in_path = self.input_path(path)
            source = load_event(in_path)
            after.append(self.filtered_arrays(load_event(path), path, source))
            before.append(self.scored_arrays(source, in_path, cut, self.score(module, source, in_path).numpy()))
        (a, counts), (b, b_counts) = merge_arrays(after), merge_arrays(before)
        metrics = {**self.summarise(a, counts, len(files)), **self.before_after(a, b, b_counts, len(files))}
        self.plot({**b, "truth_in_graph": a["truth_in_graph"], "truth_kept": a["truth_kept"]})
        out = self.write_metrics(metrics)
        i, o = metrics["input"], metrics["output"]
        print(
            f"{self.title} ({split}, {len(files)} events, edge_cut {cut:.6g}): edges per event {i['edges_per_event']:,.0f} -> "
            f"{o['edges_per_event']:,.0f} ({format_rate(metrics['edge_reduction'])}x fewer); target efficiency "
            f"{format_rate(o['target_efficiency'])} of the input graph's target edges; target purity "
            f"{format_rate(i['target_purity'])} -> {format_rate(o['target_purity'])}, purity {format_rate(i['purity'])} -> "
            f"{format_rate(o['purity'])}; target AUC {format_rate(metrics['target_auc'])}\n  -> {out}"
        )
        return metrics

    def before_after(
        self, a: dict[str, np.ndarray], b: dict[str, np.ndarray], b_counts: dict, events: int
    ) -> dict[str, Any]:
        """The input and output graphs side by side, and the AUCs of the input graph's scores (the output
        holds only kept edges, whose ROC would say little).

        input.target_efficiency   target truth edges in the input graph / all target truth edges
        output.target_efficiency  target truth edges kept / those in the input graph
        efficiency                true edges kept / true edges of the input graph
        target_purity, purity     operating_point.rates over all the graph's edges
        """
        n_input_target = int(b["edge_target"].sum())
        before = rates(np.ones_like(b["edge_y"]), b["edge_y"], b["edge_target"])
        after = rates(a["kept"], a["edge_y"], a["edge_target"], n_target=n_input_target)
        n_in, n_out = len(b["edge_y"]), len(a["edge_y"])
        relevant = b["edge_target"] | ~b["edge_y"]
        return {
            "input": {
                "edges_per_event": n_in / events,
                "target_efficiency": b_counts["target_graph"].rates()["efficiency"],
                "target_purity": before["target_purity"],
                "purity": before["purity"],
                "n_edges": n_in,
                "n_target_edges": n_input_target,
            },
            "output": {
                "edges_per_event": n_out / events,
                "target_efficiency": after["target_efficiency"],
                "target_purity": after["target_purity"],
                "purity": after["purity"],
                "n_edges": n_out,
                "n_target_edges": int(a["edge_target"].sum()),
            },
            "efficiency": int(a["edge_y"].sum()) / int(b["edge_y"].sum())
            if b["edge_y"].any()
            else None,  # of all true edges
            "edge_reduction": n_in / n_out if n_out else None,
            "auc": auc_or_none(b["scores"], b["edge_y"]),
            "target_auc": auc_or_none(b["scores"][relevant], b["edge_target"][relevant]),
        }
