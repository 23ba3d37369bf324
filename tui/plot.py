"""From a run's detail to what the chart draws: the current history in bright colour over the
rolled-back branches in a muted one, the min-max band (or every step), validation points, and
markers for checkpoints, interventions and non-finite windows. Pure code."""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from trainwarden.agent.records import WindowInfo
from trainwarden.agent.store import Segments

from .chart import Frame, Layer, Marker, fit_frame, scale_y
from .model import RunDetail, on_history
from .palette import (
    CHECKPOINT, CURRENT, CURRENT_BAND, INTERVENTION, INTERVENTION_LINE, NONFINITE, OLD, OLD_BAND, OLD_CHECKPOINT, OLD_VAL, VAL,
)

MAX_RAW_POINTS = 60_000  # beyond this many steps in view, raw mode draws every n-th step


@dataclass
class Piece:
    """The part of a window that is on the current history, or off it."""

    branch: int
    first: int
    last: int
    losses: list[float]
    current: bool
    window: WindowInfo | None = None  # set when the piece is the whole window: its stored stats apply


def split(w: WindowInfo, segments: Segments) -> list[Piece]:
    """A window cut where the current history leaves or joins its branch (at fork steps)."""
    mine = [(after, upto) for b, after, upto in segments if b == w.branch]
    if not mine or any(after < w.first_step and (upto is None or w.last_step <= upto) for after, upto in mine) \
            or all(w.last_step <= after or (upto is not None and w.first_step > upto) for after, upto in mine):
        whole = bool(mine) and any(after < w.first_step and (upto is None or w.last_step <= upto) for after, upto in mine)
        return [Piece(w.branch, w.first_step, w.last_step, w.losses, whole, w)]
    pieces: list[Piece] = []
    flags = [on_history(w.first_step + i, w.branch, segments) for i in range(len(w.losses))]
    start = 0
    for i in range(1, len(flags) + 1):
        if i == len(flags) or flags[i] != flags[start]:
            pieces.append(Piece(w.branch, w.first_step + start, w.first_step + i - 1, w.losses[start:i], flags[start]))
            start = i
    return pieces


def _stats(losses: list[float]) -> tuple[float, float, float] | None:
    finite = [v for v in losses if math.isfinite(v)]
    if not finite:
        return None
    return sum(finite) / len(finite), min(finite), max(finite)


def build(detail: RunDetail, *, raw: bool = False, zoom: int | None = None, log: bool = False
          ) -> tuple[list[Layer], list[Marker], Frame | None]:
    """Layers (painted in order), markers and the frame for a run's chart.

    `zoom`: show the last this many steps (None: the whole run). `raw`: every step as a dot
    instead of window means with their min-max band.
    """
    segments = detail.segments
    pieces = [p for w in detail.windows for p in split(w, segments)]
    x_max = max((p.last for p in pieces), default=0)
    x_min = min((p.first for p in pieces), default=0)
    x0 = max(x_min, x_max - zoom) if zoom else x_min
    x1 = max(x_max, x0 + 1)
    visible = [p for p in pieces if p.last >= x0 and p.first <= x1]

    old_band, cur_band = Layer(OLD_BAND), Layer(CURRENT_BAND)
    old, cur = Layer(OLD), Layer(CURRENT)
    old_val, val = Layer(OLD_VAL), Layer(VAL)
    iv_lines = Layer(INTERVENTION_LINE)
    markers: list[Marker] = []

    if raw:
        total = sum(len(p.losses) for p in visible)
        stride = max(1, math.ceil(total / MAX_RAW_POINTS))
        for p in visible:
            target = cur if p.current else old
            target.points.extend((p.first + i, v) for i, v in enumerate(p.losses) if (p.first + i) % stride == 0)
    else:
        lines: dict[tuple[bool, int], list[tuple[float, float]]] = defaultdict(list)
        for p in sorted(visible, key=lambda p: p.first):
            w = p.window
            stats = _stats(p.losses) if w is None else (None if w.mean is None else (w.mean, w.min, w.max))
            x = (p.first + p.last) / 2
            if stats is None:
                lines[(p.current, p.branch)].append((x, math.nan))  # breaks the line
                continue
            mean, lo, hi = stats
            (cur_band if p.current else old_band).spans.append((x, lo, hi))
            # The current history is one line across branches; each abandoned branch its own.
            lines[(p.current, -1 if p.current else p.branch)].append((x, mean))
        for (is_current, _), line in lines.items():
            (cur if is_current else old).lines.append(line)
    for p in visible:
        if (p.window.nonfinite > 0) if p.window is not None else any(not math.isfinite(v) for v in p.losses):
            markers.append(Marker((p.first + p.last) / 2, "✖", NONFINITE))

    val_now = sorted(((m.step, m.value) for m in detail.val if m.value is not None and on_history(m.step, m.branch, segments)))
    val.points.extend(val_now)  # points only: a line would hide the training curve it follows
    old_val.points.extend((m.step, m.value) for m in detail.val
                          if m.value is not None and not on_history(m.step, m.branch, segments))

    for c in detail.checkpoints:
        if c.status == "ready":
            current = on_history(c.step, c.branch, segments) or (c.step == 0)
            markers.insert(0, Marker(c.step, "▲" if current else "△", CHECKPOINT if current else OLD_CHECKPOINT))
    for iv in detail.interventions:
        if iv.status in ("issued", "applied", "rejected"):
            iv_lines.verticals.append(iv.step)
            markers.append(Marker(iv.step, "◆", INTERVENTION))

    layers = [iv_lines, old_band, cur_band, old, old_val, val, cur]
    frame = fit_frame([old, cur, val, old_val] if not raw else [old, cur, val], x0, x1, log)
    if frame is not None and raw:
        frame = _robust_raw_frame(frame, [old, cur], x0, x1, log)
    return layers, markers, frame


def _robust_raw_frame(frame: Frame, layers: list[Layer], x0: float, x1: float, log: bool) -> Frame:
    """Raw steps are noisy: frame the 1st-99th percentile so a few wild steps do not flatten the rest."""
    ys = sorted(v for layer in layers for x, y in layer.points if x0 <= x <= x1 if (v := scale_y(y, log)) is not None)
    if len(ys) < 100:
        return frame
    lo, hi = ys[len(ys) // 100], ys[-1 - len(ys) // 100]
    pad = (hi - lo) * 0.05 or 0.5
    return Frame(frame.x0, frame.x1, lo - pad, hi + pad, log)
