"""Queries on the supervisor's interventions (its durable state) and the commands they issue."""
from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from ..records import InterventionInfo
from .commands import CommandQueries
from .values import finite_or_none


class InterventionQueries(CommandQueries):
    """Interventions: proposed, issued, decided, judged."""

    def add_intervention(
        self, finding: str, onset: int, step: int, branch: int, mode: str, status: str,
        actions: list[dict[str, Any]], reason: str, level_before: float | None,
    ) -> int:
        cur = self._conn.execute(
            "INSERT INTO interventions (created_at, finding, onset, step, branch, mode, status, actions, reason, level_before)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (time.time(), finding, onset, step, branch, mode, status, json.dumps(actions), reason, finite_or_none(level_before)),
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
