"""A store connection: the errors it raises, transactions, and the two row helpers every query
module uses."""
from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .schema import CHECKPOINT_DIR


class StoreError(Exception):
    """A store cannot be opened or written; the message is one readable line."""


class NotAStoreError(StoreError):
    """The folder holds no trainwarden store, or the file is not one."""


class RunNotStartedError(NotAStoreError):
    """The store exists but its run row is not written yet (a launcher or attach is creating it)."""


class StoreVersionError(StoreError):
    """The store was written by a newer trainwarden."""


class Connection:
    """One SQLite connection to one run's store. Not thread-safe: open one per thread."""

    def __init__(self, run_dir: Path, conn: sqlite3.Connection) -> None:
        self.run_dir = run_dir
        self.checkpoint_dir = run_dir / CHECKPOINT_DIR
        self._conn = conn
        self._depth = 0

    def close(self) -> None:
        self._conn.close()

    def data_version(self) -> int:
        """Changes whenever another connection commits: lets a watcher skip a store that is idle."""
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

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
