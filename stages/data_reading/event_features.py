"""From TrackML frames to the tensors of one feature-store event (ACORN's prefixed field names).

Hits get positions in cylindrical coordinates and the dense module index of their module; truth
becomes `track_edges` (consecutive hits of a particle ordered by distance from its production vertex)
with the particle's features on every truth edge. Momenta are stored in MeV, as ACORN's reader does.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from tb_plugin.geometry import Detector

MEV_PER_GEV = 1000.0

# particle_id bit field of the generation counter (REFERENCE §1): 0 for particles from the collision.
GENERATION_MASK = 0x0000000FFF000000
GENERATION_SHIFT = 24


class EventContentError(ValueError):
    """An event whose content is inconsistent (unknown modules, truth not matching hits, no hits)."""


def _first(values: np.ndarray, n: int = 5) -> str:
    shown = ", ".join(str(v) for v in values[:n])
    return shown + (", ..." if len(values) > n else "")


def hit_features(hits: pd.DataFrame, detector: Detector, source: str) -> dict[str, torch.Tensor]:
    """Per-hit features [N]: ids, x/y/z, r, phi, eta and the dense module index."""
    if len(hits) == 0:
        raise EventContentError(f"{source}: the event has no hits")
    x = hits["x"].to_numpy(np.float32)
    y = hits["y"].to_numpy(np.float32)
    z = hits["z"].to_numpy(np.float32)
    r = np.hypot(x, y)
    module_index = detector.index(
        hits["volume_id"].to_numpy(), hits["layer_id"].to_numpy(), hits["module_id"].to_numpy()
    )
    unknown = module_index < 0
    if unknown.any():
        bad = hits.loc[unknown, ["volume_id", "layer_id", "module_id"]].drop_duplicates().to_numpy()
        ids = np.array([f"({v}, {lay}, {m})" for v, lay, m in bad])
        raise EventContentError(
            f"{source}: {unknown.sum()} hits lie on {len(bad)} modules that the detector does not have "
            f"(volume_id, layer_id, module_id): {_first(ids)}. Is the detector file the one the data was made with?"
        )
    return {
        "hit_id": torch.tensor(hits["hit_id"].to_numpy(np.int64)),
        "hit_x": torch.tensor(x),
        "hit_y": torch.tensor(y),
        "hit_z": torch.tensor(z),
        "hit_r": torch.tensor(r),
        "hit_phi": torch.tensor(np.arctan2(y, x).astype(np.float32)),
        "hit_eta": torch.tensor(np.arcsinh(z / np.maximum(r, 1e-6)).astype(np.float32)),
        "hit_volume_id": torch.tensor(hits["volume_id"].to_numpy(np.int64)),
        "hit_layer_id": torch.tensor(hits["layer_id"].to_numpy(np.int64)),
        "hit_module_id": torch.tensor(hits["module_id"].to_numpy(np.int64)),
        "hit_module_index": torch.tensor(module_index.astype(np.int64)),
    }


def cell_features(hits: pd.DataFrame, cells: pd.DataFrame) -> dict[str, torch.Tensor]:
    """Cluster size and total charge per hit, the cell features ACORN feeds its graph stages."""
    grouped = cells.groupby("hit_id")["value"].agg(["count", "sum"])
    per_hit = grouped.reindex(hits["hit_id"].to_numpy(), fill_value=0)
    return {
        "hit_cell_count": torch.tensor(per_hit["count"].to_numpy(np.float32)),
        "hit_cell_val": torch.tensor(per_hit["sum"].to_numpy(np.float32)),
    }


def align_truth(hits: pd.DataFrame, truth: pd.DataFrame, source: str) -> pd.DataFrame:
    """Truth rows in the order of the hits; every hit must have exactly one."""
    if len(truth) != len(hits) or not np.array_equal(
        np.sort(truth["hit_id"].to_numpy()), np.sort(hits["hit_id"].to_numpy())
    ):
        missing = np.setdiff1d(hits["hit_id"].to_numpy(), truth["hit_id"].to_numpy())
        extra = np.setdiff1d(truth["hit_id"].to_numpy(), hits["hit_id"].to_numpy())
        raise EventContentError(
            f"{source}: truth and hits disagree: {len(missing)} hit_ids without truth ({_first(missing)}), "
            f"{len(extra)} truth rows for unknown hit_ids ({_first(extra)})"
        )
    return truth.set_index("hit_id").loc[hits["hit_id"].to_numpy()].reset_index()


def particle_table(truth: pd.DataFrame, particles: pd.DataFrame, source: str) -> pd.DataFrame:
    """The particles file indexed by particle_id, checked to cover every particle in the truth."""
    table = particles.set_index("particle_id")
    referenced = np.unique(truth["particle_id"].to_numpy())
    referenced = referenced[referenced != 0]
    missing = np.setdiff1d(referenced, table.index.to_numpy())
    if len(missing):
        raise EventContentError(
            f"{source}: {len(missing)} particle_ids in the truth are not in the particles file: {_first(missing)}"
        )
    return table


def order_along_trajectory(truth: pd.DataFrame, particles: pd.DataFrame) -> np.ndarray:
    """Hit indices sorted by particle, then by distance |t - v| from the particle's production vertex.

    Noise (particle 0) is left out. hit_id order is not trajectory order, so this is the only order
    used to build truth edges.
    """
    pid = truth["particle_id"].to_numpy()
    signal = np.flatnonzero(pid != 0)
    vertex = particles.loc[pid[signal], ["vx", "vy", "vz"]].to_numpy(np.float64)  # [S, 3]
    true_pos = truth.iloc[signal][["tx", "ty", "tz"]].to_numpy(np.float64)  # [S, 3]
    distance = np.linalg.norm(true_pos - vertex, axis=1)  # [S]
    order = np.lexsort((distance, pid[signal]))
    return signal[order]


def track_edges_from_order(ordered_hits: np.ndarray, pid: np.ndarray, hit_r2z2: np.ndarray) -> np.ndarray:
    """Consecutive hits of each particle as edges [2, T], each oriented inner to outer by r^2 + z^2."""
    same_particle = pid[ordered_hits[:-1]] == pid[ordered_hits[1:]]
    src = ordered_hits[:-1][same_particle]
    dst = ordered_hits[1:][same_particle]
    flip = hit_r2z2[src] > hit_r2z2[dst]
    src, dst = np.where(flip, dst, src), np.where(flip, src, dst)
    return np.stack([src, dst]).astype(np.int64)  # [2, T]


def truth_features(
    hits: pd.DataFrame, truth: pd.DataFrame, particles: pd.DataFrame, source: str
) -> dict[str, torch.Tensor]:
    """Per-hit truth and the truth graph `track_edges` with ACORN's `track_particle_*` features [T]."""
    truth = align_truth(hits, truth, source)
    table = particle_table(truth, particles, source)
    pid = truth["particle_id"].to_numpy(np.int64)
    x, y, z = (hits[c].to_numpy(np.float64) for c in ("x", "y", "z"))
    ordered = order_along_trajectory(truth, table)
    edges = track_edges_from_order(ordered, pid, x**2 + y**2 + z**2)  # [2, T]

    edge_pid = pid[edges[0]]  # [T]
    p = table.loc[edge_pid]
    px, py, pz = (p[c].to_numpy(np.float64) for c in ("px", "py", "pz"))
    vx, vy, vz = (p[c].to_numpy(np.float64) for c in ("vx", "vy", "vz"))
    pt = np.hypot(px, py)
    generation = (edge_pid & GENERATION_MASK) >> GENERATION_SHIFT
    pdg = p["particle_type"].to_numpy(np.int64) if "particle_type" in p else np.zeros(len(p), np.int64)

    def f32(a: np.ndarray) -> torch.Tensor:
        return torch.tensor(np.asarray(a, dtype=np.float32))

    return {
        "hit_particle_id": torch.tensor(pid),
        "hit_weight": f32(truth["weight"].to_numpy()),
        "track_edges": torch.tensor(edges),
        "track_particle_id": torch.tensor(edge_pid),
        "track_particle_pt": f32(pt * MEV_PER_GEV),
        "track_particle_eta": f32(np.arcsinh(pz / np.maximum(pt, 1e-12))),
        "track_particle_nhits": torch.tensor(p["nhits"].to_numpy(np.int64)),
        "track_particle_primary": torch.tensor((generation == 0).astype(np.int64)),
        "track_particle_pdgId": torch.tensor(pdg),
        "track_particle_radius": f32(np.hypot(vx, vy)),
        "track_particle_vx": f32(vx),
        "track_particle_vy": f32(vy),
        "track_particle_vz": f32(vz),
        "track_particle_q": torch.tensor(p["q"].to_numpy(np.int64)),
    }
