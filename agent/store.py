"""The run store: the one place that knows the schema and spells SQL.

A store is a folder holding `trainwarden.db` (SQLite in WAL mode) and `checkpoints/`. The agent,
the CLI and later the daemon and the TUI all read and write runs through this module only; each
thread opens its own `Store` because a sqlite3 connection belongs to one thread.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import time
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .records import (
    BranchInfo, CheckpointInfo, CommandInfo, EventInfo, InterventionInfo, MetricInfo, RunInfo, WindowInfo,
)

DB_NAME = "trainwarden.db"
CHECKPOINT_DIR = "checkpoints"
BUSY_TIMEOUT_S = 10.0

# Each entry migrates the schema from version i to i + 1. Never edit a released entry: append.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE run (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        pid INTEGER,
        host TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        heartbeat_at REAL,
        ended_at REAL,
        step INTEGER NOT NULL DEFAULT 0,
        branch INTEGER NOT NULL DEFAULT 0,
        lr REAL,
        lr_multiplier REAL NOT NULL DEFAULT 1.0,
        last_loss REAL,
        config TEXT NOT NULL DEFAULT '{}',
        agent_version TEXT
    );
    CREATE TABLE branches (
        id INTEGER PRIMARY KEY,
        parent INTEGER REFERENCES branches(id),
        fork_step INTEGER NOT NULL,
        checkpoint_id INTEGER,
        reason TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE windows (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        branch INTEGER NOT NULL,
        first_step INTEGER NOT NULL,
        last_step INTEGER NOT NULL,
        count INTEGER NOT NULL,
        mean REAL, min REAL, max REAL, std REAL,
        nonfinite INTEGER NOT NULL,
        lr REAL,
        steps_per_s REAL,
        losses BLOB NOT NULL,
        time REAL NOT NULL
    );
    CREATE INDEX windows_by_branch ON windows(branch, last_step);
    CREATE TABLE metrics (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        branch INTEGER NOT NULL,
        step INTEGER NOT NULL,
        name TEXT NOT NULL,
        value REAL,
        time REAL NOT NULL
    );
    CREATE TABLE checkpoints (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        step INTEGER NOT NULL,
        branch INTEGER NOT NULL,
        loss REAL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        path TEXT NOT NULL,
        bytes INTEGER,
        sha256 TEXT,
        pinned INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        ready_at REAL,
        error TEXT
    );
    CREATE TABLE commands (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        args TEXT NOT NULL DEFAULT '{}',
        issuer TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        result TEXT,
        created_at REAL NOT NULL,
        applied_at REAL,
        applied_step INTEGER
    );
    CREATE INDEX commands_by_status ON commands(status, id);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time REAL NOT NULL,
        step INTEGER,
        branch INTEGER,
        kind TEXT NOT NULL,
        severity TEXT NOT NULL,
        source TEXT NOT NULL,
        message TEXT NOT NULL,
        data TEXT NOT NULL DEFAULT '{}'
    );
    """,
    # 2: checkpoint checksums name their algorithm ("xxh3_128:<hex>"); a bare digest is sha256.
    """
    ALTER TABLE checkpoints RENAME COLUMN sha256 TO checksum;
    """,
    # 3: the supervisor's interventions (and proposals awaiting an operator), its durable state.
    """
    CREATE TABLE interventions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at REAL NOT NULL,
        finding TEXT NOT NULL,
        onset INTEGER NOT NULL,
        step INTEGER NOT NULL,
        branch INTEGER NOT NULL,
        mode TEXT NOT NULL,
        status TEXT NOT NULL,
        actions TEXT NOT NULL,
        commands TEXT NOT NULL DEFAULT '[]',
        reason TEXT NOT NULL,
        level_before REAL,
        decided_by TEXT,
        decided_at REAL,
        outcome TEXT
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

_RUN_COLUMNS = frozenset(RunInfo.model_fields)


class StoreError(Exception):
    """A store cannot be opened or written; the message is one readable line."""


class NotAStoreError(StoreError):
    """The folder holds no trainwarden store, or the file is not one."""


class RunNotStartedError(NotAStoreError):
    """The store exists but its run row is not written yet (a launcher or attach is creating it)."""


class StoreVersionError(StoreError):
    """The store was written by a newer trainwarden."""


Segments = Sequence[tuple[int, int, "int | None"]]


def in_lineage(ckpt: CheckpointInfo, segments: Segments) -> bool:
    """True when the checkpoint's state is a point of the history described by `segments`."""
    return any(
        ckpt.branch == branch and after <= ckpt.step and (upto is None or ckpt.step <= upto)
        for branch, after, upto in segments
    )


def _in_segments(step: int, branch: int, segments: Segments) -> bool:
    return any(b == branch and after < step and (upto is None or step <= upto) for b, after, upto in segments)


def is_store(run_dir: str | os.PathLike[str]) -> bool:
    """True when the folder holds a store database."""
    return (Path(run_dir) / DB_NAME).is_file()


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def encode_losses(values: Sequence[float]) -> bytes:
    """Raw losses as a float32 blob (NaN and inf kept as they are)."""
    return array("f", values).tobytes()


def decode_losses(blob: bytes) -> list[float]:
    out = array("f")
    out.frombytes(blob)
    return out.tolist()


class Store:
    """One connection to one run's store. Not thread-safe: open one per thread."""

    def __init__(self, run_dir: Path, conn: sqlite3.Connection) -> None:
        self.run_dir = run_dir
        self.checkpoint_dir = run_dir / CHECKPOINT_DIR
        self._conn = conn
        self._depth = 0

    # ----------------------------------------------------------------- opening
    @classmethod
    def open(cls, run_dir: str | os.PathLike[str], *, create: bool = False) -> "Store":
        """Open the store in `run_dir`; with `create`, make the folder and store if missing.

        Raises NotAStoreError, StoreVersionError or StoreError with a one-line message.
        """
        run_dir = Path(run_dir)
        db = run_dir / DB_NAME
        if not create:
            if not run_dir.is_dir():
                raise NotAStoreError(f"{run_dir}: no such run folder")
            if not db.is_file():
                raise NotAStoreError(f"{run_dir} is not a trainwarden run folder (no {DB_NAME})")
        else:
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / CHECKPOINT_DIR).mkdir(mode=0o700, exist_ok=True)
                if not db.exists():
                    # Create the file owner-only before SQLite touches it; -wal/-shm inherit its mode.
                    os.close(os.open(db, os.O_CREAT | os.O_WRONLY, 0o600))
                if not os.access(run_dir, os.W_OK) or not os.access(db, os.W_OK):
                    raise PermissionError(13, "Permission denied")
            except OSError as exc:
                raise StoreError(f"cannot write to run folder {run_dir}: {exc.strerror or exc}") from None
        try:
            conn = sqlite3.connect(db, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {db}: {exc}") from None
        store = cls(run_dir, conn)
        try:
            store._prepare()
        except sqlite3.DatabaseError as exc:
            conn.close()
            if "not a database" in str(exc) or "malformed" in str(exc):
                raise NotAStoreError(f"{db} is not a trainwarden store ({exc})") from None
            raise StoreError(f"cannot open {db}: {exc}") from None
        except StoreError:
            conn.close()
            raise
        return store

    def _prepare(self) -> None:
        c = self._conn
        version = c.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreVersionError(
                f"{self.run_dir / DB_NAME} has schema version {version}, newer than this trainwarden "
                f"understands ({SCHEMA_VERSION}); upgrade trainwarden to open it"
            )
        if c.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            c.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: commits are atomic and durable across a process crash; only an OS
        # crash may lose the last transactions, never corrupt the database.
        c.execute("PRAGMA synchronous=NORMAL")
        c.execute("PRAGMA foreign_keys=ON")
        if version < SCHEMA_VERSION:
            self._migrate(version)

    def _migrate(self, version: int) -> None:
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            current = c.execute("PRAGMA user_version").fetchone()[0]  # another process may have won
            for i in range(current, SCHEMA_VERSION):
                for statement in MIGRATIONS[i].split(";"):
                    if statement.strip():
                        c.execute(statement)
                c.execute(f"PRAGMA user_version={i + 1}")
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._conn.close()

    def data_version(self) -> int:
        """Changes whenever another connection commits: lets a watcher skip a store that is idle."""
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes atomically; nested uses join the outer transaction."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self._conn.execute("ROLLBACK")
            raise
        self._depth = 0
        self._conn.execute("COMMIT")

    def _one(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Row | None:
        cur = self._conn.execute(sql, args)
        cur.row_factory = sqlite3.Row
        return cur.fetchone()

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        cur = self._conn.execute(sql, args)
        cur.row_factory = sqlite3.Row
        return cur.fetchall()

    # --------------------------------------------------------------------- run
    def init_run(self, name: str, config: dict[str, Any], agent_version: str) -> bool:
        """Create the run row and the root branch if missing. Returns True when created."""
        now = time.time()
        with self.transaction():
            if self._one("SELECT id FROM run") is not None:
                return False
            self._conn.execute(
                "INSERT INTO run (id, name, status, created_at, config, agent_version) VALUES (1, ?, 'created', ?, ?, ?)",
                (name, now, json.dumps(config), agent_version),
            )
            self.add_branch(0, None, 0, None, "root")
            return True

    def run(self) -> RunInfo:
        row = self._one("SELECT * FROM run")
        if row is None:
            raise RunNotStartedError(f"{self.run_dir} has a store but no run in it yet")
        data = dict(row)
        data["config"] = json.loads(data["config"] or "{}")
        return RunInfo.model_validate(data)

    def update_run(self, **fields: Any) -> None:
        unknown = set(fields) - _RUN_COLUMNS
        if unknown:
            raise ValueError(f"unknown run fields: {sorted(unknown)}")
        if "config" in fields:
            fields["config"] = json.dumps(fields["config"])
        for key in ("lr", "last_loss"):
            if key in fields:
                fields[key] = _finite_or_none(fields[key])
        sets = ", ".join(f"{k} = ?" for k in fields)
        self._conn.execute(f"UPDATE run SET {sets} WHERE id = 1", tuple(fields.values()))

    # ---------------------------------------------------------------- branches
    def add_branch(self, branch_id: int, parent: int | None, fork_step: int, checkpoint_id: int | None, reason: str) -> None:
        self._conn.execute(
            "INSERT INTO branches (id, parent, fork_step, checkpoint_id, reason, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (branch_id, parent, fork_step, checkpoint_id, reason, time.time()),
        )

    def branches(self) -> list[BranchInfo]:
        return [BranchInfo.model_validate(dict(r)) for r in self._all("SELECT * FROM branches ORDER BY id")]

    def next_branch_id(self) -> int:
        return self._one("SELECT COALESCE(MAX(id), -1) + 1 FROM branches")[0]

    def lineage(self, branch: int) -> list[tuple[int, int, int | None]]:
        """The history of `branch` as segments (branch, after_step, up_to_step), oldest first.

        A branch inherits its parent's steps up to its fork step and owns the steps after it.
        """
        parents = {b.id: b for b in self.branches()}
        segments: list[tuple[int, int, int | None]] = []
        upper: int | None = None
        current: int | None = branch
        while current is not None:
            b = parents.get(current)
            if b is None:
                break
            segments.append((b.id, b.fork_step, upper))
            upper = b.fork_step
            current = b.parent
        return segments[::-1]

    # ----------------------------------------------------------------- windows
    def add_window(
        self, branch: int, first_step: int, losses: Sequence[float], stats: dict[str, float | int | None],
        lr: float | None, steps_per_s: float | None,
    ) -> None:
        self._conn.execute(
            "INSERT INTO windows (branch, first_step, last_step, count, mean, min, max, std, nonfinite, lr,"
            " steps_per_s, losses, time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                branch, first_step, first_step + len(losses) - 1, len(losses),
                _finite_or_none(stats["mean"]), _finite_or_none(stats["min"]), _finite_or_none(stats["max"]),
                _finite_or_none(stats["std"]), stats["nonfinite"], _finite_or_none(lr),
                _finite_or_none(steps_per_s), encode_losses(losses), time.time(),
            ),
        )

    def windows(self, branch: int | None = None, after_id: int = 0, limit: int | None = None, newest: bool = False) -> list[WindowInfo]:
        where, args = "id > ?", [after_id]
        if branch is not None:
            where += " AND branch = ?"
            args.append(branch)
        order = "DESC" if newest else "ASC"
        sql = f"SELECT * FROM windows WHERE {where} ORDER BY id {order}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        out = []
        for r in self._all(sql, args):
            data = dict(r)
            data["losses"] = decode_losses(data["losses"])
            out.append(WindowInfo.model_validate(data))
        return out[::-1] if newest else out

    def lineage_windows(self, branch: int, after_id: int = 0) -> list[WindowInfo]:
        """The windows of `branch`'s history, oldest first (only those with a row id above
        `after_id`); a window that straddles a fork is cut at the fork step."""
        out: list[WindowInfo] = []
        for seg_branch, after, upto in self.lineage(branch):
            for w in sorted(self.windows(branch=seg_branch, after_id=after_id), key=lambda w: w.first_step):
                lo = max(w.first_step, after + 1)
                hi = w.last_step if upto is None else min(w.last_step, upto)
                if lo > hi:
                    continue
                if (lo, hi) != (w.first_step, w.last_step):
                    w = w.model_copy(update={"first_step": lo, "last_step": hi, "count": hi - lo + 1,
                                             "losses": w.losses[lo - w.first_step: hi - w.first_step + 1]})
                out.append(w)
        return out

    def max_step(self, branch: int) -> int:
        """Highest step recorded on `branch` itself (its fork step if it has none of its own)."""
        row = self._one("SELECT MAX(last_step) FROM windows WHERE branch = ?", (branch,))
        if row[0] is not None:
            return row[0]
        b = self._one("SELECT fork_step FROM branches WHERE id = ?", (branch,))
        return b[0] if b else 0

    def history(self, branch: int | None = None) -> list[tuple[int, int, float]]:
        """Per-step training losses as (step, branch, loss).

        With a branch: its lineage, one value per step. Without: every branch, every step ever
        recorded, ordered by branch then step.
        """
        if branch is None:
            return [
                (w.first_step + i, w.branch, v)
                for w in sorted(self.windows(), key=lambda w: (w.branch, w.first_step))
                for i, v in enumerate(w.losses)
            ]
        out: list[tuple[int, int, float]] = []
        for seg_branch, after, upto in self.lineage(branch):
            for w in sorted(self.windows(branch=seg_branch), key=lambda w: w.first_step):
                for i, v in enumerate(w.losses):
                    step = w.first_step + i
                    if step > after and (upto is None or step <= upto):
                        out.append((step, seg_branch, v))
        return out

    # ----------------------------------------------------------------- metrics
    def add_metric(self, branch: int, step: int, name: str, value: float) -> None:
        self._conn.execute(
            "INSERT INTO metrics (branch, step, name, value, time) VALUES (?, ?, ?, ?, ?)",
            (branch, step, name, _finite_or_none(value), time.time()),
        )

    def lineage_metrics(self, branch: int, name: str, after_id: int = 0) -> list[MetricInfo]:
        """Metrics called `name` along `branch`'s history, in step order."""
        segments = self.lineage(branch)
        rows = self._all("SELECT * FROM metrics WHERE name = ? AND id > ? ORDER BY id", (name, after_id))
        found = [MetricInfo.model_validate(dict(r)) for r in rows]
        return sorted((m for m in found if _in_segments(m.step, m.branch, segments)), key=lambda m: (m.step, m.id))

    def metrics(self, name: str | None = None) -> list[MetricInfo]:
        if name is None:
            rows = self._all("SELECT * FROM metrics ORDER BY id")
        else:
            rows = self._all("SELECT * FROM metrics WHERE name = ? ORDER BY id", (name,))
        return [MetricInfo.model_validate(dict(r)) for r in rows]

    # ------------------------------------------------------------- checkpoints
    def add_checkpoint(self, step: int, branch: int, loss: float | None, kind: str, suffix: str = ".pt") -> tuple[int, str]:
        """A new checkpoint row in state `writing`; returns its id and file path (relative).
        `suffix` is ".pt" for a single file, ".dcp" for a sharded checkpoint's folder."""
        with self.transaction():
            cur = self._conn.execute(
                "INSERT INTO checkpoints (step, branch, loss, kind, status, path, created_at) VALUES (?, ?, ?, ?, 'writing', '', ?)",
                (step, branch, _finite_or_none(loss), kind, time.time()),
            )
            ckpt_id = int(cur.lastrowid)
            path = f"{CHECKPOINT_DIR}/step-{step:09d}-{ckpt_id}{suffix}"
            self._conn.execute("UPDATE checkpoints SET path = ? WHERE id = ?", (path, ckpt_id))
        return ckpt_id, path

    def checkpoint_ready(self, ckpt_id: int, nbytes: int, checksum: str) -> None:
        self._conn.execute(
            "UPDATE checkpoints SET status = 'ready', bytes = ?, checksum = ?, ready_at = ? WHERE id = ?",
            (nbytes, checksum, time.time(), ckpt_id),
        )

    def set_checkpoint_status(self, ckpt_id: int, status: str, error: str | None = None) -> None:
        self._conn.execute("UPDATE checkpoints SET status = ?, error = COALESCE(?, error) WHERE id = ?", (status, error, ckpt_id))

    def set_pinned(self, ckpt_id: int, pinned: bool) -> None:
        """Pinned checkpoints are never deleted by retention (the supervisor pins its rollback targets)."""
        self._conn.execute("UPDATE checkpoints SET pinned = ? WHERE id = ?", (int(pinned), ckpt_id))

    def retire_checkpoint(self, ckpt_id: int) -> bool:
        """Mark a ready, unpinned checkpoint deleted; False if it was pinned meanwhile (by another
        process, between retention's read and this write), so its file must stay."""
        cur = self._conn.execute(
            "UPDATE checkpoints SET status = 'deleted' WHERE id = ? AND status = 'ready' AND pinned = 0", (ckpt_id,))
        return cur.rowcount == 1

    def checkpoint(self, ckpt_id: int) -> CheckpointInfo | None:
        row = self._one("SELECT * FROM checkpoints WHERE id = ?", (ckpt_id,))
        return CheckpointInfo.model_validate(dict(row)) if row else None

    def checkpoints(self, statuses: Sequence[str] | None = None) -> list[CheckpointInfo]:
        if statuses:
            marks = ",".join("?" * len(statuses))
            rows = self._all(f"SELECT * FROM checkpoints WHERE status IN ({marks}) ORDER BY id", tuple(statuses))
        else:
            rows = self._all("SELECT * FROM checkpoints ORDER BY id")
        return [CheckpointInfo.model_validate(dict(r)) for r in rows]

    # ---------------------------------------------------------------- commands
    def add_command(self, kind: str, args: dict[str, Any], issuer: str) -> int:
        cur = self._conn.execute(
            "INSERT INTO commands (kind, args, issuer, created_at) VALUES (?, ?, ?, ?)",
            (kind, json.dumps(args), issuer, time.time()),
        )
        return int(cur.lastrowid)

    def _command(self, row: sqlite3.Row) -> CommandInfo:
        data = dict(row)
        try:
            data["args"] = json.loads(data["args"] or "{}")
        except ValueError:
            data["args"] = {"_malformed": data["args"]}
        if not isinstance(data["args"], dict):
            data["args"] = {"_malformed": data["args"]}
        return CommandInfo.model_validate(data)

    def command(self, command_id: int) -> CommandInfo | None:
        row = self._one("SELECT * FROM commands WHERE id = ?", (command_id,))
        return self._command(row) if row else None

    def commands(self, status: str | None = None, after_id: int = 0) -> list[CommandInfo]:
        if status is None:
            rows = self._all("SELECT * FROM commands WHERE id > ? ORDER BY id", (after_id,))
        else:
            rows = self._all("SELECT * FROM commands WHERE status = ? AND id > ? ORDER BY id", (status, after_id))
        return [self._command(r) for r in rows]

    def ack_command(self, command_id: int, status: str, result: str, step: int) -> None:
        """Acknowledge a command; only a pending one changes, so a command is answered once."""
        self._conn.execute(
            "UPDATE commands SET status = ?, result = ?, applied_at = ?, applied_step = ? WHERE id = ? AND status = 'pending'",
            (status, result, time.time(), step, command_id),
        )

    # ------------------------------------------------------------------ events
    def add_event(
        self, kind: str, severity: str, message: str, *, step: int | None = None, branch: int | None = None,
        data: dict[str, Any] | None = None, source: str = "agent",
    ) -> int:
        cur = self._conn.execute(
            "INSERT INTO events (time, step, branch, kind, severity, source, message, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (time.time(), step, branch, kind, severity, source, message, json.dumps(data or {})),
        )
        return int(cur.lastrowid)

    def events(self, after_id: int = 0, limit: int | None = None) -> list[EventInfo]:
        sql = "SELECT * FROM events WHERE id > ? ORDER BY id"
        if limit is not None:
            sql = f"SELECT * FROM ({sql} DESC LIMIT {int(limit)}) ORDER BY id"
        out = []
        for r in self._all(sql, (after_id,)):
            data = dict(r)
            data["data"] = json.loads(data["data"] or "{}")
            out.append(EventInfo.model_validate(data))
        return out

    def supervisor_keys(self) -> set[str]:
        """Keys of the findings the supervisor already recorded (so a restarted daemon that finds
        them again neither reports nor acts twice)."""
        rows = self._all("SELECT json_extract(data, '$.key') FROM events WHERE source = 'supervisor'"
                         " AND json_extract(data, '$.key') IS NOT NULL")
        return {r[0] for r in rows}

    # ----------------------------------------------------------- interventions
    def add_intervention(
        self, finding: str, onset: int, step: int, branch: int, mode: str, status: str,
        actions: list[dict[str, Any]], reason: str, level_before: float | None,
    ) -> int:
        cur = self._conn.execute(
            "INSERT INTO interventions (created_at, finding, onset, step, branch, mode, status, actions, reason, level_before)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (time.time(), finding, onset, step, branch, mode, status, json.dumps(actions), reason, _finite_or_none(level_before)),
        )
        return int(cur.lastrowid)

    def _intervention(self, row: sqlite3.Row) -> InterventionInfo:
        data = dict(row)
        data["actions"] = json.loads(data["actions"] or "[]")
        data["commands"] = json.loads(data["commands"] or "[]")
        return InterventionInfo.model_validate(data)

    def intervention(self, intervention_id: int) -> InterventionInfo | None:
        row = self._one("SELECT * FROM interventions WHERE id = ?", (intervention_id,))
        return self._intervention(row) if row else None

    def interventions(self, status: str | None = None) -> list[InterventionInfo]:
        if status is None:
            rows = self._all("SELECT * FROM interventions ORDER BY id")
        else:
            rows = self._all("SELECT * FROM interventions WHERE status = ? ORDER BY id", (status,))
        return [self._intervention(r) for r in rows]

    def update_intervention(self, intervention_id: int, **fields: Any) -> None:
        allowed = {"status", "commands", "decided_by", "decided_at", "outcome"}
        if not fields or not set(fields) <= allowed:
            raise ValueError(f"cannot update intervention fields {sorted(set(fields) - allowed)}")
        if "commands" in fields:
            fields["commands"] = json.dumps(fields["commands"])
        cols = ", ".join(f"{k} = ?" for k in fields)
        self._conn.execute(f"UPDATE interventions SET {cols} WHERE id = ?", (*fields.values(), intervention_id))

    def issue_intervention(self, intervention_id: int, actions: list[dict[str, Any]], issuer: str, status_from: str) -> list[int] | None:
        """Write an intervention's commands and mark it issued, in one transaction; None when it is
        no longer `status_from` (someone else decided first), so it is never issued twice."""
        with self.transaction():
            row = self._one("SELECT status FROM interventions WHERE id = ?", (intervention_id,))
            if row is None or row[0] != status_from:
                return None
            ids = [self.add_command(a["kind"], a.get("args", {}), issuer) for a in actions]
            self.update_intervention(intervention_id, status="issued", commands=ids)
            return ids
