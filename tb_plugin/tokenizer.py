"""Detector modules as words: the TrackingBERT vocabulary, built from the geometry, not from data.

Token ids are fixed by the detector alone: special tokens first, then every module of the chosen
volumes in sorted (volume_id, layer_id, module_id) order. The same detector therefore always gives the
same ids (the public TrackingBERT code numbered modules in data order, so its ids changed between
datasets). The vocabulary is saved with the geometry hash and the module-ids hash: a saved vocabulary
or checkpoint is refused on data whose detector has other module ids, and accepted with a warning on a
detector with the same ids but another geometry (a model trained on the built-in detector applied to
the real one; ``geometry.artifact_applies``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tb_plugin.atomic import write_text
from tb_plugin.geometry import Detector, artifact_applies, refusal_reason

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD, UNK, CLS, SEP, MASK = range(len(SPECIAL_TOKENS))
N_SPECIAL = len(SPECIAL_TOKENS)
VOCAB_FORMAT = "tb-plugin module vocabulary v1"


class GeometryMismatchError(ValueError):
    """A vocabulary or checkpoint built on another detector geometry than the data's."""


class VocabularyFileError(ValueError):
    """A vocab.json that is not a vocabulary this package wrote (not JSON, another format, keys missing)."""


class ModuleTokenizer:
    """Maps dense module indices (the feature store's `hit_module_index`) to token ids and back."""

    def __init__(self, detector: Detector, volumes: Sequence[int] | None = None) -> None:
        self.detector = detector
        self.volumes = tuple(sorted(int(v) for v in volumes)) if volumes else None
        known = set(np.unique(detector.volume_id).tolist())
        if self.volumes is not None and not set(self.volumes) <= known:
            unknown = sorted(set(self.volumes) - known)
            raise ValueError(f"volumes {unknown} are not in the detector, which has volumes {sorted(known)}")
        in_vocab = detector.volume_mask(self.volumes) if self.volumes else np.ones(len(detector), bool)
        self.token_to_module = np.flatnonzero(in_vocab).astype(
            np.int64
        )  # [V - N_SPECIAL] module index per module token
        self.module_to_token = np.full(len(detector), UNK, dtype=np.int64)  # [M]
        self.module_to_token[self.token_to_module] = N_SPECIAL + np.arange(len(self.token_to_module))
        self.geometry_hash = detector.geometry_hash()
        self.ids_hash = detector.ids_hash()
        self.n_unknown = 0  # hits mapped to [UNK] so far: counted, reported, never dropped silently

    @property
    def vocab_size(self) -> int:
        return N_SPECIAL + len(self.token_to_module)

    def encode(self, module_index: np.ndarray) -> np.ndarray:
        """Token ids of modules; -1 (unknown module) and modules outside the vocabulary become [UNK]."""
        module_index = np.asarray(module_index, dtype=np.int64)
        valid = (module_index >= 0) & (module_index < len(self.module_to_token))
        tokens = np.full(module_index.shape, UNK, dtype=np.int64)
        tokens[valid] = self.module_to_token[module_index[valid]]
        self.n_unknown += int((tokens == UNK).sum())
        return tokens

    def module_of(self, tokens: np.ndarray) -> np.ndarray:
        """Module index of each token; -1 for special tokens."""
        tokens = np.asarray(tokens, dtype=np.int64)
        out = np.full(tokens.shape, -1, dtype=np.int64)
        is_module = tokens >= N_SPECIAL
        out[is_module] = self.token_to_module[tokens[is_module] - N_SPECIAL]
        return out

    def module_ids(self) -> dict[str, np.ndarray]:
        """(volume_id, layer_id, module_id) of every module token, in token order."""
        d, idx = self.detector, self.token_to_module
        return {"volume_id": d.volume_id[idx], "layer_id": d.layer_id[idx], "module_id": d.module_id[idx]}

    def layer_groups(self) -> np.ndarray:
        """[V] group of every token: one per (volume_id, layer_id) of the vocabulary, numbered in token
        order, -1 for the special tokens. The restricted MDM softmax and count baseline choose a masked
        module among its group: the hit's layer is known from the geometry, only its module is asked."""
        ids = self.module_ids()
        layer_key = ids["volume_id"].astype(np.int64) * 100_000 + ids["layer_id"].astype(np.int64)
        _, group = np.unique(layer_key, return_inverse=True)  # tokens are sorted by volume, layer: groups ascend
        return np.r_[np.full(N_SPECIAL, -1, np.int64), group.reshape(-1).astype(np.int64)]

    def save(self, path: str | Path) -> None:
        ids = self.module_ids()
        record = {
            "format": VOCAB_FORMAT,
            "geometry_hash": self.geometry_hash,
            "ids_hash": self.ids_hash,
            "volumes": list(self.volumes) if self.volumes else None,
            "special_tokens": list(SPECIAL_TOKENS),
            "n_modules": len(self.token_to_module),
            # token id of module k is N_SPECIAL + k
            "modules": np.stack([ids["volume_id"], ids["layer_id"], ids["module_id"]], axis=1).tolist(),
        }
        write_text(path, json.dumps(record) + "\n")

    @classmethod
    def load(cls, path: str | Path, detector: Detector) -> ModuleTokenizer:
        """Rebuild a saved vocabulary on `detector`, refusing it when the module ids differ."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: vocabulary file not found")
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise VocabularyFileError(
                f"{path}: not a vocabulary file ({err}); delete it and run 'tb train' again"
            ) from None
        if not isinstance(record, dict) or record.get("format") != VOCAB_FORMAT or "geometry_hash" not in record:
            raise VocabularyFileError(
                f"{path}: not a tb-plugin vocabulary file (expected format '{VOCAB_FORMAT}'); "
                f"delete it and run 'tb train' again"
            )
        check_geometry(record["geometry_hash"], record.get("ids_hash"), detector, str(path))
        return cls(detector, record.get("volumes"))

    def __repr__(self) -> str:
        volumes = "all" if self.volumes is None else list(self.volumes)
        return f"ModuleTokenizer(vocab_size={self.vocab_size}, volumes={volumes}, geometry={self.geometry_hash[:12]})"


def check_geometry(saved_hash: str, saved_ids_hash: str | None, detector: Detector, source: str) -> None:
    """Refuse a vocabulary whose module ids differ from the data detector's (see artifact_applies)."""
    if not artifact_applies(source, saved_hash, saved_ids_hash, detector):
        ids = refusal_reason(saved_ids_hash)
        raise GeometryMismatchError(
            f"{source} was built on detector geometry {saved_hash[:12]}… ({ids}), but the data uses geometry "
            f"{detector.geometry_hash()[:12]}…: its token ids would point at other modules. Retrain on this "
            f"detector, or point the config's 'detector' at the detectors.csv the checkpoint was trained with."
        )
