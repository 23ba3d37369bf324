"""`trainwarden run`: launch a training job under supervision, and restart it when it crashes or hangs.

    trainwarden run [--name N] [--root DIR] [--max-restarts K] [--policy FILE] [--nproc-per-node N] -- python train.py ...

The job finds its run folder in $TRAINWARDEN_RUN_DIR (what `attach()` reads when given no folder)
and calls `run.resume()`, so every restart continues from the newest good checkpoint. It also finds
how many times it has been restarted in $TRAINWARDEN_RESTART_COUNT (0 at the first start). Its
standard input is /dev/null: an unattended job that waited for input would look hung.

Run folder. ROOT/NAME (ROOT: --root, else $TRAINWARDEN_ROOT, else ./runs; NAME: --name, else the
script's name and the start time, e.g. train-20261125-101500). Its store and run row are created at
once, so `trainwarden ls` shows the run while the job is still importing torch. An existing run
folder is reused: launching again with the same --name resumes the run (refused while a live
process is writing it).

Restarts. After a crash (a non-zero exit code, or death by a signal the launcher did not send) or
a hang, the job is started again after a delay of --backoff seconds, doubled at each further
restart and capped at 60 s, up to --max-restarts times; then the launcher gives up. A job that had
run for 10 minutes or more before failing is taken to have been healthy: the delay starts again
from --backoff, but the restart count is never reset. A clean exit (code 0) ends it all.

Hangs. While the job runs, its store is read once a second and the same liveness detector as the
daemon's decides whether it is hung (no heartbeat for `detect.hung_after_s`, or a step that does
not move for `detect.stuck_after_s`, from --policy with the run's warden.toml on top). Only a
process that attached during this attempt is judged, so a job still importing torch is never hung.

Stopping. The job runs in a process group of its own, so a terminal's Ctrl-C reaches the launcher
only; it then stops the job the way a scheduler does, and does not restart it. Whether asked by
SIGINT or SIGTERM, the job's main process gets SIGTERM (the agent saves a checkpoint at the next
step boundary and exits) and its group SIGCONT (a stopped process must run to see it); whatever
is left of the group after --kill-grace seconds gets SIGKILL. A second stop signal (SIGINT,
SIGTERM, SIGUSR1) sends SIGKILL at once. A hung job is stopped the same way, then restarted. Once
the main process has ended, what remains of its group (orphaned workers, say) gets SIGTERM, so
that it holds no memory or GPU into the next attempt.

Process groups. With --nproc-per-node N the job runs under PyTorch's own launcher, `python -m
torch.distributed.run --standalone --nproc-per-node N --max-restarts 0` with trainwarden's own
interpreter: `python [-u] SCRIPT ARGS`, `python -m MODULE ARGS`, `SCRIPT.py ARGS`, or any other
program (run with torchrun's --no-python). When one rank fails, torchrun ends the others and exits
non-zero, and the launcher restarts the whole group as above (every rank resumes from the same
checkpoint). torchrun starts each rank in a session of its own, so what the launcher sends to the
group (SIGCONT, SIGKILL) also goes to every process below the job's main process. Its shutdown
timeout (TORCH_ELASTIC_SHUTDOWN_TIMEOUT, unless set) is --kill-grace, rounded up.

Preemption. SIGUSR1 (Slurm's `#SBATCH --signal=B:USR1@120` warning, sent to the batch shell,
which `exec trainwarden run ...` makes the launcher) stops the job as SIGTERM does, but the job
gets SIGUSR1: the main process of a plain job, every rank of a --nproc-per-node job (torchrun is
told to pass SIGUSR1 on, with --signals-to-handle; a torch too old for that option gets SIGTERM,
which torchrun passes on, and the agent treats both alike). torchrun is started with SIGUSR1
ignored, so a stray one cannot kill it before it installs its handlers. Once the job has exited
(or at once, while waiting to restart), if $SLURM_JOB_ID is set, the launcher runs `scontrol
requeue $SLURM_JOB_ID` once, so that Slurm starts the job again later and it resumes from its
checkpoint; then it exits, without restarting the job itself.

Exit status: the last job's exit code, 128+N when signal N ended it (as shells report it: torchrun
itself exits with 1 after passing a stop signal N on to its ranks, which is reported as 128+N); 2
for a usage error; 127 when the program is not found and 126 when it cannot be executed.

Each start, restart, hang, kill, exit, giving up and requeue is an event in the run's store (source
"launcher") and one line on stderr. The daemon is not needed; nothing is opened but the store.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Literal

from trainwarden.agent import __version__ as VERSION
from trainwarden.agent.store import DB_NAME, Store, StoreError

from .cli import CliError, _count, default_root
from .operator import liveness
from .detectors import DetectorSettings, Finding, LivenessDetectors, LivenessObservation
from .policy import PolicyError, load_policy, with_run_overrides

ENV_RUN_DIR = "TRAINWARDEN_RUN_DIR"  # read by the agent's attach(); spelled here to keep torch out of the CLI
ENV_RESTART_COUNT = "TRAINWARDEN_RESTART_COUNT"
MAX_BACKOFF_S = 60.0
HEALTHY_AFTER_S = 600.0
LIVENESS_INTERVAL_S = 1.0
POLL_S = 0.1
EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND = 126, 127
SOURCE = "launcher"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
PREEMPT_SIGNAL = signal.SIGUSR1
TORCHRUN_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
"""torchrun's default --signals-to-handle, and SIGUSR1: it passes each on to every rank and waits for them."""
ENV_SHUTDOWN_TIMEOUT = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"
_PYTHON = re.compile(r"python[0-9.]*")

Verdict = Literal["finished", "stopped", "restart", "give_up"]


# ------------------------------------------------------------ pure decisions
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


# ------------------------------------------------------------------ the job
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


class _Job:
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


class _Signals:
    """SIGINT, SIGTERM and SIGUSR1 received while the launcher runs; the handler only notes them and
    the supervising loop acts, so no store write or kill happens inside a handler."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_Signals":
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)


# ----------------------------------------------------------------- launcher
class _Launcher:
    """Starts the job, watches it, restarts it; reports through the run's store and stderr."""

    def __init__(self, args: argparse.Namespace, command: list[str], run_dir: Path, store: Store,
                 settings: DetectorSettings, *, argv: list[str] | None = None, forwards_usr1: bool = False) -> None:
        self.command = command
        """The user's command."""
        self.argv = argv or command
        """What is started: the command, or torchrun running it in --nproc-per-node ranks."""
        self.nproc: int | None = args.nproc_per_node
        self.grouped = self.nproc is not None
        self.forwards_usr1 = forwards_usr1
        self.run_dir = run_dir
        self.store = store
        self.max_restarts: int = args.max_restarts
        self.backoff: float = args.backoff
        self.grace: float = args.kill_grace
        self.policy_file: str | None = args.policy
        self.settings = settings
        self.signals = _Signals()

    def run(self) -> int:
        with self.signals:
            status = self._supervise()
            if PREEMPT_SIGNAL in self.signals.received:  # handlers still ours: a second SIGUSR1 is only noted
                self._requeue()
            return status

    def _supervise(self) -> int:
        """Start and restart the job; the launcher's exit status."""
        restarts, streak = 0, 0
        while True:
            try:
                job = self._start(restarts)
            except OSError as exc:  # vanished, or lost its permissions, since the first start
                self._event("job_not_started", "error", f"cannot start {self.argv[0]}: {exc.strerror or exc}")
                return EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_NOT_EXECUTABLE
            ending = self._watch(job)
            status = stopped_status(ending.returncode, ending.sent, grouped=self.grouped)
            outcome = verdict(ending.returncode, stopped=ending.stopped, hung=ending.hung,
                              restarts=restarts, max_restarts=self.max_restarts)
            self._mark_ended(job)
            if outcome != "restart":
                self._report_end(ending, outcome, restarts, status)
                return status
            streak = next_streak(streak, ending.ran_s)
            delay = backoff_delay(streak, self.backoff)
            streak += 1
            restarts += 1
            self._event("job_exited", "warning",
                        f"job {self._how(ending)}; restarting in {delay:g}s (restart {restarts} of {self.max_restarts})",
                        exit_code=status, hung=ending.hung, ran_s=round(ending.ran_s, 1), delay_s=delay)
            if not self._sleep(delay):
                self._event("job_not_restarted", "warning",
                            f"{self._signal_name()} received while waiting to restart: not restarting",
                            exit_code=status)
                return status

    # ----------------------------------------------------------- attempts
    def _start(self, restarts: int) -> _Job:
        if restarts:
            self._reload_settings()
        env = {**os.environ, ENV_RUN_DIR: str(self.run_dir), ENV_RESTART_COUNT: str(restarts)}
        if self.grouped:  # torchrun SIGKILLs ranks that outlast its shutdown timeout: give them the grace
            env.setdefault(ENV_SHUTDOWN_TIMEOUT, str(math.ceil(self.grace)))
        job = _Job(self.argv, env, grouped=self.grouped)
        shown = shlex.join(self.command).replace("\n", "\\n")  # one line per event, whatever the command
        ranks = f", {self.nproc} rank{'s' if self.nproc != 1 else ''} under torchrun" if self.grouped else ""
        if restarts:
            self._event("job_restarted", "warning",
                        f"restarted the job (restart {restarts} of {self.max_restarts}, pid {job.pid}{ranks}): {shown}",
                        pid=job.pid, restart=restarts, command=self.command, nproc_per_node=self.nproc)
        else:
            self._event("job_started", "info", f"started the job (pid {job.pid}{ranks}) in {self.run_dir}: {shown}",
                        pid=job.pid, command=self.command, argv=self.argv, nproc_per_node=self.nproc,
                        max_restarts=self.max_restarts)
        return job

    def _watch(self, job: _Job) -> Ending:
        """Poll the job until its main process ends, acting on signals, hangs and the kill deadline."""
        try:
            return self._poll(job)
        except BaseException:  # a launcher bug must not leave the job running unsupervised
            job.stop(0.0)
            raise

    def _poll(self, job: _Job) -> Ending:
        detectors = LivenessDetectors(self.settings)
        handled = 0
        hung = False
        next_check = time.monotonic() + LIVENESS_INTERVAL_S
        while (code := job.proc.poll()) is None:
            now = time.monotonic()
            if len(self.signals.received) > handled:
                handled = len(self.signals.received)
                self._on_stop_signal(job, handled)
            elif job.kill_at is not None and now >= job.kill_at:
                job.kill()
                sent = signal.Signals(job.sent or signal.SIGTERM).name
                self._event("job_killed", "warning",
                            f"job did not exit within {self.grace:g}s of {sent}: sent SIGKILL to its process group"
                            f"{' and every process below torchrun' if self.grouped else ''}", pid=job.pid)
            elif not job.stopping and now >= next_check:
                next_check = now + LIVENESS_INTERVAL_S
                finding = self._hung(detectors, job)
                if finding is not None:
                    hung = True
                    job.stop(self.grace)  # stop first: a frozen job may hold the store's write lock
                    self._event("job_hung", "error",
                                f"{finding.message}; sent SIGTERM, SIGKILL in {self.grace:g}s if still there",
                                pid=job.pid, finding=finding.model_dump())
            time.sleep(POLL_S)
        job.end_leftovers()
        return Ending(code, stopped=bool(self.signals.received), hung=hung, ran_s=job.ran_s, sent=job.sent)

    def _on_stop_signal(self, job: _Job, count: int) -> None:
        name = self._signal_name()
        if count == 1 and job.stopping:  # already being stopped (hung): a second SIGTERM would cut its save short
            self._event("stop_requested", "warning", f"{name} received: the job is being stopped already; "
                        "no restart follows. Send it again to kill the job now", pid=job.pid, signal=name)
        elif count == 1:
            sent = forwarded_signal(self.signals.received[-1], grouped=self.grouped, forwards_usr1=self.forwards_usr1)
            job.stop(self.grace, sent)
            to = "torchrun, which passes it on to every rank" if self.grouped else "the job"
            if sent != self.signals.received[-1] == PREEMPT_SIGNAL:
                to += " (this torch's torchrun cannot pass SIGUSR1 on)"
            self._event("stop_requested", "warning",
                        f"{name} received: sent {signal.Signals(sent).name} to {to} (the agent saves a checkpoint "
                        f"and exits), SIGKILL in {self.grace:g}s if still there; no restart follows. Send it again "
                        "to kill the job now", pid=job.pid, signal=name, sent=signal.Signals(sent).name)
        else:
            job.kill()
            self._event("job_killed", "warning", f"{name} received again: sent SIGKILL to the job's process group",
                        pid=job.pid, signal=name)

    def _hung(self, detectors: LivenessDetectors, job: _Job) -> Finding | None:
        """The `hung` finding of this observation of the store, if any."""
        try:
            info = self.store.run()
        except (StoreError, sqlite3.Error):
            return None
        if info.started_at is None or info.started_at < job.started_at:
            return None  # the agent of this attempt has not attached yet
        # The launcher acts on `hung` only (saves are the daemon's business): no checkpoint times.
        seen = LivenessObservation(now=time.time(), status=info.status, step=info.step, heartbeat_at=info.heartbeat_at,
                                   started_at=info.started_at, newest_ready_at=None, writing_since=None)
        return next((f for f in detectors.observe(seen) if f.kind == "hung"), None)

    def _sleep(self, seconds: float) -> bool:
        """Wait before a restart; False when a stop signal came meanwhile."""
        deadline = time.monotonic() + seconds
        while not self.signals.received and time.monotonic() < deadline:
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
        return not self.signals.received

    def _mark_ended(self, job: _Job) -> None:
        """A job that died without closing its run leaves it `running`; say `crashed`, so the daemon
        does not report the dead process as hung while the launcher waits to restart it."""
        try:
            info = self.store.run()
            if info.status not in ("running", "paused") or info.started_at is None or info.started_at < job.started_at:
                return
            if info.pid == job.pid or liveness(info) == "crashed":  # the main process (reaped), or gone
                self.store.update_run(status="crashed", ended_at=time.time())
        except (StoreError, sqlite3.Error):
            pass

    def _report_end(self, ending: Ending, outcome: Verdict, restarts: int, status: int) -> None:
        if outcome == "finished":
            self._event("job_exited", "info", "job finished (exit code 0)", exit_code=0, ran_s=round(ending.ran_s, 1))
        elif outcome == "stopped":
            self._event("job_exited", "info" if status in (0, 128 + signal.SIGTERM, 128 + PREEMPT_SIGNAL) else "warning",
                        f"job {self._how(ending)} after the stop request; not restarting", exit_code=status)
        else:
            self._event("job_exited", "error", f"job {self._how(ending)}", exit_code=status)
            self._event("restarts_exhausted", "error",
                        f"giving up after {restarts} restart{'s' if restarts != 1 else ''} (--max-restarts "
                        f"{self.max_restarts}): exiting with the job's status {status}", exit_code=status)

    def _how(self, ending: Ending) -> str:
        how = describe_exit(ending.returncode)
        status = stopped_status(ending.returncode, ending.sent, grouped=self.grouped)
        if status != exit_status(ending.returncode) and ending.sent is not None:
            how = f"torchrun ended with {how} after passing {signal.Signals(ending.sent).name} on (exit status {status})"
        return ("was hung and ended: " if ending.hung else "ended: ") + how

    def _requeue(self) -> None:
        """`scontrol requeue $SLURM_JOB_ID` after a preemption warning, so that Slurm starts the job
        again later and it resumes from its checkpoint. Once; a failure is an event, not an error."""
        job_id = os.environ.get("SLURM_JOB_ID")
        if not job_id:
            return
        scontrol = shutil.which("scontrol")
        if scontrol is None:
            self._event("requeue_failed", "error", f"cannot requeue Slurm job {job_id}: no scontrol on PATH",
                        slurm_job_id=job_id)
            return
        try:
            done = subprocess.run([scontrol, "requeue", job_id], stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            self._event("requeue_failed", "error", f"cannot requeue Slurm job {job_id}: {exc}", slurm_job_id=job_id)
            return
        if done.returncode != 0:
            why = (done.stderr.strip() or done.stdout.strip() or describe_exit(done.returncode)).splitlines()[-1]
            self._event("requeue_failed", "error", f"scontrol requeue {job_id} failed: {why}", slurm_job_id=job_id,
                        exit_code=exit_status(done.returncode))
        else:
            self._event("requeued", "info", f"requeued Slurm job {job_id} (scontrol requeue {job_id}): when it "
                        "starts again, it resumes from its newest checkpoint", slurm_job_id=job_id)

    # --------------------------------------------------------------- I/O
    def _reload_settings(self) -> None:
        """Read the policy again before a restart (warden.toml may have been edited); a file broken
        meanwhile keeps the settings in force."""
        try:
            self.settings = detector_settings(self.policy_file, self.run_dir)
        except PolicyError as exc:
            self._say(f"warning: {exc}; keeping the detector settings in force")

    def _signal_name(self) -> str:
        return signal.Signals(self.signals.received[-1]).name if self.signals.received else "signal"

    def _event(self, kind: str, severity: str, message: str, **data: Any) -> None:
        """One line on stderr, then the event in the store. Never fatal: a store locked by a frozen
        job must not stop the launcher from killing it."""
        self._say(message)
        try:
            try:
                info = self.store.run()
                step, branch = info.step, info.branch
            except StoreError:
                step = branch = None
            self.store.add_event(kind, severity, message, step=step, branch=branch, data=data, source=SOURCE)
        except (StoreError, sqlite3.Error) as exc:
            self._say(f"warning: cannot record the event in {self.run_dir}: {exc}")

    @staticmethod
    def _say(message: str) -> None:
        print(f"trainwarden run: {message}", file=sys.stderr, flush=True)


def _torchrun_forwards_usr1() -> bool:
    """Whether the torch installed with this interpreter (the one torchrun runs under) has torchrun's
    --signals-to-handle (torch 2.9 on). Read from its source, not by importing torch, which takes
    seconds; where it cannot be read, the old way (SIGTERM) is taken."""
    try:
        source = importlib.metadata.distribution("torch").locate_file("torch/distributed/run.py")
        return "--signals-to-handle" in Path(str(source)).read_text(encoding="utf-8")
    except (importlib.metadata.PackageNotFoundError, OSError, UnicodeDecodeError):
        return False


# ---------------------------------------------------------------- run folder
def detector_settings(policy_file: str | None, run_dir: Path) -> DetectorSettings:
    """The detector settings of --policy (defaults without it) with the run's warden.toml on top."""
    return with_run_overrides(load_policy(policy_file), run_dir).detect


def _run_folder(root: Path, name: str | None, command: Sequence[str]) -> Path:
    """ROOT/NAME as an absolute path. A default name never reuses a folder: it gets a suffix."""
    if name is not None:
        if not name or name in (".", "..") or "/" in name or os.sep in name:
            raise CliError(f"--name must be a plain folder name, got {name!r} (use --root for where it goes)")
        return (root / name).absolute()
    base = default_name(command, time.time())
    path, n = root / base, 1
    while path.exists():
        n += 1
        path = root / f"{base}-{n}"
    return path.absolute()


def _open_run(run_dir: Path) -> Store:
    """Create (or reopen) the run's store and row, so the folder is a run before the job starts.
    The agent's attach() finds the row and takes it over (status, pid, config)."""
    if run_dir.exists() and not (run_dir / DB_NAME).is_file() and any(run_dir.iterdir()):
        raise CliError(f"{run_dir} exists and is not a trainwarden run folder; choose another --name or --root")
    store = Store.open(run_dir, create=True)
    try:
        store.init_run(run_dir.name, {}, VERSION)
        info = store.run()
        if liveness(info) in ("running", "paused"):
            where = f" on {info.host}" if info.host else ""
            raise CliError(f"{run_dir} is being written by process {info.pid}{where}; stop it before launching again")
    except BaseException:
        store.close()
        raise
    return store


# ----------------------------------------------------------------------- CLI
def _seconds(text: str, zero_ok: bool) -> float:
    """A finite number of seconds, > 0 (or >= 0 with `zero_ok`), for argparse."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not ((0 <= value if zero_ok else 0 < value) and value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a number of seconds {'>=' if zero_ok else '>'} 0, got {text!r}")
    return value


def _positive(text: str) -> float:
    return _seconds(text, zero_ok=False)


def _not_negative(text: str) -> float:
    return _seconds(text, zero_ok=True)


def _ranks(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `run` verb to the command line."""
    doc = __doc__.split("\n\n", 2)
    p = sub.add_parser(
        "run", help="launch a training job: restart it after a crash or hang, resuming from its checkpoint",
        description=doc[0] + "\n\n" + doc[2], formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s [options] -- COMMAND [ARG ...]",
    )
    p.add_argument("--name", help="run folder name under the root (default: script name and start time); "
                                  "an existing run is resumed")
    p.add_argument("--root", help="folder holding runs (default $TRAINWARDEN_ROOT or ./runs)")
    p.add_argument("--max-restarts", type=_count, default=3, metavar="K",
                   help="restarts after crashes or hangs before giving up (default 3)")
    p.add_argument("--policy", metavar="FILE", help="policy TOML whose detect.hung_after_s / stuck_after_s "
                                                    "say when the job is hung (the run's warden.toml applies on top)")
    p.add_argument("--backoff", type=_positive, default=1.0, metavar="S",
                   help="delay before the first restart; doubles at each restart in a row, up to 60 (default 1)")
    p.add_argument("--kill-grace", type=_not_negative, default=30.0, metavar="S",
                   help="seconds between SIGTERM (or SIGUSR1) and SIGKILL when stopping the job (default 30)")
    p.add_argument("--nproc-per-node", type=_ranks, metavar="N",
                   help="run the job in N ranks under torchrun (--standalone); a failed rank restarts them all")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the training command, after --")
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise CliError("no command to run: give it after --, e.g. `trainwarden run -- python train.py`")
    argv, forwards_usr1 = command, False
    if args.nproc_per_node is None:
        problem = program_problem(command[0])
    else:
        try:
            target = torchrun_target(command)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        problem = group_problem(target)
        forwards_usr1 = _torchrun_forwards_usr1()
        argv = torchrun_argv(args.nproc_per_node, command, python=sys.executable, forwards_usr1=forwards_usr1)
    if problem is not None:
        print(f"trainwarden: error: {problem[1]}", file=sys.stderr)
        return problem[0]
    run_dir = _run_folder(Path(args.root) if args.root else default_root(), args.name, command)
    try:
        settings = detector_settings(args.policy, run_dir)  # a bad file is refused before any folder is made
    except PolicyError as exc:
        raise CliError(str(exc)) from None
    with _open_run(run_dir) as store:
        return _Launcher(args, command, run_dir, store, settings, argv=argv, forwards_usr1=forwards_usr1).run()
