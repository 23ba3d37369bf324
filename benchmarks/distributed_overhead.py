"""The agent in a 2-rank job: training speed with and without it, and the blocked time of a
sharded checkpoint against a synchronous `torch.distributed.checkpoint.save`.

    python benchmarks/distributed_overhead.py [--quick] [--nproc 2] [--dir D]

Starts itself under torchrun (`--nproc` ranks; gloo on CPUs, NCCL when every rank has a GPU).
1. Speed: examples/train_ddp.py's DDP model and loop, plain (A), under the agent with its
   default config (B: record() every step, one exchange per window, adaptive single-file
   checkpoints by rank 0), under the agent with automatic checkpoints off (C, to tell the costs
   apart), and plain again (A2: a control, what noise alone makes of two identical loops); each
   round runs the four in a fresh random order (no variant always follows another: what a run
   leaves behind, such as dirty pages being written out, falls on all alike); steps/s between
   barriers, slowest rank. Slowdowns are per round, against the mean of that round's two plain
   loops; the medians over the rounds are reported. Target: B's is at most 3%.
2. Blocked time per sharded checkpoint: an FSDP2 model (`--width`, 4 layers) with Adam state;
   the time the training thread is held by the agent's sharded save (store row, staging the
   shards to CPU memory, DCP's background write started) against a synchronous `dcp.save` of the
   same state, slowest rank each time, alternating. Target: at most 0.2x of the synchronous save.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from common import machine, median, spread, table, verdict

TARGET_SLOWDOWN = 0.03
TARGET_BLOCKED = 0.2


# ------------------------------------------------------------------ worker (one rank)
def slowest(seconds: float) -> float:
    """The largest value over the ranks: a collective step waits for the slowest one."""
    t = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=CPU_GROUP)
    return float(t.item())


def loop(args: argparse.Namespace, run_dir: Path | None, device: torch.device, saves: bool = True) -> tuple[float, float]:
    """(steps/s, share of the loop's time spent inside record() on the slowest rank) of
    train_ddp.py's loop, under the agent when `run_dir` is given (with automatic checkpoints when
    `saves`). The share is the agent's direct cost (exchanges and save stalls included), a figure
    the machine's noise touches far less than steps/s."""
    import trainwarden.agent as tw
    from trainwarden.examples.train_mlp import make_data, warmup_cosine

    x, y, _, _ = (t.to(device) for t in make_data(0))
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Linear(32, args.hidden), nn.GELU(), nn.Linear(args.hidden, args.hidden), nn.GELU(),
                          nn.Linear(args.hidden, 1)).to(device)
    model = nn.parallel.DistributedDataParallel(inner, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(args.steps // 20, args.steps))
    run = None
    if run_dir is not None:
        config = tw.AgentConfig() if saves else tw.AgentConfig(save_every_steps=10**12)
        run = tw.attach(run_dir, model=model, optimizer=optimizer, scheduler=scheduler, config=config)
        run.resume()
    dist.barrier(group=CPU_GROUP)
    inside = 0.0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        idx = torch.randint(0, x.shape[0], (args.batch,), device=device)
        loss = nn.functional.mse_loss(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if run is not None:
            t = time.perf_counter()
            run.record(loss)
            inside += time.perf_counter() - t
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    share = slowest(inside / elapsed)
    elapsed = slowest(elapsed)
    if run is not None:
        run.close()
    return args.steps / elapsed, share


def checkpoints(args: argparse.Namespace, work: Path, device: torch.device) -> tuple[list[float], list[float], int]:
    """(agent's blocked seconds, synchronous dcp.save seconds, bytes per checkpoint)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.fsdp import fully_shard

    import trainwarden.agent as tw

    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(args.width, args.width) for _ in range(4)]).to(device)
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    config = tw.AgentConfig(save_every_steps=10**12, save_on_close=False, keep_best=2, keep_last=2)
    run = tw.attach(work / "fsdp", model=model, optimizer=optimizer, config=config)
    run.resume()

    def step() -> None:
        loss = model(torch.randn(8, args.width, device=device)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        run.record(loss)

    for _ in range(3):
        step()
    blocked, sync = [], []
    for i in range(args.saves):
        for which in (("agent", "sync") if i % 2 == 0 else ("sync", "agent")):
            dist.barrier(group=CPU_GROUP)
            if which == "agent":
                t0 = time.perf_counter()
                run._saver.save("manual", wait=False)  # what an automatic save costs the training thread
                blocked.append(slowest(time.perf_counter() - t0))
                run.flush(600)
            else:
                msd, osd = get_state_dict(model, optimizer)
                t0 = time.perf_counter()
                dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(work / f"sync-{i}"))
                sync.append(slowest(time.perf_counter() - t0))
                if dist.get_rank() == 0:
                    shutil.rmtree(work / f"sync-{i}")
            step()
    run.flush(600)
    with tw.Store.open(work / "fsdp") if dist.get_rank() == 0 else _Nothing() as store:
        nbytes = max(c.bytes or 0 for c in store.checkpoints(["ready"])) if store else 0
    run.close()
    return blocked, sync, nbytes


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        pass


def worker(args: argparse.Namespace) -> None:
    global CPU_GROUP
    if torch.cuda.is_available():
        local = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", timeout=datetime.timedelta(minutes=10))
        device = torch.device("cuda", local)
    else:
        dist.init_process_group("gloo", timeout=datetime.timedelta(minutes=10))
        device = torch.device("cpu")
    CPU_GROUP = dist.new_group(backend="gloo")  # timing barriers, never the user's group
    work = Path(args.dir)
    rank = dist.get_rank()
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    inside: dict[str, list[float]] = {name: [] for name in VARIANTS}
    order = random.Random(0)  # the same sequence on every rank
    for name in ("A", "B", "C"):  # warm-up
        loop(args, work / f"warm-up-{name}" if name != "A" else None, device, name == "B")
    for i in range(args.rounds):
        for name in order.sample(VARIANTS, len(VARIANTS)):
            plain = name in ("A", "A2")
            rate, share = loop(args, None if plain else work / f"run-{i}-{name}", device, name == "B")
            rates[name].append(rate)
            inside[name].append(share)
    blocked, sync, nbytes = checkpoints(args, work, device)
    if rank == 0:
        (work / "result.json").write_text(json.dumps({
            "rates": rates, "inside": inside, "blocked": blocked, "sync": sync, "bytes": nbytes, "world": dist.get_world_size(),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "CPU",
            "backend": dist.get_backend()}))
    dist.barrier(group=CPU_GROUP)
    dist.destroy_process_group()


CPU_GROUP = None
VARIANTS = ["A", "A2", "B", "C"]


# ------------------------------------------------------------------ parent
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2, help="ranks (default 2)")
    parser.add_argument("--steps", type=int, default=1000, help="steps per speed run")
    parser.add_argument("--rounds", type=int, default=20, help="rounds of A, A2, B and C; medians are reported")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--width", type=int, default=2048, help="FSDP model: 4 layers of width x width (default: ~200 MiB with Adam)")
    parser.add_argument("--saves", type=int, default=5, help="checkpoints of each kind")
    parser.add_argument("--dir", help="work folder (default: a temporary one, removed after)")
    parser.add_argument("--quick", action="store_true", help="a smoke test in well under a minute")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds, args.width, args.saves = 150, 1, 256, 2
    if args.worker:
        worker(args)
        return

    print(machine())
    work = Path(tempfile.mkdtemp(prefix="trainwarden-dist-", dir=args.dir))
    try:
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.nproc),
                __file__, "--worker", "--dir", str(work), "--steps", str(args.steps), "--rounds", str(args.rounds),
                "--batch", str(args.batch), "--hidden", str(args.hidden), "--width", str(args.width),
                "--saves", str(args.saves)]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"the {args.nproc}-rank job failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
        result = json.loads((work / "result.json").read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rates, inside = result["rates"], result["inside"]
    base = [(a + a2) / 2 for a, a2 in zip(rates["A"], rates["A2"])]  # each round's plain speed
    slow = {name: median([1 - x / y for x, y in zip(rates[name], base)]) for name in ("B", "C")}
    control = [1 - a2 / a for a, a2 in zip(rates["A"], rates["A2"])]
    print(f"{result['world']} ranks, {result['backend']} on {result['device']}; {args.rounds} rounds of "
          f"{args.steps} steps in random order, batch {args.batch} per rank, hidden {args.hidden}")
    print()
    print(table(["loop", "median steps/s", "range", "median per-round slowdown vs plain", "time inside record()"], [
        ["plain DDP (A)", f"{median(rates['A']):.0f}", spread(rates["A"]), "-", "-"],
        ["plain DDP again (A2, control)", f"{median(rates['A2']):.0f}", spread(rates["A2"]), "-", "-"],
        ["DDP under the agent (B)", f"{median(rates['B']):.0f}", spread(rates["B"]), f"{slow['B']:+.2%}",
         f"{median(inside['B']):.2%}"],
        ["agent, no automatic checkpoints (C)", f"{median(rates['C']):.0f}", spread(rates["C"]), f"{slow['C']:+.2%}",
         f"{median(inside['C']):.2%}"],
    ]))
    print(f"noise: A2 against A, two identical plain loops of a round, differ by {median([abs(x) for x in control]):.2%} "
          f"(median of |difference|; median difference {median(control):+.2%})")
    blocked, sync = result["blocked"], result["sync"]
    ratio = median(blocked) / median(sync)
    print()
    print(f"sharded checkpoint of {result['bytes'] / 2**20:.1f} MiB (FSDP2, 4 x {args.width}^2 + Adam), "
          f"{len(blocked)} of each, slowest rank:")
    print(table(["save", "median s", "range"], [
        ["agent (staging, training thread held)", f"{median(blocked):.4f}", spread(blocked)],
        ["synchronous dcp.save", f"{median(sync):.4f}", spread(sync)],
    ]))
    print()
    slowdown = slow["B"]
    print(f"agent in a {result['world']}-rank DDP job: {slowdown:.2%} slower "
          f"(target <= {TARGET_SLOWDOWN:.0%}): {verdict(slowdown <= TARGET_SLOWDOWN)}")
    print(f"blocked time per sharded checkpoint: {ratio:.3f}x of a synchronous dcp.save "
          f"(target <= {TARGET_BLOCKED}x): {verdict(ratio <= TARGET_BLOCKED)}")


if __name__ == "__main__":
    main()
