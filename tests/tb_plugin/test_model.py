"""TrackingBERT model: shapes, the tied MDM head, padding, parameter counts, learning, LR schedule."""

from __future__ import annotations

import math
from dataclasses import asdict

import lightning
import pytest
import torch

from tb_plugin.model import (
    OptimConfig,
    TrackingBERT,
    TrackingBERTConfig,
    TrackingBERTModule,
    param_groups,
    pretraining_losses,
    warmup_linear_decay,
)

PAD, CLS, SEP, MASK = 0, 2, 3, 4
TINY = dict(vocab_size=50, max_len=19, n_layer=2, n_embd=32, n_head=4, d_ff=64, dropout=0.0)


def tiny_model(**overrides) -> TrackingBERT:
    torch.manual_seed(0)
    return TrackingBERT(TrackingBERTConfig(**{**TINY, **overrides})).eval()


def pair_batch(B: int = 6, vocab: int = 50, seed: int = 0) -> dict[str, torch.Tensor]:
    """`[CLS] A [SEP] B [SEP]` rows with tracks of 4-8 modules, padded to 19; every other module masked."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.full((B, 19), PAD)
    segment_ids = torch.zeros((B, 19), dtype=torch.long)
    mdm_labels = torch.full((B, 19), -100)
    for i in range(B):
        a, b = 4 + i % 5, 8 - i % 5
        mods = torch.randint(5, vocab, (a + b,), generator=g)
        row = torch.cat([torch.tensor([CLS]), mods[:a], torch.tensor([SEP]), mods[a:], torch.tensor([SEP])])
        input_ids[i, : len(row)] = row
        segment_ids[i, a + 2 : len(row)] = 1
        for p in range(1, len(row) - 1, 2):
            if row[p] >= 5:
                mdm_labels[i, p] = row[p]
                input_ids[i, p] = MASK
    return {
        "input_ids": input_ids,
        "segment_ids": segment_ids,
        "attention_mask": input_ids != PAD,
        "mdm_labels": mdm_labels,
        "ntp_labels": (torch.arange(B) % 2).float(),
        "extra_key": torch.zeros(B),  # ignored
    }


def test_forward_shapes_and_encode():
    m, b = tiny_model(), pair_batch()
    mdm, ntp = m(b["input_ids"], b["segment_ids"], b["attention_mask"])
    assert mdm.shape == (6, 19, 50) and ntp.shape == (6,)
    assert m.encode(b["input_ids"], b["segment_ids"], b["attention_mask"]).shape == (6, 19, 32)
    assert m.module_embeddings().shape == (50, 32)
    short = {k: v[:, :12] for k, v in b.items() if v.dim() == 2}  # shorter than max_len is fine
    assert m(short["input_ids"], short["segment_ids"], short["attention_mask"])[0].shape == (6, 12, 50)


def test_too_long_input_raises():
    m = tiny_model(max_len=10)
    ids = torch.full((1, 11), 5)
    with pytest.raises(ValueError, match="max_len"):
        m(ids, torch.zeros_like(ids), torch.ones_like(ids, dtype=torch.bool))


def test_mdm_head_is_tied_to_token_embedding():
    m = tiny_model()
    assert m.mdm_head.decoder.weight is m.embeddings.tok.weight
    assert m.mdm_head.decoder.weight.data_ptr() == m.module_embeddings().data_ptr()
    with torch.no_grad():
        m.embeddings.tok.weight[7].fill_(3.0)
    assert torch.all(m.mdm_head.decoder.weight[7] == 3.0)
    # gradients from the MDM loss reach the table through the decoder as well
    b = pair_batch()
    pretraining_losses(m, b)["loss"].backward()
    assert m.embeddings.tok.weight.grad is not None
    # the tie survives a state_dict round trip
    m2 = tiny_model()
    m2.load_state_dict(m.state_dict())
    assert m2.mdm_head.decoder.weight is m2.embeddings.tok.weight
    assert torch.equal(m2.module_embeddings(), m.module_embeddings())


def test_padding_invariance_and_no_nan():
    m, b = tiny_model(), pair_batch()
    mask = b["attention_mask"]
    assert (~mask).any(), "the batch must have padding for this test to mean anything"
    h1 = m.encode(b["input_ids"], b["segment_ids"], mask)
    ids2, seg2 = b["input_ids"].clone(), b["segment_ids"].clone()
    ids2[~mask] = torch.randint(5, 50, (int((~mask).sum()),))
    seg2[~mask] = 1
    h2 = m.encode(ids2, seg2, mask)
    torch.testing.assert_close(h1[mask], h2[mask])
    assert torch.isfinite(h1).all() and torch.isfinite(h2).all()  # padded query rows too

    all_pad = torch.zeros_like(mask)  # a row with no real token at all
    mdm, ntp = m(b["input_ids"], b["segment_ids"], all_pad)
    assert torch.isfinite(mdm).all() and torch.isfinite(ntp).all()


def test_num_params():
    m = tiny_model()
    assert m.num_params() == sum(p.numel() for p in m.parameters())
    C, V, L, F, S = 32, 50, 19, 64, 2
    per_block = 2 * C + (3 * C * C + 3 * C) + (C * C + C) + 2 * C + (C * F + F) + (F * C + C)
    emb = V * C + L * C + S * C + 2 * C
    heads = (C * C + C) + 2 * C + V + (C * C + C) + (C + 1)  # MDM dense, LN, bias; NTP pool, out
    assert m.num_params() == emb + 2 * per_block + 2 * C + heads  # + final LayerNorm
    assert m.num_params(non_embedding=True) == m.num_params() - (V + L + S) * C


def test_paper_size_is_about_one_million_parameters():
    m = TrackingBERT(TrackingBERTConfig(vocab_size=4009))  # 4004 pixel modules + 5 specials
    encoder = sum(p.numel() for p in m.blocks.parameters())
    assert encoder == 12 * 83_008  # 996,096: "about 1 M parameters in the encoder"
    assert 0.95e6 < m.num_params(non_embedding=True) < 1.1e6  # 1,008,874
    assert m.num_params() == 1_266_794


def test_invalid_config_names_the_field():
    with pytest.raises(ValueError, match="n_embd"):
        TrackingBERTConfig(vocab_size=50, n_embd=30, n_head=8)
    with pytest.raises(ValueError, match="dropout"):
        TrackingBERTConfig(vocab_size=50, dropout=1.0)
    with pytest.raises(ValueError, match="vocab_size"):
        TrackingBERTConfig(vocab_size=0)
    with pytest.raises(ValueError, match="n_layer"):
        TrackingBERTConfig(vocab_size=50, n_layer=-1)
    with pytest.raises(ValueError, match="warmup_steps"):
        OptimConfig(warmup_steps=-5)
    with pytest.raises(ValueError, match="lr"):
        OptimConfig(lr=0.0)
    assert OptimConfig(betas=[0.9, 0.98]).betas == (0.9, 0.98)  # YAML lists are accepted


def test_scored_positions_loss_equals_full_logits_loss():
    m, b = tiny_model(), pair_batch()
    out = pretraining_losses(m, b, ntp_weight=0.5)
    mdm, ntp = m(b["input_ids"], b["segment_ids"], b["attention_mask"])
    full = torch.nn.functional.cross_entropy(mdm.flatten(0, 1), b["mdm_labels"].flatten(), ignore_index=-100)
    torch.testing.assert_close(out["mdm_loss"], full)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(ntp, b["ntp_labels"])
    torch.testing.assert_close(out["loss"], full + 0.5 * bce)
    nothing = {**b, "mdm_labels": torch.full_like(b["mdm_labels"], -100)}
    assert torch.isfinite(pretraining_losses(m, nothing)["loss"])


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_module_step_lowers_the_loss():
    torch.manual_seed(0)
    module = TrackingBERTModule(model=TINY, optim=asdict(OptimConfig(lr=1e-3, warmup_steps=0)))
    assert module.hparams["model"]["n_layer"] == 2 and module.hparams["optim"]["lr"] == 1e-3
    b = pair_batch()
    opt = torch.optim.AdamW(param_groups(module.model, 0.01), lr=1e-3)
    module.train()
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = module.step(b, "train")  # self.log without a Trainer is a no-op
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0]  # 4.60 -> about 3.7 in 30 steps
    assert sum(losses[-5:]) < sum(losses[:5])


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_a_compiled_module_step_gives_the_eager_loss_and_gradients():
    """compile=True (the default on CUDA, `compile_training`) runs the same losses through torch.compile."""
    b = pair_batch()
    grads = []
    for compiled in (False, True):
        torch.manual_seed(0)
        module = TrackingBERTModule(model=TINY, optim=asdict(OptimConfig()), compile=compiled).train()
        loss = module.step(b, "train")
        loss.backward()
        grads.append((loss.detach(), module.model.embeddings.tok.weight.grad.clone()))
    assert module.losses is not pretraining_losses and module.hparams["compile"] is True
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-4, atol=1e-6)


def test_param_groups_decay_only_non_embedding_matrices():
    m = tiny_model()
    decay, no_decay = param_groups(m, 0.01)
    decay_ids = {id(p) for p in decay["params"]}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert id(m.embeddings.tok.weight) not in decay_ids and id(m.embeddings.pos.weight) not in decay_ids
    assert id(m.blocks[0].attn.qkv.weight) in decay_ids
    assert all(p.dim() >= 2 for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(m.parameters()))


def test_warmup_linear_decay():
    f = [warmup_linear_decay(s, 10, 110) for s in range(120)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(f[:9], f[1:10]))  # warm-up rises
    assert f[10] == pytest.approx(1.0) and f[60] == pytest.approx(0.5)
    assert all(a > b for a, b in zip(f[10:109], f[11:110]))  # then decays linearly
    assert f[110] == 0.0 and f[119] == 0.0
    assert warmup_linear_decay(0, 0, 100) == 1.0  # no warm-up
    assert warmup_linear_decay(50, 10, math.inf) == 1.0  # unknown end: flat after warm-up
    assert warmup_linear_decay(5, 10, 10) == pytest.approx(0.6)  # warm-up capped at total


@pytest.mark.filterwarnings("ignore:You defined a `validation_step`", "ignore:`isinstance\\(treespec, LeafSpec\\)`")
def test_configure_optimizers_caps_warmup_at_total_steps():
    lightning = pytest.importorskip("lightning")
    module = TrackingBERTModule(model=TINY, optim=asdict(OptimConfig(lr=1e-3, warmup_steps=10_000)))
    b = pair_batch(B=4)
    loader = torch.utils.data.DataLoader([{k: v[i] for k, v in b.items()} for i in range(4)], batch_size=2)
    trainer = lightning.Trainer(
        max_steps=6,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader)
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert trainer.global_step == 6
    assert sched.get_last_lr()[0] == 0.0  # warm-up capped at 6 steps, then the end of the schedule
    assert torch.isfinite(torch.tensor(trainer.callback_metrics["train/loss"].item()))


def test_bf16_autocast_keeps_loss_in_float32():
    m, b = tiny_model(), pair_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = pretraining_losses(m, b)
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert torch.isfinite(m.embeddings.tok.weight.grad).all()


def test_module_rebuilds_from_its_hparams():
    module = TrackingBERTModule(model=TINY, optim=asdict(OptimConfig()))
    again = TrackingBERTModule(**module.hparams)
    again.load_state_dict(module.state_dict())
    assert again.model.config == module.model.config
    assert again.model.mdm_head.decoder.weight is again.model.embeddings.tok.weight


def _tiny_pretraining_fit(
    monkeypatch, gradient_clip_val: float | None
) -> tuple[lightning.Trainer, torch.optim.Optimizer]:
    """One bf16-mixed step of a tiny TrackingBERT on the CPU, with the optimizer the module configures
    on CUDA (the helper's device check answers as it would there)."""
    from tb_plugin import training

    monkeypatch.setattr(training, "fused_adamw_device", lambda device: True)
    torch.manual_seed(0)
    module = TrackingBERTModule(model=TINY, optim=asdict(OptimConfig(lr=1e-3, warmup_steps=0)))
    b = pair_batch(B=2)
    loader = torch.utils.data.DataLoader([{k: v[i] for k, v in b.items()} for i in range(2)], batch_size=2)
    trainer = lightning.Trainer(
        max_steps=1,
        accelerator="cpu",
        precision="bf16-mixed",
        gradient_clip_val=gradient_clip_val,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader)
    return trainer, trainer.optimizers[0]


@pytest.mark.filterwarnings("ignore:You defined a `validation_step`", "ignore:`isinstance\\(treespec, LeafSpec\\)`")
def test_a_clipping_bf16_mixed_trainer_trains_with_the_optimizer_configured_for_cuda(monkeypatch):
    """Fused AdamW unscales inside its step, so Lightning refuses to clip its gradients under mixed
    precision: the GPU configs (bf16-mixed, gradient_clip_val 1.0) stopped at their first step."""
    trainer, optimizer = _tiny_pretraining_fit(monkeypatch, gradient_clip_val=1.0)
    assert trainer.global_step == 1
    assert not optimizer.defaults["fused"]
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


@pytest.mark.filterwarnings("ignore:You defined a `validation_step`", "ignore:`isinstance\\(treespec, LeafSpec\\)`")
def test_without_clipping_the_cuda_optimizer_stays_fused(monkeypatch):
    trainer, optimizer = _tiny_pretraining_fit(monkeypatch, gradient_clip_val=None)
    assert trainer.global_step == 1
    assert optimizer.defaults["fused"] is True
