"""Queries on the run row and the branches of its history."""
from __future__ import annotations

import json
import time
from typing import Any

from ..records import BranchInfo, RunInfo
from .connection import Connection, RunNotStartedError
from .values import finite_or_none

_RUN_COLUMNS = frozenset(RunInfo.model_fields)


class RunQueries(Connection):
    """The run's identity and live state (one row), and its branches."""

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
                fields[key] = finite_or_none(fields[key])
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
