"""What the benchmarks share: the machine line, a plain-text table, and child processes that are
always ended.

Figures from a shared, noisy machine mean little without the machine they came from, so every
script prints it first.
"""
from __future__ import annotations

import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


# A benchmark stopped with SIGTERM (a test's timeout, `kill`) unwinds like Ctrl-C: its `finally`
# and `with Children()` blocks end the daemons and trainings it started.
signal.signal(signal.SIGTERM, _exit_on_sigterm)


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (the platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    """One line naming the machine, the software and the date of a measurement."""
    return (f"{time.strftime('%Y-%m-%d %H:%M %Z')} | nproc {os.cpu_count()} | {cpu_model()} | "
            f"torch {torch.__version__} (threads {torch.get_num_threads()}) | Python {sys.version.split()[0]}")


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> str:
    """min..max of the repeats, so a reader sees how noisy the median is."""
    return f"{min(values):.4g}..{max(values):.4g}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A left-aligned text table, also valid Markdown so it can be pasted into the README."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


class Children:
    """The processes a benchmark starts, each in a session of its own, all ended when the `with`
    block is left, however it is left (an error, a timeout, Ctrl-C).

    Ending a child: SIGTERM to its process group, then SIGINT (`trainwarden run` takes a second
    stop signal as the order to SIGKILL its job's whole tree, which runs in a group of its own),
    then SIGKILL to the group.
    """

    def __init__(self, grace_s: float = 15.0) -> None:
        self.grace_s = grace_s
        self._procs: list[subprocess.Popen] = []

    def __enter__(self) -> "Children":
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self._procs):
            self.end(proc)

    def start(self, args: Sequence[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start `args` with stdout and stderr going to `log`."""
        with open(log, "w") as fh:
            proc = subprocess.Popen(list(args), stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                    start_new_session=True, env={**os.environ, **(env or {})})
        self._procs.append(proc)
        return proc

    def run(self, args: Sequence[str], log: Path, timeout_s: float, env: dict[str, str] | None = None) -> None:
        """Run `args` to its end; raise if it fails or outlives `timeout_s` (it is ended then)."""
        proc = self.start(args, log, env)
        try:
            code = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.end(proc)
            raise RuntimeError(f"{' '.join(args)}: still running after {timeout_s:.0f}s, ended; see {log}") from None
        if code != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise RuntimeError(f"{' '.join(args)}: exit {code}; the end of {log}:\n{tail}")

    def end(self, proc: subprocess.Popen) -> None:
        for signum, wait_s in ((signal.SIGTERM, self.grace_s), (signal.SIGINT, 5.0), (signal.SIGKILL, 5.0)):
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, signum)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                pass
        try:  # what is left of its group once it has exited (orphans)
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
