import dataclasses
import json
import logging

import numpy as np
import pytest

from tb_plugin.geometry import Detector
from tb_plugin.tokenizer import CLS, MASK, N_SPECIAL, PAD, SEP, UNK, GeometryMismatchError, ModuleTokenizer

PIXEL = (7, 8, 9)


@pytest.fixture(scope="module")
def detector():
    return Detector.builtin()


def test_special_tokens_then_modules_in_sorted_order(detector):
    tok = ModuleTokenizer(detector)
    assert (PAD, UNK, CLS, SEP, MASK) == (0, 1, 2, 3, 4)
    assert tok.vocab_size == N_SPECIAL + 18728
    ids = tok.module_ids()
    keys = list(zip(ids["volume_id"], ids["layer_id"], ids["module_id"]))
    assert keys == sorted(keys)
    assert tok.encode(np.array([0, 1, 18727])).tolist() == [5, 6, 18732]
    assert tok.module_of(np.array([5, 18732, CLS, PAD])).tolist() == [0, 18727, -1, -1]


def test_same_detector_gives_same_ids(detector):
    copy = detector.subset(slice(None))
    rng = np.random.default_rng(0)
    modules = rng.integers(0, len(detector), 1000)
    assert np.array_equal(ModuleTokenizer(detector).encode(modules), ModuleTokenizer(copy).encode(modules))


def test_volume_restriction_and_unknown_modules_are_counted(detector):
    tok = ModuleTokenizer(detector, volumes=PIXEL)
    assert tok.vocab_size == N_SPECIAL + 4004  # the paper's pixel vocabulary
    pixel = np.flatnonzero(detector.volume_mask(PIXEL))
    strip = np.flatnonzero(~detector.volume_mask(PIXEL))
    tokens = tok.encode(np.concatenate([pixel[:3], strip[:2], [-1]]))
    assert tokens.tolist() == [5, 6, 7, UNK, UNK, UNK]
    assert tok.n_unknown == 3
    with pytest.raises(ValueError, match=r"volumes \[99\] are not in the detector"):
        ModuleTokenizer(detector, volumes=[8, 99])


def test_save_load_round_trip_and_geometry_refusal(detector, tmp_path, caplog):
    tok = ModuleTokenizer(detector, volumes=PIXEL)
    path = tmp_path / "vocab.json"
    tok.save(path)
    again = ModuleTokenizer.load(path, detector)
    assert again.volumes == PIXEL and np.array_equal(again.token_to_module, tok.token_to_module)
    assert json.loads(path.read_text())["ids_hash"] == detector.ids_hash()
    # same ids on a moved module: the vocabulary applies (its tokens name the same ids), with a warning
    moved = detector.center.copy()
    moved[0, 2] += 1.0
    other = dataclasses.replace(detector, center=moved)  # __post_init__ rebuilds the derived fields
    assert other.ids_hash() == detector.ids_hash() and other.geometry_hash() != detector.geometry_hash()
    with caplog.at_level(logging.WARNING, logger="tb_plugin.geometry"):
        moved_tok = ModuleTokenizer.load(path, other)
    assert np.array_equal(moved_tok.token_to_module, tok.token_to_module)
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert (
        "vocab.json" in warning and detector.geometry_hash()[:12] in warning and other.geometry_hash()[:12] in warning
    )
    assert "same module ids" in warning
    # other ids: refused
    with pytest.raises(GeometryMismatchError, match=r"vocab\.json was built on detector geometry .*other module ids"):
        ModuleTokenizer.load(path, detector.subset(slice(1, None)))
    # a vocabulary saved before ids hashes were recorded keeps the exact geometry check
    record = json.loads(path.read_text())
    del record["ids_hash"]
    path.write_text(json.dumps(record))
    assert ModuleTokenizer.load(path, detector).volumes == PIXEL
    with pytest.raises(GeometryMismatchError, match=r"no module-ids hash recorded .* but the data uses geometry"):
        ModuleTokenizer.load(path, other)
