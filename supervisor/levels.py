"""Pure statistics of loss windows in log space, for the detectors: a window's level and how
precisely it is known, robust noise estimates, and where a rise began.

A window's level is the median of its steps' log-losses: a few wild minibatches cannot move it.
How precisely it is known comes from the window itself: the per-step noise is read from the
differences of successive steps (a trend inside the window does not inflate it), and the median of
n such steps has a standard error of about 1.2533 sigma / sqrt(n). A batch-1 run whose steps span
three orders of magnitude therefore has a level known to tens of percent, and a smooth language
model's to a fraction of a percent; thresholds built on it follow the run's own noise.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

FLOOR = 1e-12  # losses at or below this are read as this: log(0) has no ratio
_MAD = 1.4826  # MAD x this = the standard deviation, for normal data
_MEDIAN_SE = 1.2533  # the standard error of a median is this x sigma / sqrt(n), for normal data


def log_loss(x: float) -> float:
    return math.log(max(x, FLOOR))


def robust_sigma(values: Sequence[float]) -> float:
    """1.4826 x the median absolute deviation: the standard deviation for normal data, untouched
    by a few outliers."""
    if len(values) < 2:
        return 0.0
    mid = statistics.median(values)
    return _MAD * statistics.median(abs(v - mid) for v in values)


def step_sigma(logs: Sequence[float]) -> float:
    """Per-step noise of a stretch of log-losses, from successive differences (a difference of
    two independent steps has sqrt(2) x the noise of one; a smooth trend cancels out)."""
    if len(logs) < 3:
        return 0.0
    diffs = [b - a for a, b in zip(logs, logs[1:])]
    return _MAD * statistics.median(abs(d) for d in diffs) / math.sqrt(2)


def median_se(sigma: float, n: int) -> float:
    """Standard error of the median of n steps whose noise is `sigma`."""
    return _MEDIAN_SE * sigma / math.sqrt(max(1, n))


@dataclass(frozen=True)
class Level:
    """One window of finite log-losses, summarised."""

    first: int
    """First step of the window."""
    last: int
    """Last step of the window."""
    level: float
    """Median log-loss of the window."""
    tail: float
    """Median log-loss of its second half (a rise that began mid-window shows there first)."""
    se: float
    """Standard error of `level`."""
    logs: tuple[float, ...]
    """The finite log-losses, in step order (for locating an onset)."""
    steps: tuple[int, ...]
    """The step of each of `logs`."""


def summarise(first: int, last: int, losses: Sequence[float]) -> Level | None:
    """The Level of a window's losses; None when fewer than half of them (or fewer than 2) are finite."""
    isfinite, log = math.isfinite, math.log
    pairs = [(first + i, log(x if x > FLOOR else FLOOR)) for i, x in enumerate(losses) if isfinite(x)]
    if len(pairs) < max(2, len(losses) // 2):
        return None
    steps = tuple(s for s, _ in pairs)
    logs = tuple(v for _, v in pairs)
    half = logs[len(logs) // 2:]
    return Level(first=first, last=last, level=statistics.median(logs), tail=statistics.median(half),
                 se=median_se(step_sigma(logs), len(logs)), logs=logs, steps=steps)


@dataclass(frozen=True)
class Onset:
    """Where a rise began, and its shape."""

    step: int
    """The first step of the rise."""
    shape: str
    """"step" (the level jumped, then held) or "climb" (the level has risen steadily since `step`)."""


def locate_onset(steps: Sequence[int], logs: Sequence[float], earliest: int, block: int) -> Onset:
    """Fit the stretch of log-losses with two shapes and keep the better one: a jump at step t, or a
    bend at step t after which the level rises linearly; in both the level before t may drift
    (a run still learning). t is tried at every block boundary at or after `earliest`; the data
    are block medians, so a few wild steps do not move the fit.
    """
    xs: list[float] = []
    ys: list[float] = []
    for i in range(0, len(logs), block):
        chunk = logs[i:i + block]
        if len(chunk) >= max(1, block // 2):
            xs.append(float(steps[i]))
            ys.append(statistics.median(chunk))
    n = len(xs)
    fallback = Onset(step=max(earliest, int(steps[0])), shape="step")
    if n < 4:
        return fallback
    # Prefix sums of 1, x, x^2, y, xy, y^2: each candidate's normal equations in O(1).
    cum = [(0.0,) * 6]
    for x, y in zip(xs, ys):
        c = cum[-1]
        cum.append((c[0] + 1, c[1] + x, c[2] + x * x, c[3] + y, c[4] + x * y, c[5] + y * y))
    total = cum[-1]
    best: tuple[float, int, str] | None = None
    for k in range(1, n - 1):
        t = xs[k]
        if t < earliest:
            continue
        left = cum[k]
        right = tuple(a - b for a, b in zip(total, left))
        # Regressors: 1; (x - t) left of t, else 0; right of t: 1 (step) or (x - t) (climb).
        n_l, sx_l, sxx_l, sy_l, sxy_l = left[:5]
        n_r, sx_r, sxx_r, sy_r, sxy_r = right[:5]
        l1 = sx_l - t * n_l                      # sum over the left of (x - t)
        l11 = sxx_l - 2 * t * sx_l + t * t * n_l  # sum over the left of (x - t)^2
        l1y = sxy_l - t * sy_l
        r1 = sx_r - t * n_r
        r11 = sxx_r - 2 * t * sx_r + t * t * n_r
        r1y = sxy_r - t * sy_r
        for shape, s2, s22, s2y in (("step", n_r, n_r, sy_r), ("climb", r1, r11, r1y)):
            m = ((total[0], l1, s2), (l1, l11, 0.0), (s2, 0.0, s22))
            sse = _residual(m, (total[3], l1y, s2y), total[5])
            if sse is not None and (best is None or sse < best[0] - 1e-12):
                best = (sse, int(t), shape)
    if best is None:
        return fallback
    return Onset(step=best[1], shape=best[2])


def _residual(m: Sequence[Sequence[float]], v: Sequence[float], syy: float) -> float | None:
    """Residual sum of squares of the least-squares fit with normal equations m b = v (by Cramer's
    rule): y'y - b'v. None when the system is singular."""
    det = _det3(m)
    if abs(det) < 1e-9 * max(1.0, abs(m[0][0] * m[1][1] * m[2][2])):
        return None
    coef = [_det3([[v[i] if j == c else m[i][j] for j in range(3)] for i in range(3)]) / det for c in range(3)]
    return syy - sum(b * vi for b, vi in zip(coef, v))


def _det3(m: Sequence[Sequence[float]]) -> float:
    return (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]))
