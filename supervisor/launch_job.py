"""The launched job's processes: one attempt as a process group (stop it, kill it and everything
below it, end what it left behind), the stop signals the launcher receives, and what the
installed torchrun can do.
"""
from __future__ import annotations

import importlib.metadata
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from .launch_rules import PREEMPT_SIGNAL, descendants

ENV_RUN_DIR = "TRAINWARDEN_RUN_DIR"  # read by the agent's attach(); spelled here to keep torch out of the CLI
ENV_RESTART_COUNT = "TRAINWARDEN_RESTART_COUNT"
ENV_SHUTDOWN_TIMEOUT = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


@dataclass(frozen=True)
class Ending:
    """How one attempt ended."""

    returncode: int
    """As subprocess gives it: negative for death by a signal."""
    stopped: bool
    """The user asked the launcher to stop."""
    hung: bool
    """The job was found hung and stopped by the launcher."""
    ran_s: float
    """How long the attempt ran."""
    sent: int | None = None
    """The stop signal the launcher sent to the main process, if any."""


def _ignore_usr1() -> None:
    """In the child before exec: SIGUSR1 ignored, which exec keeps (torchrun would die of one that
    came before it installs its handlers; each rank's agent installs its own)."""
    signal.signal(PREEMPT_SIGNAL, signal.SIG_IGN)


class Job:
    """One attempt: the job's process, leader of a process group of its own."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], *, grouped: bool) -> None:
        self.started_at = time.time()  # the agent's started_at must be later for it to be this attempt's
        self._t0 = time.monotonic()
        self.proc = subprocess.Popen(list(argv), env=env, stdin=subprocess.DEVNULL, process_group=0,
                                     preexec_fn=_ignore_usr1 if grouped else None)
        self.pid = self.proc.pid
        self.kill_at: float | None = None
        """When to SIGKILL the group after asking the job to stop (monotonic); None: no deadline."""
        self.stopping = False
        """The launcher has sent a stop signal or SIGKILL: the job is no longer judged for hangs."""
        self.sent: int | None = None
        """The first stop signal sent to the main process, if any."""

    @property
    def ran_s(self) -> float:
        return time.monotonic() - self._t0

    def stop(self, grace: float, signum: int = signal.SIGTERM) -> None:
        """`signum` to the main process (SIGTERM or SIGUSR1: the agent's signal to save and exit;
        torchrun passes it on), SIGCONT to the group so a stopped process sees it, SIGKILL after
        `grace` seconds."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
            self.sent = self.sent or signum
            self._signal_tree(signal.SIGCONT)
        if not self.stopping:
            self.stopping = True
            self.kill_at = time.monotonic() + grace

    def kill(self) -> None:
        self._signal_tree(signal.SIGKILL)
        self.stopping = True
        self.kill_at = None

    def end_leftovers(self) -> None:
        """SIGTERM (and SIGCONT) to what the main process left behind in its group, such as orphaned
        workers, so that nothing holds memory or the GPU into the next attempt. No waiting: a clean
        exit or a restart is not held up by a straggler."""
        self._signal_group(signal.SIGTERM)
        self._signal_group(signal.SIGCONT)

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.pid, signum)
        except OSError:  # no member left (ESRCH), or not ours any more
            pass

    def _signal_tree(self, signum: int) -> None:
        """`signum` to the group and to every process below the main one: torchrun starts each rank
        in a session of its own, which the group's signal does not reach. A rank left alive by a
        SIGKILL to torchrun alone would hold its GPU into the next attempt."""
        below = descendants(_parents(), self.pid)  # before the group's signal: orphans cannot be found
        self._signal_group(signum)
        for pid in below:
            try:
                os.kill(pid, signum)
            except OSError:
                pass


def _parents() -> dict[int, int]:
    """Each process's parent, from /proc (Linux); empty where it cannot be read."""
    parents: dict[int, int] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return parents
    for entry in entries:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()  # the name, in parentheses, may hold spaces
                parents[int(entry)] = int(fields[1])
            except (OSError, IndexError, ValueError):  # ended meanwhile
                pass
    return parents


class StopSignals:
    """SIGINT, SIGTERM and SIGUSR1 received while the launcher runs; the handler only notes them and
    the supervising loop acts, so no store write or kill happens inside a handler."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)



def torchrun_forwards_usr1() -> bool:
    """Whether the torch installed with this interpreter (the one torchrun runs under) has torchrun's
    --signals-to-handle (torch 2.9 on). Read from its source, not by importing torch, which takes
    seconds; where it cannot be read, the old way (SIGTERM) is taken."""
    try:
        source = importlib.metadata.distribution("torch").locate_file("torch/distributed/run.py")
        return "--signals-to-handle" in Path(str(source)).read_text(encoding="utf-8")
    except (importlib.metadata.PackageNotFoundError, OSError, UnicodeDecodeError):
        return False
