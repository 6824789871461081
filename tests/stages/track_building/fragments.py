"""Small track-building events built in code, shared by the stitching and candidate-scoring tests:
helix fragments (tracks from the origin in the transverse plane, straight in z(s)) and a tiny
TrackingBERT with random weights over the built-in detector's pixel vocabulary."""

from dataclasses import asdict

import numpy as np
import torch
from torch_geometric.data import Data

from tb_plugin.geometry import Detector
from tb_plugin.model import OptimConfig, TrackingBERTConfig, TrackingBERTModule
from tb_plugin.tokenizer import UNK, ModuleTokenizer

S_A = np.arange(1, 6) * 60.0  # arc lengths (mm) of an inner fragment's hits
S_B = np.arange(6, 11) * 60.0  # ... and of the outer fragment that continues it


def helix(s, radius=2000.0, charge=1, phi0=0.3, z0=0.0, cot_theta=0.4) -> np.ndarray:
    """[n, 3] points of a helix from the origin at arc lengths `s` (transverse), turning with `charge`."""
    s = np.asarray(s, dtype=np.float64)
    centre = charge * radius * np.array([-np.sin(phi0), np.cos(phi0)])
    beta = np.arctan2(-centre[1], -centre[0]) + charge * s / radius
    return np.stack([centre[0] + radius * np.cos(beta), centre[1] + radius * np.sin(beta), z0 + cot_theta * s], 1)


def event(*fragments: np.ndarray, module_index=None) -> tuple[Data, np.ndarray]:
    """An event of the given fragments' hits, and their labels (fragment k -> label k)."""
    xyz = np.concatenate(fragments)
    labels = np.repeat(np.arange(len(fragments)), [len(f) for f in fragments])
    fields = {f"hit_{c}": torch.tensor(xyz[:, i], dtype=torch.float32) for i, c in enumerate("xyz")}
    if module_index is not None:
        fields["hit_module_index"] = torch.as_tensor(module_index, dtype=torch.int64)
    return Data(**fields, hit_id=torch.arange(1, len(xyz) + 1), num_nodes=len(xyz)), labels


PIXEL = (7, 8, 9)


def tiny_trackingbert():
    """A TrackingBERT of one small layer, random weights with a fixed seed, over the built-in detector
    with a pixel-only vocabulary (strip modules are [UNK])."""
    torch.manual_seed(0)
    detector = Detector.builtin()
    tokenizer = ModuleTokenizer(detector, PIXEL)
    config = TrackingBERTConfig(
        vocab_size=tokenizer.vocab_size, max_len=2 * 6 + 3, n_embd=16, n_head=2, n_layer=1, d_ff=32, dropout=0.1
    )
    module = TrackingBERTModule(model=asdict(config), optim=asdict(OptimConfig()))
    return module, tokenizer, detector


def tb_event(tokenizer, strip_hits=()):
    """A-B (one helix) and C (another), every hit on a pixel module but those in `strip_hits`."""
    pixel, strip = tokenizer.token_to_module, np.flatnonzero(tokenizer.module_to_token == UNK)
    module = pixel[np.arange(15) * 37 % len(pixel)]
    module[list(strip_hits)] = strip[: len(strip_hits)]
    return event(helix(S_A), helix(S_B), helix(S_B, radius=1500.0), module_index=module)
