"""Queries on checkpoint rows: their lifecycle (writing, ready, failed, corrupt, deleted) and pins."""
from __future__ import annotations

import time
from collections.abc import Sequence

from ..records import CheckpointInfo
from .connection import Connection
from .schema import CHECKPOINT_DIR
from .values import finite_or_none


class CheckpointQueries(Connection):
    """Checkpoint rows; the files themselves are the agent's business."""

    def add_checkpoint(self, step: int, branch: int, loss: float | None, kind: str, suffix: str = ".pt") -> tuple[int, str]:
        """A new checkpoint row in state `writing`; returns its id and file path (relative).
        `suffix` is ".pt" for a single file, ".dcp" for a sharded checkpoint's folder."""
        with self.transaction():
            cur = self._conn.execute(
                "INSERT INTO checkpoints (step, branch, loss, kind, status, path, created_at) VALUES (?, ?, ?, ?, 'writing', '', ?)",
                (step, branch, finite_or_none(loss), kind, time.time()),
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
