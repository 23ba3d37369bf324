"""Queries on the events table: what an operator should be told, by the agent, CLI or supervisor."""
from __future__ import annotations

import json
import time
from typing import Any

from ..records import EventInfo
from .connection import Connection


class EventQueries(Connection):
    """Events, and the keys of the supervisor's findings among them."""

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
