"""What the keys do to a run: pause/resume, set the LR, roll back, save, stop, approve or deny a
proposal; and the follow-up of each command sent until the run acknowledges it.

Commands are written the way the CLI writes them (`supervisor/operator.py`), signed with the
operator's name. Each action runs in one of the app's workers: store I/O in a thread, dialogs
awaited with `push_screen_wait`, so the screen never waits on a store.
"""
from __future__ import annotations

import asyncio
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape
from textual.app import App

from trainwarden.agent.store import Store, StoreError
from trainwarden.supervisor.operator import LIVE, OperatorError, decide_proposal, liveness, send_command

from .dialogs import ConfirmDialog, LRDialog, RollbackDialog
from .messages import OpenRun
from .model import DetailReader, RunDetail, StoreGone, describe_actions, describe_command
from .screens import DetailScreen
from .settings import Settings

Note = tuple[str, str]  # a notice's text and severity


@dataclass
class Tracked:
    """A command this TUI sent and still waits to see acknowledged."""

    path: Path
    command_id: int
    what: str
    run_name: str
    sent_at: float


class Actions:
    """The operator's actions on runs, for one app."""

    def __init__(self, app: App[Any], settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self._tracked: list[Tracked] = []
        # `follow` adds on the event loop while `check` replaces the list in the reading thread.
        self._lock = threading.Lock()

    # ------------------------------------------------------------ the keys
    async def toggle_pause(self, path: Path, name: str) -> None:
        detail = await self._detail_once(path)
        if detail is not None:
            await self.send(path, name, "resume" if detail.run.status == "paused" else "pause", {})

    async def ask_lr(self, path: Path, name: str) -> None:
        detail = await self._detail_once(path)
        if detail is None:
            return
        answer = await self.app.push_screen_wait(LRDialog(name, detail.run.lr, detail.run.lr_multiplier))
        if answer is not None:
            await self.send(path, name, *answer)

    async def ask_rollback(self, path: Path, name: str) -> None:
        detail = await self._detail_once(path)
        if detail is None:
            return
        if not any(c.status == "ready" for c in detail.checkpoints):
            self.app.notify(f"{name} has no ready checkpoint to roll back to", severity="warning")
            return
        target = await self.app.push_screen_wait(RollbackDialog(detail, clock=self.settings.clock))
        if target is not None:
            await self.send(path, name, "rollback", {"target": target})

    async def save(self, path: Path, name: str) -> None:
        await self.send(path, name, "save", {})

    async def ask_stop(self, path: Path, name: str) -> None:
        if await self.app.push_screen_wait(ConfirmDialog(f"Stop [b]{escape(name)}[/b]? It ends at its next step boundary.")):
            await self.send(path, name, "stop", {})

    async def decide(self, path: Path, name: str, *, approve: bool, chosen: int | None) -> None:
        """Approve or deny `chosen`, or the only pending proposal; with several and none chosen,
        open the run's list of them to pick from."""
        detail = await self._detail_once(path)
        if detail is None:
            return
        pending = [iv for iv in detail.interventions if iv.status == "proposed"]
        iv = next((p for p in pending if p.id == chosen), None) if chosen is not None else None
        if iv is None and chosen is not None:
            self.app.notify(f"{name}: intervention {chosen} is not a pending proposal", severity="warning")
            return
        if iv is None:
            if not pending:
                self.app.notify(f"{name} has no pending proposal", severity="warning")
                return
            if len(pending) > 1 and not isinstance(self.app.screen, DetailScreen):
                self.app.post_message(OpenRun(path, tab="interventions"))
                self.app.notify(f"{name} has {len(pending)} proposals: pick one in the list, then a or d")
                return
            iv = pending[0]
        verb = "Approve" if approve else "Deny"
        if not await self.app.push_screen_wait(ConfirmDialog(
                f"{verb} proposal {iv.id} for [b]{escape(name)}[/b]?\n{escape(describe_actions(iv.actions))}\n{escape(iv.reason)}")):
            return

        def write() -> tuple[list[int], list[str], str]:
            with Store.open(path) as s:
                _, ids = decide_proposal(s, iv.id, approve, self.settings.who, source="tui")
                whats = [describe_command(s.command(i)) for i in ids]  # type: ignore[arg-type]
                return ids, whats, liveness(s.run(), self.settings.clock())

        try:
            ids, whats, state = await asyncio.to_thread(write)
        except (OperatorError, StoreError, sqlite3.Error, OSError) as exc:
            self.app.notify(f"{name}: {exc}", severity="error", timeout=8)
            return
        if not approve:
            self.app.notify(f"{name}: proposal {iv.id} denied")
            return
        self._follow(path, name, list(zip(ids, whats)), state)

    # ------------------------------------------------------------ writing and following
    async def send(self, path: Path, name: str, kind: str, args: dict[str, Any]) -> None:
        """Write a command as the CLI does; follow its acknowledgement."""
        def write() -> tuple[int, str, str]:
            with Store.open(path) as s:
                cid = send_command(s, kind, args, self.settings.who)
                info = s.run()
                return cid, describe_command(s.command(cid)), liveness(info, self.settings.clock())  # type: ignore[arg-type]

        try:
            cid, what, state = await asyncio.to_thread(write)
        except (OperatorError, StoreError, sqlite3.Error, OSError) as exc:
            self.app.notify(f"{name}: {exc}; nothing sent", severity="error", timeout=8)
            return
        self._follow(path, name, [(cid, what)], state)

    def _follow(self, path: Path, name: str, commands: list[tuple[int, str]], state: str) -> None:
        what = ", ".join(w for _, w in commands)
        if state not in LIVE:
            self.app.notify(f"{name}: {what} queued; the run is {state}, it applies when training attaches again",
                            severity="warning", timeout=8)
            return
        self.app.notify(f"{name}: {what} sent, waiting for the run…")
        now = self.settings.clock()
        with self._lock:
            self._tracked.extend(Tracked(path, cid, w, name, now) for cid, w in commands)

    def check(self, now: float) -> list[Note]:
        """The acknowledgements (or their absence past the timeout) of the commands sent; runs in
        the reading thread. A command is reported once, then no longer followed."""
        with self._lock:
            tracked = list(self._tracked)
        notes: list[Note] = []
        done: list[Tracked] = []
        for t in tracked:
            try:
                with Store.open(t.path) as s:
                    c = s.command(t.command_id)
            except (StoreError, sqlite3.Error, OSError) as exc:
                notes.append((f"{t.run_name}: cannot see command {t.command_id} ({t.what}): {exc}", "error"))
                done.append(t)
                continue
            if c is None:
                done.append(t)
            elif c.status == "applied":
                notes.append((f"{t.run_name}: {t.what} applied at step {c.applied_step}: {c.result}", "information"))
                done.append(t)
            elif c.status == "rejected":
                notes.append((f"{t.run_name}: {t.what} rejected: {c.result}", "error"))
                done.append(t)
            elif now - t.sent_at > self.settings.timeout:
                notes.append((f"{t.run_name}: {t.what} not acknowledged within {self.settings.timeout:g}s; "
                              f"it stays queued (command {t.command_id})", "warning"))
                done.append(t)
        with self._lock:
            self._tracked = [t for t in self._tracked if not any(t is d for d in done)]
        return notes

    async def _detail_once(self, path: Path) -> RunDetail | None:
        reader = DetailReader(path)
        try:
            return await asyncio.to_thread(reader.read, self.settings.clock())
        except (StoreError, StoreGone, sqlite3.Error, OSError) as exc:
            self.app.notify(f"{path.name}: {exc}", severity="error", timeout=8)
            return None
        finally:
            reader.close()
