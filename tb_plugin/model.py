"""TrackingBERT: a small BERT encoder whose words are detector modules (Huang et al., arXiv 2402.10239).

Built up from the smallest piece, nanoGPT style: the config, the embeddings, one attention layer, one
MLP, one block, the two pretraining heads, the full model, and at the end a thin LightningModule that
owns the optimiser and the losses. The input is a pair of tracks, `[CLS] A [SEP] B [SEP]`, padded to
`max_len` with [PAD]; `attention_mask` is True on real tokens.

Blocks are pre-LN (LayerNorm before attention and before the MLP, one more LayerNorm after the last
block). The paper's BERT is post-LN; pre-LN keeps the 12-layer stack trainable with a plain linear
warm-up and is what most current encoders use. Everything else follows the paper: embedding 64,
8 heads, feed-forward 512, 12 layers, dropout 0.05, MDM head tied to the token embedding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import lightning
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tb_plugin.training import adamw

IGNORE_INDEX = -100  # mdm_labels value of positions that are not scored (torch's cross-entropy default)


# ----------------------------------------------------------------------------------------------------
# Config


@dataclass
class TrackingBERTConfig:
    vocab_size: int  # special tokens [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4, then modules
    max_len: int = 19  # [CLS] A(8) [SEP] B(8) [SEP]
    n_segments: int = 2
    n_embd: int = 64  # paper defaults from here on
    n_head: int = 8
    n_layer: int = 12
    d_ff: int = 512
    dropout: float = 0.05

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_len", "n_segments", "n_embd", "n_head", "n_layer", "d_ff"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"TrackingBERTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"TrackingBERTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"TrackingBERTConfig.dropout must be in [0, 1), got {self.dropout!r}")


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 10000
    betas: tuple[float, float] = (0.9, 0.999)
    ntp_weight: float = 1.0  # total loss = mdm_loss + ntp_weight * ntp_loss

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # YAML gives a list
        if not self.lr > 0:
            raise ValueError(f"key 'lr' must be > 0, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"key 'weight_decay' must be >= 0, got {self.weight_decay!r}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"key 'warmup_steps' must be an integer >= 0, got {self.warmup_steps!r}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"key 'betas' must be two numbers in [0, 1), got {self.betas!r}")
        if self.ntp_weight < 0:
            raise ValueError(f"key 'ntp_weight' must be >= 0, got {self.ntp_weight!r}")


# ----------------------------------------------------------------------------------------------------
# Encoder pieces


class Embeddings(nn.Module):
    """Token + learned position + segment, then LayerNorm and dropout, as in BERT. The three are added,
    not concatenated, so the token table alone is the per-module vector that gets exported."""

    def __init__(self, config: TrackingBERTConfig) -> None:
        super().__init__()
        self.tok = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos = nn.Embedding(config.max_len, config.n_embd)
        self.seg = nn.Embedding(config.n_segments, config.n_embd)
        self.ln = nn.LayerNorm(config.n_embd)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, input_ids: Tensor, segment_ids: Tensor) -> Tensor:
        L = input_ids.shape[1]
        pos = torch.arange(L, device=input_ids.device)  # [L]
        x = self.tok(input_ids) + self.pos(pos) + self.seg(segment_ids)  # [B, L, C]
        return self.drop(self.ln(x))  # [B, L, C]


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection (one matmul instead of three) and
    torch's scaled_dot_product_attention, which picks a fused kernel where one fits."""

    def __init__(self, config: TrackingBERTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.dropout = config.dropout
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        B, L, C = x.shape
        H = self.n_head
        qkv = self.qkv(x).view(B, L, 3, H, C // H)  # [B, L, 3, H, D]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, H, L, D]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_mask, dropout_p=self.dropout if self.training else 0.0
        )  # [B, H, L, D]
        y = y.transpose(1, 2).reshape(B, L, C)  # [B, L, C]
        return self.resid_drop(self.proj(y))  # [B, L, C]


class MLP(nn.Module):
    def __init__(self, config: TrackingBERTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, config.d_ff)
        self.act = nn.GELU()  # exact erf GELU, as BERT
        self.proj = nn.Linear(config.d_ff, config.n_embd)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.proj(self.act(self.fc(x))))  # [B, L, C]


class Block(nn.Module):
    """Pre-LN transformer block: the residual stream is never normalised, which keeps gradients to the
    first layers well scaled in a 12-layer stack."""

    def __init__(self, config: TrackingBERTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = SelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x), key_mask)  # [B, L, C]
        x = x + self.mlp(self.ln_2(x))  # [B, L, C]
        return x


# ----------------------------------------------------------------------------------------------------
# Pretraining heads


class MDMHead(nn.Module):
    """Masked detector modules: Dense + GELU + LayerNorm, then the similarity with every module's
    embedding. The decoder weight IS the token-embedding table (tied in TrackingBERT.__init__), so the
    task shapes exactly the table that is exported; only the per-module bias is the head's own."""

    def __init__(self, config: TrackingBERTConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.n_embd, config.n_embd)
        self.act = nn.GELU()
        self.ln = nn.LayerNorm(config.n_embd)
        self.decoder = nn.Linear(config.n_embd, config.vocab_size)  # weight tied to Embeddings.tok

    def transform(self, h: Tensor) -> Tensor:
        return self.ln(self.act(self.dense(h)))  # [..., C]

    def forward(self, h: Tensor) -> Tensor:
        return self.decoder(self.transform(h))  # [..., V]

    def logits_over(self, z: Tensor, tokens: Tensor) -> Tensor:
        """Logits of the transformed states z [n, C] over the given tokens [S] only: [n, S]."""
        return z @ self.decoder.weight[tokens].T + self.decoder.bias[tokens]  # [n, S]


class NTPHead(nn.Module):
    """Next-track momentum: one logit from the [CLS] state, BERT-pooler style (Dense + tanh)."""

    def __init__(self, config: TrackingBERTConfig) -> None:
        super().__init__()
        self.pool = nn.Linear(config.n_embd, config.n_embd)
        self.out = nn.Linear(config.n_embd, 1)

    def forward(self, h_cls: Tensor) -> Tensor:
        return self.out(torch.tanh(self.pool(h_cls))).squeeze(-1)  # [B]


# ----------------------------------------------------------------------------------------------------
# Restricted MDM softmax

MDM_CANDIDATES = ("all", "layer")  # the tracking_bert stage's key mdm_candidates


class CandidateSets:
    """The tokens that may answer a masked position: those of the masked module's own group.

    Why: the tied decoder scores every module, n_embd x V multiply-adds and a softmax over V per masked
    position; at the whole detector's 18.7 k modules that is several times the cost of a small encoder.
    The masked hit's (volume, layer) is known wherever the model is used (the hit has a position; only
    its module is hidden), so a softmax over that layer's modules asks the same question at a fraction
    of the cost. Groups are given per token (`ModuleTokenizer.layer_groups`); -1 marks tokens that never
    answer (the special tokens). With a single group of every module token it is the full softmax."""

    def __init__(self, token_group: Tensor | list[int]) -> None:
        group = torch.as_tensor(token_group, dtype=torch.long)  # [V]
        answers = torch.nonzero(group >= 0).squeeze(1)  # [T]
        self.tokens = answers[torch.argsort(group[answers], stable=True)]  # [T] token ids, grouped
        sizes = torch.bincount(group[answers], minlength=int(group.max()) + 1 if len(answers) else 0)  # [G]
        self.start = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)])  # [G + 1] group g: tokens[start[g]:start[g+1]]
        self.rank = torch.full_like(group, -1)  # [V] index of each token within its group's candidates
        self.rank[self.tokens] = torch.arange(len(self.tokens)) - self.start[group[self.tokens]]
        self.group = group  # [V]

    @classmethod
    def whole_vocabulary(cls, vocab_size: int, n_special: int) -> CandidateSets:
        """One group of every module token: the full softmax (special tokens excluded)."""
        return cls([-1] * n_special + [0] * (vocab_size - n_special))

    def to(self, device: torch.device) -> CandidateSets:
        if self.group.device != device:
            for name in ("tokens", "start", "rank", "group"):
                setattr(self, name, getattr(self, name).to(device))
        return self

    def __len__(self) -> int:
        return len(self.start) - 1

    def per_group(self, target: Tensor) -> list[tuple[Tensor, Tensor]]:
        """(positions [n], candidate tokens [S]) of every group among the targets [N]."""
        group = self.group[target]  # [N]
        if (group < 0).any():
            raise ValueError("a masked target is a token with no candidate group (a special token)")
        start = self.start.tolist()
        return [
            (torch.nonzero(group == g).squeeze(1), self.tokens[start[g] : start[g + 1]])
            for g in torch.unique(group).tolist()
        ]


def restricted_mdm(head: MDMHead, h: Tensor, target: Tensor, candidates: CandidateSets) -> tuple[Tensor, Tensor]:
    """(summed cross-entropy, number of correct top-1) of the scored states h [N, C] against their
    targets [N], each softmax over the target's group only. One matmul per group: the layers differ in
    size, and padding them to the largest would cost more than the loop."""
    z = head.transform(h)  # [N, C]
    loss = z.new_zeros((), dtype=torch.float32)
    correct = z.new_zeros((), dtype=torch.float32)
    for positions, tokens in candidates.per_group(target):
        logits = head.logits_over(z[positions], tokens).float()  # [n, S]
        local = candidates.rank[target[positions]]  # [n] the answer's index among the candidates
        loss = loss + F.cross_entropy(logits, local, reduction="sum")
        correct = correct + (logits.detach().argmax(-1) == local).float().sum()
    return loss, correct


# ----------------------------------------------------------------------------------------------------
# The model


class TrackingBERT(nn.Module):
    def __init__(self, config: TrackingBERTConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)  # pre-LN leaves the last block's output unnormalised
        self.mdm_head = MDMHead(config)
        self.ntp_head = NTPHead(config)
        self.apply(self._init_weights)
        self.mdm_head.decoder.weight = self.embeddings.tok.weight  # the tie: one Parameter, two users

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """BERT's init: small normal weights keep the 12 residual additions from blowing up at start."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def encode(self, input_ids: Tensor, segment_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Final hidden states. Padding is a key mask only: padded queries still attend to the real
        keys (finite, ignored outputs), so no softmax row is ever all -inf and no NaN can appear."""
        B, L = input_ids.shape
        if self.config.max_len < L:
            raise ValueError(f"input_ids has length {L} > TrackingBERTConfig.max_len ({self.config.max_len})")
        mask = attention_mask.bool()  # [B, L]
        # A row with no real token at all would mask every key; let such a row see everything instead.
        mask = mask | ~mask.any(dim=1, keepdim=True)  # [B, L]
        key_mask = mask[:, None, None, :]  # [B, 1, 1, L] broadcast over heads and queries
        x = self.embeddings(input_ids, segment_ids)  # [B, L, C]
        for block in self.blocks:
            x = block(x, key_mask)  # [B, L, C]
        return self.ln_f(x)  # [B, L, C]

    def forward(self, input_ids: Tensor, segment_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encode(input_ids, segment_ids, attention_mask)  # [B, L, C]
        mdm_logits = self.mdm_head(h)  # [B, L, V]
        ntp_logits = self.ntp_head(h[:, 0])  # [B]
        return mdm_logits, ntp_logits

    def module_embeddings(self) -> Tensor:
        """The token-embedding table [V, C] (rows 0-4 are the special tokens): what gets exported. It is
        the live Parameter, shared with the MDM decoder: detach() to export, copy_() under no_grad to inject."""
        return self.embeddings.tok.weight

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count, the tied table counted once. non_embedding=True leaves out the token,
        position and segment tables, so the figure is the encoder + heads, independent of the vocabulary
        except for the MDM output bias (one number per token)."""
        n = sum(p.numel() for p in self.parameters())  # parameters() de-duplicates the tied weight
        if non_embedding:
            n -= sum(e.weight.numel() for e in (self.embeddings.tok, self.embeddings.pos, self.embeddings.seg))
        return n


# ----------------------------------------------------------------------------------------------------
# Training


def warmup_linear_decay(step: int, warmup: int, total: int | float | None) -> float:
    """LR factor: linear warm-up from 1/warmup to 1 over `warmup` steps, then linear decay to 0 at
    `total`. A missing or infinite total (no known end of training) keeps the factor at 1 after warm-up."""
    if step < warmup:
        return (step + 1) / warmup
    if total is None or not math.isfinite(total):
        return 1.0
    if step >= total:
        return 0.0
    return (total - step) / (total - warmup)


def pretraining_losses(
    model: TrackingBERT, batch: dict, ntp_weight: float = 1.0, candidates: CandidateSets | None = None
) -> dict[str, Tensor]:
    """MDM + NTP losses and accuracies of one batch, outside Lightning so a benchmark or a notebook runs
    the very same code as training. The MDM head runs on the scored positions only: the loss equals the
    one from the full [B, L, V] logits at a fraction of the cost (the vocabulary projection dominates).
    With `candidates`, each masked position's softmax runs over its group only (`restricted_mdm`)."""
    h = model.encode(batch["input_ids"], batch["segment_ids"], batch["attention_mask"])  # [B, L, C]
    labels = batch["mdm_labels"]  # [B, L]
    scored = labels != IGNORE_INDEX  # [B, L]
    target = labels[scored]  # [N]
    n_scored = max(target.numel(), 1)  # a batch with nothing masked gives loss 0, not NaN
    if candidates is None:
        mdm_logits = model.mdm_head(h[scored]).float()  # [N, V] loss math in float32 under bf16 autocast
        mdm_loss = F.cross_entropy(mdm_logits, target, reduction="sum") / n_scored
        with torch.no_grad():
            mdm_correct = (mdm_logits.argmax(-1) == target).float().sum()
    else:
        loss_sum, mdm_correct = restricted_mdm(model.mdm_head, h[scored], target, candidates.to(h.device))
        mdm_loss = loss_sum / n_scored
    ntp_logits = model.ntp_head(h[:, 0]).float()  # [B]
    ntp_labels = batch["ntp_labels"].float()  # [B]
    ntp_loss = F.binary_cross_entropy_with_logits(ntp_logits, ntp_labels)
    with torch.no_grad():
        mdm_acc = mdm_correct / n_scored
        ntp_acc = ((ntp_logits > 0) == (ntp_labels > 0.5)).float().mean()
    return {
        "loss": mdm_loss + ntp_weight * ntp_loss,
        "mdm_loss": mdm_loss,
        "ntp_loss": ntp_loss,
        "mdm_acc": mdm_acc,
        "ntp_acc": ntp_acc,
    }


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups that decay only matrices that are not embeddings: decaying the module table would
    pull rarely hit modules towards zero only because they are rare; biases and LayerNorms stay free."""
    embedding_ids = {id(mod.weight) for mod in model.modules() if isinstance(mod, nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():  # de-duplicated: the tied table appears once
        if p.requires_grad:
            (decay if p.dim() >= 2 and id(p) not in embedding_ids else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class TrackingBERTModule(lightning.LightningModule):
    """Losses, metrics and the optimiser around TrackingBERT. The hyperparameters are plain dicts so that
    a checkpoint loads without this file's dataclasses being importable under the same names."""

    def __init__(
        self,
        model: dict,
        optim: dict,
        compile: bool = False,
        mdm_candidates: str = "all",
        candidates: CandidateSets | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["candidates"])  # the groups come from the vocabulary, not the checkpoint
        self.model = TrackingBERT(TrackingBERTConfig(**model))
        self.optim = OptimConfig(**optim)
        if mdm_candidates not in MDM_CANDIDATES:
            raise ValueError(f"mdm_candidates must be one of {MDM_CANDIDATES}, got {mdm_candidates!r}")
        # A checkpoint loaded for inference has no groups (they come from the vocabulary); training needs them.
        self.candidates = candidates if mdm_candidates == "layer" else None
        # torch.compile of the whole loss (encoder, heads, losses): on a GPU a model this small is bound by
        # kernel launches, which fusing removes. Shapes vary with the batch's longest pair: dynamic.
        self.losses = torch.compile(pretraining_losses, dynamic=True) if compile else pretraining_losses

    def forward(self, input_ids: Tensor, segment_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        return self.model(input_ids, segment_ids, attention_mask)

    def step(self, batch: dict, split: str) -> Tensor:
        """The one step of training, validation and test: losses, then logging."""
        if self.hparams["mdm_candidates"] == "layer" and self.candidates is None:
            raise ValueError("mdm_candidates: layer needs the candidate groups (CandidateSets of the vocabulary)")
        out = self.losses(self.model, batch, self.optim.ntp_weight, self.candidates)
        B = batch["input_ids"].shape[0]
        sync = split != "train"  # epoch-level val/test figures must be averaged over DDP ranks
        self.log(f"{split}/loss", out["loss"], prog_bar=True, batch_size=B, sync_dist=sync)
        for name in ("mdm_loss", "ntp_loss", "mdm_acc", "ntp_acc"):
            self.log(f"{split}/{name}", out[name], batch_size=B, sync_dist=sync)
        return out["loss"]

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self.step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self.step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self.step(batch, "test")

    def configure_optimizers(self):
        o = self.optim
        groups = param_groups(self.model, o.weight_decay)
        optimizer = adamw(self, groups, lr=o.lr, betas=o.betas)
        total = self.trainer.estimated_stepping_batches
        warmup = int(min(o.warmup_steps, total)) if math.isfinite(total) else o.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_linear_decay(step, warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
