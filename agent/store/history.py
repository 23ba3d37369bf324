"""Queries on what training recorded: windows of per-step losses, and named metrics."""
from __future__ import annotations

import time
from collections.abc import Sequence

from ..records import MetricInfo, WindowInfo
from .runs import RunQueries
from .values import decode_losses, encode_losses, finite_or_none, in_segments


class HistoryQueries(RunQueries):
    """Windows and metrics, by branch or along a branch's lineage."""

    def add_window(
        self, branch: int, first_step: int, losses: Sequence[float], stats: dict[str, float | int | None],
        lr: float | None, steps_per_s: float | None,
    ) -> None:
        self._conn.execute(
            "INSERT INTO windows (branch, first_step, last_step, count, mean, min, max, std, nonfinite, lr,"
            " steps_per_s, losses, time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                branch, first_step, first_step + len(losses) - 1, len(losses),
                finite_or_none(stats["mean"]), finite_or_none(stats["min"]), finite_or_none(stats["max"]),
                finite_or_none(stats["std"]), stats["nonfinite"], finite_or_none(lr),
                finite_or_none(steps_per_s), encode_losses(losses), time.time(),
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
            (branch, step, name, finite_or_none(value), time.time()),
        )

    def lineage_metrics(self, branch: int, name: str, after_id: int = 0) -> list[MetricInfo]:
        """Metrics called `name` along `branch`'s history, in step order."""
        segments = self.lineage(branch)
        rows = self._all("SELECT * FROM metrics WHERE name = ? AND id > ? ORDER BY id", (name, after_id))
        found = [MetricInfo.model_validate(dict(r)) for r in rows]
        return sorted((m for m in found if in_segments(m.step, m.branch, segments)), key=lambda m: (m.step, m.id))

    def metrics(self, name: str | None = None) -> list[MetricInfo]:
        if name is None:
            rows = self._all("SELECT * FROM metrics ORDER BY id")
        else:
            rows = self._all("SELECT * FROM metrics WHERE name = ? ORDER BY id", (name,))
        return [MetricInfo.model_validate(dict(r)) for r in rows]
