"""The geometry of a doublet (two hits, inner to outer): what the module map learns its windows from,
builds its graphs with, and scores its candidate module pairs by (pair_prior.py). One home for the
formula, so the map and its prior cannot drift apart.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Data

from tb_plugin.event_store import require_field

PAIR_SHIFT = np.int64(1 << 32)  # key of a pair of ids: src * 2^32 + dst


def doublet_features(data: Data, edges: np.ndarray, source: str | Path) -> np.ndarray:
    """float64 [E, 2] per edge (inner hit -> outer hit): dphi, wrapped to [-pi, pi), and z0, the z
    where the straight line through the two hits in (r, z) meets the beam line (mm).

    z0 rather than deta: eta is measured from the origin, and a vertex 50 mm along the beam line
    changes the deta of a stiff track between the first pixel layers by a whole unit, while its z0
    stays near the vertex. Hits at one radius (an endcap disk's overlaps) give z0 = +-inf, which the
    histograms clip into their edge bins.
    """
    phi, r, z = (require_field(data, k, source).double() for k in ("hit_phi", "hit_r", "hit_z"))  # [N] each
    src, dst = torch.from_numpy(np.asarray(edges, dtype=np.int64))
    return doublet_values(phi[src], r[src], z[src], phi[dst], r[dst], z[dst]).T.numpy()


def doublet_values(
    phi_in: torch.Tensor,
    r_in: torch.Tensor,
    z_in: torch.Tensor,
    phi_out: torch.Tensor,
    r_out: torch.Tensor,
    z_out: torch.Tensor,
) -> torch.Tensor:
    """float64 [2, E] dphi, z0 (see doublet_features) of points given as tensors [E] each (inner, outer),
    on their device. The one formula the map learns its windows with and builds its graphs with: the
    cut at inference must see the very numbers the windows were set from."""
    dphi = torch.remainder(phi_out - phi_in + math.pi, 2 * math.pi) - math.pi
    dr, dz = r_out - r_in, z_out - z_in
    z0 = z_in - r_in * dz / dr
    z0 = torch.where(torch.isnan(z0), math.inf, z0)  # same position twice: no line, no cut
    return torch.stack([dphi, z0])


def layer_key(data: Data, source: str | Path) -> np.ndarray:
    """int64 [N]: volume_id * 1000 + layer_id of each hit."""
    volume = require_field(data, "hit_volume_id", source).numpy().astype(np.int64)
    layer = require_field(data, "hit_layer_id", source).numpy().astype(np.int64)
    return volume * 1000 + layer
