"""Queries on the commands table: instructions to the training process and their acknowledgement.
`args` is a JSON object; a row whose arguments are not one reads as {"_malformed": text}."""
from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from ..records import CommandInfo
from .connection import Connection


class CommandQueries(Connection):
    """Commands, each answered once."""

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
