"""Snapshot tests (pytest-textual-snapshot) of the TUI's main screens over fixed stores
(tests/tui_scene.py) at a fixed terminal size and clock.

After an intended change of the look: `pytest tests/test_tui_snapshots.py --snapshot-update`,
then look at the new SVGs (the report pytest writes on failure shows old and new side by side).
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

import tui_scene
from trainwarden.tui.app import TrainwardenApp
from trainwarden.tui.dialogs import LRDialog
from trainwarden.tui.screens import DetailScreen
from trainwarden.tui.widgets import LossChart, RunsTable

SIZE = (140, 42)


@pytest.fixture
def scene(tmp_path, monkeypatch):
    """The scene under ./runs (a relative root, so the title does not name the temporary folder),
    times shown in UTC."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield tui_scene.build(Path("runs"))
    monkeypatch.undo()
    time.tzset()


def scene_app(root: Path) -> TrainwardenApp:
    # No periodic refresh: the picture is of the first read.
    return TrainwardenApp([root], clock=lambda: tui_scene.NOW, who=tui_scene.WHO, refresh_s=3600)


async def settle(pilot, cond, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.05)
    await pilot.pause(0.2)


def shown(app: TrainwardenApp) -> list[str]:
    """The run folders the runs table shows (none before the first read)."""
    tables = app.screen.query(RunsTable)
    return tables.first().paths if tables else []


async def open_run(pilot, name: str) -> None:
    app = pilot.app
    await settle(pilot, lambda: shown(app), "the first read")
    table = app.screen.query_one(RunsTable)
    table.move_cursor(row=[Path(k).name for k in table.paths].index(name))
    await pilot.pause()


def test_runs_table(scene, snap_compare):
    async def ready(pilot):
        await settle(pilot, lambda: shown(pilot.app), "the first read")

    assert snap_compare(scene_app(scene), terminal_size=SIZE, run_before=ready)


def test_run_detail_with_a_rolled_back_branch(scene, snap_compare):
    async def ready(pilot):
        await open_run(pilot, "gpt-small")
        await pilot.press("enter")
        app = pilot.app
        await settle(pilot, lambda: isinstance(app.screen, DetailScreen) and app.screen.detail is not None, "the detail")
        chart = app.screen.query_one(LossChart)
        assert chart.detail is not None and chart.detail.run.branch == 1

    assert snap_compare(scene_app(scene), terminal_size=SIZE, run_before=ready)


def test_lr_dialog_refuses_a_negative_rate(scene, snap_compare):
    async def ready(pilot):
        await open_run(pilot, "gpt-small")
        await pilot.press("l")
        await settle(pilot, lambda: isinstance(pilot.app.screen, LRDialog), "the dialog")
        await pilot.press(*"-3e-4", "enter")

    assert snap_compare(scene_app(scene), terminal_size=SIZE, run_before=ready)
