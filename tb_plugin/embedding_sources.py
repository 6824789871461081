"""Where a per-module table comes from: the pretrained TrackingBERT, or a control that lacks its content.

The A/B benchmark asks whether the pretrained module vectors help because of what pretraining put in
them. Each control takes away one thing and keeps the rest, and the tracking_bert stage (key `source`)
writes it where the pretrained model would be, so every consumer (injection, module_table.npz, the
`tb` stitch and reject scorers, export) reads it without knowing:

    pretrained  the table TrackingBERT learned (MDM + NTP)
    random      the same model at its untrained initialisation: a distinct code per module, no content.
                Written as a checkpoint of the initial weights, so no optimisation step ever runs.
    shuffled    the pretrained checkpoint with its token-indexed parameters permuted among the modules of
                each volume: the statistics of the table stay (per volume), the module identities are wrong
    geometry    no model: per-module descriptors read from the detector (centre, normal, pitches, ...)

The controls' checkpoints carry a record (key `embedding_source`) of how they were made, so that a
stage can tell a stale copy (another seed, a retrained pretrained checkpoint) from a current one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch

from tb_plugin.atomic import atomic_path
from tb_plugin.geometry import Detector
from tb_plugin.tokenizer import N_SPECIAL, ModuleTokenizer
from tb_plugin.training import trained_checkpoint

EmbeddingSource = Literal["pretrained", "random", "shuffled", "geometry"]
SOURCES: tuple[str, ...] = ("pretrained", "random", "shuffled", "geometry")

# The columns of `geometry_descriptors`, in order. Why these: where the module is (centre, r, phi as
# cos/sin so that -pi and pi meet), which way it faces (the normal), how it measures (pitches,
# thickness, half widths) and which detector part it is in (volume and layer ids, as numbers).
GEOMETRY_DESCRIPTORS: tuple[str, ...] = (
    "cx",
    "cy",
    "cz",
    "r",
    "cos_phi",
    "sin_phi",
    "normal_x",
    "normal_y",
    "normal_z",
    "pitch_u",
    "pitch_v",
    "thickness",
    "min_hu",
    "max_hu",
    "hv",
    "volume",  # the volume_id and layer_id as numbers (not volume_id: an export has that id column already)
    "layer",
)

# The parameters indexed by token (first dimension = vocabulary) in a TrackingBERTModule's state_dict: the
# token table, its tied copy as the MDM decoder weight, and the MDM head's own per-token output bias.
TOKEN_PARAMETERS: tuple[str, ...] = (
    "model.embeddings.tok.weight",
    "model.mdm_head.decoder.weight",
    "model.mdm_head.decoder.bias",
)
SOURCE_RECORD = "embedding_source"  # key of a control checkpoint's record of how it was made


# ------------------------------------------------------------------------------------- geometry


def geometry_descriptors(detector: Detector) -> np.ndarray:
    """float64 [M, len(GEOMETRY_DESCRIPTORS)]: one row per detector module, by dense module index.

    The control that asks whether TrackingBERT's vectors say more than the detector description the
    host could be given directly. Every module gets its row, also those outside a vocabulary: the
    injection marks the vocabulary's rows (in_vocab) for normalize/dim, as for the learned tables."""
    center = detector.center  # [M, 3]
    r = np.hypot(center[:, 0], center[:, 1])  # [M]
    phi = np.arctan2(center[:, 1], center[:, 0])  # [M]
    normal = detector.rotation[:, :, 2]  # [M, 3]: the local w axis in global coordinates (column w)
    columns = [
        center[:, 0],
        center[:, 1],
        center[:, 2],
        r,
        np.cos(phi),
        np.sin(phi),
        normal[:, 0],
        normal[:, 1],
        normal[:, 2],
        detector.pitch_u,
        detector.pitch_v,
        detector.thickness,
        detector.min_hu,
        detector.max_hu,
        detector.hv,
        detector.volume_id,
        detector.layer_id,
    ]
    return np.stack([np.asarray(c, dtype=np.float64) for c in columns], axis=1)  # [M, 17]


def token_rows(module_table: np.ndarray, tokenizer: ModuleTokenizer) -> np.ndarray:
    """[V, C] the rows of a per-module table [M, C] in token order, zeros for the special tokens: the
    layout of a token-embedding table, which is what `export.export_embeddings` reads."""
    rows = np.zeros((tokenizer.vocab_size, module_table.shape[1]), dtype=module_table.dtype)  # [V, C]
    rows[N_SPECIAL:] = module_table[tokenizer.token_to_module]
    return rows


# ------------------------------------------------------------------------------------- random


def initial_checkpoint(module: L.LightningModule, seed: int) -> dict[str, Any]:
    """A checkpoint of `module` as built, in the shape Lightning saves (state_dict, hyper_parameters,
    epoch, global_step), so `training.read_checkpoint` and `load_module` take it as they take a trained
    one. The caller seeds before building the module, as pretraining does, so this is exactly the
    initialisation pretraining with that seed would start from."""
    return {
        "state_dict": {k: v.detach().clone() for k, v in module.state_dict().items()},
        "hyper_parameters": dict(module.hparams),
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": L.__version__,
        SOURCE_RECORD: {"source": "random", "seed": int(seed)},
    }


# ------------------------------------------------------------------------------------- shuffled


def volume_permutation(tokenizer: ModuleTokenizer, seed: int) -> np.ndarray:
    """int64 [V], token -> token: row t of a shuffled table is row `permutation[t]` of the original.

    Identity on the special tokens ([UNK] included). Within each volume the module tokens form one random
    cycle (numpy default_rng(seed) orders them, each takes the next one's row): a derangement, so every
    module of a volume with at least 2 modules gets another module's row of the same volume (one random
    cycle rather than a uniform derangement: as simple, and no module keeps its own vector). A volume of
    a single module keeps it."""
    rng = np.random.default_rng(seed)
    permutation = np.arange(tokenizer.vocab_size, dtype=np.int64)  # [V]
    volumes = tokenizer.module_ids()["volume_id"]  # [V - N_SPECIAL]
    for volume in np.unique(volumes):
        tokens = N_SPECIAL + np.flatnonzero(volumes == volume)  # [K]
        if len(tokens) < 2:
            continue
        cycle = rng.permutation(tokens)  # [K]
        permutation[cycle] = np.roll(cycle, -1)
    return permutation


def shuffle_token_parameters(state_dict: dict[str, torch.Tensor], permutation: np.ndarray) -> dict[str, torch.Tensor]:
    """A copy of `state_dict` whose TOKEN_PARAMETERS have their rows permuted (row t <- row permutation[t]).

    The decoder weight is tied to the token table, so the same permutation keeps the two one tensor;
    the MDM bias moves with them, so the shuffled model predicts the wrong module exactly as its table
    points at the wrong one."""
    index = torch.from_numpy(np.asarray(permutation, dtype=np.int64))  # [V]
    if "model.embeddings.tok.weight" not in state_dict:
        raise ValueError("not a TrackingBERT state_dict (no model.embeddings.tok.weight)")
    out = dict(state_dict)
    for key in TOKEN_PARAMETERS:
        if key in out:
            if out[key].shape[0] != len(index):
                raise ValueError(f"{key} has {out[key].shape[0]} rows, the permutation {len(index)} tokens")
            out[key] = out[key][index].clone()
    return out


def file_digest(path: Path) -> str:
    """sha256 of a file: what identifies the pretrained checkpoint a shuffled copy came from (a time stamp
    would call a copied folder stale, and miss a retraining within the same second)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shuffled_checkpoint(
    checkpoint: dict[str, Any], source: Path, permutation: np.ndarray, seed: int, pretrained_dir: Path
) -> dict[str, Any]:
    """The pretrained `checkpoint` (read from `source`) with its token parameters permuted, and the record
    of where it came from. Optimizer, scheduler and loop states are left out: they are not for resuming
    (a control is never trained further), and the optimizer's moments are token-indexed too."""
    return {
        "state_dict": shuffle_token_parameters(checkpoint["state_dict"], permutation),
        "hyper_parameters": checkpoint["hyper_parameters"],
        "epoch": checkpoint.get("epoch", 0),
        "global_step": checkpoint.get("global_step", 0),
        "pytorch-lightning_version": checkpoint.get("pytorch-lightning_version", L.__version__),
        SOURCE_RECORD: {
            "source": "shuffled",
            "seed": int(seed),
            "pretrained_dir": str(Path(pretrained_dir).resolve()),
            "pretrained_checkpoint": str(Path(source).resolve()),
            "pretrained_sha256": file_digest(source),
            "permutation": torch.from_numpy(np.asarray(permutation, dtype=np.int64)),  # [V]
        },
    }


def save_checkpoint(checkpoint: dict[str, Any], path: Path) -> Path:
    """torch.save, atomically: an interrupted write leaves the previous checkpoint or none."""
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
    return Path(path)


# ------------------------------------------------------------------------------------- staleness


def stale_reason(record: dict[str, Any] | None, source: str, seed: int, pretrained_dir: Path | None) -> str | None:
    """Why a checkpoint with this `record` is not the table a config of `source`, `seed`, `pretrained_dir`
    asks for; None when it is. A `pretrained` config accepts any checkpoint (the `tb` scorers load every
    stage_dir that way), but a shuffled copy is still checked against the pretrained checkpoint it was
    made from, whose folder the record names."""
    have = record.get("source", "pretrained") if isinstance(record, dict) else "pretrained"
    if source == "pretrained":
        if have != "shuffled":
            return None
        pretrained_dir = Path(record["pretrained_dir"])
    else:
        if have != source:
            return f"it holds the {have} table, but the config has source: {source}"
        if record.get("seed") != seed:
            return f"it was made with seed {record.get('seed')}, but the config has seed: {seed}"
        if source == "random":
            return None
        if record.get("pretrained_dir") != str(Path(pretrained_dir).resolve()):
            return f"it was shuffled from {record.get('pretrained_dir')}, but the config has pretrained_dir: {pretrained_dir}"
    try:
        current = trained_checkpoint(pretrained_dir, "TrackingBERT")
    except FileNotFoundError:
        return None  # the pretrained run is gone: the copy is all there is
    if file_digest(current) != record.get("pretrained_sha256"):
        return f"the pretrained checkpoint {current} changed since it was shuffled (trained again?)"
    return None
