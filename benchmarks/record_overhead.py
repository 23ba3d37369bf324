"""Training-thread cost of `run.record(loss)`, beside TensorBoard's `add_scalar` and `list.append`.

    python benchmarks/record_overhead.py [--quick]

`record()` is the agent's hot path: it runs once per training step, so it must cost a few
microseconds. Each repeat times N calls on pre-made 0-dim CPU tensors, window closes included and
the store writer thread running meanwhile, as in training; the flush that waits for the writer's
queue to drain afterwards is timed apart and reported separately (training never waits for it).
Automatic checkpoints are off (save_every_steps=10**12, save_on_close=False), so the figure is
the recording path alone; benchmarks/checkpoint_stall.py measures saves.
Targets: <= 3 us per call, and >= 30x cheaper than add_scalar given the same tensor.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

import trainwarden.agent as tw
from common import machine, median, spread, table, verdict

TARGET_US = 3.0
TARGET_RATIO = 30.0


def time_record(run: tw.Run, losses: list[torch.Tensor]) -> tuple[float, float]:
    """(seconds for the calls, seconds of the flush that follows them)."""
    t0 = time.perf_counter()
    for loss in losses:
        run.record(loss)
    t1 = time.perf_counter()
    run.flush()
    return t1 - t0, time.perf_counter() - t1


def time_add_scalar(writer: SummaryWriter, values: list[torch.Tensor] | list[float], first_step: int) -> tuple[float, float]:
    """(seconds for the calls, seconds of the flush that follows them)."""
    t0 = time.perf_counter()
    for i, value in enumerate(values, first_step):
        writer.add_scalar("train/loss", value, i)
    t1 = time.perf_counter()
    writer.flush()
    return t1 - t0, time.perf_counter() - t1


def time_append(losses: list[torch.Tensor]) -> float:
    out: list[torch.Tensor] = []
    t0 = time.perf_counter()
    for loss in losses:
        out.append(loss)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000, help="record()/append calls per repeat")
    parser.add_argument("--tb-calls", type=int, default=20_000, help="add_scalar calls per repeat (it is slower)")
    parser.add_argument("--repeats", type=int, default=7, help="repeats; medians are reported")
    parser.add_argument("--quick", action="store_true", help="a smoke test in a few seconds")
    args = parser.parse_args()
    if args.quick:
        args.calls, args.tb_calls, args.repeats = 20_000, 2_000, 3
    config = tw.AgentConfig(save_every_steps=10**12, save_on_close=False, handle_signals=False)
    print(machine())
    print(f"{args.repeats} repeats of {args.calls} record() calls (window {config.window}, so "
          f"{args.calls // config.window} window closes each) and {args.tb_calls} add_scalar calls; "
          "automatic checkpoints off (save_every_steps=10**12, save_on_close=False)")

    g = torch.Generator().manual_seed(0)
    losses = [t.clone() for t in torch.rand(args.calls, generator=g).unbind()]  # independent 0-dim tensors
    floats = [float(t) for t in losses[:args.tb_calls]]
    tmp = Path(tempfile.mkdtemp(prefix="trainwarden-bench-"))
    model = torch.nn.Linear(4, 1)
    run = tw.attach(tmp / "run", model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), config=config)
    writer = SummaryWriter(str(tmp / "tensorboard"))
    per_call: dict[str, list[float]] = {"record": [], "tb_tensor": [], "tb_float": [], "append": []}
    flush: dict[str, list[float]] = {"record": [], "tb_tensor": [], "tb_float": []}
    try:
        time_record(run, losses[:args.calls // 10])  # warm-up: first windows, first store writes
        time_add_scalar(writer, losses[:args.tb_calls // 10], 0)
        step = args.tb_calls
        for _ in range(args.repeats):
            for name, (calls, flushed) in {
                "record": time_record(run, losses),
                "tb_tensor": time_add_scalar(writer, losses[:args.tb_calls], step),
                "tb_float": time_add_scalar(writer, floats, step + args.tb_calls),
            }.items():
                per_call[name].append(calls / (args.calls if name == "record" else args.tb_calls) * 1e6)
                flush[name].append(flushed * 1e3)
            step += 2 * args.tb_calls
            per_call["append"].append(time_append(losses) / args.calls * 1e6)
    finally:
        run.close()
        writer.close()
        shutil.rmtree(tmp, ignore_errors=True)

    record_us = median(per_call["record"])
    labels = {
        "record": "run.record(tensor)",
        "tb_tensor": "SummaryWriter.add_scalar(tensor)",
        "tb_float": "SummaryWriter.add_scalar(float)",
        "append": "list.append(tensor)",
    }
    rows = []
    for name, label in labels.items():
        us = median(per_call[name])
        rows.append([label, f"{us:.3f}", spread(per_call[name]), f"{us / record_us:.3g}x",
                     f"{median(flush[name]):.2f}" if name in flush else "-"])
    print()
    print(table(["call", "median us/call", "range over repeats", "cost vs record", "flush after, ms (not in us/call)"], rows))
    ratio = median(per_call["tb_tensor"]) / record_us
    print()
    print(f"record(): {record_us:.3f} us per call (target <= {TARGET_US} us): {verdict(record_us <= TARGET_US)}")
    print(f"add_scalar(tensor) / record(): {ratio:.1f}x (target >= {TARGET_RATIO:.0f}x): {verdict(ratio >= TARGET_RATIO)}")


if __name__ == "__main__":
    main()
