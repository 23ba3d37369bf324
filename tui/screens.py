"""The two screens: every run in a table, and one run in detail.

Both show what they are given or read themselves in workers; their keys post messages
(`messages.py`) that the app turns into actions, so a screen never calls the app.
"""
from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.markup import escape
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input, Static, TabbedContent, TabPane

from trainwarden.agent.store import StoreError

from . import palette
from .lists import CheckpointsTable, CommandsTable, EventsTable, ProposalsTable
from .messages import AskLR, AskRollback, AskStop, Decide, OpenRun, PauseResume, SaveNow
from .model import DetailReader, RunDetail, RunRow, StoreGone
from .settings import Settings
from .widgets import LossChart, RunHeader, RunsTable

ZOOMS: tuple[int | None, ...] = (None, 10_000, 2_000, 500)
AGES_EVERY_S = 5.0  # how often lists whose data did not change are redrawn (ages, timeouts)

ACTION_BINDINGS = [
    Binding("p", "pause_resume", "Pause/Resume"),
    Binding("l", "set_lr", "LR"),
    Binding("b", "rollback", "Rollback"),
    Binding("s", "save", "Save"),
    Binding("x", "stop", "Stop"),
    Binding("a", "approve", "Approve"),
    Binding("d", "deny", "Deny"),
    Binding("e", "events", "Events"),
]


def title_text(settings: Settings) -> str:
    roots = escape(", ".join(map(str, settings.roots)))
    return (f"[b {palette.ACCENT}]trainwarden[/]  "
            f"[dim]watching {roots} · acting as {escape(settings.who)} · ? for keys[/]")


class ActingScreen(Screen[None]):
    """A screen whose keys act on one run (`target`); each key posts its request to the app."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings

    def target(self) -> tuple[Path, str] | None:
        """The run acted on (folder, name), or None."""
        raise NotImplementedError

    def chosen_proposal(self) -> int | None:
        """The proposal picked on screen, if any (None: the run's only one)."""
        return None

    def request(self, make: Callable[[Path, str], Message]) -> None:
        """Post `make(folder, name)` for the target; without one, say so."""
        t = self.target()
        if t is None:
            self.notify("no run selected", severity="warning", markup=False)
        else:
            self.post_message(make(*t))

    def action_pause_resume(self) -> None:
        self.request(PauseResume)

    def action_set_lr(self) -> None:
        self.request(AskLR)

    def action_rollback(self) -> None:
        self.request(AskRollback)

    def action_save(self) -> None:
        self.request(SaveNow)

    def action_stop(self) -> None:
        self.request(AskStop)

    def action_approve(self) -> None:
        chosen = self.chosen_proposal()
        self.request(lambda path, name: Decide(path, name, approve=True, proposal=chosen))

    def action_deny(self) -> None:
        chosen = self.chosen_proposal()
        self.request(lambda path, name: Decide(path, name, approve=False, proposal=chosen))


class RunsScreen(ActingScreen):
    """Every run, one row each: sortable, filterable."""

    BINDINGS = [
        Binding("slash", "filter", "Filter"),
        Binding("o", "sort", "Sort"),
        Binding("O", "reverse", "Reverse", show=False),
        Binding("escape", "clear_filter", "Clear filter", show=False),
        *ACTION_BINDINGS,
    ]

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.rows: list[RunRow] = []
        """Every run as last read, before the filter."""
        self.filter = ""
        self.sort_index = 0
        self.reverse = False

    def compose(self) -> ComposeResult:
        yield Static(title_text(self.settings), id="title-bar")
        yield Input(placeholder="filter runs by name, folder, status or health", id="filter")
        yield RunsTable(clock=self.settings.clock, id="runs")
        yield Static("", id="status-bar")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#filter", Input).display = False
        self.query_one(RunsTable).focus()
        self.show_rows()

    def set_rows(self, rows: list[RunRow]) -> None:
        """A new read of every run."""
        self.rows = rows
        self.show_rows()

    def target(self) -> tuple[Path, str] | None:
        path = self.query_one(RunsTable).selected_path()
        if path is None:
            return None
        row = next((r for r in self.rows if r.path == path), None)
        return Path(path), row.name if row else Path(path).name

    def visible_rows(self) -> list[RunRow]:
        f = self.filter.lower()
        rows = [r for r in self.rows if not f or any(f in x.lower() for x in (r.name, r.path, r.status, r.health.label))]
        key_name = RunsTable.COLUMNS[self.sort_index][0]
        return sorted(rows, key=RunsTable.SORT_KEYS[key_name], reverse=self.reverse)

    def show_rows(self) -> None:
        rows = self.visible_rows()
        self.query_one(RunsTable).show(rows)
        everything = self.rows
        counts = {s: sum(1 for r in everything if r.status == s) for s in ("running", "paused")}
        attention = sum(1 for r in everything if r.health.severity in ("warning", "error"))
        asks = sum(r.proposals for r in everything)
        column = RunsTable.COLUMNS[self.sort_index][1].lower()
        parts = [f"{len(everything)} runs", f"{counts['running']} running", f"{counts['paused']} paused"]
        parts.append(f"[b {palette.ATTENTION}]{attention} need attention[/]" if attention else "0 need attention")
        if asks:
            parts.append(f"[b {palette.ASK}]{asks} proposal{'s' if asks > 1 else ''} waiting[/]")
        parts.append(f"sorted by {column} {'↑' if self.reverse else '↓'}")
        if self.filter:
            parts.append(f"filter “{escape(self.filter)}”: {len(rows)} shown")
        if not everything:
            roots = escape(", ".join(map(str, self.settings.roots)))
            parts = [f"no runs under {roots} yet; they appear as soon as training attaches"]
        self.query_one("#status-bar", Static).update("  ·  ".join(parts))

    # ------------------------------------------------------------- keys
    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.display = False
        self.filter = ""
        self.query_one(RunsTable).focus()
        self.show_rows()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter = event.value.strip()
        self.show_rows()

    @on(Input.Submitted, "#filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        if not self.filter:
            self.action_clear_filter()
        else:
            self.query_one(RunsTable).focus()

    def on_key(self, event: Any) -> None:
        box = self.query_one("#filter", Input)
        if event.key == "escape" and box.has_focus:
            event.stop()
            self.action_clear_filter()

    def action_sort(self) -> None:
        self.sort_index = (self.sort_index + 1) % len(RunsTable.COLUMNS)
        self.show_rows()

    def action_reverse(self) -> None:
        self.reverse = not self.reverse
        self.show_rows()

    @on(RunsTable.SortRequested)
    def _header(self, event: RunsTable.SortRequested) -> None:
        index = [k for k, _ in RunsTable.COLUMNS].index(event.column)
        if index == self.sort_index:
            self.reverse = not self.reverse
        self.sort_index = index
        self.show_rows()

    @on(RunsTable.Selected)
    def _open(self, event: RunsTable.Selected) -> None:
        self.post_message(OpenRun(Path(event.path)))

    def action_events(self) -> None:
        self.request(lambda path, _: OpenRun(path, tab="events"))


class DetailScreen(ActingScreen):
    """One run: header, loss chart, and its events, checkpoints, commands and interventions."""

    BINDINGS = [
        Binding("escape", "back", "Back"),
        *ACTION_BINDINGS,
        Binding("g", "log", "Log/Linear"),
        Binding("z", "zoom", "Zoom"),
        Binding("r", "raw", "Raw/Band"),
    ]

    def __init__(self, settings: Settings, path: Path, tab: str | None = None) -> None:
        super().__init__(settings)
        self.path = path
        self.reader = DetailReader(path)
        self.detail: RunDetail | None = None
        """What was last read of the run (None before the first read)."""
        self.first_tab = tab
        self.gone: str | None = None
        """Why the run cannot be read now (None while it can)."""
        self._busy = False
        self._drawn_at = 0.0

    def compose(self) -> ComposeResult:
        clock = self.settings.clock
        yield RunHeader(f"{self.path}\nreading…", id="header")
        yield LossChart(id="chart")
        with TabbedContent(id="tabs", initial=self.first_tab or "events"):
            with TabPane("Events", id="events"):
                yield EventsTable(id="events-table")
            with TabPane("Checkpoints", id="checkpoints"):
                yield CheckpointsTable(clock=clock, id="checkpoints-table")
            with TabPane("Commands", id="commands"):
                yield CommandsTable(clock=clock, timeout=self.settings.timeout, id="commands-table")
            with TabPane("Interventions", id="interventions"):
                yield ProposalsTable(id="interventions-table")
        yield Footer()

    def on_mount(self) -> None:
        self.set_interval(self.settings.refresh_s, self.poll)
        self.poll()

    def on_unmount(self) -> None:
        self.reader.close()

    def poll(self) -> None:
        if not self._busy:
            self._busy = True
            self.run_worker(self._read(), group="detail", exit_on_error=False)

    async def _read(self) -> None:
        chart = self.query_one(LossChart)
        settings, previous = chart.settings, self.detail

        def read() -> tuple[RunDetail, Any]:
            d = self.reader.read(self.settings.clock())
            # The chart's layers are pure code: build them here, off the event loop.
            return d, (chart.build(d, settings) if d is not previous else None)

        try:
            detail, built = await asyncio.to_thread(read)
        except StoreGone as exc:
            self._trouble(f"gone: {exc}", f"{self.path.name} disappeared: {exc}")
            return
        except (StoreError, sqlite3.Error, OSError) as exc:
            self._trouble(f"unreadable: {exc}", f"{self.path.name} cannot be read: {exc}")
            return
        finally:
            self._busy = False
        if self.gone is not None:
            self.notify(f"{self.path.name} is readable again", markup=False)
            self.gone = None
        self.show(detail, built, settings)

    def _trouble(self, label: str, notice: str) -> None:
        if self.gone != label:
            self.notify(notice, severity="error", timeout=8, markup=False)
            self.gone = label
            header = self.query_one(RunHeader)
            if self.detail is not None:
                header.show(self.detail, self.settings.clock())
                header.update(f"[b {palette.TROUBLE}]{escape(label)}[/]\n[dim]showing what was last read[/]")
            else:
                header.update(f"[b {palette.TROUBLE}]{escape(label)}[/]")

    def show(self, d: RunDetail, built: Any = None, settings: Any = None) -> None:
        # The reader hands back the same object when nothing was written; the lists are then
        # redrawn only every few seconds, for their ages and the commands' timeouts.
        now = self.settings.clock()
        unchanged = d is self.detail
        self.detail = d
        self.query_one(RunHeader).show(d, now)
        if unchanged and now - self._drawn_at < AGES_EVERY_S:
            return
        self._drawn_at = now
        if not unchanged:
            self.query_one(LossChart).set_detail(d, built, settings)
        self.query_one(EventsTable).show(d)
        self.query_one("#checkpoints-table", CheckpointsTable).show(d)
        self.query_one(CommandsTable).show(d)
        self.query_one(ProposalsTable).show(d)
        pending = sum(1 for iv in d.interventions if iv.status == "proposed")
        self.query_one(TabbedContent).get_tab("interventions").label = (
            f"Interventions [b reverse {palette.ASK}] {pending} ? [/]" if pending else "Interventions")

    def target(self) -> tuple[Path, str] | None:
        return self.path, self.detail.run.name if self.detail else self.path.name

    def chosen_proposal(self) -> int | None:
        tabs = self.query_one(TabbedContent)
        if tabs.active == "interventions":
            return self.query_one(ProposalsTable).selected_id()
        return None

    def action_back(self) -> None:
        self.dismiss()

    def action_events(self) -> None:
        self.query_one(TabbedContent).active = "events"

    def action_log(self) -> None:
        chart = self.query_one(LossChart)
        chart.log = not chart.log

    def action_raw(self) -> None:
        chart = self.query_one(LossChart)
        chart.raw = not chart.raw

    def action_zoom(self) -> None:
        chart = self.query_one(LossChart)
        chart.zoom = ZOOMS[(ZOOMS.index(chart.zoom) + 1) % len(ZOOMS)] if chart.zoom in ZOOMS else None
