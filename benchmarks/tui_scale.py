"""How the TUI copes with many runs and long histories: refresh cost, UI responsiveness, chart.

    python benchmarks/tui_scale.py [--runs 100] [--writing 20] [--seconds 15] [--long-steps 200000] [--quick]

The real app (`TrainwardenApp`) runs headless (Textual's `run_test`, 160 x 50) over `--runs` stores
with a history of 10,000 steps each; `--writing` of them are written by a separate process the way
agents write (a window of 50 steps and a run-row update every second per store).
  refresh     wall time of one read of the runs table (all stores), and the period between reads;
  UI lag      a 20 ms timer on the app's event loop records how late it fires: its p99 and max are
              how long a key press could wait. Side by side, the baseline that reads the stores on
              the event loop itself (what a TUI without worker threads does), and a naive reader
              that re-reads every store each second (no `data_version` skip).
  chart       one run of `--long-steps` steps with a rollback: time to build and render its chart
              (on the UI thread, once per second while the detail is open) and to read its detail.
Targets (issue 4): a refresh at least once a second with 100 runs; the UI never stalls for long
(p99 lag <= 50 ms); the chart of a long run renders in <= 100 ms.
"""
from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing as mp
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, machine, table, verdict

from trainwarden.agent.store import Store
from trainwarden.agent.window import window_stats
from trainwarden.tui import plot
from trainwarden.tui.app import TrainwardenApp
from trainwarden.tui.chart import render
from trainwarden.tui.model import DetailReader, RunsReader, read_row

WINDOW = 50


def make_store(path: Path, steps: int, rng: random.Random, fork_at: int | None = None) -> None:
    with Store.open(path, create=True) as s:
        s.init_run(path.name, {"heartbeat_interval_s": 2.0}, "bench")
        s.update_run(status="running", pid=None, host=None, heartbeat_at=time.time(), lr=1e-3)
        with s.transaction():
            for first in range(1, steps + 1, WINDOW):
                losses = [2.0 * math.exp(-first / 5000) * math.exp(rng.gauss(0, 0.1)) for _ in range(WINDOW)]
                s.add_window(0, first, losses, window_stats(losses), 1e-3, 100.0)
                if first % 2000 == 1:
                    cid, _ = s.add_checkpoint(first + WINDOW - 1, 0, min(losses), "best")
                    s.checkpoint_ready(cid, 1000, "xxh3_128:00")
                    s.add_metric(0, first + WINDOW - 1, "val_loss", sum(losses) / WINDOW * 1.1)
            if fork_at is not None:
                s.add_branch(1, 0, fork_at, None, "bench rollback")
                for first in range(fork_at + 1, steps + 1, WINDOW):
                    losses = [1.5 * math.exp(-first / 5000) * math.exp(rng.gauss(0, 0.1)) for _ in range(WINDOW)]
                    s.add_window(1, first, losses, window_stats(losses), 5e-4, 100.0)
                s.update_run(branch=1)
        s.update_run(step=steps)


def writer(paths: list[str], stop: mp.Event) -> None:  # type: ignore[valid-type]
    """Plays the agents of the written runs: a window and a run-row update per store per second."""
    rng = random.Random(1)
    stores = [Store.open(p) for p in paths]
    step = {p: s.run().step for p, s in zip(paths, stores)}
    while not stop.is_set():
        t0 = time.monotonic()
        for p, s in zip(paths, stores):
            losses = [math.exp(rng.gauss(0, 0.1)) for _ in range(WINDOW)]
            with s.transaction():
                s.add_window(0, step[p] + 1, losses, window_stats(losses), 1e-3, 100.0)
                step[p] += WINDOW
                s.update_run(step=step[p], heartbeat_at=time.time(), last_loss=losses[-1])
        stop.wait(max(0.0, 1.0 - (time.monotonic() - t0)))


class NaiveReader(RunsReader):
    """The baseline reader: opens and reads every store in full each time."""

    def _read_one(self, path, now):
        with Store.open(path) as s:
            return read_row(s, path, now)[0]


async def measure(root: Path, seconds: float, variant: str) -> dict[str, float]:
    app = TrainwardenApp([root], refresh_s=1.0)
    if variant == "naive":
        app.reader = NaiveReader()
    reads: list[float] = []
    original = app._read_all

    def timed(now: float):
        t0 = time.perf_counter()
        try:
            return original(now)
        finally:
            reads.append(time.perf_counter() - t0)

    app._read_all = timed  # type: ignore[method-assign]
    shown: list[float] = []  # when each read reached the screen
    original_show = app._show

    def counted(rows: list, notes: list) -> None:
        original_show(rows, notes)
        shown.append(time.monotonic())

    app._show = counted  # type: ignore[method-assign]
    if variant == "on the UI loop":
        async def inline_poll() -> None:  # what a TUI without worker threads does
            try:
                app._show(*app._read_all(app.settings.clock()))
            finally:
                app._polling = False
        app._poll = inline_poll  # type: ignore[method-assign]
    lags: list[float] = []
    poll_times: list[float] = []
    async with app.run_test(size=(160, 50)) as pilot:
        deadline = time.monotonic() + 120
        while not shown:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{variant}: the app never finished its first read")
            await pilot.pause(0.05)
        seen = len(shown)
        t_end = time.monotonic() + seconds
        expected = time.monotonic() + 0.02
        while time.monotonic() < t_end:
            await asyncio.sleep(max(0.0, expected - time.monotonic()))
            now = time.monotonic()
            lags.append(now - expected)
            expected = now + 0.02
            if len(shown) != seen:
                seen = len(shown)
                poll_times.append(now)
        await pilot.press("o")  # the app still answers keys
    periods = [b - a for a, b in zip(poll_times, poll_times[1:])]
    lags.sort()
    return {
        "read_p50": statistics.median(reads), "read_max": max(reads),
        "period": statistics.median(periods) if periods else math.nan,
        "lag_p99": lags[int(len(lags) * 0.99) - 1], "lag_max": lags[-1], "polls": len(poll_times),
    }


def chart_cost(path: Path, repeats: int) -> dict[str, float]:
    reader = DetailReader(path)
    t0 = time.perf_counter()
    detail = reader.read(time.time())
    first_read = time.perf_counter() - t0
    builds, renders = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        layers, markers, frame = plot.build(detail)
        t1 = time.perf_counter()
        render(layers, markers, frame, 150, 30)
        t2 = time.perf_counter()
        builds.append(t1 - t0)
        renders.append(t2 - t1)
    reader.close()
    return {"windows": len(detail.windows), "first_read": first_read, "build": statistics.median(builds),
            "render": statistics.median(renders)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--writing", type=int, default=20)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--long-steps", type=int, default=200_000)
    p.add_argument("--dir", type=Path, default=REPO.parent)
    p.add_argument("--quick", action="store_true", help="20 runs, 5 writing, 4 s, a 20,000-step chart")
    a = p.parse_args()
    if a.quick:
        a.runs, a.writing, a.seconds, a.long_steps = 20, 5, 4.0, 20_000
    print(machine())
    tmp = Path(tempfile.mkdtemp(prefix="tmp-bench-tui-", dir=a.dir))
    try:
        root = tmp / "runs"
        rng = random.Random(0)
        paths = [root / f"run-{i:03d}" for i in range(a.runs)]
        for path in paths:
            make_store(path, 10_000, rng)
        long_run = tmp / "long" / "long-run"
        make_store(long_run, a.long_steps, rng, fork_at=a.long_steps * 3 // 4)
        print(f"{a.runs} runs of 10,000 steps, {a.writing} written every second; {a.seconds:g} s per variant; "
              f"temporary files in {tmp} (removed after)\n")

        stop = mp.Event()
        proc = mp.Process(target=writer, args=([str(x) for x in paths[:a.writing]], stop), daemon=True)
        proc.start()
        results = {}
        try:
            for variant in ("trainwarden", "naive", "on the UI loop"):
                results[variant] = asyncio.run(measure(root, a.seconds, variant))
        finally:
            stop.set()
            proc.join(10)
        rows = [[v, f"{r['read_p50'] * 1000:.1f}", f"{r['read_max'] * 1000:.1f}", f"{r['period']:.2f}",
                 f"{r['lag_p99'] * 1000:.1f}", f"{r['lag_max'] * 1000:.1f}", r["polls"]] for v, r in results.items()]
        print(table(["variant", "read ms (median)", "read ms (max)", "refresh period s", "UI lag p99 ms",
                     "UI lag max ms", "reads"], rows))

        c = chart_cost(long_run, 5)
        print()
        print(table(["long run", "windows", "detail first read ms", "chart build ms", "chart render ms"],
                    [[f"{a.long_steps:,} steps", c["windows"], f"{c['first_read'] * 1000:.0f}",
                      f"{c['build'] * 1000:.1f}", f"{c['render'] * 1000:.1f}"]]))
        tw = results["trainwarden"]
        print()
        print(f"refresh period {tw['period']:.2f} s with {a.runs} runs (target <= 1 s + read time): "
              f"{verdict(tw['period'] <= 1.0 + tw['read_p50'] + 0.1)}")
        print(f"UI lag p99 {tw['lag_p99'] * 1000:.1f} ms (target <= 50 ms): {verdict(tw['lag_p99'] <= 0.05)}")
        chart_ms = (c["build"] + c["render"]) * 1000
        print(f"chart of a {a.long_steps:,}-step run {chart_ms:.0f} ms (target <= 100 ms): {verdict(chart_ms <= 100)}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
