import pytest
import torch
from torch_geometric.data import Data

from tb_plugin.event_store import MissingFieldError
from tb_plugin.geometry import Detector
from tb_plugin.injection import ModuleEmbedding
from tb_plugin.tokenizer import N_SPECIAL, UNK, ModuleTokenizer


def tiny_event():
    return Data(hit_module_index=torch.tensor([2, 0, 2, 1]), hit_r=torch.tensor([1.0, 2.0, 3.0, 4.0]), num_nodes=4)


TABLE = torch.tensor([[0.0, 1.0], [10.0, 11.0], [20.0, 21.0]])


def test_looks_up_each_hit_and_keeps_other_fields():
    data = ModuleEmbedding(TABLE)(tiny_event())
    assert data.hit_tb_emb.tolist() == [[20.0, 21.0], [0.0, 1.0], [20.0, 21.0], [10.0, 11.0]]
    assert data.hit_r.tolist() == [1.0, 2.0, 3.0, 4.0]
    assert "hit_tb_emb_0" not in data


def test_flat_columns_are_one_dimensional():
    data = ModuleEmbedding(TABLE, flat_columns=True)(tiny_event())
    assert data.hit_tb_emb_0.tolist() == [20.0, 0.0, 20.0, 10.0]
    assert data.hit_tb_emb_1.shape == (4,)


def test_repr_shows_settings():
    assert repr(ModuleEmbedding(TABLE, flat_columns=True)) == (
        "ModuleEmbedding(modules=3, dim=2, key='hit_tb_emb', index_key='hit_module_index', flat_columns=True)")


def test_errors_name_the_field():
    with pytest.raises(MissingFieldError, match="no field 'hit_module_index'"):
        ModuleEmbedding(TABLE)(Data(hit_r=torch.zeros(2)))
    bad = Data(hit_module_index=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"module indices outside 0\.\.2"):
        ModuleEmbedding(TABLE)(bad)


def test_from_token_embeddings_maps_modules_outside_the_vocabulary_to_unk():
    detector = Detector.builtin()
    tokenizer = ModuleTokenizer(detector, volumes=(8,))
    tokens = torch.randn(tokenizer.vocab_size, 3)
    transform = ModuleEmbedding.from_token_embeddings(tokens, tokenizer)
    first_barrel = int(tokenizer.token_to_module[0])
    assert torch.equal(transform.table[first_barrel], tokens[N_SPECIAL])
    assert torch.equal(transform.table[0], tokens[UNK])  # module 0 is in volume 7, outside the vocabulary
