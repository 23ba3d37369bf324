"""What the TUI shows, read from the stores: one row per run for the table, the full picture of
one run for its detail screen. The reading runs in worker threads; the health rules are pure.

Readers keep one connection per store and skip a store whose `PRAGMA data_version` has not moved
since the last read (only the clock-dependent liveness is recomputed), so watching 100 runs costs
little more than watching the few that are writing.
"""
from __future__ import annotations

import sqlite3
import statistics
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from trainwarden.agent.records import (
    BranchInfo, CheckpointInfo, CommandInfo, EventInfo, InterventionInfo, MetricInfo, RunInfo, WindowInfo,
)
from trainwarden.agent.store import NotAStoreError, RunNotStartedError, Segments, Store, StoreError
from trainwarden.supervisor.detectors import LOSS_KINDS
from trainwarden.supervisor.operator import liveness

SEVERITY_RANK = {"ok": 0, "info": 1, "warning": 2, "error": 3}
EVENT_LIMIT = 300  # events kept for the detail screen and the health rules


class _Model(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True, arbitrary_types_allowed=True)


class Health(_Model):
    """The worst open trouble of a run, as the supervisor (or the store itself) tells it."""

    label: str
    """Short text for the table: `ok`, a finding kind, `recovering (spike)`, `needs person`, `unreadable`."""
    severity: str
    """`ok`, `info`, `warning` or `error`: the colour of the label."""
    detail: str = ""
    """The message behind the label (the finding's or the error's), for the detail header."""


class RunRow(_Model):
    """One line of the runs table."""

    path: str
    """The run folder; the row's key."""
    name: str
    """The run's name (the folder's name when the store cannot be read)."""
    status: str
    """running / paused / stopped / crashed / finished / stale / unreadable, as an operator reads it."""
    step: int | None = None
    """Steps on the current history."""
    loss: float | None = None
    """Smoothed training loss: median of the last three window means."""
    trend: float | None = None
    """Relative change of the smoothed loss against the three windows before (-0.1 = 10% lower)."""
    lr: float | None = None
    """Learning rate of parameter group 0 as the agent last reported it."""
    newest_checkpoint_at: float | None = None
    """When the newest ready checkpoint was written (Unix time)."""
    heartbeat_at: float | None = None
    """The agent's last sign of life (Unix time)."""
    interventions: int = 0
    """Interventions issued on this run (by the supervisor or approved by an operator)."""
    health: Health
    """The worst open finding."""
    proposals: int = 0
    """Proposals waiting for an operator to approve or deny."""
    error: str | None = None
    """Why the store cannot be read, while it cannot."""


class RunDetail(_Model):
    """Everything the detail screen shows of one run."""

    path: str
    """The run folder."""
    run: RunInfo
    """The run row."""
    status: str
    """Liveness as an operator reads it (see `RunRow.status`)."""
    health: Health
    """The worst open finding."""
    branches: list[BranchInfo]
    """Every branch, the abandoned ones included."""
    segments: list[tuple[int, int, int | None]]
    """The current history as (branch, after_step, up_to_step) segments."""
    windows: list[WindowInfo]
    """Every window of every branch, oldest first."""
    val: list[MetricInfo]
    """Validation loss points of every branch."""
    checkpoints: list[CheckpointInfo]
    """Checkpoints not deleted, oldest first."""
    events: list[EventInfo]
    """The newest events, oldest first."""
    commands: list[CommandInfo]
    """The newest commands, oldest first."""
    interventions: list[InterventionInfo]
    """The supervisor's interventions and proposals, oldest first."""


# ------------------------------------------------------------------ pure rules
def smoothed(windows: list[WindowInfo]) -> tuple[float | None, float | None]:
    """(level, trend) from the newest windows, oldest first: the median of the last three window
    means, and its relative change against the three before."""
    means = [w.mean for w in windows if w.mean is not None]
    if not means:
        return None, None
    level = statistics.median(means[-3:])
    if len(means) < 6:
        return level, None
    before = statistics.median(means[-6:-3])
    return level, (level - before) / before if before > 0 else None


def on_history(step: int | None, branch: int | None, segments: Segments) -> bool:
    """True when (branch, step) is a point of the current history."""
    if step is None or branch is None:
        return False
    return any(b == branch and after < step and (upto is None or step <= upto) for b, after, upto in segments)


def health(run: RunInfo, status: str, segments: Segments, events: list[EventInfo],
           interventions: list[InterventionInfo], newest_checkpoint_at: float | None) -> Health:
    """The worst trouble still open.

    A loss finding is open while its step is on the current history (a rollback to before it
    closes it) and no `cured` event came after it; a hang while no heartbeat came after it;
    stalled saves while no checkpoint was written after them. A remedy in flight reads as
    `recovering`; a spent budget that paused the run as `needs person`.
    """
    if status == "crashed":
        return Health(label="crashed", severity="error", detail="the training process is gone")
    candidates: list[Health] = []
    last_cured = max((e.id for e in events if e.kind == "cured"), default=0)
    for e in events:
        if e.source != "supervisor":
            continue
        if e.kind in LOSS_KINDS and e.id > last_cured and on_history(e.step, e.branch, segments):
            candidates.append(Health(label=e.kind, severity=e.severity, detail=e.message))
        elif e.kind == "hung" and run.status == "running" and (run.heartbeat_at or 0) < e.time:
            candidates.append(Health(label="hung", severity=e.severity, detail=e.message))
        elif e.kind == "stalled_saves" and run.status == "running" and (newest_checkpoint_at or 0) < e.time:
            candidates.append(Health(label="stalled saves", severity=e.severity, detail=e.message))
    for iv in interventions:
        if iv.finding == "budget" and iv.status in ("issued", "applied") and run.status == "paused" \
                and iv.id == interventions[-1].id:
            candidates.append(Health(label="needs person", severity="error", detail=iv.reason))
        elif iv.status in ("issued", "applied") and iv.outcome is None and iv.finding in ("spike", "nan", "divergence"):
            candidates.append(Health(label=f"recovering ({iv.finding})", severity="warning", detail=iv.reason))
    if status == "stale":
        candidates.append(Health(label="stale", severity="warning", detail="no heartbeat for a while"))
    if not candidates:
        return Health(label="ok", severity="ok")
    # The worst; among equals the newest (the list is in event order).
    return max(reversed(candidates), key=lambda h: SEVERITY_RANK.get(h.severity, 0))


def unreadable_row(path: Path, why: str) -> RunRow:
    return RunRow(path=str(path), name=path.name, status="unreadable", error=why,
                  health=Health(label="unreadable", severity="error", detail=why))


# ------------------------------------------------------------------- reading
class StoreGone(Exception):
    """The run folder or its store disappeared."""


class RunsReader:
    """Reads the runs table; one instance, used by one worker at a time."""

    def __init__(self) -> None:
        self._stores: dict[Path, Store] = {}
        self._cache: dict[Path, tuple[int, RunRow, RunInfo | None]] = {}

    def read(self, paths: list[Path], now: float) -> list[RunRow]:
        rows = []
        for path in paths:
            rows.append(self._read_one(path, now))
        for gone in set(self._stores) - set(paths):
            self._drop(gone)
        return rows

    def close(self) -> None:
        for path in list(self._stores):
            self._drop(path)

    def _drop(self, path: Path) -> None:
        store = self._stores.pop(path, None)
        self._cache.pop(path, None)
        if store is not None:
            store.close()

    def _read_one(self, path: Path, now: float) -> RunRow:
        try:
            s = self._stores.get(path)
            if s is None:
                s = self._stores[path] = Store.open(path)
            version = s.data_version()
            cached = self._cache.get(path)
            # Unchanged store, unchanged liveness: the row stands. A process that died or went
            # quiet changes the health too, so that is read again in full.
            if cached is not None and cached[0] == version and cached[2] is not None \
                    and liveness(cached[2], now) == cached[1].status:
                return cached[1]
            row, info = read_row(s, path, now)
            self._cache[path] = (version, row, info)
            return row
        except RunNotStartedError:
            self._drop(path)
            return RunRow(path=str(path), name=path.name, status="created", health=Health(label="ok", severity="ok"))
        except (StoreError, sqlite3.Error, OSError) as exc:
            self._drop(path)
            return unreadable_row(path, str(exc))


def read_row(s: Store, path: Path, now: float) -> tuple[RunRow, RunInfo]:
    info = s.run()
    status = liveness(info, now)
    segments = s.lineage(info.branch)
    level, trend = smoothed(s.windows(branch=info.branch, newest=True, limit=6))
    ready = [c.ready_at for c in s.checkpoints(["ready"]) if c.ready_at is not None]
    newest = max(ready) if ready else None
    interventions = s.interventions()
    events = s.events(limit=EVENT_LIMIT)
    return RunRow(
        path=str(path), name=info.name, status=status, step=info.step, loss=level if level is not None else info.last_loss,
        trend=trend, lr=info.lr, newest_checkpoint_at=newest, heartbeat_at=info.heartbeat_at,
        interventions=sum(1 for iv in interventions if iv.status in ("issued", "applied", "rejected") and iv.finding != "budget"),
        health=health(info, status, segments, events, interventions, newest),
        proposals=sum(1 for iv in interventions if iv.status == "proposed"),
    ), info


class DetailReader:
    """Reads one run's detail; windows are read incrementally (they are never rewritten)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._store: Store | None = None
        self._windows: dict[int, WindowInfo] = {}
        self._version: int | None = None
        self._last: RunDetail | None = None

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def read(self, now: float) -> RunDetail:
        """The run's detail; raises StoreGone when the folder went away, StoreError otherwise."""
        if not (self.path / "trainwarden.db").exists():
            self.close()
            raise StoreGone(f"{self.path} is gone (its folder or store was removed)")
        try:
            if self._store is None:
                self._store = Store.open(self.path)
                self._version = None
            s = self._store
            version = s.data_version()
            if version == self._version and self._last is not None and liveness(self._last.run, now) == self._last.status:
                return self._last
            detail = self._read(s, now)
            self._version, self._last = version, detail
            return detail
        except NotAStoreError as exc:
            self.close()
            raise StoreGone(str(exc)) from None
        except (sqlite3.Error, OSError) as exc:
            self.close()
            raise StoreError(str(exc)) from None
        except StoreError:
            self.close()
            raise

    def _read(self, s: Store, now: float) -> RunDetail:
        info = s.run()
        status = liveness(info, now)
        after = max(self._windows, default=0)
        for w in s.windows(after_id=after):
            self._windows[w.id] = w
        segments = s.lineage(info.branch)
        ckpts = [c for c in s.checkpoints() if c.status != "deleted"]
        ready = [c.ready_at for c in ckpts if c.status == "ready" and c.ready_at is not None]
        events = s.events(limit=EVENT_LIMIT)
        interventions = s.interventions()
        commands = s.commands()[-100:]
        return RunDetail(
            path=str(self.path), run=info, status=status,
            health=health(info, status, segments, events, interventions, max(ready) if ready else None),
            branches=s.branches(), segments=segments, windows=sorted(self._windows.values(), key=lambda w: w.id),
            val=s.metrics("val_loss"), checkpoints=ckpts, events=events, commands=commands, interventions=interventions,
        )


def describe_command(c: CommandInfo) -> str:
    """`set_lr 0.001`, `rollback best`, `pause`: how a command reads in a list."""
    args: dict[str, Any] = c.args
    if not args:
        return c.kind
    return f"{c.kind} " + " ".join(str(v) for v in args.values())


def describe_actions(actions: list[dict[str, Any]]) -> str:
    """An intervention's actions as they read in a list: `rollback 6, scale_lr 0.5`."""
    return ", ".join(a["kind"] + "".join(f" {v}" for v in a.get("args", {}).values()) for a in actions)
