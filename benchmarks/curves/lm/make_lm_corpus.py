"""Build a labelled corpus of REAL language-model training loss curves for scoring rebound detectors.

    python benchmarks/curves/lm/make_lm_corpus.py              # every curve (~16 min on 2 free cores)
    python benchmarks/curves/lm/make_lm_corpus.py --only NAME  # one curve (the others are kept)
    python benchmarks/curves/lm/make_lm_corpus.py --plots      # also redraw plots/NAME.png
    python benchmarks/curves/lm/make_lm_corpus.py --no-train --plots   # check/plot the CSVs already written
    python benchmarks/curves/lm/make_lm_corpus.py --report     # the README tables
    python benchmarks/curves/lm/make_lm_corpus.py --probe NAME:STEP    # labelling helper

Every curve is the per-step training loss of an actual training of a small decoder-only
transformer (pre-norm, learned position embeddings, context 64, 4 heads) on a token stream made
here from an order-2 Markov chain over 64 tokens, with AdamW and next-token cross-entropy. Some
runs are healthy; some destabilise by themselves (a learning rate too high); some are disturbed
at a known step (the LR multiplied from a step on, as a resumed job with a wrong LR would be, or
the training stream switched to a harder chain, as a data pipeline switching shards would).

The labels are NOT computed: they are the hand-written LABELS table below, written after looking
at each curve's plot (see README.md for the rule). The script only checks that the recorded
curves still show what the table says (the rise at each onset is there, healthy curves have none)
and stops with an AssertionError when one does not.

Output, next to this file: NAME.csv (`step,train_loss,val_loss`, steps from 1, val_loss empty
except where a validation pass ran), labels.json, and with --plots one PNG per curve in plots/.

Everything is deterministic: fixed seeds, and one torch thread per training (the trainings run
two at a time in a multiprocessing Pool), so the same machine and torch give the same bytes.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------------------------------------
# The recipes. Each one is a training configuration plus, for caused rebounds, what is done when.
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    name: str                  # FAMILY_...: the family (text before the first "_") is the kind of recipe
    setup: str                 # one line: what was done (what happened is in LABELS, written after viewing)
    lr: float                  # peak LR (after warm-up)
    batch: int                 # sequences of CTX tokens per step
    steps: int                 # steps to run (a run whose loss turns non-finite stops 100 steps later)
    seed: int                  # model init and minibatch order
    d: int = 64                # d_model
    layers: int = 2
    beta2: float = 0.99
    clip: float | None = 1.0   # max global grad norm; None: no clipping
    schedule: str = "const"    # "const" (warm-up then constant) | "wcos" (warm-up then cosine to 10%)
                               # | "exp" (ExponentialLR: x0.1 every 1000 steps after warm-up)
    warmup: int = 0            # linear warm-up steps (0: the peak LR from step 1)
    tie: bool = True           # output head shares the token embedding
    lr_events: tuple[tuple[int, float], ...] = ()     # (first step, LR factor to the end)
    mix: tuple[int, int, float] | None = None         # (first step, ramp steps, alpha): harder chain's share of
                                                      # the sequences rises 0 -> 1 over the ramp (0: at once)
    data_seed: int = 0         # which chain (same chain for every curve unless changed)


CURVES: list[Recipe] = [
    # ---- base: sensible LR, warm-up + cosine or constant (expected healthy) ----
    Recipe("base_wcos_b16", "warm-up 200 + cosine, peak 3e-3", 3e-3, 16, 3000, 1, warmup=200, schedule="wcos"),
    Recipe("base_wcos_b8_d96_b95", "warm-up 300 + cosine, peak 2e-3", 2e-3, 8, 3000, 2, d=96, warmup=300,
           schedule="wcos", beta2=0.95),
    Recipe("base_wcos_b32_b999", "warm-up 200 + cosine, peak 6e-3", 6e-3, 32, 2000, 3, warmup=200, schedule="wcos",
           beta2=0.999),
    Recipe("base_const_b16", "constant LR 1e-3 from step 1", 1e-3, 16, 3000, 4),
    Recipe("base_const_b8_l3_untied", "warm-up 100, then constant 3e-3", 3e-3, 8, 3000, 5, layers=3, warmup=100,
           tie=False),
    Recipe("base_const_b16_lr1e-2_b999", "constant LR 1e-2 from step 1, no clipping", 1e-2, 16, 3000, 8,
           beta2=0.999, clip=None),
    # ---- tiny: batch 2-4 at a sensible LR (expected healthy, large per-step noise) ----
    Recipe("tiny_b2", "batch 2, warm-up 100, constant 1e-3", 1e-3, 2, 3000, 6, warmup=100),
    Recipe("tiny_b4_wcos_b95", "batch 4, warm-up 200 + cosine, peak 2e-3", 2e-3, 4, 3000, 7, warmup=200,
           schedule="wcos", beta2=0.95),
    Recipe("tiny_b3_b999", "batch 3, constant 5e-4 from step 1", 5e-4, 3, 3000, 9, beta2=0.999),
    Recipe("tiny_b2_noclip", "batch 2, warm-up 200, constant 3e-3, no clipping", 3e-3, 2, 3000, 10, warmup=200,
           clip=None),
    # ---- hot: HIGH constant LR (5e-2..9e-2) after a 300-step warm-up, or 2e-2 from step 1, no clipping ----
    Recipe("hot_b16_lr6e-2_s51", "warm-up 300, then constant 6e-2", 6e-2, 16, 2500, 51, warmup=300, clip=None),
    Recipe("hot_b16_lr5e-2_b999_s62", "warm-up 300, then constant 5e-2", 5e-2, 16, 2500, 62, warmup=300, clip=None,
           beta2=0.999),
    Recipe("hot_b16_lr6e-2_s63", "warm-up 300, then constant 6e-2", 6e-2, 16, 2500, 63, warmup=300, clip=None),
    Recipe("hot_b16_lr55e-3_b999_s64", "warm-up 300, then constant 5.5e-2", 5.5e-2, 16, 2500, 64, warmup=300,
           clip=None, beta2=0.999),
    Recipe("hot_b16_lr7e-2_s32", "warm-up 300, then constant 7e-2", 7e-2, 16, 2500, 32, warmup=300, clip=None),
    Recipe("hot_b16_lr5e-2_s61", "warm-up 300, then constant 5e-2", 5e-2, 16, 2500, 61, warmup=300, clip=None),
    Recipe("hot_b16_lr7e-2_b95_s53", "warm-up 300, then constant 7e-2", 7e-2, 16, 2500, 53, warmup=300, clip=None,
           beta2=0.95),
    Recipe("hot_b8_lr7e-2_s54", "warm-up 300, then constant 7e-2", 7e-2, 8, 2500, 54, warmup=300, clip=None),
    Recipe("hot_b8_lr9e-2_b999_s55", "warm-up 300, then constant 9e-2", 9e-2, 8, 2500, 55, warmup=300, clip=None,
           beta2=0.999),
    Recipe("hot_b8_lr5e-2_s36", "warm-up 300, then constant 5e-2", 5e-2, 8, 2500, 36, warmup=300, clip=None),
    Recipe("hot_b16_lr2e-2_b95_nowarm_s21", "constant 2e-2 from step 1", 2e-2, 16, 3000, 21, clip=None, beta2=0.95),
    Recipe("hot_b16_lr6e-2_s81", "warm-up 300, then constant 6e-2", 6e-2, 16, 2000, 81, warmup=300, clip=None),
    Recipe("hot_b16_lr5e-2_b999_s82", "warm-up 300, then constant 5e-2", 5e-2, 16, 2000, 82, warmup=300, clip=None,
           beta2=0.999),
    Recipe("hot_b16_lr6e-2_b999_s83", "warm-up 300, then constant 6e-2", 6e-2, 16, 2000, 83, warmup=300, clip=None,
           beta2=0.999),
    Recipe("warm_b16_w400_lr1e-1", "warm-up 400 to 1e-1, then constant", 1e-1, 16, 2000, 5, warmup=400, clip=None),
    Recipe("warm_b16_w1500_lr8e-2", "warm-up 1500 to 8e-2, then constant", 8e-2, 16, 2500, 5, warmup=1500,
           clip=None),
    Recipe("warm_b16_w1500_lr15e-2", "warm-up 1500 to 1.5e-1, then constant", 1.5e-1, 16, 2500, 5, warmup=1500,
           clip=None),
    Recipe("warm_b16_w2000_lr1e-1_b999", "warm-up 2000 to 1e-1, then constant", 1e-1, 16, 2500, 7, warmup=2000,
           clip=None, beta2=0.999),
    Recipe("warm_b16_w3000_lr8e-2_b999", "warm-up 3000 to 8e-2, then constant", 8e-2, 16, 3500, 5, warmup=3000,
           clip=None, beta2=0.999),
    # ---- switch: the training stream switches at once to a harder chain (a data pipeline changing shards) ----
    Recipe("switch_b16_a06", "constant 3e-3; from step 1500 all sequences from a harder chain (alpha 0.6)",
           3e-3, 16, 2500, 72, warmup=200, mix=(1500, 0, 0.6)),
    Recipe("switch_b8_a06", "constant 3e-3; from step 1800 all sequences from a harder chain (alpha 0.6)",
           3e-3, 8, 2500, 42, warmup=200, mix=(1800, 0, 0.6)),
    Recipe("switch_b8_a07", "constant 3e-3; from step 1900 all sequences from a harder chain (alpha 0.7)",
           3e-3, 8, 3000, 47, warmup=200, mix=(1900, 0, 0.7)),
    Recipe("switch_b4_a05", "batch 4, constant 1.5e-3; from step 2000 all sequences from a harder chain (alpha 0.5)",
           1.5e-3, 4, 3000, 75, warmup=200, mix=(2000, 0, 0.5)),
    Recipe("switch_b8_d96_l3_wcos_a065", "warm-up 300 + cosine 3e-3; from step 1800 a harder chain (alpha 0.65)",
           3e-3, 8, 3000, 48, d=96, layers=3, warmup=300, schedule="wcos", mix=(1800, 0, 0.65)),
    Recipe("switch_b16_b95_a07", "constant 2e-3; from step 2000 all sequences from a harder chain (alpha 0.7)",
           2e-3, 16, 3000, 49, warmup=200, beta2=0.95, mix=(2000, 0, 0.7)),
    # ---- ramp: the harder chain's share rises 0 -> 100% over 150-300 steps (a data mixture ramped in) ----
    Recipe("ramp_b16_wcos_a05_r200", "warm-up + cosine 4e-3; harder chain (alpha 0.5) ramped in over steps 1500-1700",
           4e-3, 16, 2500, 71, warmup=200, schedule="wcos", mix=(1500, 200, 0.5)),
    Recipe("ramp_b8_a06_r300", "constant 3e-3; harder chain (alpha 0.6) ramped in over steps 1900-2200",
           3e-3, 8, 3000, 76, warmup=200, mix=(1900, 300, 0.6)),
    Recipe("ramp_b8_a07_r300", "constant 3e-3; harder chain (alpha 0.7) ramped in over steps 1800-2100",
           3e-3, 8, 2500, 43, warmup=200, mix=(1800, 300, 0.7)),
    Recipe("ramp_b8_a05_r150", "constant 3e-3; harder chain (alpha 0.5) ramped in over steps 1700-1850",
           3e-3, 8, 3000, 77, warmup=200, mix=(1700, 150, 0.5)),
    Recipe("ramp_b12_a05_r250", "constant 3e-3; harder chain (alpha 0.5) ramped in over steps 1800-2050",
           3e-3, 12, 2800, 91, warmup=200, mix=(1800, 250, 0.5)),
    Recipe("ramp_b16_d96_b999_a055_r200", "constant 2e-3; harder chain (alpha 0.55) ramped in over steps 1600-1800",
           2e-3, 16, 2500, 79, d=96, warmup=200, beta2=0.999, mix=(1600, 200, 0.55)),
    # ---- lrjump: the LR multiplied from a step on (a resumed job with a wrong LR) ----
    Recipe("lrjump_b8_x10", "constant 3e-3; LR x10 from step 1800", 3e-3, 8, 2500, 44, warmup=200,
           lr_events=((1800, 10.0),)),
    Recipe("lrjump_b16_x5", "constant 5e-3; LR x5 from step 1500", 5e-3, 16, 2500, 45, warmup=200,
           lr_events=((1500, 5.0),)),
    Recipe("lrjump_b16_b95_x10", "constant 3e-3; LR x10 from step 1600", 3e-3, 16, 2500, 85, warmup=200,
           beta2=0.95, lr_events=((1600, 10.0),)),
    Recipe("lrjump_b4_x8", "batch 4, constant 1.5e-3; LR x8 from step 2000", 1.5e-3, 4, 3000, 86, warmup=200,
           lr_events=((2000, 8.0),)),
    Recipe("lrjump_b8_noclip_x20", "constant 2e-3, no clipping; LR x20 from step 1700", 2e-3, 8, 2500, 87,
           warmup=200, clip=None, lr_events=((1700, 20.0),)),
    # ---- twice: two caused events several hundred steps apart ----
    Recipe("twice_b16_switch_lrx5", "constant 3e-3; harder chain (alpha 0.7) from 1300; LR x5 from 2200",
           3e-3, 16, 3000, 74, warmup=200, mix=(1300, 0, 0.7), lr_events=((2200, 5.0),)),
    Recipe("twice_b8_lrx10_x10", "constant 3e-3; LR x10 from 1300 and x10 again from 2300", 3e-3, 8, 2900, 88,
           warmup=200, lr_events=((1300, 10.0), (2300, 10.0))),
    Recipe("twice_b8_ramp_lrx10", "constant 3e-3; harder chain (alpha 0.6) ramped in over 1300-1500; LR x10 from 2300",
           3e-3, 8, 3000, 89, warmup=200, mix=(1300, 200, 0.6), lr_events=((2300, 10.0),)),
    Recipe("twice_b4_switch_lrx8", "batch 4, constant 1.5e-3; harder chain (alpha 0.5) from 1500; LR x8 from 2400",
           1.5e-3, 4, 3000, 90, warmup=200, mix=(1500, 0, 0.5), lr_events=((2400, 8.0),)),
    # ---- blowup: a very high LR from step 1, no warm-up, no clipping, beta2 0.999 ----
    Recipe("blowup_b8_lr05_exp", "LR 0.5 from step 1, ExponentialLR x0.1 per 1000 steps", 0.5, 8, 2000, 46,
           schedule="exp", beta2=0.999, clip=None),
    Recipe("blowup_b8_lr03_untied_exp", "LR 0.3 from step 1, ExponentialLR x0.1 per 1000 steps", 0.3, 8, 2500, 65,
           schedule="exp", beta2=0.999, clip=None, tie=False),
    Recipe("blowup_b8_d96_lr02_untied_exp", "LR 0.2 from step 1, ExponentialLR x0.1 per 1000 steps", 0.2, 8, 2500,
           66, d=96, schedule="exp", beta2=0.999, clip=None, tie=False),
    Recipe("blowup_b16_lr05", "constant LR 0.5 from step 1", 0.5, 16, 2000, 3, beta2=0.999, clip=None),
    Recipe("blowup_b16_lr05_untied", "constant LR 0.5 from step 1", 0.5, 16, 2000, 3, beta2=0.999, clip=None,
           tie=False),
    Recipe("blowup_b16_d128_lr01_untied", "constant LR 0.1 from step 1", 0.1, 16, 2000, 3, d=128, beta2=0.999,
           clip=None, tie=False),
]


# ---------------------------------------------------------------------------------------------
# Data: an order-2 Markov chain over 64 tokens, and streams sampled from it.
# ---------------------------------------------------------------------------------------------

V, CTX = 64, 64              # vocabulary, context length
ALPHA, PAIR_JITTER = 1.0, 0.3   # the chain every run starts on (entropy ~2.68 nats / token)
TRAIN_CHAINS, TRAIN_LEN = 256, 4096     # ~1M training tokens (a fresh window is drawn each time)
WINDOW = torch.arange(CTX + 1)
VAL_SEQS = 128               # held-out: 128 sequences of CTX+1 tokens from independent chain runs


def markov_chain(g: torch.Generator, alpha: float, pair_jitter: float) -> torch.Tensor:
    """P(next c | a, b) as a (V*V, V) matrix, row a*V+b, with a Zipf-like prior:

        log p(c | a, b) = -alpha * log rank_b(c) + 1.5 * n_a(c) + pair_jitter * n_ab(c) + const

    Each previous token b ranks the 64 next tokens at random (Zipf over ranks); the token before
    it, a, shifts every row by its own Gaussian log-weights n_a (so a model gains by attending two
    back), and each (a, b) pair adds a little noise of its own. Entropy ~2.68 nats/token (the
    bigram part alone ~3.54, uniform 4.16). The same generator seed with a smaller alpha or larger
    pair_jitter gives a harder chain with the same structure (used for the data switch).
    """
    ranks = torch.argsort(torch.rand(V, V, generator=g), dim=1).float() + 1      # [b, c]
    n_a = torch.randn(V, V, generator=g)                                        # [a, c]
    n_ab = torch.randn(V, V, V, generator=g)                                    # [a, b, c]
    logits = -alpha * ranks.log()[None] + 1.5 * n_a[:, None] + pair_jitter * n_ab
    return torch.softmax(logits, -1).reshape(V * V, V)


def chain_entropy(p: torch.Tensor) -> float:
    return -(p * p.clamp_min(1e-30).log()).sum(1).mean().item()


def sample_stream(g: torch.Generator, p: torch.Tensor, n: int, length: int) -> torch.Tensor:
    """n independent runs of the chain, `length` tokens each (first two tokens uniform)."""
    cdf = p.cumsum(1)
    cdf[:, -1] = 1.0
    out = torch.empty(n, length, dtype=torch.long)
    out[:, :2] = torch.randint(V, (n, 2), generator=g)
    for t in range(2, length):
        rows = cdf[out[:, t - 2] * V + out[:, t - 1]]
        u = torch.rand(n, 1, generator=g)
        out[:, t] = torch.searchsorted(rows, u).squeeze(1).clamp_max(V - 1)
    return out


def make_data(r: Recipe) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(train stream, harder train stream for a mix recipe or None, validation sequences)."""
    chain = markov_chain(torch.Generator().manual_seed(r.data_seed), ALPHA, PAIR_JITTER)
    g = torch.Generator().manual_seed(1000 + r.data_seed)
    train = sample_stream(g, chain, TRAIN_CHAINS, TRAIN_LEN)
    val = sample_stream(g, chain, VAL_SEQS, CTX + 1)
    hard = None
    if r.mix:
        harder = markov_chain(torch.Generator().manual_seed(r.data_seed), r.mix[2], PAIR_JITTER)
        hard = sample_stream(torch.Generator().manual_seed(2000 + r.data_seed), harder, TRAIN_CHAINS, TRAIN_LEN)
    return train, hard, val


def hard_share(r: Recipe, step: int) -> float:
    """The harder chain's share of the training sequences at this step (0 without a mix)."""
    if not r.mix or step < r.mix[0]:
        return 0.0
    start, ramp, _ = r.mix
    return 1.0 if ramp == 0 else min(1.0, (step - start + 1) / ramp)


# ---------------------------------------------------------------------------------------------
# The model: a small decoder-only transformer.
# ---------------------------------------------------------------------------------------------

class Block(nn.Module):
    """Pre-norm block: x + attn(ln(x)), then x + mlp(ln(x)); causal attention, 4 heads, MLP 4d GELU."""

    def __init__(self, d: int, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class TinyLM(nn.Module):
    """Token + learned position embeddings, `layers` blocks, final LayerNorm, linear head (GPT-2 init)."""

    def __init__(self, d: int, layers: int, tie: bool) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(V, d), nn.Embedding(CTX, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, V, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        for blk in self.blocks:       # residual projections scaled down by depth, as GPT-2 does
            nn.init.normal_(blk.proj.weight, std=0.02 / math.sqrt(2 * layers))
            nn.init.normal_(blk.out.weight, std=0.02 / math.sqrt(2 * layers))
        if tie:
            self.head.weight = self.tok.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.tok(tokens) + self.pos.weight[: tokens.shape[1]]
        for blk in self.blocks:
            h = blk(h)
        return self.head(self.ln(h))


def describe_model(r: Recipe) -> str:
    """The labels.json "model" line."""
    sched = f"warm-up {r.warmup} then " if r.warmup else "no warm-up, "
    sched += {"wcos": "cosine to 10%", "exp": "ExponentialLR x0.1 per 1000 steps", "const": "constant"}[r.schedule]
    clip = f"clip {r.clip:g}" if r.clip else "no clipping"
    return (f"{r.layers} layers, d={r.d}, 4 heads, context {CTX}, {'tied' if r.tie else 'untied'} head; "
            f"AdamW (0.9, {r.beta2}) wd 0.1, peak LR {r.lr:g}, {sched}; batch {r.batch}; {clip}")


# ---------------------------------------------------------------------------------------------
# The learning rate at each step, set by hand on the param group before the step.
# ---------------------------------------------------------------------------------------------

def lr_at(r: Recipe, step: int) -> float:
    if r.warmup and step <= r.warmup:
        factor = step / r.warmup
    elif r.schedule == "exp":
        factor = 0.1 ** ((step - r.warmup) / 1000)
    elif r.schedule == "wcos":
        progress = (step - r.warmup) / (r.steps - r.warmup)
        factor = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
    else:
        factor = 1.0
    for start, mult in r.lr_events:
        if step >= start:
            factor *= mult
    return r.lr * factor


# ---------------------------------------------------------------------------------------------
# One training run -> rows of (step, train_loss, val_loss or None).
# ---------------------------------------------------------------------------------------------

Row = tuple[int, float, float | None]


def lm_loss(model: nn.Module, seqs: torch.Tensor) -> torch.Tensor:
    logits = model(seqs[:, :-1])
    return F.cross_entropy(logits.reshape(-1, V), seqs[:, 1:].reshape(-1))


@torch.no_grad()
def validate(model: nn.Module, val: torch.Tensor) -> float:
    model.eval()
    loss = lm_loss(model, val).item()
    model.train()
    return loss


def train(r: Recipe) -> tuple[Recipe, list[Row], float]:
    torch.set_num_threads(1)      # two trainings share two cores; also keeps results reproducible
    train_stream, hard, val = make_data(r)
    torch.manual_seed(r.seed)
    model = TinyLM(r.d, r.layers, r.tie)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=r.lr, betas=(0.9, r.beta2))
    g = torch.Generator().manual_seed(r.seed)      # minibatch order
    t0 = time.perf_counter()
    rows: list[Row] = []
    first_nonfinite: int | None = None
    for step in range(1, r.steps + 1):
        for group in opt.param_groups:
            group["lr"] = lr_at(r, step)
        chain_idx = torch.randint(TRAIN_CHAINS, (r.batch, 1), generator=g)
        offset = torch.randint(TRAIN_LEN - CTX, (r.batch, 1), generator=g)
        seqs = train_stream[chain_idx, offset + WINDOW]          # batch windows of CTX+1 tokens
        if hard is not None:              # each sequence comes from the harder stream with prob hard_share
            use_hard = torch.rand(r.batch, generator=g) < hard_share(r, step)
            seqs = torch.where(use_hard[:, None], hard[chain_idx, offset + WINDOW], seqs)
        loss = lm_loss(model, seqs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if r.clip:
            nn.utils.clip_grad_norm_(model.parameters(), r.clip)
        opt.step()
        value = loss.item()
        val_loss = validate(model, val) if step % 100 == 0 else None
        rows.append((step, value, val_loss))
        # A run whose loss turns non-finite is kept going 100 more steps (NaN rows), then stopped.
        if first_nonfinite is None and not math.isfinite(value):
            first_nonfinite = step
        if first_nonfinite is not None and step >= first_nonfinite + 100:
            break
    return r, rows, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# The labels: written by hand after looking at plots/NAME.png (see README.md for the rule).
# name: (onsets, kinds, what happened). An empty onset list means healthy.
# ---------------------------------------------------------------------------------------------

LABELS: dict[str, tuple[list[int], list[str], str]] = {
    # base / tiny: no rise anywhere (tiny batches: large per-step noise, the median wanders +-3%)
    "base_wcos_b16": ([], [], "healthy; bigram plateau ~3.55, drop at ~550 when attention learns the token 2 back"),
    "base_wcos_b8_d96_b95": ([], [], "healthy; plateau then drop at ~750, slow decline to ~2.75"),
    "base_wcos_b32_b999": ([], [], "healthy; drop at ~300, slow decline to ~2.7"),
    "base_const_b16": ([], [], "healthy; plateau then drop at ~850"),
    "base_const_b8_l3_untied": ([], [], "healthy; plateau then drop at ~950"),
    "base_const_b16_lr1e-2_b999": ([], [], "healthy at a fairly high LR; drop at ~650"),
    "tiny_b2": ([], [], "healthy, very noisy; never leaves the bigram plateau (~3.5)"),
    "tiny_b4_wcos_b95": ([], [], "healthy, noisy; slow steady decline"),
    "tiny_b3_b999": ([], [], "healthy, very noisy; slow decline"),
    "tiny_b2_noclip": ([], [], "healthy, very noisy; slow decline"),
    # hot: the loss settles on the bigram plateau (~3.6); some runs later jump to ~4.12 (a uniform
    # guess) and stay there (level_shift), some have spikes, some stay healthy
    "hot_b16_lr6e-2_s51": ([538], ["level_shift"], "settled at ~3.58, jumped to ~4.12 at 538 by itself and stayed"),
    "hot_b16_lr5e-2_b999_s62": ([752], ["level_shift"], "settled at ~3.58, jumped to ~4.12 at 752 and stayed"),
    "hot_b16_lr6e-2_s63": ([523], ["level_shift"], "settled at ~3.60, jumped to ~4.08 at 523 and stayed"),
    "hot_b16_lr55e-3_b999_s64": ([533], ["level_shift"], "settled at ~3.59, jumped to ~4.11 at 533 and stayed"),
    "hot_b16_lr7e-2_s32": ([425, 829], ["spike", "level_shift"],
                           "spike to ~4.1 at 425 (back by ~500), then jump to ~4.12 at 829 that stays"),
    "hot_b16_lr5e-2_s61": ([2010], ["spike"], "healthy at ~3.56 except one spike to ~4.1 at 2010 (back by ~2070)"),
    "hot_b16_lr7e-2_b95_s53": ([], [], "healthy: noisy plateau at ~3.6, no rise"),
    "hot_b8_lr7e-2_s54": ([732, 1535, 1858, 2259], ["spike", "spike", "spike", "spike"],
                          "plateau ~3.64 with four spikes that come back, growing: x1.05, 1.09, 1.11, 1.13"),
    "hot_b8_lr9e-2_b999_s55": ([251, 1919], ["step", "spike"],
                               "jump 3.7 -> 4.15 at 251 (during warm-up) that stays; spike to ~20 at 1919, "
                               "back by ~2020"),
    "hot_b8_lr5e-2_s36": ([], [], "healthy: noisy plateau at ~3.61, no rise"),
    "hot_b16_lr2e-2_b95_nowarm_s21": ([], [], "healthy: slow decline 4.1 -> 3.25 without the usual drop"),
    "hot_b16_lr6e-2_s81": ([534, 878, 1303], ["spike", "spike", "level_shift"],
                           "small spike at 534, spike to ~4.1 at 878, then jump to ~4.15 at 1303 that stays"),
    "hot_b16_lr5e-2_b999_s82": ([738], ["level_shift"], "settled at ~3.57, jumped to ~4.15 at 738 and stayed"),
    "hot_b16_lr6e-2_b999_s83": ([520], ["level_shift"], "settled at ~3.59, jumped to ~4.13 at 520 and stayed"),
    # warm: the loss bottoms out while the LR still rises, then jumps up for good (step; level_shift
    # when it happened after the warm-up had ended), with spikes
    "warm_b16_w400_lr1e-1": ([284], ["step"], "bottomed at ~3.6, jumped to ~4.12 at 284 (LR 7e-2) and stayed"),
    "warm_b16_w1500_lr8e-2": ([1211, 1548], ["spike", "level_shift"],
                              "spike to ~3.9 at 1211 (back by ~1260); jump to ~4.1 at 1548 (48 steps after the "
                              "warm-up ended, at constant LR) that stays"),
    "warm_b16_w1500_lr15e-2": ([770], ["step"], "plateau ~3.59, jumped to ~4.13 at 770 (LR 7.7e-2) and stayed"),
    "warm_b16_w2000_lr1e-1_b999": ([1090, 1819], ["step", "spike"],
                                   "jump 3.56 -> 4.13 at 1090 that stays; spike to ~35 at 1819, back by ~1920"),
    "warm_b16_w3000_lr8e-2_b999": ([2396, 2914], ["step", "spike"],
                                   "low state ~3.0 (drifting up ~3% while the LR rises), jump to ~4.15 at 2396 "
                                   "that stays; spike to ~10 at 2914, back by ~2980"),
    # switch: the loss steps up at the switch step (the data is harder from that step on)
    "switch_b16_a06": ([1500], ["step"], "step 2.84 -> 3.17 at the switch, stays"),
    "switch_b8_a06": ([1800], ["step"], "step 2.89 -> 3.2 at the switch, stays"),
    "switch_b8_a07": ([1900], ["step"], "step 2.9 -> 3.12 at the switch, stays"),
    "switch_b4_a05": ([2000], ["spike"], "jump 3.2 -> 3.55 at the switch (loss was still falling), back to ~3.3 by "
                                         "~2300 (within 1.05x of the level before by +300)"),
    "switch_b8_d96_l3_wcos_a065": ([1800], ["step"], "step 2.8 -> 3.07 at the switch, stays"),
    "switch_b16_b95_a07": ([2000], ["step"], "step 2.82 -> 3.08 at the switch, stays"),
    # ramp: the loss climbs over the ramp from the cause step and stays at the higher level
    "ramp_b16_wcos_a05_r200": ([1500], ["climb"], "climb 2.8 -> 3.17 over ~200 steps from 1500, stays"),
    "ramp_b8_a06_r300": ([1900], ["climb"], "climb 2.9 -> 3.18 over ~300 steps from 1900, stays"),
    "ramp_b8_a07_r300": ([1800], ["climb"], "climb 2.88 -> 3.13 over ~300 steps from 1800, stays"),
    "ramp_b8_a05_r150": ([1700], ["climb"], "climb 2.9 -> 3.24 over ~150 steps from 1700, stays"),
    "ramp_b12_a05_r250": ([1800], ["climb"], "climb 2.85 -> 3.22 over ~250 steps from 1800, stays"),
    "ramp_b16_d96_b999_a055_r200": ([1600], ["climb"], "climb 2.8 -> 3.14 over ~200 steps from 1600, stays"),
    # lrjump: a sharp rise at the LR change; it stays (step) or decays back within 1.05x (spike)
    "lrjump_b8_x10": ([1800], ["step"], "jump 2.9 -> 3.8, decays to ~3.07 (still 1.06x at +600)"),
    "lrjump_b16_x5": ([1500], ["spike"], "jump 2.84 -> 3.25, decays back to ~2.93 (1.03x) by +600"),
    "lrjump_b16_b95_x10": ([1600], ["spike"], "jump 2.84 -> 3.5, decays back to ~2.93 (1.03x) by +600"),
    "lrjump_b4_x8": ([2000], ["spike"], "jump 3.08 -> 3.8, decays back to ~3.1 by +600"),
    "lrjump_b8_noclip_x20": ([1700], ["step"], "jump 2.91 -> 4.12 (uniform guess), stays"),
    # twice: two caused events
    "twice_b16_switch_lrx5": ([1300, 2200], ["step", "spike"],
                              "step 2.85 -> 3.08 at the switch; jump to 3.35 at the LR change, back to ~3.13 (1.02x)"),
    "twice_b8_lrx10_x10": ([1300, 2300], ["spike", "step"],
                           "jump 2.97 -> 3.75, back to ~3.07 (1.03x) by +600; then spike to ~7 and ~4.2 for good"),
    "twice_b8_ramp_lrx10": ([1300, 2300], ["climb", "step"],
                            "climb 2.95 -> 3.2 over the ramp; jump to ~4.0 at the LR change, settles ~3.6"),
    "twice_b4_switch_lrx8": ([1500, 2400], ["spike", "spike"],
                             "jump 3.5 -> 4.05 at the switch, holds ~300 steps, falls to ~3.4 (the model learns "
                             "more); jump to 3.85 at the LR change, back to ~3.45"),
    # blowup: within 20 steps the loss is 2-9x the starting 4.16, and back near 4.12 by step 36-74
    "blowup_b8_lr05_exp": ([2], ["blowup"], "loss to ~30 by step 12, back to ~4.12 by ~75; then flat (no learning)"),
    "blowup_b8_lr03_untied_exp": ([2], ["blowup"], "loss to ~12.5 by step 8, back by ~40; then slow decline to ~4.0"),
    "blowup_b8_d96_lr02_untied_exp": ([2], ["blowup"],
                                      "loss to ~14 by step 8, back by ~50; then slow decline to ~4.03"),
    "blowup_b16_lr05": ([2], ["blowup"], "loss to ~38 by step 19, back by ~73; then flat at ~4.12"),
    "blowup_b16_lr05_untied": ([2], ["blowup"], "loss to ~30 by step 19, back by ~72; then flat at ~4.12"),
    "blowup_b16_d128_lr01_untied": ([2], ["blowup"], "loss to ~13 at step 4, back by ~36; then flat at ~4.12"),
}

KINDS = ("level_shift", "climb", "step", "blowup", "spike", "divergence")


def family(name: str) -> str:
    return name.split("_")[0]


def split_of(name: str) -> str:
    """Fixed before any detector ran: within each family, names in sorted order, every third is test."""
    names = sorted(c.name for c in CURVES if family(c.name) == family(name))
    return "test" if names.index(name) % 3 == 2 else "tune"


# ---------------------------------------------------------------------------------------------
# Measurements used by the checks, the plots and the README tables.
# ---------------------------------------------------------------------------------------------

def finite(v: float) -> float:
    return v if math.isfinite(v) else math.inf


def median_loss(rows: list[Row], start: int, stop: int) -> float:
    """Median train loss over steps [start, stop); NaN/inf count as +inf (worse than any loss)."""
    return statistics.median(finite(r[1]) for r in rows[max(start, 1) - 1:stop - 1])


def rolling_median(rows: list[Row], width: int = 25) -> list[float]:
    """Median of the last `width` steps (fewer at the start), at every step."""
    values = [finite(r[1]) for r in rows]
    return [statistics.median(values[max(0, i - width + 1):i + 1]) for i in range(len(values))]


def rise(rows: list[Row], onset: int) -> float:
    """The onset figure: median over [onset, onset+100) / median over [onset-200, onset)."""
    return median_loss(rows, onset, onset + 100) / median_loss(rows, onset - 200, onset)


def settle(rows: list[Row], onsets: list[int], i: int, kind: str) -> float:
    """Where the loss goes after onset i: the lowest 100-step median (every 25 steps) from onset+100
    (onset+300 for a climb) up to the next onset or the end, over median[onset-200, onset).
    Below 1.05: the loss came back (spike); 1.05 and above: it stayed up (step, level_shift, climb)."""
    onset = onsets[i]
    end = onsets[i + 1] if i + 1 < len(onsets) else len(rows) + 1
    first = onset + (300 if kind == "climb" else 100)
    meds = [median_loss(rows, s, s + 100) for s in range(first, end - 99, 25)]
    return min(meds) / median_loss(rows, onset - 200, onset)


def worst_bump(r: Recipe, rows: list[Row]) -> tuple[float, int]:
    """The largest rise NOT labelled: max over S (every 10th step from 300, or from half the warm-up
    when that is longer; S not within 100 steps before or 600 after a labelled onset) of the
    rolling median's peak over [S, S+100) / median[S-200, S), and its S. Used to look for rises
    missed while labelling."""
    onsets = LABELS[r.name][0]
    rm = rolling_median(rows)
    return max((max(rm[s - 1:s + 99]) / median_loss(rows, s - 200, s), s)
               for s in range(max(300, r.warmup // 2), len(rows) - 20, 10)
               if not any(o - 100 <= s <= o + 600 for o in onsets))


def worst_rise(rows: list[Row], first: int = 400) -> tuple[float, int]:
    """max over S (every 10th step from `first`) of median[S, S+100) / median[S-200, S), and its S."""
    return max((rise(rows, s), s) for s in range(first, len(rows) - 99, 10))


def window_ratio(rows: list[Row], first: int = 400, width: int = 50, back: int = 10) -> float:
    """Max over 50-step windows (from `first`) of median(window) / min(median of the previous 10 windows)."""
    meds = [median_loss(rows, s, s + width) for s in range(first, len(rows) - width + 2, width)]
    return max(meds[i] / min(meds[max(0, i - back):i]) for i in range(1, len(meds)))


def spread(rows: list[Row], start: int, stop: int) -> float:
    """Per-step noise: 90th / 10th percentile of the train loss over steps [start, stop)."""
    q = statistics.quantiles([r[1] for r in rows[start - 1:stop - 1]], n=10)
    return q[-1] / q[0]


# ---------------------------------------------------------------------------------------------
# Checks: the recorded curve still shows what its hand-written label says.
# ---------------------------------------------------------------------------------------------

START_LOSS = math.log(V)     # the loss of a uniform guess, where every run starts


def check(r: Recipe, rows: list[Row]) -> None:
    n = len(rows)
    assert [row[0] for row in rows] == list(range(1, n + 1)), f"{r.name}: steps not 1..n"
    onsets, kinds, _ = LABELS[r.name]
    assert len(onsets) == len(kinds) and all(k in KINDS for k in kinds), f"{r.name}: bad label"
    if not onsets:
        assert all(math.isfinite(row[1]) for row in rows), f"{r.name}: non-finite loss in a healthy run"
        limit = 1.1 if r.batch >= 8 else 1.15
        worst, at = worst_rise(rows)
        assert worst < limit, f"{r.name}: healthy, but median[S,S+100)/median[S-200,S) = {worst:.3f} at {at}"
        return
    rm = rolling_median(rows)
    for i, (onset, kind) in enumerate(zip(onsets, kinds)):
        if kind == "blowup":
            assert onset <= 100 and max(finite(row[1]) for row in rows[:onset + 100]) >= 2 * START_LOSS, \
                f"{r.name}: no early blow-up to 2x the starting loss"
            assert min(rm[onset:onset + 300]) < 1.1 * START_LOSS, f"{r.name}: blow-up does not come back"
            continue
        before = median_loss(rows, onset - 200, onset)
        if kind in ("step", "level_shift"):
            after = median_loss(rows, onset, onset + 100)
        elif kind == "climb":
            after = max(median_loss(rows, onset + k, onset + k + 100) for k in range(0, 301, 50))
        else:                # spike / divergence: the rolling median's peak
            after = max(rm[onset - 1:onset + 99])
        need = 1.03 if kind == "spike" else 1.05       # spikes are labelled from a 1.03x peak (README)
        assert after >= need * before, f"{r.name}: {kind} at {onset}: {after:.4g} vs {before:.4g} before"
        back = settle(rows, onsets, i, kind) < 1.05
        assert back == (kind == "spike"), \
            f"{r.name}: {kind} at {onset}, but the loss {'came back' if back else 'stayed up'} (settle)"


# ---------------------------------------------------------------------------------------------
# Files.
# ---------------------------------------------------------------------------------------------

def fmt(v: float) -> str:
    return f"{v:.6g}"            # nan / inf / -inf come out as such


def write_csv(r: Recipe, rows: list[Row]) -> None:
    lines = ["step,train_loss,val_loss"]
    lines += [f"{s},{fmt(t)},{'' if v is None else fmt(v)}" for s, t, v in rows]
    (HERE / f"{r.name}.csv").write_text("\n".join(lines) + "\n")


def read_csv(name: str) -> list[Row]:
    rows: list[Row] = []
    for line in (HERE / f"{name}.csv").read_text().splitlines()[1:]:
        s, t, v = line.split(",")
        rows.append((int(s), float(t), float(v) if v else None))
    return rows


def plot(r: Recipe, rows: list[Row]) -> None:
    """plots/NAME.png: the whole curve (log y) and a zoom on the region of interest, onsets dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [row[0] for row in rows]
    loss = [row[1] for row in rows]
    rm = rolling_median(rows)
    val = [(row[0], row[2]) for row in rows if row[2] is not None and math.isfinite(row[2])]
    onsets, kinds, _ = LABELS.get(r.name, ([], [], ""))
    n = len(rows)
    if onsets and kinds[0] == "blowup":
        lo, hi = 1, min(n, 400)
    elif onsets:
        lo, hi = max(1, onsets[0] - 400), min(n, onsets[-1] + 400)
    else:
        lo, hi = max(1, n // 5), n
    fig, axes = plt.subplots(2, 1, figsize=(7.5, 5.2))
    for ax, (a, b) in zip(axes, ((1, n), (lo, hi))):
        ax.plot(steps[a - 1:b], loss[a - 1:b], lw=0.4, color="#a9bfd6")
        ax.plot(steps[a - 1:b], rm[a - 1:b], lw=1.6, color="black")
        vs = [p for p in val if a <= p[0] <= b]
        if vs:
            ax.plot(*zip(*vs), "o", ms=3, color="tab:red")
        for onset in onsets:
            if a <= onset <= b:
                ax.axvline(onset, ls="--", lw=1, color="tab:orange")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.set_xlim(a, b)
        seen = [v for v in rm[a - 1:b] if math.isfinite(v)]
        if seen and a > 1:         # zoom: fit the rolling median, not the per-step noise
            span = max(seen) / min(seen)
            ax.set_ylim(min(seen) / span ** 0.15 / 1.02, max(seen) * span ** 0.15 * 1.02)
    label = "healthy" if not onsets else ", ".join(f"{k}@{s}" for s, k in zip(onsets, kinds))
    axes[0].set_title(f"{r.name}  [{label if r.name in LABELS else 'unlabelled'}]", fontsize=9)
    axes[1].set_title(f"zoom: steps {lo}-{hi}; black = 25-step rolling median, red = val", fontsize=8)
    fig.tight_layout()
    (HERE / "plots").mkdir(exist_ok=True)
    fig.savefig(HERE / "plots" / f"{r.name}.png", dpi=60)
    plt.close(fig)


def labels_entry(r: Recipe, rows: list[Row]) -> dict:
    onsets, kinds, note = LABELS[r.name]
    return {"label": "rebound" if onsets else "healthy", "onsets": onsets, "kinds": kinds,
            "split": split_of(r.name), "cause": f"{r.setup}: {note}", "model": describe_model(r),
            "steps": len(rows)}


# ---------------------------------------------------------------------------------------------
# The README tables (--report): every curve, the noise of the healthy ones, the rise at each onset.
# ---------------------------------------------------------------------------------------------

def probe(rows: list[Row], step: int) -> None:
    """The labelling helper: is the rise at a proposed onset real, and where exactly does it start?"""
    before = median_loss(rows, step - 200, step)
    print(f"median [{step - 200}, {step}) = {before:.4f}; [{step}, {step + 100}) = "
          f"{median_loss(rows, step, step + 100):.4f}; ratio {rise(rows, step):.3f}")
    rm = rolling_median(rows)
    print("rolling median / before, every 20 steps from -40:",
          " ".join(f"{rm[s - 1] / before:.3f}" for s in range(step - 40, min(len(rows), step + 300), 20)))
    print("raw losses from -15:", " ".join(f"{r[1]:.2f}" for r in rows[step - 16:step + 14]))


def report(results: dict[str, list[Row]]) -> None:
    print("| name | label | onsets | kinds | split | steps | bump | cause |\n|---|---|---|---|---|---|---|---|")
    for r in CURVES:
        e = labels_entry(r, results[r.name])
        bump, at = worst_bump(r, results[r.name])
        print(f"| `{r.name}` | {e['label']} | {', '.join(map(str, e['onsets'])) or '-'} | "
              f"{', '.join(e['kinds']) or '-'} | {e['split']} | {e['steps']} | {bump:.3f} ({at}) | {e['cause']} |")
    print("\n| healthy curve | batch | spread | window | worst rise (step) |\n|---|---|---|---|---|")
    for r in CURVES:
        rows = results[r.name]
        if LABELS[r.name][0]:
            continue
        mid = len(rows) // 2
        worst, at = worst_rise(rows)
        print(f"| `{r.name}` | {r.batch} | {spread(rows, mid - 250, mid + 250):.2f} | {window_ratio(rows):.3f} | "
              f"{worst:.3f} ({at}) |")
    print("\n| curve | onset | kind | rise | peak | settle |\n|---|---|---|---|---|---|")
    for r in CURVES:
        rows = results[r.name]
        rm = rolling_median(rows)
        onsets, kinds, _ = LABELS[r.name]
        for i, (onset, kind) in enumerate(zip(onsets, kinds)):
            if kind == "blowup":
                peak = max(finite(row[1]) for row in rows[:onset + 100]) / START_LOSS
                print(f"| `{r.name}` | {onset} | {kind} | - | {peak:.1f} x ln 64 | - |")
                continue
            before = median_loss(rows, onset - 200, onset)
            peak = max(rm[onset - 1:onset + 299]) / before
            print(f"| `{r.name}` | {onset} | {kind} | {rise(rows, onset):.3f} | {peak:.3f} | "
                  f"{settle(rows, onsets, i, kind):.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", metavar="NAME", action="append", help="these curves only (repeatable)")
    parser.add_argument("--processes", type=int, default=2, help="trainings run at once (default 2)")
    parser.add_argument("--no-train", action="store_true", help="use the CSVs already written")
    parser.add_argument("--plots", action="store_true", help="(re)draw plots/NAME.png")
    parser.add_argument("--report", action="store_true", help="print the README tables (all curves)")
    parser.add_argument("--probe", metavar="NAME:STEP", action="append",
                        help="print median[STEP,STEP+100) / median[STEP-200,STEP) and the raw losses near STEP")
    args = parser.parse_args()
    if args.probe:
        for arg in args.probe:
            name, step = arg.rsplit(":", 1)
            probe(read_csv(name), int(step))
        return
    if args.report:
        report({r.name: read_csv(r.name) for r in CURVES})
        return
    curves = CURVES
    if args.only:
        curves = [r for r in CURVES if r.name in args.only]
        if len(curves) != len(args.only):
            sys.exit(f"unknown curve in {args.only}; known: {', '.join(r.name for r in CURVES)}")

    t0 = time.perf_counter()
    results: dict[str, list[Row]] = {}
    if args.no_train:
        results = {r.name: read_csv(r.name) for r in curves}
    else:
        # Most expensive first (cost ~ steps x batch x d^2 x layers), so that the two workers finish together.
        order = sorted(curves, key=lambda r: r.steps * (r.batch + 4) * r.d ** 2 * r.layers, reverse=True)
        with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
            for r, rows, seconds in pool.imap_unordered(train, order):
                write_csv(r, rows)
                results[r.name] = rows
                print(f"{r.name:36s} {len(rows):5d} steps {seconds:5.0f} s", flush=True)
        print(f"{len(curves)} trainings in {time.perf_counter() - t0:.0f} s")

    labels_path = HERE / "labels.json"
    labels = json.loads(labels_path.read_text()) if labels_path.exists() else {}
    for r in curves:
        rows = results[r.name]
        if args.plots:
            plot(r, rows)
        if r.name not in LABELS:
            print(f"{r.name}: not labelled yet")
            continue
        check(r, rows)
        labels[r.name] = labels_entry(r, rows)
    rank = {r.name: i for i, r in enumerate(CURVES)}
    labels = {k: v for k, v in sorted(labels.items(), key=lambda kv: rank.get(kv[0], len(rank))) if k in rank}
    labels_path.write_text(json.dumps(labels, indent=2) + "\n")


if __name__ == "__main__":
    main()
