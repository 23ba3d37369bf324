"""systemd's notify protocol, with a real Unix datagram socket standing in for systemd."""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from conftest import wait_for
from trainwarden.agent.store import DB_NAME, Store
from trainwarden.supervisor.notify import Notifier


class FakeSystemd:
    """Receives notify datagrams on a path or an abstract address; keeps (time, fields)."""

    def __init__(self, address: str) -> None:
        self.env_value = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(("\0" + address[1:]) if address.startswith("@") else address)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def with_key(self, key: str) -> list[tuple[float, dict[str, str]]]:
        return [m for m in list(self.messages) if key in m[1]]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def systemd(tmp_path):
    made: list[FakeSystemd] = []

    def make(abstract: bool = False) -> FakeSystemd:
        address = f"@trainwarden-test-{os.getpid()}-{len(made)}" if abstract else str(tmp_path / f"notify-{len(made)}")
        made.append(FakeSystemd(address))
        return made[-1]

    yield make
    for s in made:
        s.close()


class TestNotifier:
    @pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
    def test_messages_reach_the_socket(self, systemd, abstract):
        fake = systemd(abstract)
        n = Notifier({"NOTIFY_SOCKET": fake.env_value, "WATCHDOG_USEC": "4000000"})
        assert n.enabled and n.watchdog_interval_s == 2.0
        assert n.ready("watching 0 runs") and n.watchdog() and n.reloading() and n.stopping()
        wait_for(lambda: len(fake.messages) == 4, 5)
        kinds = [m[1] for m in fake.messages]
        assert kinds[0] == {"READY": "1", "STATUS": "watching 0 runs"} and kinds[1] == {"WATCHDOG": "1"}
        assert kinds[2]["RELOADING"] == "1" and int(kinds[2]["MONOTONIC_USEC"]) > 0
        assert kinds[3]["STOPPING"] == "1"

    def test_without_systemd_or_for_another_pid_it_stays_quiet(self, systemd):
        assert not Notifier({}).enabled and Notifier({}).ready("x") is False
        other = Notifier({"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
        assert other.watchdog_interval_s is None  # the watchdog is meant for another process
        assert other.send("STATUS=x") is False  # a socket that is gone: logged, never raised


def test_the_daemon_speaks_the_protocol(tmp_path, daemon, systemd):
    """READY once the roots are watched, STATUS with the runs and the last action, WATCHDOG at
    half of WATCHDOG_USEC while ticks finish (and not while one is stuck on a locked store),
    RELOADING then READY on SIGHUP, STOPPING on SIGTERM."""
    fake = systemd()
    root = tmp_path / "runs"
    root.mkdir()
    d = daemon(root, env={"NOTIFY_SOCKET": fake.env_value, "WATCHDOG_USEC": "1000000"})
    wait_for(lambda: fake.with_key("READY"), 30)
    ready_at, ready = fake.with_key("READY")[0]
    assert ready["STATUS"] == "watching 0 runs" and "watching" in d.text()
    wait_for(lambda: len(fake.with_key("WATCHDOG")) >= 4, 10)
    pings = [t for t, _ in fake.with_key("WATCHDOG")]
    assert all(0.3 < b - a < 1.0 for a, b in zip(pings, pings[1:]))  # every ~0.5 s

    with Store.open(root / "a-run", create=True) as s:
        s.init_run("a-run", {}, "test")
    wait_for(lambda: any(m.get("STATUS") == "watching 1 runs" for _, m in fake.messages), 15)

    # A tick stuck on a store held locked by another process: the pings stop, then resume.
    stuck = root / "locked-run"
    with Store.open(stuck, create=True) as s:
        s.init_run("locked-run", {}, "test")
    db = sqlite3.connect(stuck / DB_NAME, isolation_level=None)
    db.execute("PRAGMA journal_mode=DELETE")
    db.execute("BEGIN EXCLUSIVE")
    try:
        d.wait_log("no tick has finished", timeout=30)
        quiet_from = time.monotonic()
        time.sleep(1.5)
        assert not [t for t, _ in fake.with_key("WATCHDOG") if t > quiet_from]
    finally:
        db.execute("ROLLBACK")
        db.close()
    wait_for(lambda: [t for t, _ in fake.with_key("WATCHDOG") if t > quiet_from], 30)

    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: fake.with_key("RELOADING"), 15)
    reload_at = fake.with_key("RELOADING")[0][0]
    wait_for(lambda: [t for t, _ in fake.with_key("READY") if t > reload_at], 15)
    assert d.stop() == 0
    assert fake.with_key("STOPPING")
    assert ready_at < reload_at


def test_a_daemon_without_systemd_runs_as_before(tmp_path, daemon):
    root = tmp_path / "runs"
    root.mkdir()
    d = daemon(root, env={"NOTIFY_SOCKET": "", "WATCHDOG_USEC": ""})
    d.wait_log("watching")
    assert d.stop() == 0 and "cannot notify systemd" not in d.text()
    assert Path(root).is_dir()


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15, 0.3, 0.6])
def test_sigterm_at_any_moment_of_startup_stops_the_daemon(tmp_path, daemon, delay):
    # A signal that landed while the scheduler was starting used to be lost: the daemon ran on.
    root = tmp_path / "runs"
    root.mkdir()
    d = daemon(root)
    d.wait_log("watching")
    time.sleep(delay)
    assert d.stop() == 0, d.text()
    assert d.text().rstrip().endswith("stopped")
