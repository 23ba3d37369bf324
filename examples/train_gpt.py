"""Train a small GPT (nanoGPT-style, decoder-only) under trainwarden's agent: read it top to bottom.

    python examples/train_gpt.py --run-dir runs/gpt     (installed: python -m trainwarden.examples.train_gpt)

The text is made here, no download: a token stream from an order-2 Markov chain over 64 tokens,
each (previous two tokens) row a Zipf-like distribution. A model first learns what the last token
says (a plateau near 3.3 nats), then, once an attention head looks one token further back, goes
down towards the chain's entropy (2.38 nats); one that knows only token frequencies stays near
ln 64 = 4.16. Validation is on a held-out stream of the same chain. The learning rate warms up
linearly, then decays along a cosine (a LambdaLR the agent saves and restores with the checkpoints).

A peak far too high, reached slowly, is a hazard the supervisor is for:

    python examples/train_gpt.py --steps 3000 --warmup 2500 --peak-lr 0.25 --clip 0

the loss bottoms out early in the warm-up, creeps up as the LR keeps rising, climbs over a few
hundred steps, then falls to the level of a model that knows nothing and stays there
(benchmarks/recovery_lm.py; with --peak-lr 3e-3 the same flags are its healthy run).

Run it again with the same --run-dir and it resumes from its newest good checkpoint. While it runs,
steer it from another shell: `trainwarden show runs/gpt`, `trainwarden lr runs/gpt --scale 0.5`,
`trainwarden rollback runs/gpt --best` ...
"""
from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

import trainwarden.agent as tw

VOCAB = 64
CONTEXT = 64


# ----------------------------------------------------------------------- data
def markov_chain(seed: int, vocab: int = VOCAB, zipf: float = 1.5) -> torch.Tensor:
    """Cumulative transition table, shape (vocab, vocab, vocab): row [a, b] gives P(next | a, b).

    Each row is a Zipf-like law (the k-th likeliest token has probability ~ 1/k^zipf). Which token
    is k-th is ranked by a score with one part from each of the two previous tokens,
    score(c | a, b) = A[a, c] + B[b, c], so the chain has structure a model can learn (the last
    token alone says a good deal; attending to the one before says the rest), not 4096 unrelated rows.
    """
    g = torch.Generator().manual_seed(seed)
    prior = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64) ** zipf
    prior /= prior.sum()
    a, b = torch.randn(2, vocab, vocab, generator=g, dtype=torch.float64)
    score = a[:, None, :] + b[None, :, :]                           # [a, b, c]
    rank = score.argsort(dim=-1, descending=True).argsort(dim=-1)   # 0 for the likeliest c
    return prior[rank].cumsum(dim=-1)


def token_stream(table: torch.Tensor, seed: int, chains: int, length: int) -> torch.Tensor:
    """`chains` independent walks of `length` tokens, laid end to end: one long 1-D stream."""
    g = torch.Generator().manual_seed(seed)
    vocab = table.shape[0]
    out = torch.empty(chains, length, dtype=torch.long)
    out[:, :2] = torch.randint(0, vocab, (chains, 2), generator=g)
    for t in range(2, length):  # every walk takes its next step at once
        cdf = table[out[:, t - 2], out[:, t - 1]]
        u = torch.rand(chains, 1, generator=g, dtype=torch.float64)
        out[:, t] = torch.searchsorted(cdf, u).squeeze(1).clamp_(max=vocab - 1)
    return out.reshape(-1)


def get_batch(stream: torch.Tensor, batch: int,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` random windows of CONTEXT tokens and, shifted by one, the tokens to predict."""
    start = torch.randint(0, stream.numel() - CONTEXT - 1, (batch,), generator=generator)
    idx = start[:, None] + torch.arange(CONTEXT + 1)
    chunk = stream[idx]
    return chunk[:, :-1], chunk[:, 1:]


def chain_entropy(table: torch.Tensor) -> float:
    """The chain's mean entropy per token in nats (rows weighted alike): the best loss possible,
    near enough, to read a run's loss against."""
    probs = torch.diff(table, dim=-1, prepend=torch.zeros(*table.shape[:-1], 1, dtype=table.dtype))
    return float(-(probs * probs.clamp_min(1e-300).log()).sum(-1).mean())


# ---------------------------------------------------------------------- model
class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(d_model, 3 * d_model)
        self.c_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, heads)
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Token and position embeddings, pre-LayerNorm blocks, a head tied to the token embedding."""

    def __init__(self, layers: int, d_model: int, heads: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB, d_model)
        self.wpe = nn.Embedding(CONTEXT, d_model)
        self.blocks = nn.ModuleList(Block(d_model, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, VOCAB, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying, as GPT-2
        for name, p in self.named_parameters():  # GPT-2's init: small normal weights, scaled residual projections
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("c_proj.weight", "mlp.2.weight")) else 0.02
                nn.init.normal_(p, mean=0.0, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of predicting `targets` (the next tokens) from `idx`."""
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))


def configure_optimizer(model: nn.Module, lr: float, betas: tuple[float, float],
                        weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices only (not on biases and LayerNorm gains), as nanoGPT."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def warmup_cosine(warmup: int, total: int, floor: float = 0.1) -> Callable[[int], float]:
    """LR factor: linear warm-up over `warmup` steps, then a cosine down to `floor` x the peak at `total`."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


@torch.no_grad()
def evaluate(model: nn.Module, x_val: torch.Tensor, y_val: torch.Tensor) -> torch.Tensor:
    model.eval()
    loss = model(x_val, y_val)
    model.train()
    return loss


def positive(text: str) -> float:
    """argparse type: a positive finite number."""
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text!r}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default=None, help="run folder (default: $TRAINWARDEN_RUN_DIR, else runs/gpt)")
    parser.add_argument("--steps", type=int, default=2500,
                        help="total training steps (default 2500: about a minute on one CPU thread)")
    parser.add_argument("--peak-lr", type=positive, default=3e-3, help="learning rate at the end of the warm-up (default 3e-3)")
    parser.add_argument("--warmup", type=int, default=200,
                        help="warm-up steps, the LR rising linearly to its peak; then a cosine down to a tenth of it "
                             "at --steps (default 200)")
    parser.add_argument("--batch", type=int, default=32, help=f"sequences of {CONTEXT} tokens per step (default 32)")
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks (default 2)")
    parser.add_argument("--d-model", type=int, default=64, help="embedding width (default 64)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads; must divide --d-model (default 4)")
    parser.add_argument("--beta2", type=float, default=0.95, help="AdamW's beta2 (default 0.95; beta1 is 0.9)")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="AdamW's weight decay on matrices (default 0.1)")
    parser.add_argument("--clip", type=float, default=1.0,
                        help="clip the gradient norm to this; 0 turns clipping off (default 1.0)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for the Markov chain, the streams, the weights and the batches (default 0)")
    parser.add_argument("--val-every", type=int, default=100,
                        help="steps between validation passes (default 100; also at the last step)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1: the model is small)")
    args = parser.parse_args()
    for name in ("steps", "warmup", "batch", "layers", "d_model", "heads", "val_every", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.d_model % args.heads:
        parser.error(f"--heads must divide --d-model, got {args.heads} and {args.d_model}")
    if not 0 <= args.beta2 < 1:
        parser.error(f"--beta2 must be in [0, 1), got {args.beta2}")
    for name in ("weight_decay", "clip"):
        if not (getattr(args, name) >= 0 and math.isfinite(getattr(args, name))):
            parser.error(f"--{name.replace('_', '-')} must be a finite number >= 0, got {getattr(args, name)}")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    table = markov_chain(args.seed)
    train_stream = token_stream(table, seed=args.seed + 1, chains=256, length=4096)  # 1M tokens
    val_stream = token_stream(table, seed=args.seed + 2, chains=64, length=1024)     # held out: other walks
    x_val, y_val = get_batch(val_stream, 64, torch.Generator().manual_seed(args.seed))  # fixed validation set

    model = GPT(args.layers, args.d_model, args.heads)
    optimizer = configure_optimizer(model, args.peak_lr, (0.9, args.beta2), args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(args.warmup, args.steps))

    run_dir = args.run_dir or os.environ.get(tw.ENV_RUN_DIR) or "runs/gpt"
    with tw.attach(run_dir, model=model, optimizer=optimizer, scheduler=scheduler) as run:
        start = run.resume()
        print(f"run {run_dir}: {'resuming at step ' + str(start) if start else 'starting'}; {args.steps} steps, "
              f"{sum(p.numel() for p in model.parameters()):,} parameters, "
              f"the chain's entropy {chain_entropy(table):.3f} nats")
        while True:
            # Like nanoGPT's iter_num, but read from the agent at every step, never counted here:
            # a rollback (by the supervisor or an operator, applied inside run.record) moves
            # run.step back to the checkpoint's step, and a counter of our own would then end the
            # run early and put validations at the wrong steps.
            iter_num = run.step
            if iter_num >= args.steps or run.should_stop:
                break
            x, y = get_batch(train_stream, args.batch)
            loss = model(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if args.clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            optimizer.step()
            scheduler.step()
            run.record(loss)  # no sync, no I/O: the agent batches it; commands are applied here
            if run.step != iter_num + 1:  # rolled back: the restored step had its validation (if due) before
                print(f"rolled back from step {iter_num + 1} to step {run.step}; lr {run.lr:.2e}", flush=True)
                continue
            iter_num = run.step
            if iter_num % args.val_every == 0 or iter_num == args.steps:
                val = evaluate(model, x_val, y_val)
                run.record_val(val)
                print(f"step {iter_num:5d}  train {loss.item():.4f}  val {val.item():.4f}  lr {run.lr:.2e}", flush=True)
        if run.should_stop:
            print("stop requested: left the loop")
    print(f"done at step {run.step}; see `trainwarden show {run_dir}`")


if __name__ == "__main__":
    main()
