"""Train a small MLP under trainwarden's agent: a plain PyTorch loop, read it top to bottom.

    python examples/train_mlp.py --run-dir runs/mlp     (installed: python -m trainwarden.examples.train_mlp)

Run it again with the same --run-dir and it resumes from its newest good checkpoint. While it
runs, steer it from another shell: `trainwarden show runs/mlp`, `trainwarden lr runs/mlp 1e-4`,
`trainwarden rollback runs/mlp --best`, `trainwarden pause runs/mlp` ...
"""
from __future__ import annotations

import argparse
import math
import os
import time

import torch
from torch import nn

import trainwarden.agent as tw


def make_data(seed: int, n: int = 32768, features: int = 32) -> tuple[torch.Tensor, ...]:
    """A fixed regression task: targets come from a random 'teacher' network plus noise."""
    g = torch.Generator().manual_seed(seed)
    teacher = nn.Sequential(nn.Linear(features, 64), nn.Tanh(), nn.Linear(64, 1))
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
        x = torch.randn(n, features, generator=g)
        y = teacher(x) + 0.1 * torch.randn(n, 1, generator=g)
    split = n * 7 // 8
    return x[:split], y[:split], x[split:], y[split:]


def warmup_cosine(warmup: int, total: int, jump_at: int | None = None, jump: float = 1.0):
    """Linear warm-up then cosine decay; with `jump_at`, the LR is multiplied by `jump` from that
    step on: a schedule bug that makes the loss rebound for real (the supervisor's demo case)."""
    def factor(step: int) -> float:
        if step < warmup:
            base = (step + 1) / warmup
        else:
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            base = 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))
        return base * (jump if jump_at is not None and step >= jump_at else 1.0)
    return factor


def lr_jump(text: str) -> tuple[int, float]:
    """argparse type for --lr-jump STEP:FACTOR."""
    try:
        step, factor = text.split(":")
        out = int(step), float(factor)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected STEP:FACTOR, e.g. 3000:20, got {text!r}") from None
    if out[0] < 0 or not (out[1] > 0 and math.isfinite(out[1])):
        raise argparse.ArgumentTypeError(f"STEP must be >= 0 and FACTOR a positive number, got {text!r}")
    return out


def cut_on_plateau(plateau: torch.optim.lr_scheduler.ReduceLROnPlateau, scheduler: torch.optim.lr_scheduler.LambdaLR,
                   val: float) -> None:
    """ReduceLROnPlateau beside a LambdaLR: LambdaLR recomputes the LR from its base every step, so
    a cut must go into the base LRs too or the next step undoes it."""
    before = [g["lr"] for g in plateau.optimizer.param_groups]
    plateau.step(val)
    for i, (group, old) in enumerate(zip(plateau.optimizer.param_groups, before)):
        if group["lr"] < old:
            scheduler.base_lrs[i] *= group["lr"] / old


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default=None, help="run folder (default: $TRAINWARDEN_RUN_DIR or runs/mlp)")
    parser.add_argument("--steps", type=int, default=12000, help="total training steps (about a minute on 2 cores)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--batch", type=int, default=256, help="batch size")
    parser.add_argument("--hidden", type=int, default=512, help="hidden width")
    parser.add_argument("--seed", type=int, default=0, help="seed for the data and the initial weights")
    parser.add_argument("--val-every", type=int, default=1000, help="steps between validation passes")
    parser.add_argument("--lr-jump", type=lr_jump, metavar="STEP:FACTOR",
                        help="multiply the LR by FACTOR from STEP on (makes the loss rebound, for the supervisor)")
    parser.add_argument("--step-delay", type=float, default=0.0, metavar="S",
                        help="sleep S seconds after each step, so a person can watch (trainwarden demo --tui)")
    parser.add_argument("--reduce-on-plateau", action="store_true",
                        help="also halve the LR when validation stops improving (PyTorch ReduceLROnPlateau, "
                             "patience 2): the baseline benchmarks/recovery.py compares with")
    args = parser.parse_args()
    if not (args.lr > 0 and math.isfinite(args.lr)):
        parser.error(f"--lr must be a positive finite number, got {args.lr}")
    if not (args.step_delay >= 0 and math.isfinite(args.step_delay)):
        parser.error(f"--step-delay must be a number of seconds >= 0, got {args.step_delay}")

    torch.manual_seed(args.seed)
    x_train, y_train, x_val, y_val = make_data(args.seed)
    model = nn.Sequential(
        nn.Linear(x_train.shape[1], args.hidden), nn.GELU(),
        nn.Linear(args.hidden, args.hidden), nn.GELU(),
        nn.Linear(args.hidden, 1),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    jump_at, jump = args.lr_jump or (None, 1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(args.steps // 20, args.steps, jump_at, jump))

    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=2) if args.reduce_on_plateau else None

    run_dir = args.run_dir or os.environ.get(tw.ENV_RUN_DIR) or "runs/mlp"
    with tw.attach(run_dir, model=model, optimizer=optimizer, scheduler=scheduler) as run:
        start = run.resume()
        print(f"run {run_dir}: {'resuming at step ' + str(start) if start else 'starting'}; {args.steps} steps")
        while run.step < args.steps:
            idx = torch.randint(0, x_train.shape[0], (args.batch,))
            loss = nn.functional.mse_loss(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            run.record(loss)  # no sync, no I/O: the agent batches it
            if run.step % args.val_every == 0:
                with torch.no_grad():
                    val = nn.functional.mse_loss(model(x_val), y_val)
                run.record_val(val)
                if plateau is not None:
                    cut_on_plateau(plateau, scheduler, val.item())
                print(f"step {run.step:6d}  train {loss.item():.4f}  val {val.item():.4f}  lr {run.lr:.2e}")
            if args.step_delay:
                time.sleep(args.step_delay)
            if run.should_stop:
                print("stop requested: leaving the loop")
                break
    print(f"done at step {run.step}; see `trainwarden show {run_dir}`")


if __name__ == "__main__":
    main()
