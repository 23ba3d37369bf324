"""A tiny real training used by the tests, in-process (`build`) or as a subprocess (`main`).

As a script it prints one JSON object per line on stdout, so tests can follow what happened:
{"event": "resumed", "step": S, "params": DIGEST} after resume(), {"event": "done", ...} at the end.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time

import torch
from torch import nn

import trainwarden.agent as tw


def build(seed: int = 0, hidden: int = 32, lr: float = 0.05, scheduler: str = "none", steps: int = 1000):
    """A small MLP regression problem: model, optimizer, scheduler and a batch function."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, hidden), nn.Tanh(), nn.Linear(hidden, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    sched = None
    if scheduler == "step":
        sched = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, steps // 4), gamma=0.5)
    elif scheduler == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    w_true = torch.linspace(-1, 1, 8).unsqueeze(1)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(16, 8)
        return x, x @ w_true + 0.05 * torch.randn(16, 1)

    return model, optimizer, sched, batch


def train_step(model, optimizer, sched, batch) -> torch.Tensor:
    x, y = batch()
    loss = nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if sched is not None:
        sched.step()
    return loss


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """A digest of a model state dict (live, or loaded from a checkpoint file)."""
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def params_digest(model: nn.Module) -> str:
    return state_digest(model.state_dict())


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run-dir", required=True)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--save-every-steps", type=int, default=None)
    p.add_argument("--sleep", type=float, default=0.0, help="seconds to sleep per step (slow runs for CLI tests)")
    p.add_argument("--scheduler", default="none", choices=["none", "step", "cosine"])
    p.add_argument("--lr-jump", default=None, metavar="STEP:FACTOR",
                   help="multiply the LR by FACTOR from STEP on (a real rebound for the supervisor)")
    p.add_argument("--val-every", type=int, default=0, help="record a validation loss every N steps")
    p.add_argument("--poll", type=float, default=0.2, help="command poll interval")
    p.add_argument("--ballast-mb", type=float, default=0.0,
                   help="MiB of constant buffer added to the model, so checkpoints are big and slow to write")
    a = p.parse_args()
    model, optimizer, sched, batch = build(hidden=a.hidden, lr=a.lr, scheduler=a.scheduler, steps=a.steps)
    if a.lr_jump:
        at, factor = a.lr_jump.split(":")
        sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: float(factor) if s >= int(at) else 1.0)
    if a.ballast_mb:
        model.register_buffer("ballast", torch.zeros(int(a.ballast_mb * 2**20) // 4))
    config = tw.AgentConfig(window=a.window, save_every_steps=a.save_every_steps, command_poll_interval_s=a.poll,
                            heartbeat_interval_s=0.5)
    run = tw.attach(a.run_dir, model=model, optimizer=optimizer, scheduler=sched, config=config)
    start = run.resume()
    emit(event="resumed", step=start, branch=run.branch, params=params_digest(model))
    while run.step < a.steps:
        loss = train_step(model, optimizer, sched, batch)
        run.record(loss)
        if a.val_every and run.step % a.val_every == 0:
            with torch.no_grad():
                x, y = batch()
                run.record_val(nn.functional.mse_loss(model(x), y))
        if a.sleep:
            time.sleep(a.sleep)
        if run.should_stop:
            break
    run.close()
    emit(event="done", step=run.step, branch=run.branch, params=params_digest(model), lr=run.lr)


if __name__ == "__main__":
    sys.exit(main())
