"""A loss chart drawn with braille dots: pure code from series to lines of styled text.

Each character cell holds 2 x 4 dots, so a 60 x 15 cell plot has 120 x 60 points of resolution,
enough to see a rebound in a terminal. Layers are painted in order; a cell takes the style of
the last layer that put a dot in it, so the current history is drawn over rolled-back branches
and the min-max band. No I/O: the widget in `widgets.py` feeds it and places the lines.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from rich.text import Text

# Braille dot bits by (column, row) within a cell: U+2800 + sum of bits.
_DOTS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))


@dataclass
class Layer:
    """One thing to draw, with its style (a Rich style string)."""

    style: str
    lines: list[list[tuple[float, float]]] = field(default_factory=list)  # polylines in data space
    spans: list[tuple[float, float, float]] = field(default_factory=list)  # vertical (x, y_low, y_high)
    points: list[tuple[float, float]] = field(default_factory=list)  # single dots (2 x 2 for visibility)
    verticals: list[float] = field(default_factory=list)  # full-height dotted lines at x


@dataclass
class Marker:
    """A glyph in the row under the plot, at a step (checkpoints, interventions, NaNs)."""

    x: float
    glyph: str
    style: str


@dataclass
class Frame:
    """The data range shown and how y is scaled."""

    x0: float
    x1: float
    y0: float
    y1: float
    log: bool = False


def scale_y(y: float, log: bool) -> float | None:
    """The plotted value of a loss (None when it cannot be drawn on this scale)."""
    if not math.isfinite(y):
        return None
    if log:
        return math.log10(y) if y > 0 else None
    return y


def fit_frame(layers: Sequence[Layer], x0: float, x1: float, log: bool) -> Frame | None:
    """The y range that holds the lines and points between x0 and x1 (spans may be clipped)."""
    ys = [v for layer in layers for line in layer.lines for x, y in line if x0 <= x <= x1
          if (v := scale_y(y, log)) is not None]
    ys += [v for layer in layers for x, y in layer.points if x0 <= x <= x1 if (v := scale_y(y, log)) is not None]
    if not ys:
        return None
    lo, hi = min(ys), max(ys)
    pad = (hi - lo) * 0.05 or (abs(hi) * 0.05 or 0.5)
    bottom = lo - pad
    if not log and lo >= 0 > bottom:  # a loss is not negative: do not label the axis so
        bottom = 0.0
    return Frame(x0, x1 if x1 > x0 else x0 + 1, bottom, hi + pad, log)


class Canvas:
    """A grid of braille cells, each with the style of the last layer that drew into it."""

    def __init__(self, width: int, height: int, frame: Frame) -> None:
        self.w, self.h, self.frame = max(1, width), max(1, height), frame
        self.bits = [[0] * self.w for _ in range(self.h)]
        self.styles: list[list[str | None]] = [[None] * self.w for _ in range(self.h)]

    # data space -> dot space (x right, y down)
    def px(self, x: float) -> float:
        f = self.frame
        return (x - f.x0) / (f.x1 - f.x0) * (2 * self.w - 1)

    def py(self, y: float) -> float | None:
        f = self.frame
        v = scale_y(y, f.log)
        if v is None:
            return None
        return (f.y1 - v) / (f.y1 - f.y0) * (4 * self.h - 1)

    def dot(self, x: int, y: int, style: str) -> None:
        if 0 <= x < 2 * self.w and 0 <= y < 4 * self.h:
            cx, cy = x // 2, y // 4
            self.bits[cy][cx] |= _DOTS[x % 2][y % 4]
            self.styles[cy][cx] = style

    def segment(self, a: tuple[float, float], b: tuple[float, float], style: str) -> None:
        """A straight line between two dot-space points (clipped to the canvas)."""
        (x0, y0), (x1, y1) = a, b
        n = int(max(abs(x1 - x0), abs(y1 - y0), 1))
        if n > 8 * (self.w + self.h):  # far outside: clip the count, not the look
            n = 8 * (self.w + self.h)
        for i in range(n + 1):
            t = i / n
            self.dot(round(x0 + (x1 - x0) * t), round(y0 + (y1 - y0) * t), style)

    def draw(self, layer: Layer) -> None:
        top, bottom = 0.0, 4.0 * self.h - 1
        for x in layer.verticals:
            cx = round(self.px(x))
            for y in range(0, 4 * self.h, 2):
                self.dot(cx, y, layer.style)
        for x, lo, hi in layer.spans:
            a, b = self.py(hi), self.py(lo)
            if a is None and b is None:
                continue
            a = top if a is None else max(top, a)
            b = bottom if b is None else min(bottom, b)
            cx = round(self.px(x))
            for y in range(round(a), round(b) + 1):
                self.dot(cx, y, layer.style)
        for line in layer.lines:
            prev: tuple[float, float] | None = None
            for x, y in line:
                py = self.py(y)
                if py is None:  # a NaN or a non-positive value on a log scale breaks the line
                    prev = None
                    continue
                here = (self.px(x), py)
                if prev is None:
                    self.dot(round(here[0]), round(here[1]), layer.style)
                else:
                    self.segment(prev, here, layer.style)
                prev = here
        for x, y in layer.points:
            py = self.py(y)
            if py is not None:
                cx, cy = round(self.px(x)), round(py)
                for dx in (0, 1):
                    for dy in (0, 1):
                        self.dot(cx + dx - (cx % 2), cy + dy, layer.style)

    def lines(self) -> list[Text]:
        out = []
        for row_bits, row_styles in zip(self.bits, self.styles):
            text = Text()
            for bits, style in zip(row_bits, row_styles):
                text.append(chr(0x2800 + bits) if bits else " ", style or "")
            out.append(text)
        return out


def axis_label(value: float, log: bool) -> str:
    v = 10 ** value if log else value
    return f"{v:.3g}"


def step_label(step: float) -> str:
    s = int(round(step))
    if abs(s) >= 10_000:
        return f"{s / 1000:.0f}k"
    return str(s)


def render(layers: Sequence[Layer], markers: Iterable[Marker], frame: Frame, width: int, height: int,
           axis_style: str = "dim") -> list[Text]:
    """The whole chart: y labels on the left, the plot, a marker row and step labels below.

    `width` x `height` are the character cells available; the plot gets what the axes leave.
    """
    plot_h = max(2, height - 2)
    label_rows = {0: frame.y1, plot_h - 1: frame.y0, (plot_h - 1) // 2: (frame.y0 + frame.y1) / 2}
    labels = {i: axis_label(v, frame.log) for i, v in label_rows.items()}
    label_w = max(len(t) for t in labels.values())
    plot_w = max(4, width - label_w - 1)
    canvas = Canvas(plot_w, plot_h, frame)
    for layer in layers:
        canvas.draw(layer)
    rows = canvas.lines()
    out: list[Text] = []
    for i, row in enumerate(rows):
        label = labels[i].rjust(label_w) if i in labels else " " * label_w
        line = Text(label, style=axis_style)
        line.append("┤" if i in label_rows else "│", style=axis_style)
        line.append_text(row)
        out.append(line)
    # Marker row: one glyph per cell; a later marker in the same cell wins (interventions last).
    cells: list[tuple[str, str]] = [("─", axis_style)] * plot_w
    for m in markers:
        if frame.x0 <= m.x <= frame.x1:
            cx = min(plot_w - 1, int(canvas.px(m.x)) // 2)
            cells[cx] = (m.glyph, m.style)
    marker_line = Text(" " * label_w + "└", style=axis_style)
    for glyph, style in cells:
        marker_line.append(glyph, style=style)
    out.append(marker_line)
    # Step labels at the left, middle and right of the plot.
    steps = [step_label(frame.x0), step_label((frame.x0 + frame.x1) / 2), step_label(frame.x1)]
    bottom = [" "] * (plot_w + 1)
    for pos, text in ((0, steps[0]), ((plot_w - len(steps[1])) // 2, steps[1]), (plot_w + 1 - len(steps[2]), steps[2])):
        for j, ch in enumerate(text):
            if 0 <= pos + j < len(bottom):
                bottom[pos + j] = ch
    out.append(Text(" " * label_w + "".join(bottom), style=axis_style))
    return out
