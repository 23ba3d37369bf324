"""The TUI's widgets: the runs table, the loss chart and the run header (the detail screen's lists
are in `lists.py`).

Widgets only show what they are given (rows, a `RunDetail`); reading stores is the app's job,
done in worker threads, so a slow or locked store never freezes the screen.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Static

from trainwarden.supervisor.display import age, fmt

from . import palette, plot
from .chart import Frame, Layer, Marker, render
from .model import RunDetail, RunRow
from .palette import HEALTH_STYLE, STATUS_STYLE
from .settings import Clock


def trend_text(trend: float | None) -> Text:
    """An arrow and a percentage; falling loss is good (green), rising is bad (red)."""
    if trend is None:
        return Text("")
    pct = trend * 100
    if abs(pct) < 1:
        return Text("→ 0%", style=palette.MUTED)
    if pct < 0:
        return Text(f"↓{-pct:.0f}%", style=palette.GOOD)
    return Text(f"↑{pct:.0f}%", style=f"bold {palette.TROUBLE}" if pct >= 20 else palette.LATE)


# ------------------------------------------------------------------ runs table
class RunsTable(ScrollView, can_focus=True):
    """All runs, one row each, keyed by run folder; sorted and filtered by the screen.

    Drawn line by line with a cache per row: a refresh that changes a few rows redraws those rows
    only (Textual's DataTable redraws every visible row when one cell changes, which made the
    screen stall ~0.1 s a second with 100 runs).
    """

    DEFAULT_CSS = """
    RunsTable { height: 1fr; background: $tw-background; }
    """
    COLUMNS = (("name", "RUN"), ("status", "STATUS"), ("step", "STEP"), ("loss", "LOSS"), ("trend", "TREND"),
               ("lr", "LR"), ("ckpt", "CKPT AGE"), ("iv", "INTERV."), ("health", "HEALTH"), ("proposals", "ASK"))
    RIGHT = frozenset({"step", "loss", "lr", "ckpt", "iv"})
    # The first order of each column puts what needs a look first: the most steps, the highest
    # loss, the fastest rise, the oldest checkpoint, the most interventions, the worst health.
    SORT_KEYS: dict[str, Callable[[RunRow], Any]] = {
        "name": lambda r: r.name.lower(),
        "status": lambda r: r.status,
        "step": lambda r: -(r.step or 0),
        "loss": lambda r: -(r.loss if r.loss is not None else float("-inf")),
        "trend": lambda r: -(r.trend if r.trend is not None else 0.0),
        "lr": lambda r: -(r.lr or 0.0),
        "ckpt": lambda r: r.newest_checkpoint_at or 0.0,
        "iv": lambda r: -r.interventions,
        "health": lambda r: -{"ok": 0, "info": 1, "warning": 2, "error": 3}.get(r.health.severity, 0),
        "proposals": lambda r: -r.proposals,
    }
    BINDINGS = [
        Binding("up", "move(-1)", "Up", show=False), Binding("down", "move(1)", "Down", show=False),
        Binding("pageup", "move(-10)", show=False), Binding("pagedown", "move(10)", show=False),
        Binding("home", "move(-1000000)", show=False), Binding("end", "move(1000000)", show=False),
        Binding("enter", "select", "Open", show=False),
    ]
    HEADER = Style(color=palette.HEADING, bold=True, bgcolor=palette.PANEL)
    CURSOR = Style(bgcolor=palette.CURSOR)
    CURSOR_DIM = Style(bgcolor=palette.CURSOR_DIM)
    ZEBRA = Style(bgcolor=palette.ZEBRA)
    GAP = 2

    class Selected(Message):
        """Enter (or a double click) on a run."""

        def __init__(self, path: str) -> None:
            super().__init__()
            self.path = path

    class SortRequested(Message):
        """A click on a column header."""

        def __init__(self, column: str) -> None:
            super().__init__()
            self.column = column

    cursor_row: reactive[int] = reactive(0)

    def __init__(self, clock: Clock = time.time, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clock = clock
        self._keys: list[str] = []
        self._shown: dict[str, list[Text]] = {}
        self._widths: list[int] = [len(label) for _, label in self.COLUMNS]
        self._strips: dict[str, Strip] = {}

    def cells(self, r: RunRow) -> list[Text]:
        now = self.clock()
        return [
            Text(r.name, style="bold"),
            Text(r.status, style=STATUS_STYLE.get(r.status, "")),
            Text("-" if r.step is None else f"{r.step:,}"),
            Text(fmt(r.loss)),
            trend_text(r.trend),
            Text(fmt(r.lr, ".3g")),
            Text(age(now - r.newest_checkpoint_at) if r.newest_checkpoint_at else "-"),
            Text(str(r.interventions) if r.interventions else "-", style=palette.ASK if r.interventions else palette.QUIET),
            Text(r.health.label, style=HEALTH_STYLE.get(r.health.severity, "")),
            Text(f"{r.proposals} ?" if r.proposals else "", style=palette.PROPOSED if r.proposals else ""),
        ]

    def show(self, rows: list[RunRow]) -> None:
        """Show exactly these rows in this order; only rows whose cells changed are redrawn, and
        the cursor stays on its run."""
        selected = self.selected_path()
        cells = {r.path: self.cells(r) for r in rows}
        widths = [max([len(label)] + [row[i].cell_len for row in cells.values()]) for i, (_, label) in enumerate(self.COLUMNS)]
        keys = [r.path for r in rows]
        if widths != self._widths or keys != self._keys:  # positions (zebra, cursor) or layout moved
            self._strips.clear()
        else:
            for path, row in cells.items():
                if self._shown.get(path) != row:
                    self._strips.pop(path, None)
        self._keys, self._shown, self._widths = keys, cells, widths
        self.virtual_size = Size(sum(widths) + self.GAP * len(widths) + 1, len(keys) + 1)
        if selected in keys:
            self.cursor_row = keys.index(selected)
        else:
            self.cursor_row = min(self.cursor_row, max(0, len(keys) - 1))
        self.refresh()

    def selected_path(self) -> str | None:
        if not self._keys or not (0 <= self.cursor_row < len(self._keys)):
            return None
        return self._keys[self.cursor_row]

    @property
    def paths(self) -> list[str]:
        """The run folders shown, top to bottom."""
        return list(self._keys)

    def get_cell(self, path: str, column: str) -> Text:
        """The cell as shown."""
        return self._shown[path][[k for k, _ in self.COLUMNS].index(column)]

    def move_cursor(self, row: int) -> None:
        self.cursor_row = max(0, min(row, len(self._keys) - 1))

    def watch_cursor_row(self, old: int, new: int) -> None:
        for index in (old, new):
            if 0 <= index < len(self._keys):
                self._strips.pop(self._keys[index], None)
        # Keep the cursor in view below the header line.
        body = max(1, self.size.height - 1)
        top = round(self.scroll_offset.y)
        if new < top:
            self.scroll_to(y=new, animate=False)
        elif new >= top + body:
            self.scroll_to(y=new - body + 1, animate=False)
        self.refresh()

    def on_focus(self) -> None:
        self._invalidate_cursor()

    def on_blur(self) -> None:
        self._invalidate_cursor()

    def _invalidate_cursor(self) -> None:
        if path := self.selected_path():
            self._strips.pop(path, None)
        self.refresh()

    def action_move(self, delta: int) -> None:
        if self._keys:
            self.cursor_row = max(0, min(len(self._keys) - 1, self.cursor_row + delta))

    def action_select(self) -> None:
        if path := self.selected_path():
            self.post_message(self.Selected(path))

    def on_click(self, event: events.Click) -> None:
        if event.y == 0:
            x = event.x + round(self.scroll_offset.x)
            edge = 0
            for (key, _), width in zip(self.COLUMNS, self._widths):
                edge += width + self.GAP
                if x < edge:
                    self.post_message(self.SortRequested(key))
                    return
            return
        row = round(self.scroll_offset.y) + event.y - 1
        if 0 <= row < len(self._keys):
            self.cursor_row = row
            if event.chain >= 2:
                self.action_select()

    # ----------------------------------------------------------------- drawing
    def _line(self, parts: list[Text]) -> Text:
        line = Text(" ")
        for (key, _), cell, width in zip(self.COLUMNS, parts, self._widths):
            pad = " " * (width - cell.cell_len)
            line.append_text(Text(pad) + cell if key in self.RIGHT else cell + Text(pad))
            line.append(" " * self.GAP)
        return line

    def _strip(self, text: Text, style: Style | None) -> Strip:
        strip = Strip(list(text.render(self.app.console)), text.cell_len)
        return strip.apply_style(style) if style is not None else strip

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        scroll_x = round(self.scroll_offset.x)
        if y == 0:
            header = self._line([Text(label) for _, label in self.COLUMNS])
            return self._strip(header, self.HEADER).crop_extend(scroll_x, scroll_x + width, self.HEADER)
        index = round(self.scroll_offset.y) + y - 1
        if index >= len(self._keys):
            return Strip.blank(width)
        path = self._keys[index]
        strip = self._strips.get(path)
        if strip is None:
            if index == self.cursor_row:
                style = self.CURSOR if self.has_focus else self.CURSOR_DIM
            else:
                style = self.ZEBRA if index % 2 else None
            strip = self._strips[path] = self._strip(self._line(self._shown[path]), style)
        fill = self.CURSOR if index == self.cursor_row and self.has_focus else (
            self.CURSOR_DIM if index == self.cursor_row else (self.ZEBRA if index % 2 else None))
        return strip.crop_extend(scroll_x, scroll_x + width, fill)


# --------------------------------------------------------------------- chart
Built = tuple[list[Layer], list[Marker], Frame | None]


class LossChart(Widget):
    """The loss history of one run, redrawn whenever its data or view settings change.

    The layers can be built off the event loop (`set_detail` with what the reading worker built
    for the current settings); a change of settings builds them here.
    """

    DEFAULT_CSS = """
    LossChart { height: 1fr; min-height: 8; padding: 0 1; }
    """
    log: reactive[bool] = reactive(False)
    raw: reactive[bool] = reactive(False)
    zoom: reactive[int | None] = reactive(None)
    detail: reactive[RunDetail | None] = reactive(None, always_update=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._built: tuple[RunDetail, tuple[bool, int | None, bool], Built] | None = None

    @property
    def settings(self) -> tuple[bool, int | None, bool]:
        return self.raw, self.zoom, self.log

    def build(self, d: RunDetail, settings: tuple[bool, int | None, bool]) -> Built:
        """Pure and thread-safe: the layers of `d` for these settings."""
        raw, zoom, log = settings
        return plot.build(d, raw=raw, zoom=zoom, log=log)

    def set_detail(self, d: RunDetail, built: Built | None = None, settings: tuple[bool, int | None, bool] | None = None) -> None:
        if built is not None and settings is not None:
            self._built = (d, settings, built)
        self.detail = d

    def render(self) -> Text:
        width, height = self.content_size.width, self.content_size.height
        legend = self._legend()
        legend.truncate(width, overflow="ellipsis")  # one line, or the chart below would lose its last
        if self.detail is None:
            return Text("reading…", style="dim")
        cached = self._built
        if cached is None or cached[0] is not self.detail or cached[1] != self.settings:
            cached = self._built = (self.detail, self.settings, self.build(self.detail, self.settings))
        layers, markers, frame = cached[2]
        if frame is None:
            return Text.assemble(legend, "\n\n", Text("no losses recorded yet", style="dim"))
        lines = render(layers, markers, frame, width, max(4, height - 1))
        return Text("\n").join([legend, *lines])

    def _legend(self) -> Text:
        view = "all steps" if self.zoom is None else f"last {self.zoom:,} steps"
        return Text.assemble(
            ("━ current ", palette.CURRENT), ("━ rolled back ", palette.OLD), ("● val ", palette.VAL),
            ("▲ checkpoint ", palette.CHECKPOINT), ("◆ intervention ", palette.INTERVENTION),
            ("✖ NaN/inf ", palette.NONFINITE),
            (f"   [{'log' if self.log else 'linear'} · {'every step' if self.raw else 'mean, min-max band'} · {view}]",
             "dim"),
        )


class RunHeader(Static):
    """One line of facts about the run shown in the detail screen."""

    DEFAULT_CSS = """
    RunHeader { height: auto; padding: 0 1; background: $boost; }
    """

    def show(self, d: RunDetail, now: float) -> None:
        r = d.run
        health_style = HEALTH_STYLE.get(d.health.severity, "")
        parts: list[Any] = [
            (r.name, "bold"), "  ", (d.status, STATUS_STYLE.get(d.status, "")),
            f"  step {r.step:,}  branch {r.branch}  lr {fmt(r.lr, '.4g')}",
            f" (×{r.lr_multiplier:.3g})" if r.lr_multiplier != 1 else "",
            f"  loss {fmt(r.last_loss)}",
            f"  heartbeat {age(now - r.heartbeat_at)} ago" if r.heartbeat_at else "",
            "  health ", (d.health.label, health_style),
        ]
        text = Text.assemble(*parts)
        if d.health.detail and d.health.severity != "ok":
            text.append(f"\n{d.health.detail}", style="dim")
        text.append(f"\n{d.path}", style="dim")
        self.update(text)
