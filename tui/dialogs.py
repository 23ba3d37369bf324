"""Modal screens: set the LR, pick a checkpoint to roll back to, confirm, and the key help."""
from __future__ import annotations

import time
from typing import Any

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from trainwarden.agent.commands import CommandError, positive_finite
from trainwarden.supervisor.display import fmt

from . import palette
from .lists import CheckpointsTable
from .model import RunDetail
from .settings import Clock

SCALE_PREFIXES = ("x", "×", "*")


def parse_lr(text: str) -> tuple[str, dict[str, float]]:
    """What the operator typed as a command: `3e-4` sets the LR, `x0.5` (or `×0.5`, `*0.5`) scales it.

    Raises CommandError saying what is wrong.
    """
    t = text.strip().lower()
    if not t:
        raise CommandError("type a learning rate such as 3e-4, or x0.5 to scale the current one")
    if t[0] in SCALE_PREFIXES:
        return "scale_lr", {"factor": positive_finite(t[1:].strip(), "LR scale factor")}
    return "set_lr", {"value": positive_finite(t, "learning rate")}


class LRDialog(ModalScreen[tuple[str, dict[str, float]] | None]):
    """Ask for a new LR; sends nothing until the text is a positive finite number."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, run_name: str, lr: float | None, multiplier: float) -> None:
        super().__init__()
        self.run_name, self.lr, self.multiplier = run_name, lr, multiplier

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(f"Learning rate of [b]{escape(self.run_name)}[/b]", id="title")
            yield Static(f"now {fmt(self.lr, '.6g')}" + (f" (×{self.multiplier:.4g} of the schedule)" if self.multiplier != 1 else ""),
                         id="current")
            yield Input(placeholder="e.g. 3e-4, or x0.5 to scale", id="lr-input")
            yield Static("", id="lr-error")
            with Horizontal(classes="buttons"):
                yield Button("Set", variant="primary", id="ok")
                yield Button("Cancel", id="cancel")

    def on_input_changed(self, event: Input.Changed) -> None:
        self.query_one("#lr-error", Static).update("")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "ok":
            self._submit()
        else:
            self.dismiss(None)

    def _submit(self) -> None:
        text = self.query_one("#lr-input", Input).value
        try:
            self.dismiss(parse_lr(text))
        except CommandError as exc:
            self.query_one("#lr-error", Static).update(f"[b {palette.REFUSED}]✖[/] {escape(str(exc))}; nothing sent")

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmDialog(ModalScreen[bool]):
    """Yes or no, for actions that cannot be undone from here (stop)."""

    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.question, id="title")
            with Horizontal(classes="buttons"):
                yield Button("Yes (y)", variant="error", id="yes")
                yield Button("No (n)", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class RollbackDialog(ModalScreen[int | str | None]):
    """Pick the checkpoint to roll back to: a row and Enter, or `b` for best, `l` for last."""

    BINDINGS = [
        Binding("b", "pick('best')", "Best"), Binding("l", "pick('last')", "Last"),
        Binding("escape", "pick(None)", "Cancel"),
    ]

    def __init__(self, detail: RunDetail, clock: Clock = time.time) -> None:
        super().__init__()
        self.detail, self.clock = detail, clock

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="wide"):
            yield Label(f"Roll back [b]{escape(self.detail.run.name)}[/b] to a checkpoint", id="title")
            yield Static("Enter: the highlighted one · b: best (lowest loss) · l: last (newest on this history) · "
                         "Esc: cancel.  The current history is kept as a branch.", classes="hint")
            yield CheckpointsTable(clock=self.clock, ready_only=True, id="pick")

    def on_mount(self) -> None:
        table = self.query_one(CheckpointsTable)
        table.show(self.detail)
        table.focus()

    def on_data_table_row_selected(self, event: CheckpointsTable.RowSelected) -> None:
        event.stop()
        self.dismiss(self.query_one(CheckpointsTable).selected_id())

    def action_pick(self, target: Any) -> None:
        self.dismiss(target)


HELP = """\
[b]Runs table[/b]
  ↑ ↓  move         enter  open the run       /  filter (Esc clears)
  o    sort column  O      reverse the order

[b]Any run (table or detail)[/b]
  p    pause / resume             l  set the learning rate (or ×factor)
  b    roll back (pick a checkpoint; b best, l last)
  s    save a checkpoint now      x  stop the run (asks first)
  a    approve a proposal         d  deny a proposal
  e    the run's events

[b]Run detail[/b]
  g    log / linear scale         z  zoom: all, last 10k, 2k, 500 steps
  r    every step / window band   tab  focus the lists; on their tab bar ← → switch
  esc  back to the table

  ?    this help                  q  quit

Every action writes the same command as the CLI, signed with your user name, and shows the
run's acknowledgement (or rejection) when it comes. Nothing needs the daemon running.
"""


class HelpScreen(ModalScreen[None]):
    """The keys."""

    BINDINGS = [Binding("escape,question_mark,q", "close", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="wide"):
            yield Label("trainwarden keys", id="title")
            yield Static(HELP)

    def action_close(self) -> None:
        self.dismiss(None)
