"""Shared fixtures: real stores in temporary folders, real training subprocesses."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # tests import tiny_train as a module


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


def cli(*args: str, timeout: float = 60.0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed `trainwarden` command line as a user would."""
    return subprocess.run(["trainwarden", *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def session_processes(sid: int) -> list[int]:
    """The live processes of session `sid` (a process started with start_new_session=True and
    every descendant that did not start a session of its own)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def end_session(proc: subprocess.Popen) -> list[int]:
    """End `proc` (started with start_new_session=True) and its session: SIGTERM, then SIGKILL to
    whatever is left. Returns the processes that were still running once `proc` had exited."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    left = session_processes(proc.pid)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


class Trainer:
    """A tiny training running in a subprocess (tests/tiny_train.py)."""

    def __init__(self, run_dir: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "tiny_train.py"), "--run-dir", str(run_dir), *map(str, args)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def next_event(self, timeout: float = 60.0) -> dict:
        line = self.proc.stdout.readline()  # tiny_train prints promptly; a dead child gives ""
        if not line:
            raise AssertionError(f"trainer exited without output: {self.proc.wait()} {self.proc.stderr.read()}")
        return json.loads(line)

    def wait(self, timeout: float = 120.0) -> tuple[int, list[dict], str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, [json.loads(x) for x in out.splitlines() if x.strip()], err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def trainer() -> Iterator[Callable[..., Trainer]]:
    started: list[Trainer] = []

    def start(run_dir: Path, *args: str) -> Trainer:
        t = Trainer(run_dir, *args)
        started.append(t)
        return t

    yield start
    for t in started:
        t.kill()


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> object:
    """Poll until `predicate()` is truthy; fail the test with a clear message (naming `what`) otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what or 'condition'} not met within {timeout}s")


FAST = dict(command_poll_interval_s=0.05, heartbeat_interval_s=0.2)
"""AgentConfig settings that make in-process tests react quickly."""


def issue(run_dir: Path, kind: str, args: dict | None = None, issuer: str = "test") -> int:
    """Write a command into a run's store, as the CLI or the daemon would."""
    from trainwarden.agent.store import Store

    with Store.open(run_dir) as s:
        return s.add_command(kind, args or {}, issuer)


def train_until_acked(run, step: Callable[[], object], command_id: int, max_steps: int = 100_000,
                      timeout: float = 30.0):
    """Keep training in-process until the agent has acknowledged the command; returns it."""
    from trainwarden.agent.store import Store

    deadline = time.monotonic() + timeout
    with Store.open(run.run_dir) as s:
        for _ in range(max_steps):
            run.record(step())
            cmd = s.command(command_id)
            if cmd.status != "pending":
                return cmd
            if time.monotonic() > deadline:
                break
            time.sleep(0.002)
    raise AssertionError(f"command {command_id} not acknowledged")


class Daemon:
    """The real `trainwarden supervise` in its own process, its stderr in a file."""

    def __init__(self, roots: list[Path], log: Path, policy: Path | None = None, env: dict[str, str] | None = None) -> None:
        args = ["trainwarden", "supervise"] + [a for r in roots for a in ("--root", str(r))]
        if policy is not None:
            args += ["--policy", str(policy)]
        self.log = log
        self._fh = open(log, "a")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self._fh, text=True,
                                     env={**os.environ, **(env or {})})

    def text(self) -> str:
        return self.log.read_text()

    def wait_log(self, needle: str, timeout: float = 30.0, count: int = 1) -> str:
        def seen() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.text()}")
            return self.text().count(needle) >= count
        try:
            wait_for(seen, timeout, 0.05)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {needle!r} not in the daemon's log:\n{self.text()}") from None
        return self.text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()
        return self.proc.returncode

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._fh.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(*roots: Path, policy: Path | None = None, env: dict[str, str] | None = None) -> Daemon:
        d = Daemon(list(roots), tmp_path / f"daemon-{len(started)}.log", policy, env)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


def launcher_events(run_dir: Path) -> list:
    """The events `trainwarden run` wrote into a run's store."""
    from trainwarden.agent.store import Store

    with Store.open(run_dir) as s:
        return [e for e in s.events() if e.source == "launcher"]


def kinds(run_dir: Path) -> list[str]:
    return [e.kind for e in launcher_events(run_dir)]


@pytest.fixture
def launch() -> Iterator[Callable[..., subprocess.Popen]]:
    """Start `trainwarden run` in the background (optionally with `env`); at the end, stop what is
    left of it (two signals: the second makes the launcher SIGKILL its job's whole tree, which runs
    apart from ours)."""
    started: list[subprocess.Popen] = []

    def start(*args: object, env: dict[str, str] | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(["trainwarden", "run", *map(str, args)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        for sig in (signal.SIGTERM, signal.SIGINT):
            if proc.poll() is None:
                proc.send_signal(sig)
                time.sleep(0.5)
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
