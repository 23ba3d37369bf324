"""Build a labelled corpus of REAL loss curves for scoring loss-rebound detectors.

    python benchmarks/curves/make_corpus.py              # every curve (~3 min on 2 cores)
    python benchmarks/curves/make_corpus.py --only NAME  # one curve (the others are kept)

Every curve is the per-step minibatch loss of an actual small PyTorch training (an MLP, a tiny
causal transformer or a GRU on synthetic data made here), not a formula. Some trainings are left
alone (label "healthy"), some are disturbed on purpose at known steps (label "rebound": the LR is
raised, pulsed or ramped to divergence, or a burst of corrupted batches is fed), and some overfit
a small training set (label "overfit"). For a rebound the onset is the step the cause starts (the
first step with the raised LR, the first corrupted batch); for an overfit curve it is the minimum
of the validation curve smoothed over 3 points.

Output, next to this file: NAME.csv (`step,train_loss,val_loss`, steps from 1, val_loss empty
except where a validation pass ran) for each curve, and labels.json.

Everything is deterministic: fixed seeds, and one torch thread per training (the trainings run
two at a time in a multiprocessing Pool), so the same machine and torch give the same bytes.
The script checks that every rebound is really there (and that healthy curves have none, and
overfit curves overfit) and stops with an AssertionError when one is not.
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
# The curves. Each one is a training recipe plus, for rebounds, what is done to it and when.
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Curve:
    name: str
    label: str                 # "healthy" | "rebound" | "overfit"
    cause: str                 # one line: what was done to the training
    task: str                  # "reg" (teacher regression) | "cls" (noisy classes) | "seq" (Markov text)
    model: str                 # "mlp" | "tx" (tiny causal transformer) | "gru"
    optim: str                 # "adam" | "adamw" | "sgdm" (SGD, momentum 0.9)
    lr: float
    batch: int
    steps: int                 # steps to run (a divergence run stops 100 steps after its first NaN)
    seed: int
    width: int = 128           # MLP hidden width / transformer d_model / GRU hidden size
    depth: int = 2             # MLP hidden layers / transformer layers
    n_train: int = 50_000      # training pool: large for healthy runs so that they cannot overfit
    noise: float = 0.1         # reg: target noise std (targets have unit std); cls: label-noise fraction
    reg_features: int = 32     # reg: input features (fewer make a task learnable from a few hundred examples)
    val_every: int = 100
    schedule: str = "const"    # "const" | "wcos" (linear warm-up, cosine to 5%) | "multistep"
    warmup: int = 0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    lr_events: tuple[tuple[int, int, float], ...] = ()      # (first step, length (0: to the end), LR factor)
    ramp: tuple[int, float] | None = None                  # (first step, LR factor per step)
    corrupt: tuple[int, int, str, float] | None = None     # (first step, batches, kind, scale)

    def onsets(self) -> list[int]:
        """The cause steps of a rebound curve (an overfit curve's onset comes from its val curve)."""
        steps = [start for start, _, _ in self.lr_events]
        if self.ramp:
            steps.append(self.ramp[0])
        if self.corrupt:
            steps.append(self.corrupt[0])
        return sorted(steps)


FOREVER = 0

CURVES: list[Curve] = [
    # ---- healthy: tiny batches at a constant LR, genuinely noisy ----
    Curve("healthy_noisy_reg_b4_adam", "healthy", "none: batch 4, constant LR",
          "reg", "mlp", "adam", 1e-4, 4, 4000, seed=1),
    Curve("healthy_noisy_cls_b8_sgdm", "healthy", "none: batch 8, constant LR",
          "cls", "mlp", "sgdm", 0.01, 8, 4000, seed=2),
    Curve("healthy_noisy_cls_b4_adam", "healthy", "none: batch 4, constant LR",
          "cls", "mlp", "adam", 2e-4, 4, 4000, seed=3, width=64, depth=3),
    Curve("healthy_noisy_gru_b1_adam", "healthy", "none: batch 1 sequence of 16 tokens, constant LR",
          "seq", "gru", "adam", 1e-3, 1, 3000, seed=4, width=64),
    # ---- healthy: linear warm-up then cosine decay ----
    Curve("healthy_wcos_tx_adamw", "healthy", "none: warm-up 300 steps, cosine decay to 5%",
          "seq", "tx", "adamw", 3e-3, 16, 4000, seed=5, width=64, schedule="wcos", warmup=300),
    Curve("healthy_wcos_cls_sgdm", "healthy", "none: warm-up 500 steps, cosine decay to 5%",
          "cls", "mlp", "sgdm", 0.02, 32, 5000, seed=6, width=256, schedule="wcos", warmup=500),
    # ---- healthy: step decay (sudden drops) ----
    Curve("healthy_step_reg_sgdm", "healthy", "none: MultiStep decay x0.1 at 1500 and 3000",
          "reg", "mlp", "sgdm", 0.02, 32, 4500, seed=7, schedule="multistep", milestones=(1500, 3000)),
    Curve("healthy_step_reg_adam", "healthy", "none: MultiStep decay x0.2 at 1500 and 3000",
          "reg", "mlp", "adam", 2e-3, 32, 4500, seed=8, schedule="multistep", milestones=(1500, 3000), gamma=0.2),
    Curve("healthy_step_gru_sgdm", "healthy", "none: MultiStep decay x0.1 at 2500 and 4000",
          "seq", "gru", "sgdm", 0.7, 16, 5000, seed=9, width=64, schedule="multistep", milestones=(2500, 4000)),
    # ---- healthy: long runs that plateau ----
    Curve("healthy_plateau_tx_adam", "healthy", "none: constant LR, loss reaches the text's entropy and stays",
          "seq", "tx", "adam", 2e-3, 16, 6000, seed=10, width=64),
    Curve("healthy_plateau_reg_adam", "healthy", "none: constant LR, loss at its noise floor from step ~1000",
          "reg", "mlp", "adam", 1e-3, 64, 6000, seed=12, noise=0.3),

    # ---- rebound: LR jumps and stays ----
    Curve("rebound_jump_reg_adam_x30", "rebound", "LR x30 from step 2000 to the end",
          "reg", "mlp", "adam", 1e-3, 32, 3500, seed=13, lr_events=((2000, FOREVER, 30.0),)),
    Curve("rebound_jump_cls_sgdm_x10", "rebound", "LR x10 from step 1500 to the end",
          "cls", "mlp", "sgdm", 0.02, 32, 3000, seed=14, lr_events=((1500, FOREVER, 10.0),)),
    Curve("rebound_jump_tx_adam_x20", "rebound", "LR x20 from step 1800 to the end",
          "seq", "tx", "adam", 1e-3, 16, 3000, seed=15, width=64, lr_events=((1800, FOREVER, 20.0),)),
    Curve("rebound_jump_noisy_cls_b4_adam_x30", "rebound", "LR x30 from step 2000 (batch 4: the rise sits in noise)",
          "cls", "mlp", "adam", 5e-4, 4, 3500, seed=16, lr_events=((2000, FOREVER, 30.0),)),
    # ---- rebound: short LR pulses, then back ----
    Curve("rebound_pulses_cls_adam", "rebound", "LR x50 for 30 steps at 1500 and at 2700",
          "cls", "mlp", "adam", 1e-3, 32, 4000, seed=17, lr_events=((1500, 30, 50.0), (2700, 30, 50.0))),
    Curve("rebound_pulse_gru_adam", "rebound", "LR x30 for 20 steps at 1600",
          "seq", "gru", "adam", 3e-3, 16, 3000, seed=18, width=64, lr_events=((1600, 20, 30.0),)),
    Curve("rebound_pulses_reg_sgdm", "rebound", "LR x20 for 15 steps at 1200 and at 2400",
          "reg", "mlp", "sgdm", 0.005, 16, 3500, seed=19, lr_events=((1200, 15, 20.0), (2400, 15, 20.0))),
    # ---- rebound: a burst of corrupted batches ----
    Curve("rebound_corrupt_cls_shuffled_labels", "rebound", "40 batches with shuffled labels from step 2000",
          "cls", "mlp", "adam", 2e-3, 32, 3500, seed=20, noise=0.0, corrupt=(2000, 40, "shuffle", 1.0)),
    Curve("rebound_corrupt_reg_inputs_x50", "rebound", "20 batches with inputs x50 from step 1800",
          "reg", "mlp", "adam", 1e-3, 32, 3000, seed=21, corrupt=(1800, 20, "scale_inputs", 50.0)),
    # ---- rebound: divergence to NaN under a geometric LR ramp ----
    Curve("rebound_diverge_reg_sgdm_fast", "rebound", "LR x1.02 per step from 1500 until the loss is NaN",
          "reg", "mlp", "sgdm", 0.005, 32, 6000, seed=23, ramp=(1500, 1.02)),
    Curve("rebound_diverge_cls_adam_slow", "rebound", "LR x1.01 per step from 1500 until the loss is NaN",
          "cls", "mlp", "adam", 2e-3, 32, 6000, seed=22, ramp=(1500, 1.01)),
    Curve("rebound_diverge_cls_sgdm_slow", "rebound", "LR x1.01 per step from 1000 until the loss is NaN",
          "cls", "mlp", "sgdm", 0.02, 32, 6000, seed=30, ramp=(1000, 1.01)),
    # ---- rebound inside a realistic schedule ----
    Curve("rebound_wcos_tx_corrupt", "rebound", "warm-up+cosine; 30 batches of random target tokens from step 2200",
          "seq", "tx", "adamw", 3e-3, 16, 4000, seed=25, width=64, schedule="wcos", warmup=300,
          corrupt=(2200, 30, "shuffle", 1.0)),
    Curve("rebound_step_reg_lr_reset", "rebound", "MultiStep x0.1 at 1500; LR x30 (3x the initial LR) from 2500",
          "reg", "mlp", "sgdm", 0.02, 16, 4000, seed=26, schedule="multistep", milestones=(1500,),
          lr_events=((2500, FOREVER, 30.0),)),

    # ---- overfit: a few hundred examples, wide MLP, no regularisation ----
    Curve("overfit_cls_256ex_adam", "overfit", "256 training examples (20% wrong labels), no regularisation",
          "cls", "mlp", "adam", 3e-5, 32, 4000, seed=27, width=256, depth=3, n_train=256, noise=0.2, val_every=50),
    Curve("overfit_cls_128ex_sgdm", "overfit", "128 training examples (20% wrong labels), no regularisation",
          "cls", "mlp", "sgdm", 1e-3, 16, 4000, seed=28, width=256, depth=3, n_train=128, noise=0.2, val_every=50),
    Curve("overfit_reg_256ex_adam", "overfit", "256 training examples (noisy targets), no regularisation",
          "reg", "mlp", "adam", 2e-5, 32, 5000, seed=29, width=256, depth=3, n_train=256, noise=0.5,
          reg_features=8, val_every=50),
]


# ---------------------------------------------------------------------------------------------
# Synthetic data: inputs, targets and a held-out validation set, all made from a seed.
# ---------------------------------------------------------------------------------------------

CLS_FEATURES, CLASSES = 20, 10
VOCAB, SEQ_LEN = 24, 16
N_VAL = 2000


def teacher_regression(g: torch.Generator, n: int, features: int, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """y = a random one-hidden-layer tanh 'teacher' network of x, scaled to unit std, plus noise."""
    w1 = torch.randn(features, 64, generator=g) / math.sqrt(features)
    w2 = torch.randn(64, 1, generator=g) / math.sqrt(64)
    x = torch.randn(n, features, generator=g)
    y = torch.tanh(x @ w1) @ w2
    return x, y / y.std() + noise * torch.randn(n, 1, generator=g)


def noisy_classes(g: torch.Generator, n: int, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """10 classes given by the argmax of a random teacher network; a fraction `noise` relabelled at random."""
    w1 = torch.randn(CLS_FEATURES, 32, generator=g) / math.sqrt(CLS_FEATURES)
    w2 = torch.randn(32, CLASSES, generator=g) / math.sqrt(32)
    x = torch.randn(n, CLS_FEATURES, generator=g)
    y = (torch.tanh(x @ w1) @ w2).argmax(1)
    flip = torch.rand(n, generator=g) < noise
    return x, torch.where(flip, torch.randint(CLASSES, (n,), generator=g), y)


def markov_text(g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences from a sparse order-2 Markov chain: each pair of tokens allows 3 next tokens.

    The loss floor is the chain's entropy (about 0.8 nats), so the curves plateau like real LM runs.
    """
    nxt = torch.stack([torch.randperm(VOCAB, generator=g)[:3] for _ in range(VOCAB * VOCAB)])
    probs = torch.tensor([0.7, 0.2, 0.1])
    seq = torch.empty(n, SEQ_LEN + 1, dtype=torch.long)
    seq[:, :2] = torch.randint(VOCAB, (n, 2), generator=g)
    for t in range(2, SEQ_LEN + 1):
        choice = torch.multinomial(probs, n, replacement=True, generator=g)
        seq[:, t] = nxt[seq[:, t - 2] * VOCAB + seq[:, t - 1], choice]
    return seq[:, :-1], seq[:, 1:]


def make_data(c: Curve) -> tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_val, y_val): the same task (same teacher / chain) for both splits."""
    g = torch.Generator().manual_seed(1000 + c.seed)
    n = c.n_train + N_VAL
    if c.task == "reg":
        x, y = teacher_regression(g, n, c.reg_features, c.noise)
    elif c.task == "cls":
        x, y = noisy_classes(g, n, c.noise)
    else:
        x, y = markov_text(g, n)
    return x[:c.n_train], y[:c.n_train], x[c.n_train:], y[c.n_train:]


# ---------------------------------------------------------------------------------------------
# Models (all small: one torch thread trains each at a few hundred to a few thousand steps/s).
# ---------------------------------------------------------------------------------------------

class TinyTransformer(nn.Module):
    """Pre-norm causal transformer: token + position embeddings, `depth` layers, d_model = width."""

    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, width)
        self.pos = nn.Parameter(torch.randn(SEQ_LEN, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, nhead=4, dim_feedforward=2 * width, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCAB)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(SEQ_LEN), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.tok(tokens) + self.pos[: tokens.shape[1]]
        h = self.blocks(h, mask=self.mask, is_causal=True)
        return self.head(self.norm(h))


class CharGRU(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 32)
        self.gru = nn.GRU(32, width, batch_first=True)
        self.head = nn.Linear(width, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(self.emb(tokens))[0])


def make_model(c: Curve) -> nn.Module:
    if c.model == "tx":
        return TinyTransformer(c.width, c.depth)
    if c.model == "gru":
        return CharGRU(c.width)
    n_in, n_out = (c.reg_features, 1) if c.task == "reg" else (CLS_FEATURES, CLASSES)
    layers: list[nn.Module] = []
    for i in range(c.depth):
        layers += [nn.Linear(n_in if i == 0 else c.width, c.width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(c.width, n_out))


def describe_model(c: Curve) -> str:
    """The labels.json "model" line."""
    opt = {"adam": "Adam", "adamw": "AdamW (wd 0.01)", "sgdm": "SGD momentum 0.9"}[c.optim]
    if c.model == "tx":
        net = f"causal transformer d={c.width}, {c.depth} layers, 4 heads, next-token CE on order-2 Markov text"
    elif c.model == "gru":
        net = f"GRU hidden {c.width}, next-token CE on order-2 Markov text"
    else:
        n_in, n_out = (c.reg_features, 1) if c.task == "reg" else (CLS_FEATURES, CLASSES)
        shape = "-".join(str(s) for s in [n_in] + [c.width] * c.depth + [n_out])
        task = ("MSE on teacher-network regression" if c.task == "reg"
                else f"CE on 10 teacher-network classes ({c.noise:.0%} label noise)")
        net = f"MLP {shape} ReLU, {task}"
    return f"{net}; {opt} lr {c.lr:g}, batch {c.batch}, {c.n_train} training examples"


def loss_fn(c: Curve, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if c.task == "reg":
        return F.mse_loss(out, y)
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


# ---------------------------------------------------------------------------------------------
# The learning rate at each step: schedule x events (jumps, pulses) x ramp.
# Set by hand on the param groups so that the onset is exactly the first step with the new LR.
# ---------------------------------------------------------------------------------------------

def lr_at(c: Curve, step: int) -> float:
    if c.schedule == "wcos":      # linear warm-up, then cosine down to 5% of the peak
        if step <= c.warmup:
            factor = step / c.warmup
        else:
            progress = (step - c.warmup) / (c.steps - c.warmup)
            factor = 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))
    elif c.schedule == "multistep":   # what torch's MultiStepLR gives, counted in steps
        factor = c.gamma ** sum(step >= m for m in c.milestones)
    else:
        factor = 1.0
    for start, length, mult in c.lr_events:
        if step >= start and (length == FOREVER or step < start + length):
            factor *= mult
    if c.ramp and step >= c.ramp[0]:
        factor *= c.ramp[1] ** (step - c.ramp[0] + 1)
    return c.lr * factor


def corrupt_batch(c: Curve, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """What a broken data pipeline would feed: shuffled labels, or inputs / targets scaled up."""
    _, _, kind, scale = c.corrupt
    if kind == "shuffle":
        if c.task == "seq":       # text: the targets become random tokens
            return x, torch.randint(VOCAB, y.shape, generator=g)
        return x, y[torch.randperm(len(y), generator=g)]
    if kind == "scale_inputs":
        return x * scale, y
    return x, y * scale          # "scale_targets"


# ---------------------------------------------------------------------------------------------
# One training run -> rows of (step, train_loss, val_loss or None).
# ---------------------------------------------------------------------------------------------

Row = tuple[int, float, float | None]


@torch.no_grad()
def validate(c: Curve, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    total = sum(loss_fn(c, model(x[i:i + 500]), y[i:i + 500]).item() * len(x[i:i + 500])
                for i in range(0, len(x), 500))
    model.train()
    return total / len(x)


def train(c: Curve) -> tuple[Curve, list[Row], float]:
    torch.set_num_threads(1)      # two trainings share two cores; also keeps results reproducible
    x_train, y_train, x_val, y_val = make_data(c)
    n_val = 256 if c.task == "seq" else N_VAL     # 256 x 16 tokens is plenty for text
    x_val, y_val = x_val[:n_val], y_val[:n_val]
    torch.manual_seed(c.seed)
    model = make_model(c)
    if c.optim == "sgdm":
        opt = torch.optim.SGD(model.parameters(), lr=c.lr, momentum=0.9)
    elif c.optim == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=0.01)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=c.lr)
    g = torch.Generator().manual_seed(c.seed)      # minibatch order and corruption
    t0 = time.perf_counter()
    rows: list[Row] = []
    first_nonfinite: int | None = None
    for step in range(1, c.steps + 1):
        for group in opt.param_groups:
            group["lr"] = lr_at(c, step)
        idx = torch.randint(c.n_train, (c.batch,), generator=g)
        x, y = x_train[idx], y_train[idx]
        if c.corrupt and c.corrupt[0] <= step < c.corrupt[0] + c.corrupt[1]:
            x, y = corrupt_batch(c, x, y, g)
        loss = loss_fn(c, model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = loss.item()
        val = validate(c, model, x_val, y_val) if step % c.val_every == 0 else None
        rows.append((step, value, val))
        # A diverged run is kept going 100 more steps (NaN rows), as a loop without a guard would.
        if first_nonfinite is None and not math.isfinite(value):
            first_nonfinite = step
        if first_nonfinite is not None and step >= first_nonfinite + 100:
            break
    return c, rows, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# Checks: every rebound is real, healthy curves have none, overfit curves overfit.
# ---------------------------------------------------------------------------------------------

def median_loss(rows: list[Row], start: int, stop: int) -> float:
    """Median train loss over steps [start, stop); NaN/inf count as +inf (worse than any loss)."""
    return statistics.median(r[1] if math.isfinite(r[1]) else math.inf for r in rows[start - 1:stop - 1])


def ratio(after: float, before: float) -> float:
    return after / before if math.isfinite(after) else math.inf     # inf / inf counts as inf, not NaN


def window_ratio(rows: list[Row], width: int = 50, back: int = 10) -> float:
    """Max over 50-step windows of median(window) / min(median of the previous 10 windows).

    About 1 for a curve that only goes down; a rebound shows as a ratio well above 1.
    """
    meds = [median_loss(rows, s, s + width) for s in range(1, len(rows) - width + 2, width)]
    return max(ratio(meds[i], min(meds[max(0, i - back):i])) for i in range(1, len(meds)))


def worst_rise(rows: list[Row], first: int = 600) -> tuple[float, int]:
    """The rebound test at every 10th step S >= first: max of median[S, S+100) / median[S-200, S), and its S."""
    return max((ratio(median_loss(rows, s, s + 100), median_loss(rows, s - 200, s)), s)
               for s in range(first, len(rows) - 99, 10))


def spread(rows: list[Row], start: int, stop: int) -> float:
    """Per-step noise: 90th / 10th percentile of the train loss over steps [start, stop)."""
    q = statistics.quantiles([r[1] for r in rows[start - 1:stop - 1]], n=10)
    return q[-1] / q[0]


def val_points(rows: list[Row]) -> list[tuple[int, float]]:
    return [(r[0], r[2]) for r in rows if r[2] is not None]


def overfit_onset(rows: list[Row]) -> tuple[int, float, float]:
    """(step of the min of the 3-point smoothed val curve, that min, mean of the last 3 val losses)."""
    pts = val_points(rows)
    smooth = [(pts[i][0], (pts[i - 1][1] + pts[i][1] + pts[i + 1][1]) / 3) for i in range(1, len(pts) - 1)]
    step, low = min(smooth, key=lambda p: p[1])
    return step, low, sum(v for _, v in pts[-3:]) / 3


def check(c: Curve, rows: list[Row]) -> list[int]:
    """Assert the curve is what its label says; return its onsets."""
    n = len(rows)
    assert [r[0] for r in rows] == list(range(1, n + 1))
    if c.label == "healthy":
        assert all(math.isfinite(r[1]) for r in rows), f"{c.name}: non-finite loss in a healthy run"
        # The model never gets worse: no validation loss 10% above an earlier one (after step 500).
        pts = [v for s, v in val_points(rows) if s >= 500]
        for i in range(1, len(pts)):
            assert pts[i] <= 1.1 * min(pts[:i]), f"{c.name}: healthy val loss rises to {pts[i]:.4g}"
        # And the train loss never passes the rebound test below. At batch 4 and less, sampling
        # noise alone moves a 100-step median by up to ~1.4x, so those curves get more room.
        rise, at = worst_rise(rows)
        limit = 1.5 if c.batch <= 4 else 1.3
        assert rise < limit, f"{c.name}: healthy curve passes the rebound test at step {at} ({rise:.2f}x)"
        return []
    if c.label == "overfit":
        step, low, end = overfit_onset(rows)
        assert 600 <= step <= n - 400, f"{c.name}: overfit onset {step} too close to an end of {n} steps"
        assert end >= 1.2 * low, f"{c.name}: val loss ends only {end / low:.2f}x its minimum"
        assert median_loss(rows, n - 200, n + 1) < 0.5 * median_loss(rows, step - 100, step), \
            f"{c.name}: train loss does not keep falling after the val minimum"
        return [step]
    onsets = c.onsets()
    for onset in onsets:
        assert 600 <= onset <= n - 400, f"{c.name}: onset {onset} too close to an end of {n} steps"
        before = median_loss(rows, onset - 200, onset)
        if c.ramp:
            after = [r[1] for r in rows[onset - 1:]]
            assert any(not math.isfinite(v) or v > 3 * before for v in after), \
                f"{c.name}: the LR ramp never took the loss to 3x {before:.4g}"
        else:
            after = median_loss(rows, onset, onset + 100)
            assert after >= 1.3 * before, \
                f"{c.name}: onset {onset}: median {after:.4g} after vs {before:.4g} before (< 1.3x)"
    assert all(b - a >= 800 for a, b in zip(onsets, onsets[1:])), f"{c.name}: onsets closer than 800 steps"
    return onsets


# ---------------------------------------------------------------------------------------------
# Files.
# ---------------------------------------------------------------------------------------------

def fmt(v: float) -> str:
    return f"{v:.6g}"            # nan / inf / -inf come out as such


def write_csv(c: Curve, rows: list[Row]) -> None:
    lines = ["step,train_loss,val_loss"]
    lines += [f"{s},{fmt(t)},{'' if v is None else fmt(v)}" for s, t, v in rows]
    (HERE / f"{c.name}.csv").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", metavar="NAME", help="regenerate this curve only (labels.json keeps the others)")
    parser.add_argument("--processes", type=int, default=2, help="trainings run at once (default 2)")
    args = parser.parse_args()
    curves = CURVES
    labels_path = HERE / "labels.json"
    labels: dict[str, dict] = {}
    if args.only:
        curves = [c for c in CURVES if c.name == args.only]
        if not curves:
            sys.exit(f"no curve named {args.only!r}; known: {', '.join(c.name for c in CURVES)}")
        labels = json.loads(labels_path.read_text()) if labels_path.exists() else {}

    t0 = time.perf_counter()
    # Longest first (a transformer / GRU step costs ~5 MLP steps), so that the workers finish together.
    order = sorted(curves, key=lambda c: c.steps * (5 if c.model != "mlp" else 1), reverse=True)
    print(f"{'curve':38s} {'label':8s} {'steps':>5s} {'secs':>5s}  {'window':>6s} {'rise':>5s} {'spread':>6s}  onsets")
    with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
        for c, rows, seconds in pool.imap_unordered(train, order):
            onsets = check(c, rows)
            write_csv(c, rows)
            labels[c.name] = {"label": c.label, "onsets": onsets, "cause": c.cause,
                              "model": describe_model(c), "steps": len(rows)}
            # Noise figures for detector authors: see window_ratio, worst_rise and spread above.
            mid = len(rows) // 2
            print(f"{c.name:38s} {c.label:8s} {len(rows):5d} {seconds:5.0f}  {window_ratio(rows):6.2f} "
                  f"{worst_rise(rows)[0]:5.2f} {spread(rows, mid, mid + 500):6.1f}  {onsets}", flush=True)

    # labels.json in the order of CURVES, whatever order the workers finished in.
    rank = {c.name: i for i, c in enumerate(CURVES)}
    labels = dict(sorted(labels.items(), key=lambda kv: rank.get(kv[0], len(rank))))
    labels_path.write_text(json.dumps(labels, indent=2) + "\n")
    print(f"{len(curves)} curves in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
