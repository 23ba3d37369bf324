"""`trainwarden tui`: every run under the roots, live, and the keys to steer them.

The app reads the stores once a second in a worker thread (never on the UI's event loop, so a
slow or locked store cannot freeze the screen) and writes commands the way the CLI does, signed
with the operator's name. It follows each command it sent until the run acknowledges or rejects
it, or the timeout passes, and says so.
"""
from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Input, Static, TabbedContent, TabPane

from trainwarden.agent.store import Store, StoreError
from trainwarden.supervisor.discovery import find_runs
from trainwarden.supervisor.operator import LIVE, OperatorError, decide_proposal, issuer, liveness, send_command

from .dialogs import ConfirmDialog, HelpScreen, LRDialog, RollbackDialog
from .model import DetailReader, RunDetail, RunRow, RunsReader, StoreGone, describe_actions, describe_command
from .widgets import (
    CheckpointsTable, CommandsTable, EventsTable, LossChart, ProposalsTable, RunHeader, RunsTable,
)

ZOOMS: tuple[int | None, ...] = (None, 10_000, 2_000, 500)
AGES_EVERY_S = 5.0  # how often lists whose data did not change are redrawn (ages, timeouts)


@dataclass
class Tracked:
    """A command this TUI sent and still waits to see acknowledged."""

    path: Path
    command_id: int
    what: str
    run_name: str
    sent_at: float


class RunActions:
    """The keys that act on one run, shared by the runs table and the detail screen."""

    app: "TrainwardenApp"

    def target(self) -> tuple[Path, str] | None:
        """The run acted on (folder, name), or None with a notice."""
        raise NotImplementedError

    def _with_target(self) -> tuple[Path, str] | None:
        t = self.target()
        if t is None:
            self.app.notify("no run selected", severity="warning")
        return t

    def action_pause_resume(self) -> None:
        if t := self._with_target():
            self.app.run_worker(self.app.toggle_pause(*t), group="act")

    def action_set_lr(self) -> None:
        if t := self._with_target():
            self.app.run_worker(self.app.ask_lr(*t), group="act")

    def action_rollback(self) -> None:
        if t := self._with_target():
            self.app.run_worker(self.app.ask_rollback(*t), group="act")

    def action_save(self) -> None:
        if t := self._with_target():
            self.app.run_worker(self.app.send(t[0], t[1], "save", {}), group="act")

    def action_stop(self) -> None:
        if t := self._with_target():
            self.app.run_worker(self.app.ask_stop(*t), group="act")

    def action_approve(self) -> None:
        if t := self._with_target():
            self.app.run_worker(self.app.decide(*t, approve=True, chosen=self.chosen_proposal()), group="act")

    def action_deny(self) -> None:
        if t := self._with_target():
            self.app.run_worker(self.app.decide(*t, approve=False, chosen=self.chosen_proposal()), group="act")

    def chosen_proposal(self) -> int | None:
        return None


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


class RunsScreen(RunActions, Screen[None]):
    """Every run, one row each: sortable, filterable."""

    BINDINGS = [
        Binding("slash", "filter", "Filter"),
        Binding("o", "sort", "Sort"),
        Binding("O", "reverse", "Reverse", show=False),
        Binding("escape", "clear_filter", "Clear filter", show=False),
        *ACTION_BINDINGS,
    ]

    def __init__(self) -> None:
        super().__init__()
        self.filter = ""
        self.sort_index = 0
        self.reverse = False

    def compose(self) -> ComposeResult:
        yield Static(self.app.title_text(), id="title-bar")
        yield Input(placeholder="filter runs by name, folder, status or health", id="filter")
        yield RunsTable(clock=self.app.clock, id="runs")
        yield Static("", id="status-bar")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#filter", Input).display = False
        self.query_one(RunsTable).focus()
        self.show_rows()

    def target(self) -> tuple[Path, str] | None:
        path = self.query_one(RunsTable).selected_path()
        if path is None:
            return None
        row = next((r for r in self.app.rows if r.path == path), None)
        return Path(path), row.name if row else Path(path).name

    def visible_rows(self) -> list[RunRow]:
        f = self.filter.lower()
        rows = [r for r in self.app.rows if not f or any(f in x.lower() for x in (r.name, r.path, r.status, r.health.label))]
        key_name = RunsTable.COLUMNS[self.sort_index][0]
        return sorted(rows, key=RunsTable.SORT_KEYS[key_name], reverse=self.reverse)

    def show_rows(self) -> None:
        rows = self.visible_rows()
        self.query_one(RunsTable).show(rows)
        everything = self.app.rows
        counts = {s: sum(1 for r in everything if r.status == s) for s in ("running", "paused")}
        attention = sum(1 for r in everything if r.health.severity in ("warning", "error"))
        asks = sum(r.proposals for r in everything)
        column = RunsTable.COLUMNS[self.sort_index][1].lower()
        parts = [f"{len(everything)} runs", f"{counts['running']} running", f"{counts['paused']} paused"]
        parts.append(f"[b #ffd740]{attention} need attention[/]" if attention else "0 need attention")
        if asks:
            parts.append(f"[b #e040fb]{asks} proposal{'s' if asks > 1 else ''} waiting[/]")
        parts.append(f"sorted by {column} {'↑' if self.reverse else '↓'}")
        if self.filter:
            parts.append(f"filter “{escape(self.filter)}”: {len(rows)} shown")
        if not everything:
            roots = escape(", ".join(map(str, self.app.roots)))
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
        self.app.open_detail(Path(event.path))

    def action_events(self) -> None:
        if t := self._with_target():
            self.app.open_detail(t[0], tab="events")


class DetailScreen(RunActions, Screen[None]):
    """One run: header, loss chart, and its events, checkpoints, commands and interventions."""

    BINDINGS = [
        Binding("escape", "back", "Back"),
        *ACTION_BINDINGS,
        Binding("g", "log", "Log/Linear"),
        Binding("z", "zoom", "Zoom"),
        Binding("r", "raw", "Raw/Band"),
    ]

    def __init__(self, path: Path, tab: str | None = None) -> None:
        super().__init__()
        self.path = path
        self.reader = DetailReader(path)
        self.detail: RunDetail | None = None
        self.first_tab = tab
        self.gone: str | None = None
        self._busy = False
        self._drawn_at = 0.0

    def compose(self) -> ComposeResult:
        yield RunHeader(f"{self.path}\nreading…", id="header")
        yield LossChart(id="chart")
        with TabbedContent(id="tabs", initial=self.first_tab or "events"):
            with TabPane("Events", id="events"):
                yield EventsTable(id="events-table")
            with TabPane("Checkpoints", id="checkpoints"):
                yield CheckpointsTable(clock=self.app.clock, id="checkpoints-table")
            with TabPane("Commands", id="commands"):
                yield CommandsTable(clock=self.app.clock, timeout=self.app.timeout, id="commands-table")
            with TabPane("Interventions", id="interventions"):
                yield ProposalsTable(id="interventions-table")
        yield Footer()

    def on_mount(self) -> None:
        self.set_interval(self.app.refresh_s, self.poll)
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
            d = self.reader.read(self.app.clock())
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
            self.app.notify(f"{self.path.name} is readable again")
            self.gone = None
        self.show(detail, built, settings)

    def _trouble(self, label: str, notice: str) -> None:
        if self.gone != label:
            self.app.notify(notice, severity="error", timeout=8)
            self.gone = label
            header = self.query_one(RunHeader)
            if self.detail is not None:
                header.show(self.detail, self.app.clock())
                header.update(f"[b #ff5252]{escape(label)}[/]\n[dim]showing what was last read[/]")
            else:
                header.update(f"[b #ff5252]{escape(label)}[/]")

    def show(self, d: RunDetail, built: Any = None, settings: Any = None) -> None:
        # The reader hands back the same object when nothing was written; the lists are then
        # redrawn only every few seconds, for their ages and the commands' timeouts.
        now = self.app.clock()
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
            f"Interventions [b reverse #e040fb] {pending} ? [/]" if pending else "Interventions")

    def target(self) -> tuple[Path, str] | None:
        return self.path, self.detail.run.name if self.detail else self.path.name

    def chosen_proposal(self) -> int | None:
        tabs = self.query_one(TabbedContent)
        if tabs.active == "interventions":
            return self.query_one(ProposalsTable).selected_id()
        return None

    def action_back(self) -> None:
        self.app.pop_screen()

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


class TrainwardenApp(App[None]):
    """The operator's screen over every run under the roots."""

    TITLE = "trainwarden"
    ENABLE_COMMAND_PALETTE = False  # every action has its key; the palette would only add clutter
    CSS_PATH = "app.tcss"
    BINDINGS = [Binding("question_mark", "help", "Help"), Binding("q", "quit", "Quit")]

    def __init__(self, roots: Sequence[Path], *, clock: Callable[[], float] = time.time, timeout: float = 30.0,
                 refresh_s: float = 1.0, who: str | None = None) -> None:
        super().__init__()
        self.roots = [Path(r) for r in roots]
        self.clock = clock
        self.timeout = timeout
        self.refresh_s = refresh_s
        self.who = who or issuer()
        self.rows: list[RunRow] = []
        self.reader = RunsReader()
        self.tracked: list[Tracked] = []
        self._polling = False
        self._known: set[str] = set()
        self.polls = 0  # completed reads of the runs table (tests wait on it)
        self.notices: list[str] = []  # every notice shown, oldest first

    def notify(self, message: str, *, title: str = "", severity: Any = "information", timeout: float | None = None,
               markup: bool = False) -> None:
        """A toast; plain text by default, since run names and store messages may hold brackets."""
        self.notices.append(message)
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=markup)

    def title_text(self) -> str:
        roots = escape(", ".join(map(str, self.roots)))
        return f"[b #4fc3f7]trainwarden[/]  [dim]watching {roots} · acting as {escape(self.who)} · ? for keys[/]"

    def on_mount(self) -> None:
        self.push_screen(RunsScreen())
        self.set_interval(self.refresh_s, self.poll)
        self.poll()

    def on_unmount(self) -> None:
        self.reader.close()

    # ------------------------------------------------------------ reading
    def poll(self) -> None:
        if not self._polling:
            self._polling = True
            self.run_worker(self._poll(), group="poll", exit_on_error=False)

    async def _poll(self) -> None:
        try:
            rows, notes = await asyncio.to_thread(self._read_all, self.clock())
        finally:
            self._polling = False
        gone = self._known - {r.path for r in rows}
        for path in sorted(gone):
            self.notify(f"{Path(path).name} disappeared from {Path(path).parent}", severity="warning")
        self._known = {r.path for r in rows}
        self.rows = rows
        for text, severity in notes:
            self.notify(text, severity=severity, timeout=8)
        for screen in self.screen_stack:
            if isinstance(screen, RunsScreen):
                screen.show_rows()
        self.polls += 1

    def _read_all(self, now: float) -> tuple[list[RunRow], list[tuple[str, str]]]:
        """Runs in a worker thread."""
        paths: list[Path] = []
        for root in self.roots:
            paths.extend(find_runs(root))
        rows = self.reader.read(sorted(set(paths)), now)
        return rows, self._check_tracked(now)

    def _check_tracked(self, now: float) -> list[tuple[str, str]]:
        """Acknowledgements of the commands this TUI sent (worker thread)."""
        notes: list[tuple[str, str]] = []
        still: list[Tracked] = []
        for t in self.tracked:
            try:
                with Store.open(t.path) as s:
                    c = s.command(t.command_id)
            except (StoreError, sqlite3.Error, OSError) as exc:
                notes.append((f"{t.run_name}: cannot see command {t.command_id} ({t.what}): {exc}", "error"))
                continue
            if c is None:
                continue
            if c.status == "applied":
                notes.append((f"{t.run_name}: {t.what} applied at step {c.applied_step}: {c.result}", "information"))
            elif c.status == "rejected":
                notes.append((f"{t.run_name}: {t.what} rejected: {c.result}", "error"))
            elif now - t.sent_at > self.timeout:
                notes.append((f"{t.run_name}: {t.what} not acknowledged within {self.timeout:g}s; "
                               f"it stays queued (command {t.command_id})", "warning"))
            else:
                still.append(t)
        self.tracked = still
        return notes

    # ------------------------------------------------------------ screens
    def open_detail(self, path: Path, tab: str | None = None) -> None:
        self.push_screen(DetailScreen(path, tab))

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    # ------------------------------------------------------------ acting
    async def send(self, path: Path, name: str, kind: str, args: dict[str, Any]) -> None:
        """Write a command as the CLI does; follow its acknowledgement."""
        def write() -> tuple[int, str, str]:
            with Store.open(path) as s:
                cid = send_command(s, kind, args, self.who)
                info = s.run()
                return cid, describe_command(s.command(cid)), liveness(info, self.clock())  # type: ignore[arg-type]

        try:
            cid, what, state = await asyncio.to_thread(write)
        except (OperatorError, StoreError, sqlite3.Error, OSError) as exc:
            self.notify(f"{name}: {exc}; nothing sent", severity="error", timeout=8)
            return
        self._follow(path, name, [(cid, what)], state)

    def _follow(self, path: Path, name: str, commands: list[tuple[int, str]], state: str) -> None:
        what = ", ".join(w for _, w in commands)
        if state not in LIVE:
            self.notify(f"{name}: {what} queued; the run is {state}, it applies when training attaches again",
                        severity="warning", timeout=8)
            return
        self.notify(f"{name}: {what} sent, waiting for the run…")
        now = self.clock()
        self.tracked.extend(Tracked(path, cid, w, name, now) for cid, w in commands)

    async def _detail_once(self, path: Path) -> RunDetail | None:
        reader = DetailReader(path)
        try:
            return await asyncio.to_thread(reader.read, self.clock())
        except (StoreError, StoreGone, sqlite3.Error, OSError) as exc:
            self.notify(f"{path.name}: {exc}", severity="error", timeout=8)
            return None
        finally:
            reader.close()

    async def toggle_pause(self, path: Path, name: str) -> None:
        detail = await self._detail_once(path)
        if detail is not None:
            await self.send(path, name, "resume" if detail.run.status == "paused" else "pause", {})

    async def ask_lr(self, path: Path, name: str) -> None:
        detail = await self._detail_once(path)
        if detail is None:
            return
        answer = await self.push_screen_wait(LRDialog(name, detail.run.lr, detail.run.lr_multiplier))
        if answer is not None:
            await self.send(path, name, *answer)

    async def ask_rollback(self, path: Path, name: str) -> None:
        detail = await self._detail_once(path)
        if detail is None:
            return
        if not any(c.status == "ready" for c in detail.checkpoints):
            self.notify(f"{name} has no ready checkpoint to roll back to", severity="warning")
            return
        target = await self.push_screen_wait(RollbackDialog(detail, clock=self.clock))
        if target is not None:
            await self.send(path, name, "rollback", {"target": target})

    async def ask_stop(self, path: Path, name: str) -> None:
        if await self.push_screen_wait(ConfirmDialog(f"Stop [b]{escape(name)}[/b]? It ends at its next step boundary.")):
            await self.send(path, name, "stop", {})

    async def decide(self, path: Path, name: str, *, approve: bool, chosen: int | None) -> None:
        detail = await self._detail_once(path)
        if detail is None:
            return
        pending = [iv for iv in detail.interventions if iv.status == "proposed"]
        iv = next((p for p in pending if p.id == chosen), None) if chosen is not None else None
        if iv is None and chosen is not None:
            self.notify(f"{name}: intervention {chosen} is not a pending proposal", severity="warning")
            return
        if iv is None:
            if not pending:
                self.notify(f"{name} has no pending proposal", severity="warning")
                return
            if len(pending) > 1 and not isinstance(self.screen, DetailScreen):
                self.open_detail(path, tab="interventions")
                self.notify(f"{name} has {len(pending)} proposals: pick one in the list, then a or d")
                return
            iv = pending[0]
        verb = "Approve" if approve else "Deny"
        if not await self.push_screen_wait(ConfirmDialog(
                f"{verb} proposal {iv.id} for [b]{escape(name)}[/b]?\n{escape(describe_actions(iv.actions))}\n{escape(iv.reason)}")):
            return

        def write() -> tuple[list[int], list[str], str]:
            with Store.open(path) as s:
                _, ids = decide_proposal(s, iv.id, approve, self.who, source="tui")
                whats = [describe_command(s.command(i)) for i in ids]  # type: ignore[arg-type]
                return ids, whats, liveness(s.run(), self.clock())

        try:
            ids, whats, state = await asyncio.to_thread(write)
        except (OperatorError, StoreError, sqlite3.Error, OSError) as exc:
            self.notify(f"{name}: {exc}", severity="error", timeout=8)
            return
        if not approve:
            self.notify(f"{name}: proposal {iv.id} denied")
            return
        self._follow(path, name, list(zip(ids, whats)), state)


def run_tui(roots: Sequence[Path], timeout: float = 30.0) -> int:
    TrainwardenApp(roots, timeout=timeout).run()
    return 0
