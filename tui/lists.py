"""The detail screen's lists: events, checkpoints (also the rollback picker), commands and
interventions. Each shows what it is given (a `RunDetail`) and keeps its cursor on its row."""
from __future__ import annotations

import time
from typing import Any

from rich.text import Text
from textual.widgets import DataTable

from trainwarden.supervisor.display import age, fmt, size

from . import palette
from .model import RunDetail, describe_actions, describe_command, on_history
from .settings import Clock


class DetailList(DataTable):
    """A list of the detail screen: fixed columns, rows keyed by id, the cursor kept on its row."""

    LABELS: tuple[str, ...] = ()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", **kwargs)
        self.ids: list[int] = []

    def on_mount(self) -> None:
        for label in self.LABELS:
            self.add_column(label, key=label.lower() or "note")

    def fill(self, rows: list[tuple[int, list[Any]]]) -> None:
        keep = self.selected_id()
        self.clear()
        for key, cells in rows:
            self.add_row(*cells, key=str(key))
        self.ids = [key for key, _ in rows]
        if keep in self.ids:
            self.move_cursor(row=self.ids.index(keep))

    def selected_id(self) -> int | None:
        if not self.ids or not (0 <= self.cursor_row < len(self.ids)):
            return None
        return self.ids[self.cursor_row]


class EventsTable(DetailList):
    """The run's events, newest first."""

    LABELS = ("TIME", "SEVERITY", "KIND", "STEP", "SOURCE", "MESSAGE")

    def show(self, d: RunDetail) -> None:
        self.fill([(e.id, [time.strftime("%m-%d %H:%M:%S", time.localtime(e.time)),
                           Text(e.severity, style=palette.SEVERITY_STYLE.get(e.severity, "")), e.kind,
                           "-" if e.step is None else str(e.step), e.source, e.message])
                   for e in reversed(d.events)])


class CheckpointsTable(DetailList):
    """Checkpoints, newest first; the rollback dialog uses the same list (ready ones only)."""

    LABELS = ("ID", "STEP", "BRANCH", "LOSS", "KIND", "STATUS", "SIZE", "AGE", "")

    def __init__(self, clock: Clock = time.time, ready_only: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clock = clock
        self.ready_only = ready_only

    def show(self, d: RunDetail) -> None:
        now = self.clock()
        ckpts = [c for c in reversed(d.checkpoints) if c.status == "ready" or not self.ready_only]
        best = min((c for c in ckpts if c.status == "ready" and c.loss is not None), key=lambda c: c.loss, default=None)
        rows = []
        for c in ckpts:
            current = on_history(c.step, c.branch, d.segments) or c.step == 0
            note = [text for text, on in (("best", best is not None and c.id == best.id),
                                          ("rolled-back branch", not current), ("pinned", c.pinned)) if on]
            if c.error:
                note.append(c.error)
            style = palette.CHECKPOINT_STYLE.get(c.status, palette.TROUBLE)
            rows.append((c.id, [str(c.id), f"{c.step:,}", str(c.branch), fmt(c.loss), c.kind, Text(c.status, style=style),
                                size(c.bytes), age(now - c.created_at),
                                Text(", ".join(note), style="dim" if not current else "")]))
        self.fill(rows)


class CommandsTable(DetailList):
    """Commands, newest first, with their acknowledgement (or its absence past the timeout)."""

    LABELS = ("ID", "COMMAND", "ISSUER", "STATUS", "RESULT", "AGE")

    def __init__(self, clock: Clock = time.time, timeout: float = 30.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clock = clock
        self.timeout = timeout

    def show(self, d: RunDetail) -> None:
        now = self.clock()
        rows = []
        for c in reversed(d.commands):
            if c.status == "pending" and now - c.created_at > self.timeout:
                label = Text(f"not acknowledged ({age(now - c.created_at)})", style=palette.COMMAND_STYLE["timeout"])
            else:
                label = Text(c.status, style=palette.COMMAND_STYLE.get(c.status, ""))
            rows.append((c.id, [str(c.id), describe_command(c), c.issuer, label, c.result or "", age(now - c.created_at)]))
        self.fill(rows)


class ProposalsTable(DetailList):
    """The supervisor's interventions: pending proposals first, then what was done."""

    LABELS = ("ID", "FINDING", "ONSET", "MODE", "STATUS", "ACTIONS", "DECIDED BY", "OUTCOME", "REASON")

    def show(self, d: RunDetail) -> None:
        ordered = sorted(d.interventions, key=lambda iv: (iv.status != "proposed", -iv.id))
        self.fill([(iv.id, [str(iv.id), iv.finding, str(iv.onset), iv.mode,
                            Text(iv.status, style=palette.PROPOSED if iv.status == "proposed"
                                 else palette.COMMAND_STYLE.get(iv.status, "")),
                            describe_actions(iv.actions), iv.decided_by or "", iv.outcome or "", iv.reason])
                   for iv in ordered])
