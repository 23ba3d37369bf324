"""Training speed with and without the agent, on the example MLP of examples/train_mlp.py.

    python benchmarks/training_overhead.py [--quick] [--threads 1] [--budget 0.02]

Runs alternate between the plain loop (A) and the same loop under the agent (B: record() every
step, record_val() every 250 steps, default AgentConfig, so adaptive checkpointing is on; --budget
changes its checkpoint_budget) and, to tell the two costs apart, under the agent with automatic
checkpoints off (C). The order alternates (ABC, CBA, ABC, ...) so that drift in the shared
machine's speed falls on all alike. Steps/s counts the loop only; attach()+resume() before it and
close() after it (which writes a final checkpoint) are reported apart. All variants run with the
same torch.set_num_threads.
Target: the agent, as configured by default (B), costs <= 2% of steps/s.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import trainwarden.agent as tw
from common import REPO, machine, median, spread, table, verdict

sys.path.insert(0, str(REPO / "examples"))
from train_mlp import make_data, warmup_cosine  # noqa: E402  (the example is a script, not a package)

TARGET_SLOWDOWN = 0.02
VAL_EVERY = 250


def train(data: tuple[torch.Tensor, ...], steps: int, batch: int, hidden: int,
          run_dir: Path, config: tw.AgentConfig | None) -> tuple[float, float, int]:
    """(steps/s of the loop, seconds outside it, automatic checkpoints) of one run of train_mlp.py's
    loop; under the agent when `config` is given."""
    x_train, y_train, x_val, y_val = data
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(x_train.shape[1], hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps // 20, steps))
    t_attach = time.perf_counter()
    run = tw.attach(run_dir, model=model, optimizer=optimizer, scheduler=scheduler, config=config) if config is not None else None
    if run is not None:
        run.resume()
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(0, x_train.shape[0], (batch,))
        loss = nn.functional.mse_loss(model(x_train[idx]), y_train[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if run is not None:
            run.record(loss)
        if step % VAL_EVERY == 0:
            with torch.no_grad():
                val = nn.functional.mse_loss(model(x_val), y_val)
            if run is not None:
                run.record_val(val)
    t1 = time.perf_counter()
    saves = 0
    if run is not None:
        run.close()
        with tw.Store.open(run_dir) as store:
            saves = sum(c.kind in ("best", "last") for c in store.checkpoints())
        shutil.rmtree(run_dir)
    return steps / (t1 - t0), (t0 - t_attach) + (time.perf_counter() - t1), saves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="steps per run (train_mlp.py's default)")
    parser.add_argument("--rounds", type=int, default=8, help="rounds of one run per variant; medians are reported")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads for every variant (default 1: the agent's threads get "
                             "the other core, as on a GPU machine with spare cores)")
    parser.add_argument("--budget", type=float, default=tw.AgentConfig().checkpoint_budget,
                        help="checkpoint_budget of variant B (default: AgentConfig's)")
    parser.add_argument("--quick", action="store_true", help="a smoke test in a few seconds")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds = 1000, 2
    torch.set_num_threads(args.threads)
    print(machine())
    print(f"{args.rounds} rounds of {args.steps}-step runs, batch {args.batch}, hidden {args.hidden}; "
          f"B: adaptive checkpoints with a budget of {args.budget:.1%} of the time")

    data = make_data(0)
    variants = {
        "plain (A)": None,
        "agent, adaptive checkpoints (B)": tw.AgentConfig(checkpoint_budget=args.budget),
        "agent, no automatic checkpoints (C)": tw.AgentConfig(save_every_steps=10**12),
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    outside: dict[str, list[float]] = {name: [] for name in variants}
    saves: dict[str, list[int]] = {name: [] for name in variants}
    tmp = Path(tempfile.mkdtemp(prefix="trainwarden-bench-"))
    try:
        for name, config in variants.items():  # warm-up: allocator, thread pool, first store
            train(data, args.steps // 4, args.batch, args.hidden, tmp / "warm-up", config)
        for i in range(args.rounds):
            for name in (list(variants) if i % 2 == 0 else list(variants)[::-1]):
                rate, extra, n = train(data, args.steps, args.batch, args.hidden, tmp / f"run-{i}", variants[name])
                rates[name].append(rate)
                outside[name].append(extra)
                saves[name].append(n)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    plain = rates["plain (A)"]
    rows = [["plain (A)", f"{median(plain):.0f}", spread(plain), "-", "-", "-", "-"]]
    for name in list(variants)[1:]:
        rows.append([name, f"{median(rates[name]):.0f}", spread(rates[name]),
                     f"{1 - median(rates[name]) / median(plain):+.2%}",
                     f"{median([1 - b / a for a, b in zip(plain, rates[name])]):+.2%}",
                     f"{median(outside[name]) * 1e3:.0f}", f"{median(saves[name]):.0f}"])
    print()
    print(table(["loop", "median steps/s", "range", "slowdown vs A (medians)", "median per-round slowdown",
                 "attach+resume+close ms", "automatic checkpoints per run"], rows))
    slowdown = 1 - median(rates["agent, adaptive checkpoints (B)"]) / median(plain)
    print()
    print(f"agent (B, checkpoint budget {args.budget:.1%}): {slowdown:.2%} slower "
          f"(target <= {TARGET_SLOWDOWN:.0%} with the default config): {verdict(slowdown <= TARGET_SLOWDOWN)}")


if __name__ == "__main__":
    main()
