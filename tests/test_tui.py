"""The operator TUI driven with Textual's Pilot against real stores written by real trainings
(tests/tiny_train.py in subprocesses): the keys must reach the training."""
from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import wait_for
from trainwarden.agent.store import DB_NAME, Store
from textual.worker import WorkerState

from trainwarden.tui.app import TrainwardenApp
from trainwarden.tui.dialogs import ConfirmDialog, LRDialog, RollbackDialog
from trainwarden.tui.model import RunRow
from trainwarden.tui.screens import DetailScreen, RunsScreen
from trainwarden.tui.widgets import RunsTable

SLOW = ("--steps", "1000000000", "--window", "10", "--sleep", "0.004", "--save-every-steps", "40", "--poll", "0.05")
WHO = "tester@bench-1"


async def until(pilot, cond: Callable[[], object], what: str, timeout: float = 40.0) -> object:
    """Let the app run until `cond()` holds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            notices = pilot.app.notices[-5:]
            raise AssertionError(f"timed out waiting for {what}; last notices: {notices}")
        await pilot.pause(0.1)


def run_info(path: Path):
    with Store.open(path) as s:
        return s.run()


def commands(path: Path):
    with Store.open(path) as s:
        return s.commands()


def started(path: Path, min_step: int = 20) -> bool:
    try:
        with Store.open(path) as s:
            info = s.run()
            return info.status == "running" and info.step >= min_step and bool(s.checkpoints(["ready"]))
    except Exception:
        return False


class RecordingApp(TrainwardenApp):
    """The app with every notice it showed, oldest first: a toast lasts seconds (and `run_test`
    draws none), so the tests read them here, as they pass through the public `notify`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.notices: list[str] = []

    def notify(self, message: str, **kwargs: Any) -> None:
        self.notices.append(message)
        super().notify(message, **kwargs)


def app_for(root: Path, **kwargs) -> RecordingApp:
    return RecordingApp([root], who=WHO, **kwargs)


def rows(app: TrainwardenApp) -> list[RunRow]:
    """Every run as last read: the runs screen's rows (under any detail screen or dialog)."""
    return next(s for s in app.screen_stack if isinstance(s, RunsScreen)).rows


def reading(app: TrainwardenApp) -> bool:
    """A read of the runs is under way (the app's worker for it runs)."""
    return any(w.group == "poll" and w.state == WorkerState.RUNNING for w in app.workers)


async def select(pilot, app: TrainwardenApp, path: Path) -> None:
    """Put the runs table's cursor on this run."""
    await until(pilot, lambda: any(r.path == str(path) for r in rows(app)), f"{path.name} in the table")
    table = app.screen.query_one(RunsTable)
    await until(pilot, lambda: str(path) in table.paths, f"{path.name} shown")
    table.move_cursor(row=table.paths.index(str(path)))
    await pilot.pause()


async def open_detail(pilot, app: TrainwardenApp) -> DetailScreen:
    """Enter on the selected run; the detail screen once it has read the run."""
    await pilot.press("enter")
    return await until(pilot, lambda: isinstance(app.screen, DetailScreen) and app.screen.detail and app.screen,
                       "the detail screen")


def cell(app: TrainwardenApp, path: Path, column: str) -> str:
    table = app.screen.query_one(RunsTable)
    return table.get_cell(str(path), column).plain


@pytest.fixture
def live(tmp_path, trainer):
    """A root with one slow, long training running in a subprocess."""
    root = tmp_path / "runs"
    path = root / "live"
    t = trainer(path, *SLOW)
    t.next_event()
    deadline = time.monotonic() + 60
    while not started(path):
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.1)
    return root, path, t


class TestRunsTable:
    async def test_real_runs_in_every_state_and_unreadable_stores(self, tmp_path, trainer, live):
        root, path, _ = live
        done = root / "done"
        code, _, err = trainer(done, "--steps", "60", "--window", "10").wait()
        assert code == 0, err
        (root / "garbage").mkdir()
        (root / "garbage" / DB_NAME).write_bytes(b"not a database at all, just bytes" * 100)
        future = root / "future"
        shutil.copytree(done, future)
        db = sqlite3.connect(future / DB_NAME)
        db.execute("PRAGMA user_version = 99")
        db.commit()
        db.close()

        app = app_for(root)
        async with app.run_test(size=(150, 30)) as pilot:
            await until(pilot, lambda: len(rows(app)) == 4, "four rows")
            by_name = {Path(r.path).name: r for r in rows(app)}
            assert by_name["live"].status == "running" and by_name["live"].step >= 20
            assert by_name["done"].status == "finished" and by_name["done"].step == 60
            assert by_name["garbage"].status == "unreadable" and "not a trainwarden store" in by_name["garbage"].error
            assert by_name["future"].status == "unreadable" and "newer than this trainwarden" in by_name["future"].error
            await until(pilot, lambda: cell(app, path, "status") == "running", "the live row drawn")
            assert cell(app, root / "garbage", "health") == "unreadable"
            assert cell(app, done, "step") == "60"
            # The live run's step moves on screen while the others stay put.
            first = int(cell(app, path, "step").replace(",", ""))
            await until(pilot, lambda: int(cell(app, path, "step").replace(",", "")) > first, "the step to advance")

    async def test_sort_and_filter_by_typing(self, tmp_path, trainer):
        root = tmp_path / "runs"
        for name, steps in (("alpha", 30), ("beta", 90), ("gamma", 60)):
            code, _, err = trainer(root / name, "--steps", str(steps), "--window", "10").wait()
            assert code == 0, err
        app = app_for(root)
        async with app.run_test(size=(150, 30)) as pilot:
            await until(pilot, lambda: len(rows(app)) == 3, "three rows")
            screen = app.screen
            table = screen.query_one(RunsTable)
            await until(pilot, lambda: len(table.paths) == 3, "three rows shown")
            assert [Path(k).name for k in table.paths] == ["alpha", "beta", "gamma"]
            await pilot.press("o", "o")  # sort by step (name -> status -> step), largest first
            assert [Path(k).name for k in table.paths] == ["beta", "gamma", "alpha"]
            await pilot.press("O")
            assert [Path(k).name for k in table.paths] == ["alpha", "gamma", "beta"]
            await pilot.press("slash", "m", "m")  # "mm": only gamma
            assert [Path(k).name for k in table.paths] == ["gamma"]
            assert "filter “mm”: 1 shown" in str(screen.query_one("#status-bar").render())
            await pilot.press("escape")
            assert len(table.paths) == 3 and screen.filter == ""


class TestPauseResume:
    async def test_p_pauses_the_training_and_p_again_resumes_it(self, live):
        root, path, _ = live
        app = app_for(root)
        async with app.run_test(size=(150, 30)) as pilot:
            await select(pilot, app, path)
            await pilot.press("p")
            await until(pilot, lambda: run_info(path).status == "paused", "the training to pause")
            await until(pilot, lambda: cell(app, path, "status") == "paused", "the row to say paused")
            held = run_info(path).step
            await pilot.pause(0.5)
            assert run_info(path).step == held  # really held at a step boundary
            await pilot.press("p")
            await until(pilot, lambda: run_info(path).status == "running" and run_info(path).step > held,
                        "the training to resume")
            sent = commands(path)
            assert [c.kind for c in sent] == ["pause", "resume"]
            assert all(c.issuer == WHO and c.status == "applied" for c in sent)
            assert any("pause applied" in n for n in app.notices)


class TestLearningRate:
    async def test_invalid_values_are_explained_and_nothing_is_sent(self, live):
        root, path, _ = live
        app = app_for(root)
        async with app.run_test(size=(150, 30)) as pilot:
            await select(pilot, app, path)
            for bad, why in (("-1", "greater than 0"), ("nan", "finite"), ("fast", "must be a number"),
                             ("x0", "greater than 0"), ("", "type a learning rate")):
                await pilot.press("l")
                dialog = await until(pilot, lambda: isinstance(app.screen, LRDialog) and app.screen, "the LR dialog")
                if bad:
                    await pilot.press(*bad)
                await pilot.press("enter")
                assert isinstance(app.screen, LRDialog), f"{bad!r} was accepted"
                assert why in str(dialog.query_one("#lr-error").render()), bad
                await pilot.press("escape")
                assert isinstance(app.screen, RunsScreen)
            await pilot.pause(0.3)
            assert commands(path) == []

    async def test_set_and_scale_reach_the_optimizer(self, live):
        root, path, _ = live
        app = app_for(root)
        async with app.run_test(size=(150, 30)) as pilot:
            await select(pilot, app, path)
            await pilot.press("l")
            await until(pilot, lambda: isinstance(app.screen, LRDialog), "the LR dialog")
            await pilot.press(*"0.002", "enter")
            await until(pilot, lambda: run_info(path).lr == pytest.approx(0.002), "the LR to be 0.002")
            await pilot.press("l")
            await until(pilot, lambda: isinstance(app.screen, LRDialog), "the LR dialog")
            await pilot.press(*"x0.5", "enter")
            await until(pilot, lambda: run_info(path).lr == pytest.approx(0.001), "the LR to be halved")
            sent = commands(path)
            assert [(c.kind, c.args, c.status, c.issuer) for c in sent] == [
                ("set_lr", {"value": 0.002}, "applied", WHO), ("scale_lr", {"factor": 0.5}, "applied", WHO)]
            await until(pilot, lambda: cell(app, path, "lr") == "0.001", "the row's LR")


class TestRollback:
    async def test_pick_a_checkpoint_and_the_run_forks_a_branch(self, live):
        root, path, t = live
        app = app_for(root)
        async with app.run_test(size=(150, 40)) as pilot:
            await select(pilot, app, path)
            detail = await open_detail(pilot, app)
            os.kill(t.proc.pid, signal.SIGSTOP)  # hold retention still while we pick
            await pilot.press("b")
            dialog = await until(pilot, lambda: isinstance(app.screen, RollbackDialog) and app.screen, "the picker")
            table = dialog.query_one("#pick")
            await until(pilot, lambda: table.row_count > 0, "checkpoints listed")
            # The best one (retention keeps the 3 best; newer "last" ones come and go every few steps).
            with Store.open(path) as s:
                chosen = min((c for c in s.checkpoints(["ready"]) if c.id in table.ids), key=lambda c: c.loss).id
            table.move_cursor(row=table.ids.index(chosen))
            await pilot.press("enter")
            os.kill(t.proc.pid, signal.SIGCONT)
            await until(pilot, lambda: run_info(path).branch == 1, "the rollback to fork branch 1")
            [cmd] = commands(path)
            assert cmd.kind == "rollback" and cmd.args == {"target": chosen} and cmd.status == "applied"
            with Store.open(path) as s:
                branches = s.branches()
                ckpt = s.checkpoint(chosen)
            assert [b.id for b in branches] == [0, 1] and branches[1].fork_step == ckpt.step
            # The detail shows both branches: the old one off the current history.
            await until(pilot, lambda: detail.detail.run.branch == 1, "the detail to follow")
            from trainwarden.tui import plot
            await until(pilot, lambda: any(p.branch == 1 for w in detail.detail.windows for p in plot.split(w, detail.detail.segments)),
                        "windows on branch 1")
            layers, markers, _ = plot.build(detail.detail)
            by_style = {layer.style: layer for layer in layers}
            assert by_style[plot.OLD].lines and by_style[plot.CURRENT].lines

    async def test_best_shortcut(self, live):
        root, path, _ = live
        app = app_for(root)
        async with app.run_test(size=(150, 40)) as pilot:
            await select(pilot, app, path)
            await pilot.press("b")
            await until(pilot, lambda: isinstance(app.screen, RollbackDialog), "the picker")
            await pilot.press("b")
            await until(pilot, lambda: run_info(path).branch == 1, "the rollback")
            assert [(c.kind, c.args) for c in commands(path)] == [("rollback", {"target": "best"})]


class TestSaveAndStop:
    async def test_save_now_then_stop_after_confirming(self, live):
        root, path, t = live
        app = app_for(root)
        async with app.run_test(size=(150, 30)) as pilot:
            await select(pilot, app, path)
            await pilot.press("s")
            await until(pilot, lambda: commands(path) and commands(path)[0].status == "applied", "the save")
            with Store.open(path) as s:  # written (retention may have retired it since: rows stay)
                assert any(c.kind == "command" and c.status in ("ready", "deleted") and c.bytes for c in s.checkpoints())
            await pilot.press("x")
            await until(pilot, lambda: isinstance(app.screen, ConfirmDialog), "the confirmation")
            await pilot.press("n")
            await pilot.pause(0.3)
            assert len(commands(path)) == 1 and t.proc.poll() is None
            await pilot.press("x")
            await until(pilot, lambda: isinstance(app.screen, ConfirmDialog), "the confirmation")
            await pilot.press("y")
            await until(pilot, lambda: t.proc.poll() is not None, "the training to stop")
            assert t.proc.returncode == 0
            await until(pilot, lambda: cell(app, path, "status") in ("stopped", "finished"), "the row to say so")


def propose(path: Path, actions: list[dict], finding: str = "plateau") -> int:
    """A proposal as the daemon writes it in `ask` mode."""
    with Store.open(path) as s:
        info = s.run()
        with s.transaction():
            iid = s.add_intervention(finding, max(0, info.step - 100), info.step, info.branch, "ask", "proposed",
                                     actions, f"{finding} since step {info.step - 100}: LR x0.5", None)
            s.add_event("proposal", "warning", f"proposal {iid}", step=info.step, branch=info.branch,
                        source="supervisor", data={"intervention": iid})
    return iid


class TestProposals:
    async def test_approve_writes_its_commands_and_deny_records_the_operator(self, live):
        root, path, _ = live
        lr0 = run_info(path).lr
        first = propose(path, [{"kind": "scale_lr", "args": {"factor": 0.5}}])
        app = app_for(root)
        async with app.run_test(size=(150, 30)) as pilot:
            await select(pilot, app, path)
            await until(pilot, lambda: cell(app, path, "proposals") == "1 ?", "the proposal in the table")
            await pilot.press("a")
            dialog = await until(pilot, lambda: isinstance(app.screen, ConfirmDialog) and app.screen, "the confirmation")
            assert "scale_lr 0.5" in dialog.question
            await pilot.press("y")
            await until(pilot, lambda: run_info(path).lr == pytest.approx(lr0 * 0.5), "the LR to be halved")
            with Store.open(path) as s:
                iv = s.intervention(first)
                [cmd] = s.commands()
            assert iv.status == "issued" and iv.decided_by == WHO and iv.commands == [cmd.id]
            assert cmd.issuer == WHO and cmd.status == "applied"
            await until(pilot, lambda: cell(app, path, "proposals") == "", "no proposal left")

            second = propose(path, [{"kind": "pause"}])
            await until(pilot, lambda: cell(app, path, "proposals") == "1 ?", "the second proposal")
            await pilot.press("d")
            await until(pilot, lambda: isinstance(app.screen, ConfirmDialog), "the confirmation")
            await pilot.press("y")
            with Store.open(path) as s:
                await until(pilot, lambda: s.intervention(second).status == "denied", "the denial")
                assert s.intervention(second).decided_by == WHO and len(s.commands()) == 1
                assert any(e.kind == "proposal_denied" and e.source == "tui" for e in s.events())
            assert run_info(path).status == "running"

    async def test_pick_one_of_several_in_the_detail(self, live):
        root, path, _ = live
        propose(path, [{"kind": "scale_lr", "args": {"factor": 0.5}}])
        later = propose(path, [{"kind": "scale_lr", "args": {"factor": 0.25}}])
        lr0 = run_info(path).lr
        app = app_for(root)
        async with app.run_test(size=(150, 40)) as pilot:
            await select(pilot, app, path)
            await until(pilot, lambda: cell(app, path, "proposals") == "2 ?", "two proposals")
            await pilot.press("a")  # several: the detail opens on the interventions list
            detail = await until(pilot, lambda: isinstance(app.screen, DetailScreen) and app.screen.detail and app.screen,
                                 "the detail")
            table = detail.query_one("#interventions-table")
            await until(pilot, lambda: table.ids, "the interventions listed")
            table.move_cursor(row=table.ids.index(later))
            await pilot.press("a")
            await until(pilot, lambda: isinstance(app.screen, ConfirmDialog), "the confirmation")
            await pilot.press("y")
            await until(pilot, lambda: run_info(path).lr == pytest.approx(lr0 * 0.25), "the chosen proposal applied")


class TestFailures:
    async def test_a_store_that_disappears_while_viewed(self, live):
        root, path, t = live
        app = app_for(root)
        async with app.run_test(size=(150, 40)) as pilot:
            await select(pilot, app, path)
            detail = await open_detail(pilot, app)
            t.kill()
            shutil.rmtree(path)
            await until(pilot, lambda: detail.gone and detail.gone.startswith("gone"), "the notice")
            assert any("disappeared" in n for n in app.notices)
            await pilot.press("g", "z")  # still alive and drawing what it last read
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, RunsScreen) and not rows(app), "the row to go")

    async def test_a_command_not_acknowledged_in_time_is_shown_as_such(self, live):
        root, path, t = live
        os.kill(t.proc.pid, signal.SIGSTOP)  # alive but not stepping: nobody reads the command
        try:
            app = app_for(root, timeout=1.0)
            async with app.run_test(size=(150, 40)) as pilot:
                await select(pilot, app, path)
                await pilot.press("s")
                await until(pilot, lambda: any("not acknowledged within 1s" in n for n in app.notices),
                            "the timeout notice")
                detail = await open_detail(pilot, app)
                table = detail.query_one("#commands-table")
                await until(pilot, lambda: table.row_count == 1, "the command listed")
                assert "not acknowledged" in table.get_row_at(0)[3].plain
        finally:
            os.kill(t.proc.pid, signal.SIGCONT)
        assert commands(path)[0].status in ("pending", "applied")  # still queued, applied once it runs

    async def test_a_rejection_by_the_agent_is_shown(self, live):
        root, path, t = live
        app = app_for(root)
        async with app.run_test(size=(150, 40)) as pilot:
            await select(pilot, app, path)
            os.kill(t.proc.pid, signal.SIGSTOP)  # hold retention still while we pick
            await pilot.press("b")
            dialog = await until(pilot, lambda: isinstance(app.screen, RollbackDialog) and app.screen, "the picker")
            table = dialog.query_one("#pick")
            await until(pilot, lambda: table.ids, "the checkpoints listed")
            with Store.open(path) as s:
                newest = s.checkpoint(table.ids[0])
            (path / newest.path).write_bytes(b"truncated")  # damaged after it was listed
            await pilot.press("enter")
            os.kill(t.proc.pid, signal.SIGCONT)
            await until(pilot, lambda: any("rejected" in n for n in app.notices), "the rejection")
            assert commands(path)[0].status == "rejected" and run_info(path).branch == 0

    async def test_a_locked_store_does_not_freeze_the_screen(self, live):
        """A store another process holds locked (here: one in rollback-journal mode, as a copy
        made by another tool may be, inside an exclusive transaction): reading it waits for the
        lock in the worker thread, and the keys keep working meanwhile."""
        root, path, _ = live
        other = root / "other"
        with Store.open(other, create=True) as s:
            s.init_run("other", {}, "0")
        db = sqlite3.connect(other / DB_NAME, isolation_level=None)
        db.execute("PRAGMA journal_mode=DELETE")
        db.execute("BEGIN EXCLUSIVE")
        app = app_for(root)
        try:
            async with app.run_test(size=(150, 40)) as pilot:
                await until(pilot, lambda: reading(app), "the first read to start", timeout=5)
                await pilot.pause(0.5)
                assert reading(app) and not rows(app)  # stuck on the lock
                await pilot.press("question_mark")
                assert type(app.screen).__name__ == "HelpScreen"
                await pilot.press("escape", "slash", "l", "i")
                assert app.screen.filter == "li" and not rows(app)
                db.execute("ROLLBACK")
                await until(pilot, lambda: len(rows(app)) == 2 and all(r.status != "unreadable" for r in rows(app)),
                            "both runs once the lock is gone")
        finally:
            db.close()


class TestInstalledCommand:
    def test_trainwarden_tui_in_tmux(self, live):
        """The installed command in a real terminal (tmux): shows the run, p pauses it, ? shows
        the keys, q quits with status 0."""
        if shutil.which("tmux") is None:
            pytest.skip("tmux is not installed")
        root, path, _ = live
        sock = f"tw-test-{os.getpid()}"
        tmux = ["tmux", "-L", sock]

        def capture() -> str:
            return subprocess.run([*tmux, "capture-pane", "-p", "-t", "tw"], capture_output=True, text=True).stdout

        def send(*keys: str) -> None:
            subprocess.run([*tmux, "send-keys", "-t", "tw", *keys], check=True)

        def wait_screen(text: str, timeout: float = 30.0) -> str:
            deadline = time.monotonic() + timeout
            while True:
                screen = capture()
                if text in screen:
                    return screen
                assert time.monotonic() < deadline, f"{text!r} not on screen:\n{screen}"
                time.sleep(0.2)

        command = f"{shutil.which('trainwarden')} tui --root {root}; echo EXITED $?; sleep 60"
        subprocess.run([*tmux, "new-session", "-d", "-s", "tw", "-x", "160", "-y", "40", command], check=True,
                       env={**os.environ, "TERM": "xterm-256color"})
        try:
            wait_screen("Pause/Resume")
            screen = wait_screen(" live ")
            assert "STATUS" in screen and "running" in screen
            send("p")
            wait_for(lambda: run_info(path).status == "paused")
            wait_screen("paused")
            wait_screen(f" {run_info(path).step:,} ")  # the whole number, however wide it grew
            send("p")
            wait_for(lambda: run_info(path).status == "running")
            send("?")
            wait_screen("trainwarden keys")
            send("Escape")
            time.sleep(0.5)  # a lone ESC is told from an escape sequence by the pause after it
            send("Enter")  # the run's detail: the chart's legend and the tabs
            screen = wait_screen("rolled back")
            assert "Checkpoints" in screen and "Events" in screen
            send("q")
            wait_screen("EXITED 0")
        finally:
            subprocess.run([*tmux, "kill-server"], capture_output=True)
        assert [c.kind for c in commands(path)] == ["pause", "resume"]


class TestCommandLine:
    def test_bad_roots_and_timeouts_are_one_line(self, tmp_path):
        from conftest import cli

        r = cli("tui", "--root", tmp_path / "missing")
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no such folder" in r.stderr
        assert not (tmp_path / "missing").exists()
        r = cli("tui", "--root", tmp_path, "--timeout", "-1")
        assert r.returncode == 2 and "--timeout must be a number of seconds >= 0" in r.stderr
