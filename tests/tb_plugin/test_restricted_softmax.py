"""The restricted MDM softmax: candidates from the masked module's own layer.

It must contain the true module, equal the full softmax when the candidates are the whole vocabulary,
train, and be scored the same way (with the same restriction for the count baseline) at evaluation."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch

from tb_plugin.geometry import Detector
from tb_plugin.model import CandidateSets, OptimConfig, TrackingBERTModule, pretraining_losses, restricted_mdm
from tb_plugin.pretraining.count_baseline import CountBaseline
from tb_plugin.pretraining.evaluation import TOP_K, restricted_topk
from tb_plugin.tokenizer import N_SPECIAL, ModuleTokenizer
from tests.tb_plugin.test_model import TINY, pair_batch, tiny_model

GROUPS = [-1] * N_SPECIAL + [0] * 10 + [1] * 20 + [2] * 15  # 50 tokens: three "layers" of 10, 20, 15 modules


def test_layer_groups_follow_volume_and_layer_and_skip_special_tokens():
    tokenizer = ModuleTokenizer(Detector.builtin(), volumes=[7, 8, 9])
    groups = tokenizer.layer_groups()
    ids = tokenizer.module_ids()
    assert groups.shape == (tokenizer.vocab_size,) and (groups[:N_SPECIAL] == -1).all()
    key = ids["volume_id"] * 1000 + ids["layer_id"]
    for g in np.unique(groups[N_SPECIAL:]):  # one group is exactly one (volume, layer)
        assert len(np.unique(key[groups[N_SPECIAL:] == g])) == 1
    assert len(np.unique(groups[N_SPECIAL:])) == len(np.unique(key))


def test_candidates_of_every_token_contain_it_at_its_rank():
    tokenizer = ModuleTokenizer(Detector.builtin())
    sets = CandidateSets(tokenizer.layer_groups())
    target = torch.arange(N_SPECIAL, tokenizer.vocab_size)
    seen = 0
    for positions, tokens in sets.per_group(target):
        truth = target[positions]
        assert torch.equal(tokens[sets.rank[truth]], truth)  # the true module is a candidate, at its rank
        assert (sets.group[tokens] == sets.group[truth[0]]).all()  # and every candidate is of its layer
        seen += len(positions)
    assert seen == len(target)
    with pytest.raises(ValueError, match="special token"):
        sets.per_group(torch.tensor([0, 7]))


def test_whole_vocabulary_candidates_equal_the_full_softmax():
    m, b = tiny_model(), pair_batch()
    full = pretraining_losses(m, b, ntp_weight=0.5)
    one_group = CandidateSets([0] * TINY["vocab_size"])  # every token, the special ones too: the full softmax
    restricted = pretraining_losses(m, b, ntp_weight=0.5, candidates=one_group)
    for key in ("loss", "mdm_loss", "mdm_acc", "ntp_loss"):
        torch.testing.assert_close(restricted[key], full[key])


def test_layer_softmax_is_the_full_softmax_over_the_layer_only():
    m, b = tiny_model(), pair_batch()
    h = m.encode(b["input_ids"], b["segment_ids"], b["attention_mask"])
    scored = b["mdm_labels"] != -100
    target = b["mdm_labels"][scored]
    loss, correct = restricted_mdm(m.mdm_head, h[scored], target, CandidateSets(GROUPS))
    logits = m.mdm_head(h[scored])  # [N, V]
    group = torch.tensor(GROUPS)
    outside = group[None, :] != group[target][:, None]  # [N, V] tokens of another layer
    masked = logits.masked_fill(outside, -torch.inf)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(masked, target, reduction="sum"))
    assert correct == (masked.argmax(-1) == target).sum()
    assert loss < torch.nn.functional.cross_entropy(logits, target, reduction="sum")  # fewer rivals


def test_restricted_topk_answers_within_the_layer_and_matches_full_topk_on_the_whole_vocabulary():
    m, b = tiny_model(), pair_batch()
    h = m.encode(b["input_ids"], b["segment_ids"], b["attention_mask"])
    scored = b["mdm_labels"] != -100
    h, target = h[scored], b["mdm_labels"][scored]
    top = restricted_topk(m, h, target, CandidateSets(GROUPS))
    assert top.shape == (len(target), TOP_K)
    assert (np.asarray(GROUPS)[top] == np.asarray(GROUPS)[target.numpy()][:, None]).all()
    whole = restricted_topk(m, h, target, CandidateSets.whole_vocabulary(TINY["vocab_size"], N_SPECIAL))
    logits = m.mdm_head(h)
    logits[:, :N_SPECIAL] = -torch.inf
    assert np.array_equal(whole, logits.topk(TOP_K, dim=-1).indices.numpy())


def test_module_with_layer_candidates_trains_and_refuses_missing_groups():
    loaded = TrackingBERTModule(model=TINY, optim=asdict(OptimConfig()), mdm_candidates="layer")  # as from a checkpoint
    with pytest.raises(ValueError, match="candidate groups"):
        loaded.step(pair_batch(), "train")
    with pytest.raises(ValueError, match="mdm_candidates"):
        TrackingBERTModule(model=TINY, optim=asdict(OptimConfig()), mdm_candidates="sampled")
    torch.manual_seed(0)
    module = TrackingBERTModule(
        model=TINY,
        optim=asdict(OptimConfig(lr=3e-3, warmup_steps=0)),
        mdm_candidates="layer",
        candidates=CandidateSets(GROUPS),
    )
    assert "candidates" not in module.hparams and module.hparams["mdm_candidates"] == "layer"
    optimizer = torch.optim.AdamW(module.parameters(), lr=3e-3)
    b = pair_batch(B=16)
    losses = []
    for _ in range(80):
        out = pretraining_losses(module.model, b, candidates=module.candidates)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(float(out["mdm_loss"].detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_count_baseline_restricted_to_the_layer():
    rng = np.random.default_rng(0)
    groups = np.asarray(GROUPS)
    tracks = [rng.integers(N_SPECIAL, 50, size=rng.integers(4, 8)) for _ in range(300)]
    plain = CountBaseline().fit(tracks)
    one = CountBaseline(token_group=np.where(groups >= 0, 0, -1)).fit(tracks)  # one group: the plain baseline
    left, right = rng.integers(N_SPECIAL, 50, 400), rng.integers(N_SPECIAL, 50, 400)
    assert np.array_equal(
        one.predict_topk(left, right, 5, group=np.zeros(400, np.int64)), plain.predict_topk(left, right, 5)
    )
    layer = CountBaseline(token_group=groups).fit(tracks)
    asked = rng.integers(0, 3, 400)
    top = layer.predict_topk(left, right, 5, group=asked)
    assert (groups[top] == asked[:, None]).all()  # every answer is in the asked layer (each has >= 5 modules)
    # a context seen only with middles of another layer falls through to that layer's counts
    chain = CountBaseline(token_group=groups).fit([np.array([5, 6, 7])] * 5 + [np.array([5, 20, 7])])
    assert chain.predict_topk(np.array([5]), np.array([7]), 1, group=np.array([1]))[0, 0] == 20
    assert chain.predict_topk(np.array([5]), np.array([7]), 1, group=np.array([0]))[0, 0] == 6
    with pytest.raises(ValueError, match="group"):
        layer.predict_topk(left, right, 5)
