"""What `trainwarden run` is asked to do (`LaunchOptions`), and the launcher's decisions as pure
functions: how long to wait before a restart, what follows an
attempt, how a job's end is reported, what command line runs a job under torchrun, which signal
the job gets when the launcher is asked to stop, and whether a program can be started at all.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_BACKOFF_S = 60.0
HEALTHY_AFTER_S = 600.0
EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND = 126, 127
PREEMPT_SIGNAL = signal.SIGUSR1
TORCHRUN_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
"""torchrun's default --signals-to-handle, and SIGUSR1: it passes each on to every rank and waits for them."""
_PYTHON = re.compile(r"python[0-9.]*")

Verdict = Literal["finished", "stopped", "restart", "give_up"]


class LaunchOptions(BaseModel):
    """What the launcher is asked to do: the options of `trainwarden run`."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    command: list[str] = Field(min_length=1)
    """The training command: a program and its arguments."""
    root: Path
    """The folder holding runs; the run folder is ROOT/NAME."""
    name: str | None = None
    """The run folder's name under the root; None: the script's name and the start time."""
    max_restarts: int = Field(3, ge=0)
    """Restarts after crashes or hangs before giving up."""
    policy: str | None = None
    """Policy TOML whose `detect.hung_after_s` / `stuck_after_s` say when the job is hung (the run's
    warden.toml applies on top); None: the defaults."""
    backoff: float = Field(1.0, gt=0.0)
    """Seconds before the first restart; doubled at each restart in a row, capped at MAX_BACKOFF_S."""
    kill_grace: float = Field(30.0, ge=0.0)
    """Seconds between the stop signal (SIGTERM or SIGUSR1) and SIGKILL when stopping the job."""
    nproc_per_node: int | None = Field(None, ge=1)
    """Run the job in this many ranks under torchrun; None: a plain process."""


def backoff_delay(streak: int, initial: float, cap: float = MAX_BACKOFF_S) -> float:
    """Seconds to wait before a restart that follows `streak` restarts in a row: initial, 2x, 4x...,
    capped (at `initial` itself when that is larger: the user asked for it)."""
    return min(max(cap, initial), initial * 2.0 ** min(streak, 64))


def next_streak(streak: int, ran_s: float) -> int:
    """The backoff streak after an attempt that ran `ran_s` seconds: a long healthy run starts it over."""
    return 0 if ran_s >= HEALTHY_AFTER_S else streak


def exit_status(returncode: int) -> int:
    """A process's exit status as a shell reports it: 128+N for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def describe_exit(returncode: int) -> str:
    """How the process ended, in words for an event: "exit code 1", "killed by SIGKILL (exit status 137)"."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"killed by {name} (exit status {exit_status(returncode)})"


def verdict(returncode: int, *, stopped: bool, hung: bool, restarts: int, max_restarts: int) -> Verdict:
    """What follows an attempt: a stop asked for by the user ends it whatever the exit code; a clean
    exit finishes; a crash, or any exit after a hang was found, restarts while restarts remain."""
    if stopped:
        return "stopped"
    if returncode == 0 and not hung:
        return "finished"
    return "restart" if restarts < max_restarts else "give_up"


def default_name(command: Sequence[str], now: float) -> str:
    """The script's stem (or `-m` module, or program) and the local start time: train-20261125-101500."""
    stem = Path(command[0]).name
    for i, arg in enumerate(command[1:], 1):
        if arg.endswith(".py"):
            stem = Path(arg).stem
            break
        if arg == "-m" and i + 1 < len(command):
            stem = command[i + 1].rsplit(".", 1)[-1]
            break
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._") or "job"
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}"


def torchrun_target(command: Sequence[str]) -> list[str]:
    """What follows torchrun's options to run `command` in each rank: a script and its arguments
    (torchrun runs it with its own interpreter, unbuffered), `-m MODULE ...`, or `--no-python`
    and a program. ValueError for what torchrun cannot run that way."""
    program, args = command[0], list(command[1:])
    if not _PYTHON.fullmatch(Path(program).name):
        target = list(command) if program.endswith(".py") else ["--no-python", *command]
    else:
        while args[:1] == ["-u"]:  # torchrun runs python -u anyway
            args = args[1:]
        if args[:1] and args[0].startswith("-m") and len(args[0]) > 2:  # python -mpkg.mod
            args = ["-m", args[0][2:], *args[1:]]
        if not args or (args[0].startswith("-") and not (args[0] == "-m" and len(args) > 1)):
            raise ValueError(f"--nproc-per-node runs `python [-u] SCRIPT ...` or `python -m MODULE ...`, not "
                             f"`{shlex.join(command[:2])} ...`: torchrun passes no other interpreter options")
        target = args
    if target[:2] == ["-m", "torch.distributed.run"] or Path(target[target[0] == "--no-python"]).name == "torchrun":
        raise ValueError("--nproc-per-node runs torchrun itself: give the training command, not torchrun")
    return target


def torchrun_argv(nproc: int, command: Sequence[str], *, python: str, forwards_usr1: bool) -> list[str]:
    """The command line running `command` in `nproc` ranks under torchrun. With --max-restarts 0 a
    failed rank ends the group and torchrun exits non-zero: restarting is the launcher's business.
    `forwards_usr1`: this torchrun knows --signals-to-handle, so it can pass SIGUSR1 on."""
    argv = [python, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), "--max-restarts", "0"]
    if forwards_usr1:
        argv += ["--signals-to-handle", TORCHRUN_SIGNALS]
    return argv + torchrun_target(command)


def forwarded_signal(received: int, *, grouped: bool, forwards_usr1: bool) -> int:
    """The signal the job gets when the launcher is asked to stop by `received`: SIGUSR1 as it is
    (the agent saves and exits on it as on SIGTERM) where it can reach the ranks, else SIGTERM."""
    if received == PREEMPT_SIGNAL and (forwards_usr1 or not grouped):
        return PREEMPT_SIGNAL
    return signal.SIGTERM


def stopped_status(returncode: int, sent: int | None, *, grouped: bool) -> int:
    """The exit status of a job stopped by the launcher with signal `sent`: torchrun exits with 1
    after it has passed a signal on to its ranks (and they ended), which is reported as the ranks'
    128+N, as a plain job that got the signal reports it."""
    if grouped and sent is not None and returncode == 1:
        return 128 + sent
    return exit_status(returncode)


def descendants(parents: Mapping[int, int], root: int) -> list[int]:
    """Every process below `root`, given each process's parent: children before grandchildren."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found, queue = [], list(children.get(root, ()))
    while queue:
        pid = queue.pop(0)
        if pid != root and pid not in found:  # a pid reused meanwhile cannot make a loop
            found.append(pid)
            queue.extend(children.get(pid, ()))
    return found


def program_problem(program: str) -> tuple[int, str] | None:
    """(exit status, message) when `program` cannot be started, as a shell would say it; else None."""
    if "/" not in program:
        return None if shutil.which(program) else (EXIT_NOT_FOUND, f"{program}: command not found")
    if not os.path.exists(program):
        return EXIT_NOT_FOUND, f"{program}: no such file"
    if os.path.isdir(program) or not os.access(program, os.X_OK):
        return EXIT_NOT_EXECUTABLE, f"{program}: cannot execute (a folder, or no execute permission)"
    return None


def group_problem(target: Sequence[str]) -> tuple[int, str] | None:
    """(exit status, message) when torchrun's `target` (see torchrun_target) cannot be started; else None."""
    if target[0] == "--no-python":
        return program_problem(target[1])
    if target[0] == "-m" or os.path.isfile(target[0]):
        return None
    return EXIT_NOT_FOUND, f"{target[0]}: no such file"
