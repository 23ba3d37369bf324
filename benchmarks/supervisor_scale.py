"""How the supervisor daemon copes with many runs: intervention latency, its CPU and memory, its
idle cost, and how fast it finds a new run.

    python benchmarks/supervisor_scale.py [--runs 200] [--rounds 3] [--spread 10] [--idle-runs 50]
                                          [--idle-s 30] [--discoveries 7] [--dir PARENT] [--log FILE] [--quick]

The real daemon runs as its own process (`trainwarden supervise --root TMP`, default policy) and is
measured from outside: its stderr is read line by line (each line timed on arrival), its CPU and
memory from /proc/<pid>/stat and /proc/<pid>/status.
  latency     N running runs (`--runs`), written by a few writer processes (each owns a slice of
              the stores, one Store connection per store) that play the agents: the run row is
              `running` with the writer's pid and host, a heartbeat every 2 s, a window of 50
              healthy noisy losses (1.0 x exp(N(0, 0.1))) every 1 s per store, each window with its
              run-row update in one transaction as the agent's writer does, and a ready checkpoint
              (a tiny real file, never loaded) after the first window. After a warm-up of >= 8
              windows each store writes, at a random moment, one rebound window (losses x5); the
              daemon answers with an intervention, `rollback` + `scale_lr` commands in the store.
              Latency = the commands' created_at - the wall time just after the rebound window's
              commit. The writers never apply the commands (the run keeps writing healthy windows).
              Stores are made complete in a staging folder and renamed into the root, so the daemon
              never sees a store without its run row. Each round has fresh stores; the figures are
              medians over rounds, the pooled ones are beside them. The daemon ticks every run once a
              second, so the latency is about uniform over 0..1 s plus the tick's own work.
  daemon      CPU (% of one core) over the rounds' writing time, and peak RSS (VmHWM).
  idle        `--idle-runs` runs, finished or paused, with a history and no writer: the daemon's
              CPU over `--idle-s` seconds after it has adopted them all and settled.
  discovery   while that daemon watches the idle runs: wall time from making a new run folder and
              its store (Store.open(create=True), init_run, status running: what attach() does)
              until the daemon logs `new run` for it.
Targets: intervention latency p99 <= 2 s; idle CPU < 1% of one core; discovery median <= 2 s.
"""
from __future__ import annotations

import argparse
import heapq
import math
import multiprocessing as mp
import os
import queue
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import REPO, machine, median, spread, table, verdict

from trainwarden.agent import __version__ as VERSION
from trainwarden.agent.checkpoint import file_checksum
from trainwarden.agent.store import Store
from trainwarden.agent.window import window_stats

TARGET_P99_S = 2.0
TARGET_IDLE_CPU = 1.0  # % of one core
TARGET_DISCOVERY_S = 2.0

WINDOW = 50            # steps per window (the detectors' default)
WINDOW_S = 1.0         # seconds between a store's windows
HEARTBEAT_S = 2.0      # seconds between a store's heartbeats
POLL_S = 0.25          # how often a writer looks for the daemon's commands in a store that rebounded
WARMUP_WINDOWS = 8     # healthy windows before the earliest rebound
REBOUND_FACTOR = 5.0
NOISE = 0.1            # sigma of the log-normal noise of the healthy losses
LR = 1e-3
DRAIN_S = 10.0         # how long a round waits for answers after its last rebound
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------- the daemon
def daemon_command(root: Path) -> list[str]:
    """`trainwarden supervise --root ROOT`: the console script next to this interpreter (no pyenv
    shim in between, so the pid is the daemon's), else the one on PATH, else `-m`."""
    local = Path(sys.executable).parent / "trainwarden"
    exe = str(local) if local.is_file() else shutil.which("trainwarden")
    head = [exe] if exe else [sys.executable, "-m", "trainwarden.supervisor"]
    return [*head, "supervise", "--root", str(root)]


class Daemon:
    """The daemon process; a thread reads its stderr and times each line on arrival (the log's own
    timestamps have one-second resolution)."""

    NEW_RUN = re.compile(r" INFO new run (.+)$")

    def __init__(self, root: Path) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(daemon_command(root), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.pid = self.proc.pid
        self.lines: list[tuple[float, str]] = []
        self.adopted: dict[str, float] = {}
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            t = time.time()
            line = line.rstrip("\n")
            with self._cond:
                self.lines.append((t, line))
                m = self.NEW_RUN.search(line)
                if m:
                    self.adopted.setdefault(m.group(1), t)
                self._cond.notify_all()

    def wait_adopted(self, folders: list[Path], timeout: float) -> bool:
        names = [str(f) for f in folders]
        deadline = time.monotonic() + timeout
        with self._cond:
            while not all(n in self.adopted for n in names):
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return False
                self._cond.wait(min(left, 0.5))
        return True

    def adopted_at(self, folder: Path) -> float | None:
        with self._cond:
            return self.adopted.get(str(folder))

    def count(self, pattern: str) -> int:
        with self._cond:
            return sum(1 for _, line in self.lines if pattern in line)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_s(self) -> float:
        """User + system CPU seconds of the daemon, all its threads."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def mem_mib(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) in MiB."""
        out = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
        return out.get("VmRSS", 0.0), out.get("VmHWM", 0.0)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)

    def tail(self, n: int = 20) -> str:
        with self._cond:
            return "\n".join(line for _, line in self.lines[-n:])


class CpuMeter:
    """Samples the daemon's CPU once a second: the mean over a span and the busiest second."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.samples: list[tuple[float, float]] = []  # (monotonic, cpu seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), self.daemon.cpu_s()))
            except OSError:
                return
            self._stop.wait(1.0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def span(self, t0: float, t1: float) -> tuple[float, float]:
        """(mean %, busiest 1 s %) of one core between monotonic times t0 and t1."""
        pts = [p for p in self.samples if t0 <= p[0] <= t1]
        if len(pts) < 2:
            return math.nan, math.nan
        mean = (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0]) * 100
        peak = max((b[1] - a[1]) / (b[0] - a[0]) * 100 for a, b in zip(pts, pts[1:]))
        return mean, peak


# -------------------------------------------------------------------- the writers
def healthy_losses(rng: random.Random, factor: float = 1.0) -> list[float]:
    return [factor * math.exp(rng.gauss(0.0, NOISE)) for _ in range(WINDOW)]


@dataclass(order=True)
class _Due:
    at: float
    index: int
    kind: str = field(compare=False)


def writer_main(folders: list[str], rebound_at: list[int], start_at: float, stop: Any, out: Any, seed: int) -> None:
    """One writer process: plays the agent of each store in `folders` until `stop` is set.

    Reports ("rebound", folder, commit time, window index, lag), ("answered", folder, created_at,
    kinds) and finally ("done", pid, max lag); lag = how late a write was against its schedule."""
    rng = random.Random(seed)
    pid, host = os.getpid(), socket.gethostname()
    stores = [Store.open(f) for f in folders]
    now = time.time()
    for s in stores:
        s.update_run(status="running", pid=pid, host=host, started_at=now, heartbeat_at=now, lr=LR)
    windows = [0] * len(stores)
    pending: set[int] = set()  # rebounded, not answered yet
    due: list[_Due] = []
    for i in range(len(stores)):
        phase = rng.random()
        heapq.heappush(due, _Due(start_at + phase * WINDOW_S + WINDOW_S, i, "window"))
        heapq.heappush(due, _Due(start_at + phase * HEARTBEAT_S, i, "heartbeat"))
    next_poll = time.monotonic() + POLL_S
    max_lag = 0.0
    try:
        while not stop.is_set():
            wall = time.time()
            if due and due[0].at <= wall:
                d = heapq.heappop(due)
                max_lag = max(max_lag, wall - d.at)
                s, i = stores[d.index], d.index
                if d.kind == "heartbeat":
                    s.update_run(heartbeat_at=time.time(), step=windows[i] * WINDOW)
                    heapq.heappush(due, _Due(d.at + HEARTBEAT_S, i, "heartbeat"))
                    continue
                k = windows[i]
                rebound = k == rebound_at[i]
                losses = healthy_losses(rng, REBOUND_FACTOR if rebound else 1.0)
                stats = window_stats(losses)
                first = k * WINDOW + 1
                with s.transaction():
                    s.add_window(0, first, losses, stats, LR, WINDOW / WINDOW_S)
                    s.update_run(step=first + WINDOW - 1, last_loss=stats["mean"], lr=LR)
                committed = time.time()
                windows[i] = k + 1
                if rebound:
                    pending.add(i)
                    out.put(("rebound", folders[i], committed, k, committed - d.at))
                if k == 0:  # a ready checkpoint early on: the rollback target (never loaded)
                    ckpt_id, rel = s.add_checkpoint(first + WINDOW - 1, 0, stats["mean"], "best")
                    path = s.run_dir / rel
                    path.write_bytes(b"trainwarden benchmark: not a checkpoint\n")
                    s.checkpoint_ready(ckpt_id, path.stat().st_size, file_checksum(path))
                heapq.heappush(due, _Due(d.at + WINDOW_S, i, "window"))
                continue
            if pending and time.monotonic() >= next_poll:
                next_poll = time.monotonic() + POLL_S
                for i in sorted(pending):
                    cmds = stores[i].commands()
                    if cmds:
                        pending.discard(i)
                        out.put(("answered", folders[i], min(c.created_at for c in cmds), sorted({c.kind for c in cmds})))
                continue
            wait = min(0.05, due[0].at - time.time()) if due else 0.05
            if wait > 0:
                stop.wait(wait)
    finally:
        now = time.time()
        for i, s in enumerate(stores):
            try:
                s.update_run(status="finished", ended_at=now, heartbeat_at=now, step=windows[i] * WINDOW)
            finally:
                s.close()
        out.put(("done", pid, max_lag))


# ----------------------------------------------------------------------- helpers
def make_store(folder: Path, status: str = "created", windows: int = 0, seed: int = 0) -> None:
    """A complete store: run row (and a history of healthy windows and a checkpoint if asked)."""
    rng = random.Random(seed)
    with Store.open(folder, create=True) as s:
        s.init_run(folder.name, {}, VERSION)
        if not windows:
            return
        now = time.time()
        with s.transaction():
            s.update_run(status="running", pid=os.getpid(), host=socket.gethostname(), started_at=now, heartbeat_at=now)
            for k in range(windows):
                losses = healthy_losses(rng)
                s.add_window(0, k * WINDOW + 1, losses, window_stats(losses), LR, WINDOW / WINDOW_S)
            ckpt_id, rel = s.add_checkpoint(windows * WINDOW, 0, 1.0, "last")
            path = s.run_dir / rel
            path.write_bytes(b"trainwarden benchmark: not a checkpoint\n")
            s.checkpoint_ready(ckpt_id, path.stat().st_size, file_checksum(path))
            s.update_run(status=status, step=windows * WINDOW, ended_at=time.time(), last_loss=1.0, lr=LR)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); inf (an unanswered rebound) sorts last."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def fmt_s(x: float) -> str:
    return "none" if math.isinf(x) else f"{x:.3f}"


def _alive_or_die(daemon: Daemon) -> None:
    if not daemon.alive():
        raise RuntimeError(f"the daemon exited ({daemon.proc.returncode}):\n{daemon.tail()}")


# ----------------------------------------------------------------------- phases
def latency_round(r: int, daemon: Daemon, meter: CpuMeter, root: Path, staging: Path, runs: int,
                  spread_windows: int, rng: random.Random) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    names = [f"run-{i:04d}" for i in range(runs)]
    for n in names:
        make_store(staging / n)
    target = root / f"round-{r}"
    target.mkdir()
    folders, moved_at = [], {}
    for n in names:
        (staging / n).rename(target / n)
        folders.append(target / n)
        moved_at[str(target / n)] = time.time()
    writers = max(2, min(4, math.ceil(runs / 50)))
    slices = [folders[w::writers] for w in range(writers)]
    stop, out = ctx.Event(), ctx.Queue()
    start_at = time.time() + 0.5
    last_rebound_s = WARMUP_WINDOWS + spread_windows + 2.0  # the last rebound, at the latest
    procs = []
    for w, part in enumerate(slices):
        rebound_at = [WARMUP_WINDOWS + rng.randrange(spread_windows) for _ in part]
        p = ctx.Process(target=writer_main, args=([str(f) for f in part], rebound_at, start_at, stop, out, rng.randrange(2**31)),
                        daemon=True)
        p.start()
        procs.append(p)
    rebounds: dict[str, tuple[float, int, float]] = {}
    answers: dict[str, tuple[float, list[str]]] = {}
    lags: list[float] = []
    t0 = time.monotonic()
    deadline = t0 + last_rebound_s + DRAIN_S
    try:
        while time.monotonic() < deadline and (len(rebounds) < runs or len(answers) < runs):
            try:
                msg = out.get(timeout=0.5)
            except queue.Empty:
                _alive_or_die(daemon)
                if any(not p.is_alive() for p in procs):
                    raise RuntimeError("a writer process died")
                continue
            if msg[0] == "rebound":
                rebounds[msg[1]] = (msg[2], msg[3], msg[4])
            elif msg[0] == "answered":
                answers[msg[1]] = (msg[2], msg[3])
        t1 = time.monotonic()
    finally:
        stop.set()
        done = 0
        end = time.monotonic() + 15
        while done < len(procs) and time.monotonic() < end:
            try:
                msg = out.get(timeout=0.5)
            except queue.Empty:
                if all(not p.is_alive() for p in procs):
                    break
                continue
            if msg[0] == "done":
                done += 1
                lags.append(msg[2])
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
    cpu_mean, cpu_peak = meter.span(t0, t1)
    latencies = []
    kinds_ok = 0
    for f in map(str, folders):
        if f in rebounds and f in answers:
            latencies.append(answers[f][0] - rebounds[f][0])
            kinds_ok += {"rollback", "scale_lr"} <= set(answers[f][1])
        else:
            latencies.append(math.inf)
    adopted = [daemon.adopted_at(f) for f in folders]
    discovery = [a - moved_at[str(f)] for f, a in zip(folders, adopted) if a is not None]
    late_adopt = sum(1 for f, a in zip(folders, adopted)
                     if a is None or (str(f) in rebounds and a > rebounds[str(f)][0]))
    rss, _ = daemon.mem_mib()
    shutil.rmtree(target, ignore_errors=True)
    return {"rss": rss,
        "runs": runs, "p50": percentile(latencies, 50), "p99": percentile(latencies, 99), "max": max(latencies),
        "min": min(latencies), "latencies": latencies, "answered": sum(1 for x in latencies if math.isfinite(x)),
        "kinds_ok": kinds_ok, "cpu": cpu_mean, "cpu_peak": cpu_peak, "writer_lag": max(lags, default=math.nan),
        "discovery_max": max(discovery, default=math.nan), "late_adopt": late_adopt, "writers": writers,
        "seconds": t1 - t0,
    }


def idle_and_discovery(daemon: Daemon, root: Path, idle_runs: int, idle_s: float, settle_s: float,
                       discoveries: int, rng: random.Random) -> dict[str, Any]:
    folders = [root / f"idle-{i:04d}" for i in range(idle_runs)]
    if not daemon.wait_adopted(folders, 60):
        _alive_or_die(daemon)
        raise RuntimeError(f"the daemon did not adopt the {idle_runs} idle runs within 60 s:\n{daemon.tail()}")
    time.sleep(settle_s)
    _alive_or_die(daemon)
    t0, c0 = time.monotonic(), daemon.cpu_s()
    time.sleep(idle_s)
    t1, c1 = time.monotonic(), daemon.cpu_s()
    idle_cpu = (c1 - c0) / (t1 - t0) * 100
    idle_rss, _ = daemon.mem_mib()
    unreadable_before = daemon.count("store unreadable")
    found: list[float] = []
    missing = 0
    for i in range(discoveries):
        time.sleep(rng.uniform(0.3, 1.3))  # a random phase against the daemon's 1 s tick
        folder = root / f"new-{i:02d}"
        t = time.time()
        s = Store.open(folder, create=True)  # what attach() does, in its order
        try:
            s.init_run(folder.name, {}, VERSION)
            now = time.time()
            s.update_run(status="running", pid=os.getpid(), host=socket.gethostname(), started_at=now, heartbeat_at=now)
            if daemon.wait_adopted([folder], 10):
                found.append(daemon.adopted_at(folder) - t)  # type: ignore[operator]
            else:
                missing += 1
            s.update_run(status="finished", ended_at=time.time())
        finally:
            s.close()
    _alive_or_die(daemon)
    return {"idle_cpu": idle_cpu, "idle_s": t1 - t0, "idle_rss": idle_rss, "discovery": found,
            "discovery_missing": missing, "unreadable": daemon.count("store unreadable") - unreadable_before}


# ------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="running runs in the latency rounds (default 200)")
    parser.add_argument("--rounds", type=int, default=3, help="latency rounds, fresh stores each (default 3)")
    parser.add_argument("--spread", type=int, default=10,
                        help=f"rebounds fall at random in windows {WARMUP_WINDOWS}..{WARMUP_WINDOWS}+SPREAD-1 (default 10)")
    parser.add_argument("--idle-runs", type=int, default=50, help="finished/paused runs in the idle test (default 50)")
    parser.add_argument("--idle-s", type=float, default=30.0, help="seconds of idle CPU measured (default 30)")
    parser.add_argument("--discoveries", type=int, default=7, help="new runs timed for discovery (default 7)")
    parser.add_argument("--dir", type=Path, default=REPO.parent,
                        help="where to make the temporary folder (default: next to the repo, on its disk)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log", type=Path, help="write the daemons' stderr to this file (for a look at what they did)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test in about half a minute (20 runs, 1 round, 5 s idle, 2 discoveries)")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.rounds, args.spread, args.idle_s, args.discoveries = min(args.runs, 20), 1, 5, 5.0, 2
    settle_s = 3.0 if args.quick else 5.0
    rng = random.Random(args.seed)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # clean up on kill too

    print(machine())
    folder = Path(tempfile.mkdtemp(prefix="tmp-bench-", dir=args.dir)).absolute()
    print(f"temporary files in {folder} (removed after); daemon: {' '.join(daemon_command(Path('ROOT')))}, default policy; "
          f"{args.runs} running runs x {args.rounds} round(s), a window of {WINDOW} steps per store every {WINDOW_S:g} s "
          f"and a heartbeat every {HEARTBEAT_S:g} s; {args.idle_runs} idle runs for {args.idle_s:g} s; "
          f"{args.discoveries} discoveries", flush=True)
    daemons: list[Daemon] = []
    meters: list[CpuMeter] = []
    rounds: list[dict[str, Any]] = []
    try:
        # 1 + 2: latency, and the daemon's CPU and memory meanwhile.
        root, staging = folder / "root", folder / "staging"
        root.mkdir()
        staging.mkdir()
        daemon = Daemon(root)
        daemons.append(daemon)
        meter = CpuMeter(daemon)
        meters.append(meter)
        time.sleep(1.0)
        _alive_or_die(daemon)
        for r in range(args.rounds):
            rounds.append(latency_round(r, daemon, meter, root, staging, args.runs, args.spread, rng))
            _alive_or_die(daemon)
        _, peak_rss = daemon.mem_mib()
        lat_errors = daemon.count("store unreadable") + daemon.count("tick failed")
        meter.stop()
        daemon.stop()

        # 3 + 4: idle CPU, then discovery, with a fresh daemon.
        idle_root = folder / "idle"
        idle_root.mkdir()
        for i in range(args.idle_runs):
            make_store(idle_root / f"idle-{i:04d}", status="paused" if i % 5 == 4 else "finished", windows=20, seed=i)
        daemon = Daemon(idle_root)
        daemons.append(daemon)
        idle = idle_and_discovery(daemon, idle_root, args.idle_runs, args.idle_s, settle_s, args.discoveries, rng)
        daemon.stop()
    finally:
        for m in meters:
            m.stop()
        for d in daemons:
            d.stop()
        shutil.rmtree(folder, ignore_errors=True)
        if args.log:
            args.log.write_text("".join(f"{t:.3f} {line}\n" for d in daemons for t, line in d.lines))

    pooled = [x for r in rounds for x in r["latencies"]]
    p50 = median([r["p50"] for r in rounds])
    p99 = median([r["p99"] for r in rounds])
    worst = max(r["max"] for r in rounds)
    cpu = median([r["cpu"] for r in rounds])
    disc = idle["discovery"]
    disc_med = median(disc) if disc and not idle["discovery_missing"] else math.inf

    print()
    print(table(["round", "runs", "writers", "latency p50 s", "p99 s", "max s", "min s", "answered (rollback+scale_lr)",
                 "daemon CPU % (busiest 1 s)", "daemon RSS MiB", "writer lag max s", "adoption of moved-in runs max s", "seconds"],
                [[r_i, r["runs"], r["writers"], fmt_s(r["p50"]), fmt_s(r["p99"]), fmt_s(r["max"]), fmt_s(r["min"]),
                  f"{r['answered']}/{r['runs']} ({r['kinds_ok']})", f"{r['cpu']:.0f} ({r['cpu_peak']:.0f})", f"{r['rss']:.0f}",
                  f"{r['writer_lag']:.3f}", f"{r['discovery_max']:.2f}", f"{r['seconds']:.0f}"]
                 for r_i, r in enumerate(rounds)]))
    print()
    rows = [
        ["intervention latency p50 (median of rounds)", f"{fmt_s(p50)} s", f"pooled {fmt_s(percentile(pooled, 50))} s"],
        ["intervention latency p99 (median of rounds)", f"{fmt_s(p99)} s", f"pooled {fmt_s(percentile(pooled, 99))} s"],
        ["intervention latency max", f"{fmt_s(worst)} s", f"{len(pooled)} rebounds, {sum(r['answered'] for r in rounds)} answered"],
        [f"daemon CPU, {args.runs} running runs", f"{cpu:.1f}% of a core",
         f"rounds {spread([r['cpu'] for r in rounds])}; busiest second {max(r['cpu_peak'] for r in rounds):.0f}%"],
        ["daemon peak RSS (VmHWM)", f"{peak_rss:.0f} MiB", f"{lat_errors} 'store unreadable'/'tick failed' lines"],
        [f"idle CPU, {args.idle_runs} idle runs", f"{idle['idle_cpu']:.2f}% of a core",
         f"over {idle['idle_s']:.0f} s; RSS {idle['idle_rss']:.0f} MiB"],
        ["discovery of a new run (median)", f"{fmt_s(disc_med)} s",
         f"{len(disc)} runs: {spread(disc) if disc else '-'} s; {idle['discovery_missing']} missed; "
         f"{idle['unreadable']} 'store unreadable' lines"],
    ]
    print(table(["measure", "figure", "detail"], rows))
    print()
    print(f"intervention latency p99 {fmt_s(p99)} s (target <= {TARGET_P99_S:g} s): {verdict(p99 <= TARGET_P99_S)}")
    print(f"idle CPU with {args.idle_runs} idle runs {idle['idle_cpu']:.2f}% of a core "
          f"(target < {TARGET_IDLE_CPU:g}%): {verdict(idle['idle_cpu'] < TARGET_IDLE_CPU)}")
    print(f"discovery of a new run, median {fmt_s(disc_med)} s (target <= {TARGET_DISCOVERY_S:g} s): "
          f"{verdict(disc_med <= TARGET_DISCOVERY_S)}")


if __name__ == "__main__":
    main()
