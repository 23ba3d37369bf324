"""`trainwarden tui`: every run under the roots, live, and the keys to steer them.

The app reads the stores once a second in a worker thread (never on the UI's event loop, so a
slow or locked store cannot freeze the screen) and hands the rows to the runs screen. The screens
post what the keys ask for (`messages.py`); the app runs it (`actions.py`) in a worker, writing
commands the way the CLI does, signed with the operator's name, and follows each command until the
run acknowledges or rejects it, or the timeout passes, and says so.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from textual.app import App
from textual.binding import Binding

from trainwarden.supervisor.discovery import find_runs
from trainwarden.supervisor.operator import issuer

from . import palette
from .actions import Actions, Note
from .dialogs import HelpScreen
from .messages import AskLR, AskRollback, AskStop, Decide, OpenRun, PauseResume, SaveNow
from .model import RunRow, RunsReader
from .screens import DetailScreen, RunsScreen
from .settings import Settings


class TrainwardenApp(App[None]):
    """The operator's screen over every run under the roots."""

    TITLE = "trainwarden"
    ENABLE_COMMAND_PALETTE = False  # every action has its key; the palette would only add clutter
    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: Textual reads a relative one next to a subclass
    BINDINGS = [Binding("question_mark", "help", "Help"), Binding("q", "quit", "Quit")]

    def __init__(self, roots: Sequence[Path], *, clock: Callable[[], float] = time.time, timeout: float = 30.0,
                 refresh_s: float = 1.0, who: str | None = None) -> None:
        super().__init__()
        self.settings = Settings(tuple(Path(r) for r in roots), who or issuer(), clock, timeout, refresh_s)
        self.reader = RunsReader()
        self.actions = Actions(self, self.settings)
        self._polling = False
        self._known: set[str] = set()  # run folders of the last read, to tell which disappeared

    def get_theme_variable_defaults(self) -> dict[str, str]:
        return {**super().get_theme_variable_defaults(), **palette.CSS_VARIABLES}

    def notify(self, message: str, *, title: str = "", severity: Any = "information", timeout: float | None = None,
               markup: bool = False) -> None:
        """A toast; plain text by default, since run names and store messages may hold brackets."""
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=markup)

    def on_mount(self) -> None:
        self.push_screen(RunsScreen(self.settings))
        self.set_interval(self.settings.refresh_s, self.poll)
        self.poll()

    def on_unmount(self) -> None:
        self.reader.close()

    # ------------------------------------------------------------ reading
    def poll(self) -> None:
        if not self._polling:  # one read at a time: a slow store delays the next, never piles them up
            self._polling = True
            self.run_worker(self._poll(), name="read runs", group="poll", exit_on_error=False)

    async def _poll(self) -> None:
        try:
            rows, notes = await asyncio.to_thread(self._read_all, self.settings.clock())
        finally:
            self._polling = False
        self._show(rows, notes)

    def _read_all(self, now: float) -> tuple[list[RunRow], list[Note]]:
        """Every run's row, and what became of the commands sent (worker thread)."""
        paths: list[Path] = []
        for root in self.settings.roots:
            paths.extend(find_runs(root))
        rows = self.reader.read(sorted(set(paths)), now)
        return rows, self.actions.check(now)

    def _show(self, rows: list[RunRow], notes: list[Note]) -> None:
        """A read's results, on the event loop: notices, then the runs screen's rows."""
        for path in sorted(self._known - {r.path for r in rows}):
            self.notify(f"{Path(path).name} disappeared from {Path(path).parent}", severity="warning")
        self._known = {r.path for r in rows}
        for text, severity in notes:
            self.notify(text, severity=severity, timeout=8)
        for screen in self.screen_stack:
            if isinstance(screen, RunsScreen):
                screen.set_rows(rows)

    # ------------------------------------------------------------ what the screens ask
    def on_open_run(self, message: OpenRun) -> None:
        self.push_screen(DetailScreen(self.settings, message.path, message.tab))

    def on_pause_resume(self, message: PauseResume) -> None:
        self._act(self.actions.toggle_pause(message.path, message.name))

    def on_ask_lr(self, message: AskLR) -> None:
        self._act(self.actions.ask_lr(message.path, message.name))

    def on_ask_rollback(self, message: AskRollback) -> None:
        self._act(self.actions.ask_rollback(message.path, message.name))

    def on_save_now(self, message: SaveNow) -> None:
        self._act(self.actions.save(message.path, message.name))

    def on_ask_stop(self, message: AskStop) -> None:
        self._act(self.actions.ask_stop(message.path, message.name))

    def on_decide(self, message: Decide) -> None:
        self._act(self.actions.decide(message.path, message.name, approve=message.approve, chosen=message.proposal))

    def _act(self, work: Coroutine[Any, Any, None]) -> None:
        # A worker, since an action may wait on a dialog (push_screen_wait) and on store writes.
        self.run_worker(work, group="act")

    def action_help(self) -> None:
        self.push_screen(HelpScreen())


def run_tui(roots: Sequence[Path], timeout: float = 30.0) -> int:
    TrainwardenApp(roots, timeout=timeout).run()
    return 0
