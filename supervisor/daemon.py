"""`trainwarden supervise`: the daemon. It finds run folders under its roots (watchdog, polling on
network file systems where inotify does not fire, and a slow rescan as a safety net) and ticks
every run once a second on an APScheduler 3.x interval job. All per-run work is in watch.py.

Threads: watchdog's observer threads only note candidate folders; the rescan job only lists
folders; the tick job is the only one that touches stores (one tick at a time), so every
sqlite connection is used by one thread at a time. Training never waits for any of it.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from trainwarden.agent.store import DB_NAME

from .alerts import Alerter
from .discovery import NETWORK_FS, find_runs, fs_type
from .errors import UserError
from .notify import Notifier
from .policy import Policy, PolicyError, load_policy, policy_summary
from .watch import RunWatch

log = logging.getLogger("trainwarden.supervisor")

RETRY_UNREADABLE_S = 30.0
YOUNG_FOLDER_S = 10.0


class SupervisorError(UserError):
    """The daemon cannot start; the message says why in one line."""


# syslog priorities of the logging levels: journald reads a `<N>` prefix on a line of a service's
# stderr as the line's priority (so `journalctl -p warning` shows warnings and errors only).
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def stderr_is_journal() -> bool:
    """Whether stderr is systemd's journal stream: systemd sets $JOURNAL_STREAM to the stream's
    `device:inode`, and a child whose stderr was redirected elsewhere inherits the variable but not
    the stream, so both must match."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


class _JournalFormatter(logging.Formatter):
    """`<priority>LEVEL message`: journald adds the time itself."""

    def format(self, record: logging.LogRecord) -> str:
        return f"<{_PRIORITY.get(record.levelno, 6)}>{record.levelname} {record.getMessage()}"


def setup_logging(level: int = logging.INFO) -> None:
    """One line per event on stderr with its level; under systemd, with the journal's priority
    prefix and without a timestamp of our own (journald keeps stderr and stamps each line)."""
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal():
        handler.setFormatter(_JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger("trainwarden")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    logging.getLogger("apscheduler").setLevel(logging.ERROR)  # not a line per tick


class Supervisor:
    """Watches roots, keeps a RunWatch per run folder, ticks them."""

    def __init__(self, roots: Sequence[Path], policy_path: Path | None = None, *, poll: bool = False,
                 tick_s: float = 1.0, rescan_s: float = 30.0) -> None:
        self.roots = [Path(r).absolute() for r in roots]
        self.policy_path = policy_path
        self.poll = poll
        self.tick_s, self.rescan_s = tick_s, rescan_s
        self.policy: Policy = load_policy(policy_path)  # PolicyError: the caller says so and exits
        self.runs: dict[Path, RunWatch] = {}
        self._candidates: set[Path] = set()
        self._lock = threading.Lock()
        self._reload = False
        self._observers: list[object] = []
        self._scheduler: object | None = None
        self._failed_at: dict[Path, float] = {}
        self._young: dict[Path, float] = {}  # new folders without a store yet, and when first seen
        self.ticks = 0
        self.last_action: str | None = None
        self.notifier = Notifier()
        self.alerter = Alerter(self.policy.alerts)
        self._tick_done = time.monotonic()  # when the last tick finished (the watchdog's evidence)
        self._status_sent: str | None = None
        self._stuck_reported = False

    # ------------------------------------------------------------- discovery
    def _note(self, folder: Path) -> None:
        with self._lock:
            self._candidates.add(folder)

    def _watch_roots(self) -> None:
        from watchdog.events import (
            DirCreatedEvent, DirMovedEvent, FileCreatedEvent, FileMovedEvent, FileSystemEventHandler,
        )
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        supervisor = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:  # type: ignore[no-untyped-def]
                # Only creations and moves of a store matter; the flood of -wal writes is ignored.
                if event.event_type not in ("created", "moved"):
                    return
                path = Path(os.fsdecode(getattr(event, "dest_path", "") or event.src_path))
                if path.name == DB_NAME:
                    supervisor._note(path.parent)
                elif event.is_directory:
                    supervisor._note(path)

        for root in self.roots:
            polling = self.poll or fs_type(root) in NETWORK_FS
            observer = PollingObserver(timeout=1.0) if polling else Observer()
            # Only creations and moves are delivered: the kernel's reports of every SQLite write
            # would otherwise cost the observer threads as much CPU as the ticks.
            observer.schedule(Handler(), str(root), recursive=True,
                              event_filter=[DirCreatedEvent, DirMovedEvent, FileCreatedEvent, FileMovedEvent])
            observer.daemon = True
            observer.start()
            self._observers.append(observer)
            log.info("watching %s (%s)", root, "polling" if polling else "inotify")

    def rescan(self) -> None:
        """The safety net: list every run folder under the roots."""
        for root in self.roots:
            for folder in find_runs(root):
                self._note(folder)

    def _adopt(self, now: float) -> None:
        with self._lock:
            candidates, self._candidates = self._candidates, set()
        for folder in sorted(candidates):
            folder = folder.absolute()
            if folder in self.runs:
                continue
            if not (folder / DB_NAME).is_file():
                # A folder created a moment ago may get its store after inotify's watch on it
                # was set up (the creation event is then lost): look again for a few seconds.
                seen = self._young.setdefault(folder, now)
                if folder.is_dir() and now - seen < YOUNG_FOLDER_S:
                    self._note(folder)
                else:
                    self._young.pop(folder, None)
                continue
            self._young.pop(folder, None)
            self.runs[folder] = RunWatch(folder, self.policy, self._log, self.alerter.submit)
            log.info("new run %s", folder)

    # ------------------------------------------------------------------ tick
    def tick(self) -> None:
        """Every run, once. A failure in one run never stops the others."""
        now = time.time()
        if self._reload:
            self._reload = False
            self.notifier.reloading()
            self.reload()
            self.notifier.ready(self.status_line())
        self._adopt(now)
        for folder, watch in list(self.runs.items()):
            if not folder.exists():
                watch.close()
                del self.runs[folder]
                log.info("run %s is gone; no longer watched", folder)
                continue
            if watch.error is not None and now - self._failed_at.get(folder, 0.0) < RETRY_UNREADABLE_S:
                continue
            try:
                watch.tick(now)
            except Exception:  # a bug in one run's handling must not take the daemon down
                log.exception("run %s: tick failed", folder)
            if watch.error is not None:
                self._failed_at.setdefault(folder, now)
                if now - self._failed_at[folder] >= RETRY_UNREADABLE_S:
                    self._failed_at[folder] = now
            else:
                self._failed_at.pop(folder, None)
            if watch.last_action:
                self.last_action, watch.last_action = watch.last_action, None
        self.ticks += 1
        self._tick_done = time.monotonic()
        status = self.status_line()
        if status != self._status_sent:
            self._status_sent = status
            self.notifier.status(status)

    def feed_watchdog(self) -> bool:
        """WATCHDOG=1, but only while ticks keep finishing: a tick stuck on a store (or a bug
        that hangs it) stops the pings, and systemd restarts the daemon."""
        interval = self.notifier.watchdog_interval_s or 0.0
        stuck_s = time.monotonic() - self._tick_done
        if stuck_s > max(3 * self.tick_s, interval):
            if not self._stuck_reported:
                log.error("no tick has finished for %.0fs: not telling systemd's watchdog that all is well", stuck_s)
                self._stuck_reported = True
            return False
        self._stuck_reported = False
        return self.notifier.watchdog()

    def _log(self, level: str, line: str) -> None:
        getattr(log, level)(line)

    def reload(self) -> bool:
        """Read the policy file again; on failure keep the one in force."""
        try:
            policy = load_policy(self.policy_path)
        except PolicyError as exc:
            log.error("policy reload failed, keeping the previous policy: %s", exc)
            return False
        self.policy = policy
        self.alerter.configure(policy.alerts)
        for watch in self.runs.values():
            watch.set_policy(policy)
        log.info("policy reloaded: %s", policy_summary(policy))
        return True

    def status_line(self) -> str:
        unreadable = sum(1 for w in self.runs.values() if w.error)
        text = f"watching {len(self.runs)} runs" + (f" ({unreadable} unreadable)" if unreadable else "")
        return text + (f"; last action: {self.last_action}" if self.last_action else "")

    # ------------------------------------------------------------------- run
    def run(self) -> None:
        """Block until SIGTERM/SIGINT; SIGHUP reloads the policy."""
        from apscheduler.schedulers.background import BackgroundScheduler

        for root in self.roots:
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # e.g. under a service's read-only sandbox: say which root, and stop
                raise SupervisorError(f"cannot create root {root}: {exc.strerror or exc}") from None
        # The handlers only set flags; this thread starts and stops the scheduler, so a signal that
        # lands while the scheduler is starting cannot be lost (it was, with a BlockingScheduler).
        stop_requested = threading.Event()
        signals: list[int] = []

        def stop(signum: int, frame: FrameType | None) -> None:
            signals.append(signum)
            stop_requested.set()

        def hup(signum: int, frame: FrameType | None) -> None:
            self._reload = True

        # Before anything is logged: a signal sent as soon as "watching" shows must find its handler.
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)
        log.info("trainwarden supervise: roots %s; policy %s: %s", ", ".join(map(str, self.roots)),
                 self.policy_path or "(defaults)", policy_summary(self.policy))
        scheduler = BackgroundScheduler()
        self._scheduler = scheduler
        try:
            self._watch_roots()
            self.rescan()
            scheduler.add_job(self.tick, "interval", seconds=self.tick_s, max_instances=1, coalesce=True,
                              next_run_time=_now_dt(), id="tick")
            scheduler.add_job(self.rescan, "interval", seconds=self.rescan_s, max_instances=1, coalesce=True,
                              id="rescan")
            if self.notifier.watchdog_interval_s:
                scheduler.add_job(self.feed_watchdog, "interval", seconds=self.notifier.watchdog_interval_s,
                                  max_instances=1, coalesce=True, id="watchdog")
            if not stop_requested.is_set():
                scheduler.start()
                self.notifier.ready(self.status_line())  # the roots are watched; the first tick runs now
            while not stop_requested.wait(1.0):
                pass
            log.info("stopping (signal %d)", signals[0])
            self.notifier.stopping()
        finally:
            if scheduler.running:
                scheduler.shutdown(wait=True)  # let a running tick finish its transaction
            for observer in self._observers:
                observer.stop()  # type: ignore[attr-defined]
            for watch in self.runs.values():
                watch.close()
            self.notifier.close()
            self.alerter.close()
            log.info("stopped")


def _now_dt():  # type: ignore[no-untyped-def]
    from datetime import datetime
    return datetime.now()
