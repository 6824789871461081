"""Pretraining throughput: TrackingBERT (tb_plugin.model) vs HuggingFace BertForPreTraining.

Both models get the same configuration (vocabulary, hidden 64, 12 layers, 8 heads, intermediate 512,
19 positions, 2 segments, dropout 0.05, exact GELU), the same MLM/MDM + NSP/NTP objective with tied
decoder heads, the same AdamW, and the very same batches, in one process. HF runs its SDPA attention.
A third entry runs TrackingBERT through forward() with MDM logits on every position (as HF does) to
separate the encoder from the scored-positions-only head; a fourth runs the training step with the
restricted softmax (`mdm_candidates: layer`: each masked module among its own layer's modules). A timed step is a full training step: zero_grad, forward, loss, backward, optimizer step. Warm-up
steps are not timed; the models alternate repeat by repeat (short repeats, many of them) so that load
from other processes hits all of them; the median is the headline, the best repeat is printed too.

    .venv/bin/python benchmarks/pretrain_throughput.py --batch-size 256 --steps 4 --repeats 11
    .venv/bin/python benchmarks/pretrain_throughput.py --vocabulary all      # the whole detector, 18,733 tokens
    python3 benchmarks/pretrain_throughput.py --device cuda --precision bf16-mixed   # on a GPU

`--precision bf16-mixed` runs every model's forward and loss under torch.autocast(bfloat16), as Lightning's
bf16-mixed does for the pretraining stage (configs/tracking_bert/paper.yaml); weights and AdamW stay fp32.

Prints one JSON object; a pair of tracks counts as 2 tracks.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from tb_plugin.geometry import Detector
from tb_plugin.model import CandidateSets, TrackingBERT, TrackingBERTConfig, param_groups, pretraining_losses
from tb_plugin.tokenizer import ModuleTokenizer

PAD, UNK, CLS, SEP, MASK, N_SPECIAL = 0, 1, 2, 3, 4, 5
MAX_LEN, MIN_HITS, MAX_HITS = 19, 4, 8


def make_batch(B: int, vocab: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Realistic random pairs `[CLS] A [SEP] B [SEP]` with tracks of 4-8 modules: about half of the
    rows are full (both tracks 8 hits), the rest are padded; 50 % of module tokens are scored, with
    BERT's 80/10/10 [MASK]/random/unchanged replacement."""
    full = torch.rand(B, generator=gen) < 0.5
    len_a = torch.where(full, MAX_HITS, torch.randint(MIN_HITS, MAX_HITS + 1, (B,), generator=gen))
    len_b = torch.where(full, MAX_HITS, torch.randint(MIN_HITS, MAX_HITS, (B,), generator=gen))
    input_ids = torch.full((B, MAX_LEN), PAD, dtype=torch.long)
    segment_ids = torch.zeros((B, MAX_LEN), dtype=torch.long)
    is_module = torch.zeros((B, MAX_LEN), dtype=torch.bool)
    modules = torch.randint(N_SPECIAL, vocab, (B, 2 * MAX_HITS), generator=gen)
    for i in range(B):
        a, b = int(len_a[i]), int(len_b[i])
        row = [CLS, *modules[i, :a].tolist(), SEP, *modules[i, MAX_HITS : MAX_HITS + b].tolist(), SEP]
        input_ids[i, : len(row)] = torch.tensor(row)
        segment_ids[i, a + 2 : len(row)] = 1
        is_module[i, 1 : a + 1] = True
        is_module[i, a + 2 : a + 2 + b] = True
    attention_mask = input_ids != PAD
    scored = is_module & (torch.rand(B, MAX_LEN, generator=gen) < 0.5)
    mdm_labels = torch.where(scored, input_ids, torch.full_like(input_ids, -100))
    u = torch.rand(B, MAX_LEN, generator=gen)
    masked = input_ids.clone()
    masked[scored & (u < 0.8)] = MASK
    rand_pos = scored & (u >= 0.8) & (u < 0.9)
    masked[rand_pos] = torch.randint(N_SPECIAL, vocab, (int(rand_pos.sum()),), generator=gen)
    return {
        "input_ids": masked,
        "segment_ids": segment_ids,
        "attention_mask": attention_mask,
        "mdm_labels": mdm_labels,
        "ntp_labels": (torch.rand(B, generator=gen) < 0.5).float(),
    }


def build_hf(vocab: int, device: torch.device):
    from transformers import BertConfig, BertForPreTraining

    config = BertConfig(
        vocab_size=vocab,
        hidden_size=64,
        num_hidden_layers=12,
        num_attention_heads=8,
        intermediate_size=512,
        hidden_act="gelu",
        hidden_dropout_prob=0.05,
        attention_probs_dropout_prob=0.05,
        max_position_embeddings=MAX_LEN,
        type_vocab_size=2,
        pad_token_id=PAD,
        tie_word_embeddings=True,
    )
    config._attn_implementation = "sdpa"
    model = BertForPreTraining(config).to(device)
    if model.config._attn_implementation != "sdpa":
        raise RuntimeError(f"HF BERT did not take SDPA attention: {model.config._attn_implementation}")
    if model.cls.predictions.decoder.weight is not model.bert.embeddings.word_embeddings.weight:
        raise RuntimeError("HF BERT decoder is not tied to the word embeddings")
    return model


def hf_loss(model, batch: dict) -> torch.Tensor:
    """BertForPreTraining's own loss: MLM cross-entropy over the full [B, L, V] logits + 2-class NSP."""
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"].long(),
        token_type_ids=batch["segment_ids"],
        labels=batch["mdm_labels"],
        next_sentence_label=batch["ntp_labels"].long(),
    )
    return out.loss


def ours_loss(model, batch: dict) -> torch.Tensor:
    """The training loss as TrackingBERTModule.step computes it (MDM head on scored positions only)."""
    return pretraining_losses(model, batch)["loss"]


def layer_loss(candidates: CandidateSets):
    """The training loss with mdm_candidates: layer (each masked module's softmax over its layer)."""

    def loss(model, batch: dict) -> torch.Tensor:
        return pretraining_losses(model, batch, candidates=candidates)["loss"]

    return loss


def ours_full_logits_loss(model, batch: dict) -> torch.Tensor:
    """The same loss through forward(): MDM logits on all [B, L] positions, as HF computes them. Shows how
    much of the gap is the encoder and how much is the head on scored positions only."""
    mdm_logits, ntp_logits = model(batch["input_ids"], batch["segment_ids"], batch["attention_mask"])
    mdm = F.cross_entropy(mdm_logits.flatten(0, 1).float(), batch["mdm_labels"].flatten(), ignore_index=-100)
    return mdm + F.binary_cross_entropy_with_logits(ntp_logits.float(), batch["ntp_labels"])


def train_steps(model, opt, loss_fn, batches, n: int, device: torch.device, bf16: bool = False) -> float:
    """Seconds for n full training steps; `bf16`: forward and loss under bfloat16 autocast (bf16-mixed)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(n):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model, batches[i % len(batches)])
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    if not torch.isfinite(loss):
        raise RuntimeError("non-finite loss during the benchmark")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-size", type=int, default=256, help="pairs per batch (2 tracks each)")
    ap.add_argument("--steps", type=int, default=4, help="timed training steps per repeat")
    ap.add_argument("--repeats", type=int, default=11, help="timed repeats per model; the median is reported")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per model before timing")
    ap.add_argument("--n-batches", type=int, default=4, help="distinct batches cycled through")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument(
        "--precision", default="32-true", choices=["32-true", "bf16-mixed"], help="bf16-mixed: bfloat16 autocast"
    )
    ap.add_argument(
        "--vocabulary",
        default="pixel",
        choices=["pixel", "all"],
        help="the built-in detector's pixel volumes (4,009 tokens) or every module (18,733)",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bf16 = args.precision == "bf16-mixed"
    tokenizer = ModuleTokenizer(Detector.builtin(), [7, 8, 9] if args.vocabulary == "pixel" else None)
    args.vocab = tokenizer.vocab_size
    candidates = CandidateSets(tokenizer.layer_groups()).to(device)
    gen = torch.Generator().manual_seed(args.seed)
    batches = [
        {k: v.to(device) for k, v in make_batch(args.batch_size, args.vocab, gen).items()}
        for _ in range(args.n_batches)
    ]

    models = {}
    for name in ("trackingbert", "trackingbert_full_logits", "trackingbert_layer"):
        torch.manual_seed(args.seed)  # the same initialisation for all three
        models[name] = TrackingBERT(TrackingBERTConfig(vocab_size=args.vocab, max_len=MAX_LEN)).to(device).train()
    ours = models["trackingbert"]
    hf = build_hf(args.vocab, device).train()
    fused = device.type == "cuda"
    opt_kw = dict(lr=1e-4, betas=(0.9, 0.999), fused=fused)
    opts = {
        "trackingbert": torch.optim.AdamW(param_groups(ours, 0.01), **opt_kw),
        "trackingbert_full_logits": torch.optim.AdamW(param_groups(models["trackingbert_full_logits"], 0.01), **opt_kw),
        "trackingbert_layer": torch.optim.AdamW(param_groups(models["trackingbert_layer"], 0.01), **opt_kw),
        "hf_bert": torch.optim.AdamW(param_groups(hf, 0.01), **opt_kw),
    }
    runs = {
        "trackingbert": (ours, ours_loss),
        "trackingbert_full_logits": (models["trackingbert_full_logits"], ours_full_logits_loss),
        "trackingbert_layer": (models["trackingbert_layer"], layer_loss(candidates)),
        "hf_bert": (hf, hf_loss),
    }

    for name, (model, loss_fn) in runs.items():
        train_steps(model, opts[name], loss_fn, batches, args.warmup, device, bf16)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, (model, loss_fn) in runs.items():
            seconds[name].append(train_steps(model, opts[name], loss_fn, batches, args.steps, device, bf16))

    tracks = 2 * args.batch_size * args.steps
    result = {
        "benchmark": "pretrain_throughput",
        "unit": "tracks/s (forward+backward+AdamW step; a pair = 2 tracks)",
        "device": args.device,
        "precision": args.precision,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "vocab": args.vocab,
        "layer_groups": len(candidates),
        "padded_rows": float(sum((~b["attention_mask"]).any(1).float().mean().item() for b in batches) / len(batches)),
        "params": {"trackingbert": ours.num_params(), "hf_bert": sum(p.numel() for p in hf.parameters())},
    }
    for name, secs in seconds.items():
        result[name] = {
            "tracks_per_s_median": round(tracks / statistics.median(secs), 1),
            "tracks_per_s_best": round(tracks / min(secs), 1),
            "tracks_per_s_all": [round(tracks / s, 1) for s in secs],
        }
    hf_rate = result["hf_bert"]["tracks_per_s_median"]
    result["ratio_ours_over_hf"] = round(result["trackingbert"]["tracks_per_s_median"] / hf_rate, 3)
    result["ratio_best_ours_over_hf"] = round(
        result["trackingbert"]["tracks_per_s_best"] / result["hf_bert"]["tracks_per_s_best"], 3
    )
    result["ratio_layer_over_hf"] = round(result["trackingbert_layer"]["tracks_per_s_median"] / hf_rate, 3)
    result["ratio_layer_over_all"] = round(
        result["trackingbert_layer"]["tracks_per_s_median"] / result["trackingbert"]["tracks_per_s_median"], 3
    )
    result["ratio_full_logits_over_hf"] = round(result["trackingbert_full_logits"]["tracks_per_s_median"] / hf_rate, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
