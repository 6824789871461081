"""Operating points chosen on an arm's own valset: the cuts that keep a share of target truth edges.

The A/B compares arms at their configured cuts and, because another input can move a classifier's
operating point rather than improve it, also where they keep the same share of target edges. The
cuts are always chosen on the valset output of the arm's own stage, never on the test events.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stages.edge_classifier.operating_point import cut_for_efficiency
from tb_plugin.event_store import list_event_files
from tb_plugin.stage import Stage


def target_count(arrays: dict[str, Any]) -> int:
    """Target truth edges the stage could keep: those of its input graph (a filter's output has lost some)."""
    return int(arrays.get("n_input_target", int(np.sum(arrays["edge_target"]))))


def valset_arrays(stage: Stage) -> list[dict[str, Any]]:
    """The stage's per-event arrays over its valset output, read once for all its operating points."""
    files = list_event_files(stage.stage_dir, "valset")
    if not files:
        raise FileNotFoundError(
            f"no event files in {stage.stage_dir / 'valset'}: the matched operating points need the "
            "stage's valset output (give data_split a validation event)"
        )
    return [stage.event_arrays(path) for path in files]


def valset_cut(arrays: list[dict[str, Any]], efficiency: float) -> float:
    """The score cut that keeps `efficiency` of the target truth edges over the valset arrays."""
    scores = np.concatenate([a["scores"][a["edge_target"]] for a in arrays])
    return cut_for_efficiency(scores, efficiency, sum(target_count(a) for a in arrays))


def valset_efficiency(arrays: list[dict[str, Any]]) -> float:
    """Target truth edges kept at the stage's own cut over the valset arrays (edges, as valset_cut counts)."""
    kept = sum(int(np.sum(a["kept"] & a["edge_target"])) for a in arrays)
    total = sum(target_count(a) for a in arrays)
    return kept / total if total else float("nan")
