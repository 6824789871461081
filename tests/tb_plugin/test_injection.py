import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from tb_plugin.event_store import MissingFieldError
from tb_plugin.geometry import Detector
from tb_plugin.injection import ModuleEmbedding, fit_table
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
        "ModuleEmbedding(modules=3, dim=2, normalize='none', pca_dim=None, key='hit_tb_emb', "
        "index_key='hit_module_index', flat_columns=True)"
    )
    fitted = ModuleEmbedding.from_table(TABLE, np.ones(3, bool), normalize="standard", dim=1)
    assert repr(fitted) == (
        "ModuleEmbedding(modules=3, dim=1, normalize='standard', pca_dim=1, key='hit_tb_emb', "
        "index_key='hit_module_index', flat_columns=False)"
    )


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


# ------------------------------------------------------------------ normalize / dim, fitted once


def token_table(seed=0, width=6):
    """A vocabulary of volume 8 (4 modules outside it per in-vocab one) and a token table whose
    dimensions have very different scales and are correlated, with a far-off [UNK] row."""
    tokenizer = ModuleTokenizer(Detector.builtin(), volumes=(8,))
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(tokenizer.vocab_size, width, generator=g) @ torch.randn(width, width, generator=g)
    tokens = tokens * torch.logspace(-2, 1, width) + torch.arange(width)
    tokens[UNK] = 1000.0  # would skew every statistic if the rows outside the vocabulary counted
    return tokens, tokenizer


def in_vocab_rows(transform, tokenizer):
    return transform.table[torch.from_numpy(tokenizer.module_to_token != UNK)].double()


def test_defaults_reproduce_the_raw_table_bit_for_bit():
    tokens, tokenizer = token_table()
    old = tokens.detach()[torch.from_numpy(tokenizer.module_to_token)].float()  # what injection did before the options
    for transform in (
        ModuleEmbedding.from_token_embeddings(tokens, tokenizer),
        ModuleEmbedding.from_token_embeddings(tokens, tokenizer, normalize="none", dim=None),
    ):
        assert transform.table.dtype == torch.float32 and torch.equal(transform.table, old)
    event = Data(hit_module_index=torch.tensor([0, 5, int(tokenizer.token_to_module[3])]))
    assert torch.equal(
        ModuleEmbedding.from_token_embeddings(tokens, tokenizer)(event).hit_tb_emb, old[event.hit_module_index]
    )


def test_standard_gives_mean_0_std_1_over_the_vocabulary():
    tokens, tokenizer = token_table()
    tokens[:, 2] = 0.25  # no spread: stays 0, also on the [UNK] row
    transform = ModuleEmbedding.from_token_embeddings(tokens, tokenizer, normalize="standard")
    rows = in_vocab_rows(transform, tokenizer)
    assert transform.dim == 6
    assert torch.allclose(rows.mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(
        rows.std(0, unbiased=False), torch.tensor([1.0, 1, 0, 1, 1, 1], dtype=torch.float64), atol=1e-5
    )
    assert torch.all(transform.table[:, 2] == 0)
    # the [UNK] row goes through the same affine map; modules outside the vocabulary keep sharing it
    outside = transform.table[torch.from_numpy(tokenizer.module_to_token == UNK)]
    assert torch.all(outside == outside[0]) and outside[0, 0] > 10


def test_pca_keeps_k_uncorrelated_columns_by_decreasing_variance():
    tokens, tokenizer = token_table()
    for normalize in ("none", "standard"):
        transform = ModuleEmbedding.from_token_embeddings(tokens, tokenizer, normalize=normalize, dim=3)
        assert transform.table.shape == (len(tokenizer.module_to_token), 3) and transform.dim == 3
        rows = in_vocab_rows(transform, tokenizer)
        centred = rows - rows.mean(0)
        cov = centred.T @ centred / len(rows)  # [3, 3]
        var = cov.diagonal()
        assert torch.all(var[:-1] > var[1:])
        off = cov - torch.diag(var)
        assert off.abs().max() < 1e-5 * var.max()
        again = ModuleEmbedding.from_token_embeddings(tokens.clone(), tokenizer, normalize=normalize, dim=3)
        assert torch.equal(transform.table, again.table)  # deterministic, signs included
        event = Data(hit_module_index=torch.tensor([0, int(tokenizer.token_to_module[0])]))
        assert transform(event).hit_tb_emb.shape == (2, 3)


def test_pca_sign_convention_makes_the_largest_loading_positive():
    tokens, tokenizer = token_table()
    table = tokens[torch.from_numpy(tokenizer.module_to_token)]
    in_vocab = tokenizer.module_to_token != UNK
    centre = table[torch.from_numpy(in_vocab)].double().mean(0).float()
    # rows outside the vocabulary do not enter the fit: centre + e_i maps to the loadings of the i-th input dimension
    probes = torch.cat([table, centre + torch.eye(6)])
    out = fit_table(probes, np.r_[in_vocab, np.zeros(6, bool)], dim=4)
    assert torch.equal(out[:-6], fit_table(table, in_vocab, dim=4))
    loadings = out[-6:].double()  # [6 inputs, 4 components]
    assert torch.allclose(loadings.T @ loadings, torch.eye(4, dtype=torch.float64), atol=1e-4)  # orthonormal
    peak = loadings.abs().argmax(0)
    assert torch.all(loadings[peak, torch.arange(4)] > 0)
    # a table whose only spread lies along -e1 gives +e1: the loadings, not the data, fix the sign
    line = torch.zeros(10, 3)
    line[:, 1] = -torch.arange(10.0)
    assert torch.allclose(fit_table(line, np.ones(10, bool), dim=1)[:, 0], line[:, 1] + 4.5, atol=1e-6)


def test_pca_with_all_dimensions_preserves_pairwise_distances():
    tokens, tokenizer = token_table(width=5)
    raw = ModuleEmbedding.from_token_embeddings(tokens, tokenizer)
    rotated = ModuleEmbedding.from_token_embeddings(tokens, tokenizer, dim=5)
    pick = torch.from_numpy(np.r_[0, tokenizer.token_to_module[:200]])  # the [UNK] row and 200 in-vocab modules
    a, b = raw.table[pick].double(), rotated.table[pick].double()
    assert torch.allclose(torch.cdist(a, a), torch.cdist(b, b), rtol=1e-4, atol=1e-3)


def test_pca_reaches_the_full_width_with_fewer_rows_than_dimensions():
    table = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    out = fit_table(table, np.array([True, True, True, False, True, False]), dim=8)
    assert out.shape == (6, 8)
    assert torch.allclose(
        torch.cdist(out.double(), out.double()), torch.cdist(table.double(), table.double()), atol=1e-4
    )


@pytest.mark.parametrize(
    "options, pattern",
    [
        ({"dim": 0}, r"key 'dim' must be null or an integer from 1 to the table width = 2, got 0"),
        ({"dim": 3}, r"key 'dim' .* got 3"),
        ({"normalize": "zscore"}, r"key 'normalize' has value 'zscore'. Allowed: none, standard"),
    ],
)
def test_bad_options_name_the_key(options, pattern):
    with pytest.raises(ValueError, match=pattern) as err:
        ModuleEmbedding.from_table(TABLE, np.ones(3, bool), **options)
    assert "\n" not in str(err.value)


def test_a_reference_table_fixes_the_coordinates():
    """fit_table(..., reference=R): fitted on R, applied to the table, so a row moved by fine-tuning moves
    alone, where a refit on the moved table shifts every row."""
    generator = torch.Generator().manual_seed(3)
    reference = torch.randn(12, 6, generator=generator)
    moved = reference.clone()
    moved[4] += 3.0
    in_vocab = np.ones(12, bool)
    before = fit_table(reference, in_vocab, "standard", 3)
    after = fit_table(moved, in_vocab, "standard", 3, reference=reference)
    assert torch.allclose(after[[0, 1, 2, 3, 5, 6]], before[[0, 1, 2, 3, 5, 6]], atol=1e-6)
    assert not torch.allclose(after[4], before[4], atol=0.1)
    assert not torch.allclose(fit_table(moved, in_vocab, "standard", 3)[0], before[0], atol=1e-3)
    assert torch.equal(fit_table(reference, in_vocab, "standard", 3, reference=reference), before)
    with pytest.raises(ValueError, match="reference table has shape"):
        fit_table(moved, in_vocab, "standard", 3, reference=reference[:5])
