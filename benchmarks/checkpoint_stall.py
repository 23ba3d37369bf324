"""How long a checkpoint blocks training, and how fast the background write goes.

    python benchmarks/checkpoint_stall.py [--sizes 100MB,1GB] [--dir PARENT] [--quick]

The agent saves in two phases: the training thread snapshots the state into reused CPU buffers
(the stall), then the checkpoint thread writes it (temporary file, xxh3 checksum, fsync, rename). For a
model + Adam state of each size, each repeat measures, in the same run:
  agent stall       wall time of `Run._save(kind, wait=False)` on the training thread (the real path);
  sync save         what a plain loop stalls for instead: torch.save of the same state + fsync;
  plain copy        copying every tensor into preallocated memory (the floor for a snapshot);
  agent write       file bytes / (ready_at - created_at) of the checkpoint's row in the store;
  disk              the same number of bytes written with 8 MiB writes + fsync (the disk's speed).
  first stall       the first save's stall, after the first window had the checkpoint thread reserve
                    the snapshot buffers in the background (as in training), reported apart;
  reserve ms        how long that reservation took on the checkpoint thread (training went on).
torch keeps its default thread count, which the snapshot and the plain copy both use.
Targets: stall <= 0.1x the sync save and <= 1.5x the plain copy; agent write >= 70% of disk speed.
"""
from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import trainwarden.agent as tw
from common import REPO, machine, median, spread, table, verdict

WIDTH = 2048  # square layers of 2048x2048 fp32: 16.8 MB of weights, 50 MB with Adam's two moments
BYTES_PER_PARAM = 12  # fp32 weight + exp_avg + exp_avg_sq
_WRITE_CHUNK = 8 << 20
_UNITS = {"KB": 1e3, "MB": 1e6, "GB": 1e9, "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30}
TARGET_VS_SYNC = 0.1
TARGET_VS_COPY = 1.5
TARGET_THROUGHPUT = 0.7


def parse_sizes(text: str) -> list[int]:
    """'100MB,1GB,512MiB' -> bytes."""
    sizes = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*([\d.]+)\s*([KMG]i?B)\s*", part, re.IGNORECASE)
        if not m:
            raise argparse.ArgumentTypeError(f"size {part!r}: write it like 100MB, 1GB or 512MiB")
        sizes.append(int(float(m.group(1)) * _UNITS[m.group(2).upper()]))
    return sizes


def make_state(nbytes: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A stack of square linear layers with Adam's state filled in by one step, about `nbytes` in all."""
    layers = max(1, round(nbytes / (BYTES_PER_PARAM * WIDTH * WIDTH)))
    model = nn.Sequential(*(nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(layers)))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    return model, optimizer


def tensors_of(tree: object) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for v in tree.values() for t in tensors_of(v)]
    if isinstance(tree, (list, tuple)):
        return [t for v in tree for t in tensors_of(v)]
    return []


def sync_save(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> float:
    """Seconds a loop without the agent stalls to save: torch.save to the file, then fsync."""
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, f)
        f.flush()
        os.fsync(f.fileno())
    seconds = time.perf_counter() - t0
    path.unlink()
    return seconds


def disk_write(nbytes: int, path: Path, chunk: bytes) -> float:
    """Seconds to write `nbytes` with large writes and fsync: the disk's own sequential speed."""
    view = memoryview(chunk)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    t0 = time.perf_counter()
    try:
        left = nbytes
        while left > 0:
            left -= os.write(fd, view[:min(left, len(view))])
        os.fsync(fd)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - t0
    path.unlink()
    return seconds


def plain_copy(sources: list[torch.Tensor], targets: list[torch.Tensor]) -> float:
    t0 = time.perf_counter()
    for dst, src in zip(targets, sources):
        dst.copy_(src)
    return time.perf_counter() - t0


def agent_save(run: tw.Run) -> tuple[float, float, int]:
    """(stall seconds, write seconds, file bytes) of one checkpoint through the agent."""
    t0 = time.perf_counter()
    run._saver.save("manual", wait=False)
    stall = time.perf_counter() - t0
    run._saver.checkpointer.idle.wait()
    info = run._store.checkpoints(["ready"])[-1]
    return stall, info.ready_at - info.created_at, info.bytes


def bench_size(nbytes: int, repeats: int, folder: Path) -> dict[str, Any]:
    model, optimizer = make_state(nbytes)
    state_tensors = tensors_of({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    state_bytes = sum(t.numel() * t.element_size() for t in state_tensors)
    copies = [torch.empty_like(t) for t in state_tensors]
    plain_copy(state_tensors, copies)  # touch the pages once, as reused buffers are
    chunk = os.urandom(_WRITE_CHUNK)
    config = tw.AgentConfig(window=1, save_every_steps=10**12, save_on_close=False, handle_signals=False,
                            keep_best=1, keep_last=1)
    run = tw.attach(folder / "run", model=model, optimizer=optimizer, config=config)
    out: dict[str, list[float]] = {k: [] for k in ("stall", "sync", "copy", "agent_mbs", "disk_mbs")}
    try:
        t0 = time.perf_counter()
        run.record(torch.tensor(1.0))  # closes the first window, which has the buffers reserved
        run._saver.reserved.wait()
        reserve = time.perf_counter() - t0
        first_stall, _, _ = agent_save(run)
        for _ in range(repeats):
            stall, write_s, file_bytes = agent_save(run)
            out["stall"].append(stall)
            out["agent_mbs"].append(file_bytes / write_s / 1e6)
            out["sync"].append(sync_save(model, optimizer, folder / "sync.pt"))
            out["disk_mbs"].append(file_bytes / disk_write(file_bytes, folder / "disk.bin", chunk) / 1e6)
            out["copy"].append(plain_copy(state_tensors, copies))
    finally:
        run.close()
        shutil.rmtree(folder / "run", ignore_errors=True)
    result: dict[str, Any] = {k: median(v) for k, v in out.items()}
    result.update(state_bytes=state_bytes, first_stall=first_stall, reserve=reserve, stall_spread=spread([x * 1e3 for x in out["stall"]]),
                  agent_spread=spread(out["agent_mbs"]), disk_spread=spread(out["disk_mbs"]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=parse_sizes, default="100MB,1GB",
                        help="state sizes (model + Adam state), comma-separated (default 100MB,1GB)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per size; medians are reported")
    parser.add_argument("--dir", type=Path, default=REPO.parent,
                        help="where to make the temporary folder (default: next to the repo, on its disk)")
    parser.add_argument("--quick", action="store_true", help="a smoke test in a few seconds (50MB, 2 repeats)")
    args = parser.parse_args()
    sizes = parse_sizes("50MB") if args.quick else args.sizes
    repeats = 2 if args.quick else args.repeats
    folder = Path(tempfile.mkdtemp(prefix="tmp-bench-", dir=args.dir))
    print(machine())
    print(f"temporary files in {folder} (removed after); {repeats} repeats per size; automatic saves off; "
          "the training thread is idle while the checkpoint thread writes")
    results = []
    try:
        for nbytes in sizes:
            results.append(bench_size(nbytes, repeats, folder))
            gc.collect()
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    rows, checks = [], []
    for r in results:
        size = f"{r['state_bytes'] / 1e6:.0f} MB"
        rows.append([size, f"{r['stall'] * 1e3:.1f} ({r['stall_spread']})", f"{r['first_stall'] * 1e3:.1f}", f"{r['reserve'] * 1e3:.0f}",
                     f"{r['sync'] * 1e3:.0f}", f"{r['copy'] * 1e3:.1f}",
                     f"{r['stall'] / r['sync']:.3f}x", f"{r['stall'] / r['copy']:.2f}x",
                     f"{r['agent_mbs']:.0f} ({r['agent_spread']})", f"{r['disk_mbs']:.0f} ({r['disk_spread']})",
                     f"{r['agent_mbs'] / r['disk_mbs']:.0%}"])
        checks += [
            f"{size}: stall / sync save {r['stall'] / r['sync']:.3f}x (target <= {TARGET_VS_SYNC}x): {verdict(r['stall'] <= TARGET_VS_SYNC * r['sync'])}",
            f"{size}: stall / plain copy {r['stall'] / r['copy']:.2f}x (target <= {TARGET_VS_COPY}x): {verdict(r['stall'] <= TARGET_VS_COPY * r['copy'])}",
            f"{size}: agent write / disk {r['agent_mbs'] / r['disk_mbs']:.0%} (target >= {TARGET_THROUGHPUT:.0%}): {verdict(r['agent_mbs'] >= TARGET_THROUGHPUT * r['disk_mbs'])}",
        ]
    print()
    print(table(["state", "agent stall ms (range)", "first stall ms", "reserve ms", "sync save ms", "plain copy ms",
                 "stall/sync", "stall/copy", "agent write MB/s (range)", "disk MB/s (range)", "write/disk"], rows))
    print()
    print("\n".join(checks))


if __name__ == "__main__":
    main()
