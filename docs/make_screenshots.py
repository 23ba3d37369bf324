"""Write the TUI screenshots in docs/ (SVG) from the fixed scene the snapshot tests use.

    python docs/make_screenshots.py
"""
from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent / "tests"))

import tui_scene  # noqa: E402

from trainwarden.tui.app import TrainwardenApp  # noqa: E402
from trainwarden.tui.dialogs import LRDialog  # noqa: E402
from trainwarden.tui.screens import DetailScreen  # noqa: E402
from trainwarden.tui.widgets import RunsTable  # noqa: E402

SIZE = (140, 42)


async def shoot() -> None:
    app = TrainwardenApp([Path("runs")], clock=lambda: tui_scene.NOW, who=tui_scene.WHO, refresh_s=3600)
    async with app.run_test(size=SIZE) as pilot:
        table = app.screen.query_one(RunsTable)
        while not table.paths:  # the first read
            await pilot.pause(0.05)
        await pilot.pause(0.3)
        app.save_screenshot(str(DOCS / "tui-runs.svg"))
        table.move_cursor(row=[Path(k).name for k in table.paths].index("gpt-small"))
        await pilot.press("l")
        while not isinstance(app.screen, LRDialog):
            await pilot.pause(0.05)
        await pilot.press(*"-3e-4", "enter")
        await pilot.pause(0.3)
        app.save_screenshot(str(DOCS / "tui-lr-dialog.svg"))
        await pilot.press("escape", "enter")
        while not (isinstance(app.screen, DetailScreen) and app.screen.detail is not None):
            await pilot.pause(0.05)
        await pilot.pause(0.3)
        app.save_screenshot(str(DOCS / "tui-detail.svg"))
        await pilot.press("question_mark")
        await pilot.pause(0.3)
        app.save_screenshot(str(DOCS / "tui-help.svg"))


def main() -> None:
    os.environ["TZ"] = "UTC"
    time.tzset()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        tui_scene.build(Path("runs"))
        asyncio.run(shoot())
    print("wrote", ", ".join(p.name for p in sorted(DOCS.glob("tui-*.svg"))))


if __name__ == "__main__":
    main()
