"""Train a small MLP on several processes with DistributedDataParallel, under trainwarden's agent.

    torchrun --nproc-per-node 2 examples/train_ddp.py --run-dir runs/ddp
    trainwarden run --name ddp --nproc-per-node 2 -- python -m trainwarden.examples.train_ddp

The agent code is the same as for one process: every rank calls `attach()`, `resume()`,
`record()` and `close()`; rank 0 writes the store, and commands (`trainwarden lr runs/ddp 1e-4`,
`trainwarden rollback runs/ddp --best`, `trainwarden pause runs/ddp` ...) reach every rank at the
same step. Uses gloo on CPUs and NCCL when each rank has a GPU. examples/train_fsdp.py is the same
loop with the model sharded by FSDP2 and sharded checkpoints.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import trainwarden.agent as tw
from trainwarden.examples.train_mlp import lr_jump, make_data, warmup_cosine


def parse(argv: list[str] | None = None, default_dir: str = "runs/ddp", description: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description or __doc__.splitlines()[0])
    parser.add_argument("--run-dir", default=None, help=f"run folder (default: $TRAINWARDEN_RUN_DIR or {default_dir})")
    parser.add_argument("--steps", type=int, default=3000, help="total training steps")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--batch", type=int, default=64, help="batch size per rank")
    parser.add_argument("--hidden", type=int, default=128, help="hidden width")
    parser.add_argument("--seed", type=int, default=0, help="seed for the data and the initial weights")
    parser.add_argument("--window", type=int, default=50, help="agent window (steps)")
    parser.add_argument("--val-every", type=int, default=500, help="steps between validation passes")
    parser.add_argument("--lr-jump", type=lr_jump, metavar="STEP:FACTOR",
                        help="multiply the LR by FACTOR from STEP on (makes the loss rebound, for the supervisor)")
    parser.add_argument("--step-delay", type=float, default=0.0, metavar="S", help="sleep S seconds after each step")
    parser.add_argument("--dist-timeout", type=float, default=600.0, metavar="S",
                        help="timeout of the job's process group and of trainwarden's own (default 600)")
    parser.add_argument("--mean-loss", action="store_true", help="the store shows the mean loss over ranks")
    parser.add_argument("--report", metavar="DIR",
                        help="write DIR/pid-RANK at start and DIR/rank-RANK.json at the end (step, LR, a digest of "
                             "the parameters, the commands applied): how the tests compare ranks")
    args = parser.parse_args(argv)
    if not (args.lr > 0 and math.isfinite(args.lr)):
        parser.error(f"--lr must be a positive finite number, got {args.lr}")
    args.run_dir = args.run_dir or os.environ.get(tw.ENV_RUN_DIR) or default_dir
    return args


def setup(args: argparse.Namespace) -> torch.device:
    """Join the job torchrun started: NCCL with one GPU per rank, else gloo on the CPU."""
    timeout = datetime.timedelta(seconds=args.dist_timeout)
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", timeout=timeout)
        return torch.device("cuda", local)
    dist.init_process_group("gloo", timeout=timeout)
    return torch.device("cpu")


def make_model(args: argparse.Namespace, features: int, device: torch.device) -> nn.Module:
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    return nn.Sequential(nn.Linear(features, args.hidden), nn.GELU(), nn.Linear(args.hidden, args.hidden),
                         nn.GELU(), nn.Linear(args.hidden, 1)).to(device)


def digest(model: nn.Module) -> str:
    """A hash of the full parameters (gathered from the shards under FSDP: every rank calls it)."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        h.update(name.encode())
        h.update(full.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()


def train(args: argparse.Namespace, model: nn.Module, inner: nn.Module, device: torch.device,
          distributed_checkpoint: bool | None = None) -> None:
    """The training loop for one rank; `model` is what steps (DDP or FSDP), `inner` its module."""
    rank = dist.get_rank()
    report = Path(args.report) if args.report else None
    if report is not None:
        report.mkdir(parents=True, exist_ok=True)
        (report / f"pid-{rank}").write_text(str(os.getpid()))
    x_train, y_train, x_val, y_val = make_data(args.seed)
    x_train, y_train, x_val, y_val = (t.to(device) for t in (x_train, y_train, x_val, y_val))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    jump_at, jump = args.lr_jump or (None, 1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(args.steps // 20, args.steps, jump_at, jump))
    torch.manual_seed(args.seed * 1000 + 1 + rank)  # each rank draws its own batches
    config = tw.AgentConfig(window=args.window, loss_across_ranks="mean" if args.mean_loss else "rank0",
                            dist_timeout_s=args.dist_timeout)

    run = tw.attach(args.run_dir, model=model, optimizer=optimizer, scheduler=scheduler, config=config,
                    distributed_checkpoint=distributed_checkpoint)
    start = run.resume()
    if rank == 0:
        print(f"run {args.run_dir}: {run.world_size} ranks, {'resuming at step ' + str(start) if start else 'starting'}")
    while run.step < args.steps:
        idx = torch.randint(0, x_train.shape[0], (args.batch,), device=device)
        loss = nn.functional.mse_loss(model(x_train[idx]), y_train[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        run.record(loss)  # no sync, no I/O; commands and saves are settled once per window
        if run.step % args.val_every == 0:
            with torch.no_grad():
                val = nn.functional.mse_loss(model(x_val), y_val)
            run.record_val(val)
            if rank == 0:
                print(f"step {run.step:6d}  train {loss.item():.4f}  val {val.item():.4f}  lr {run.lr:.2e}")
        if args.step_delay:
            time.sleep(args.step_delay)
        if run.should_stop:
            break
    run.close()
    if report is not None:
        out = {"rank": rank, "world_size": run.world_size, "step": run.step, "lr": run.lr,
               "lr_groups": [g["lr"] for g in optimizer.param_groups], "params": digest(inner),
               "applied": run.applied_commands}
        (report / f"rank-{rank}.json").write_text(json.dumps(out))
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    device = setup(args)
    inner = make_model(args, 32, device)
    model = nn.parallel.DistributedDataParallel(inner, device_ids=[device.index] if device.type == "cuda" else None)
    train(args, model, inner, device)


if __name__ == "__main__":
    main()
