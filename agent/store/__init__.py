"""The run store: the one place that knows the schema and spells SQL.

A store is a folder holding `trainwarden.db` (SQLite in WAL mode) and `checkpoints/`. The agent,
the CLI, the daemon and the TUI all read and write runs through this package only; each thread
opens its own `Store` because a sqlite3 connection belongs to one thread.

`schema` holds the tables as migrations; `connection` the connection, transactions and errors;
one module of queries per table family (`runs`, `history`, `checkpoints`, `commands`, `events`,
`interventions`); `values` the pure helpers readers share without opening SQLite. `Store` here
combines the queries and opens, creates and migrates a store.
"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Self

from .checkpoints import CheckpointQueries
from .connection import NotAStoreError, RunNotStartedError, StoreError, StoreVersionError
from .events import EventQueries
from .history import HistoryQueries
from .interventions import InterventionQueries
from .schema import CHECKPOINT_DIR, DB_NAME, MIGRATIONS, SCHEMA_VERSION
from .values import Segments, decode_losses, encode_losses, in_lineage

BUSY_TIMEOUT_S = 10.0

__all__ = [
    "BUSY_TIMEOUT_S", "CHECKPOINT_DIR", "DB_NAME", "MIGRATIONS", "NotAStoreError", "RunNotStartedError",
    "SCHEMA_VERSION", "Segments", "Store", "StoreError", "StoreVersionError", "decode_losses", "encode_losses",
    "in_lineage", "is_store",
]


def is_store(run_dir: str | os.PathLike[str]) -> bool:
    """True when the folder holds a store database."""
    return (Path(run_dir) / DB_NAME).is_file()


class Store(HistoryQueries, CheckpointQueries, InterventionQueries, EventQueries):
    """One connection to one run's store. Not thread-safe: open one per thread."""

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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # MIGRATIONS and SCHEMA_VERSION are read from this module when a store opens, so a test (or a
    # newer schema module) can extend them in one place.
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
            self._migrate()

    def _migrate(self) -> None:
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
