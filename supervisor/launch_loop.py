"""The launcher's supervising loop: start the job, watch it (stop signals, hangs, the kill
deadline), restart it after a crash or hang with a growing delay, requeue it under Slurm after a
preemption warning, and report each step as an event in the run's store and a line on stderr.
What it does is described for users in launcher.py's docstring.
"""
from __future__ import annotations

import math
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from trainwarden.agent.store import Store, StoreError

from .detectors import DetectorSettings, Finding, LivenessDetectors, LivenessObservation
from .launch_job import ENV_RESTART_COUNT, ENV_RUN_DIR, ENV_SHUTDOWN_TIMEOUT, Ending, Job, StopSignals
from .launch_rules import (
    EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, PREEMPT_SIGNAL, LaunchOptions, Verdict, backoff_delay, describe_exit,
    exit_status, forwarded_signal, next_streak, stopped_status, verdict,
)
from .operator import liveness
from .policy import PolicyError, load_policy, with_run_overrides

LIVENESS_INTERVAL_S = 1.0
POLL_S = 0.1
SOURCE = "launcher"


def detector_settings(policy_file: str | None, run_dir: Path) -> DetectorSettings:
    """The detector settings of the policy file (defaults without one) with the run's warden.toml on top."""
    return with_run_overrides(load_policy(policy_file), run_dir).detect


class Launcher:
    """Starts the job, watches it, restarts it; reports through the run's store and stderr."""

    def __init__(self, options: LaunchOptions, run_dir: Path, store: Store, settings: DetectorSettings, *,
                 argv: list[str] | None = None, forwards_usr1: bool = False) -> None:
        self.command = list(options.command)
        """The user's command."""
        self.argv = argv or self.command
        """What is started: the command, or torchrun running it in --nproc-per-node ranks."""
        self.nproc = options.nproc_per_node
        self.grouped = self.nproc is not None
        self.forwards_usr1 = forwards_usr1
        self.run_dir = run_dir
        self.store = store
        self.max_restarts = options.max_restarts
        self.backoff = options.backoff
        self.grace = options.kill_grace
        self.policy_file = options.policy
        self.settings = settings
        self.signals = StopSignals()

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
    def _start(self, restarts: int) -> Job:
        if restarts:
            self._reload_settings()
        env = {**os.environ, ENV_RUN_DIR: str(self.run_dir), ENV_RESTART_COUNT: str(restarts)}
        if self.grouped:  # torchrun SIGKILLs ranks that outlast its shutdown timeout: give them the grace
            env.setdefault(ENV_SHUTDOWN_TIMEOUT, str(math.ceil(self.grace)))
        job = Job(self.argv, env, grouped=self.grouped)
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

    def _watch(self, job: Job) -> Ending:
        """Poll the job until its main process ends, acting on signals, hangs and the kill deadline."""
        try:
            return self._poll(job)
        except BaseException:  # a launcher bug must not leave the job running unsupervised
            job.stop(0.0)
            raise

    def _poll(self, job: Job) -> Ending:
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

    def _on_stop_signal(self, job: Job, count: int) -> None:
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

    def _hung(self, detectors: LivenessDetectors, job: Job) -> Finding | None:
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

    def _mark_ended(self, job: Job) -> None:
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
