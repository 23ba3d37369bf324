"""Pure detectors: they see windows of per-step losses, validation points and observations of a
run's liveness, and say what looks wrong. No I/O and no clock: the daemon, `replay` and the
benchmark feed them the same data and get the same findings.

Loss detectors work on log(loss): a rebound is a ratio, whatever the loss's scale. A window's
level is the median of its steps, which a few wild minibatches of a tiny-batch run cannot move;
thresholds grow with the run's own window-to-window noise, so a noisy run needs a larger
rebound to raise an alarm than a smooth one. Only rises count: a sudden drop (an LR decay) just
lowers the reference.
"""
from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

FindingKind = Literal["spike", "nan", "divergence", "plateau", "overfit", "stalled_saves", "hung"]
Severity = Literal["info", "warning", "error"]
KINDS: tuple[str, ...] = ("spike", "nan", "divergence", "plateau", "overfit", "stalled_saves", "hung")
REBOUND_KINDS = frozenset({"spike", "nan", "divergence"})
LOSS_KINDS = REBOUND_KINDS | {"plateau", "overfit"}  # findings about the loss curve (not liveness)

_FLOOR = 1e-12  # losses at or below this are read as this: log(0) has no ratio


class Finding(BaseModel):
    """Something a detector saw, with where it began."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    kind: FindingKind
    """What was seen: spike, nan, divergence, plateau, overfit, stalled_saves or hung."""
    onset: int
    """Step at which the trouble began (estimated from the per-step losses)."""
    step: int
    """Step at which the detector saw it (the end of the window or the run's current step)."""
    severity: Severity
    """How much attention it needs."""
    message: str
    """One line: what was seen, its likely cause and the remedy."""
    data: dict[str, Any] = Field(default_factory=dict)
    """Figures behind the finding (levels, ratios, thresholds)."""


class DetectorSettings(BaseModel):
    """Thresholds of the detectors. Loss ratios are of window medians; "windows" are the agent's."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    window: int = Field(50, ge=2, le=100_000)
    """Steps per window when replaying a CSV (a run's store has its own windows)."""
    warmup_windows: int = Field(4, ge=1)
    """Windows seen before spike and divergence checks start (the first descent is not judged)."""
    history_windows: int = Field(10, ge=3)
    """Recent windows that make the reference level (their lowest median) and the noise estimate."""
    spike_ratio: float = Field(1.3, gt=1.0)
    """Smallest rebound of a window's median over the reference level that counts as a spike."""
    spike_z: float = Field(6.0, gt=0.0)
    """A spike must also exceed this many times the run's window-to-window noise (robust sigma)."""
    divergence_ratio: float = Field(1.5, gt=1.0)
    """A sustained rise of the smoothed level to this multiple of its best is a divergence."""
    divergence_z: float = Field(8.0, gt=0.0)
    """A divergence must also exceed this many times the window-to-window noise."""
    plateau_windows: int = Field(40, ge=2)
    """Windows without a meaningful improvement of the best level that make a plateau."""
    plateau_improvement: float = Field(0.01, ge=0.0, lt=1.0)
    """Relative drop of the smoothed level that counts as an improvement (0.01 = 1%)."""
    overfit_ratio: float = Field(1.1, gt=1.0)
    """Validation loss at this multiple of its best (smoothed over 3 points) while training loss
    is still at or below its level then: overfitting."""
    overfit_points: int = Field(3, ge=1)
    """Consecutive validation points that must stay above the overfit threshold."""
    hung_after_s: float = Field(120.0, gt=0.0)
    """A running run whose heartbeat is older than this, or whose step has not moved for
    `stuck_after_s`, is hung."""
    stuck_after_s: float = Field(1800.0, gt=0.0)
    """A running run whose heartbeat goes on but whose step has not changed for this long is hung
    (the training thread is stuck, e.g. in a collective)."""
    save_stall_s: float = Field(7200.0, gt=0.0)
    """No new ready checkpoint for this long while the run is running: stalled saves."""
    writing_stall_s: float = Field(1800.0, gt=0.0)
    """A checkpoint still `writing` after this long: stalled saves."""


class WindowLike(Protocol):
    """What a detector needs of a window (the store's WindowInfo has it)."""

    first_step: int
    last_step: int
    losses: Sequence[float]


def _log(x: float) -> float:
    return math.log(max(x, _FLOOR))


def _robust_sigma(values: Sequence[float]) -> float:
    """1.4826 x the median absolute deviation: the standard deviation for normal data, untouched
    by a few outliers."""
    if len(values) < 2:
        return 0.0
    mid = statistics.median(values)
    return 1.4826 * statistics.median(abs(v - mid) for v in values)


def _rolling_median(values: Sequence[float], width: int) -> list[float]:
    half = width // 2
    return [statistics.median(values[max(0, i - half): i + half + 1]) for i in range(len(values))]


def _ratio(log_delta: float) -> float:
    return math.exp(log_delta)


class LossDetectors:
    """spike, nan, divergence, plateau and overfit, fed window by window (and validation points
    as they come). Each kind reports once per episode, then waits until the loss is back near
    its reference before it can report again."""

    def __init__(self, settings: DetectorSettings | None = None) -> None:
        self.s = settings or DetectorSettings()
        self._levels: deque[float] = deque(maxlen=self.s.history_windows)  # healthy window levels
        self._diffs: deque[float] = deque(maxlen=self.s.history_windows * 3)
        self._smooth: deque[float] = deque(maxlen=3)
        self._seen = 0
        self._sizes: deque[int] = deque(maxlen=self.s.history_windows)
        self._prev_logs: list[float] = []
        self._prev_first = 0
        self._spiking = 0          # windows since a spike latched (0: armed)
        self._nan = False
        self._best: tuple[float, int] | None = None  # best smoothed level and the step it was seen
        self._diverging = False
        self._plateau_best: tuple[float, int] | None = None
        self._plateau_reported = False
        self._train_at: list[tuple[int, float]] = []  # (last step, smoothed level) per window
        self._val: list[tuple[int, float]] = []
        self._val_best: tuple[float, int] | None = None
        self._val_above = 0
        self._overfit_reported = False

    @property
    def reference_level(self) -> float | None:
        """The recent healthy loss level (lowest recent window median), None before any window."""
        return math.exp(min(self._levels)) if self._levels else None

    @property
    def current_level(self) -> float | None:
        """The newest smoothed loss level (median of the last three window medians)."""
        return math.exp(self._train_at[-1][1]) if self._train_at else None

    # ------------------------------------------------------------- windows
    def window(self, w: WindowLike) -> list[Finding]:
        """Findings of one closed window (windows must come in step order)."""
        losses = list(w.losses)
        first, last = w.first_step, w.last_step
        out: list[Finding] = []
        bad = [i for i, x in enumerate(losses) if not math.isfinite(x)]
        if bad and not self._nan:
            self._nan = True
            onset = first + bad[0]
            out.append(Finding(
                kind="nan", onset=onset, step=last, severity="error",
                message=(f"non-finite loss at step {onset} ({len(bad)} of {len(losses)} steps in the window): "
                         "usually an LR too high or a bad batch; roll back to before it and lower the LR"),
                data={"nonfinite": len(bad), "level_before": self.reference_level}))
        elif not bad:
            self._nan = False
        logs = [_log(x) for x in losses if math.isfinite(x)]
        if len(logs) < max(2, len(losses) // 2):  # too few finite values to judge a level
            self._prev_logs, self._prev_first = [], first
            return out
        level = statistics.median(logs)
        # A short window (flushed at a pause, a rollback or the end) has a noisier median than
        # the thresholds assume: it may raise a NaN finding but is not judged for a spike.
        full = len(losses) >= max(self._sizes, default=0) // 2
        self._sizes.append(len(losses))
        if not full:
            self._prev_logs, self._prev_first = logs, first
            return out
        self._seen += 1
        if self._seen > self.s.warmup_windows and len(self._levels) >= 3:
            out.extend(self._spike(logs, level, first, last))
        self._remember(level, logs, first, last)
        if self._seen > self.s.warmup_windows:
            out.extend(self._divergence(last))
            out.extend(self._plateau(last))
        return out

    def _noise(self) -> float:
        """Robust sigma of window-to-window level changes (a trend shifts them all alike)."""
        return _robust_sigma(list(self._diffs))

    def _spike(self, logs: list[float], level: float, first: int, last: int) -> list[Finding]:
        ref = min(self._levels)
        noise = self._noise()
        thr = max(math.log(self.s.spike_ratio), self.s.spike_z * noise)
        tail = statistics.median(logs[len(logs) // 2:])
        risen = max(level - ref, (tail - ref) / 1.5)  # the tail has half the samples: ask more of it
        if self._spiking:
            self._spiking += 1
            # Re-arm once back near the reference; accept a new normal after a long while.
            if level - ref < thr / 2 or self._spiking > 4 * self.s.history_windows:
                self._spiking = 0
                if level - ref >= thr / 2:
                    self._levels.clear()
            return []
        if risen <= thr:
            return []
        self._spiking = 1
        onset = self._onset(logs, first, ref + thr / 2)
        ratio = _ratio(max(level, tail) - ref)
        return [Finding(
            kind="spike", onset=onset, step=last, severity="error" if ratio >= 3 else "warning",
            message=(f"loss rebounded {ratio:.2f}x above its recent level {math.exp(ref):.4g} from step {onset}: "
                     "likely an LR too high or bad batches; roll back to before the onset and lower the LR"),
            data={"ratio": round(ratio, 4), "level_before": math.exp(ref), "threshold": round(_ratio(thr), 4)})]

    def _onset(self, logs: list[float], first: int, calm: float) -> int:
        """The first step after which the rolling median of the losses stays above `calm`."""
        seq = self._prev_logs + logs
        start = self._prev_first if self._prev_logs else first
        smooth = _rolling_median(seq, 5)
        for i in range(len(smooth) - 1, -1, -1):
            if smooth[i] <= calm:
                return start + min(i + 1, len(seq) - 1)
        return start

    def _remember(self, level: float, logs: list[float], first: int, last: int) -> None:
        if not self._spiking:
            if self._levels:
                self._diffs.append(level - self._levels[-1])
            self._levels.append(level)
        self._prev_logs, self._prev_first = logs, first
        self._smooth.append(level)
        smooth = statistics.median(self._smooth)
        self._train_at.append((last, smooth))

    def _divergence(self, last: int) -> list[Finding]:
        smooth = self._train_at[-1][1]
        if self._best is None or smooth < self._best[0]:
            self._best = (smooth, last)
        best, best_step = self._best
        thr = max(math.log(self.s.divergence_ratio), self.s.divergence_z * self._noise())
        if self._diverging:
            if smooth - best < thr / 2:
                self._diverging = False
            return []
        if self._spiking:
            return []  # the same trouble, already reported as a spike
        rising = len(self._train_at) >= 3 and smooth > self._train_at[-3][1]
        if smooth - best <= thr or not rising:
            return []
        self._diverging = True
        ratio = _ratio(smooth - best)
        return [Finding(
            kind="divergence", onset=best_step + 1, step=last, severity="error",
            message=(f"loss has risen {ratio:.2f}x above its best {math.exp(best):.4g} (step {best_step}) and is still "
                     "rising: the run is diverging, likely an LR too high; roll back to before the rise and lower the LR"),
            data={"ratio": round(ratio, 4), "level_before": math.exp(best), "best_step": best_step})]

    def _plateau(self, last: int) -> list[Finding]:
        smooth = self._train_at[-1][1]
        if self._plateau_best is None or smooth < self._plateau_best[0] + math.log(1 - self.s.plateau_improvement):
            self._plateau_best = (smooth, last)
            self._plateau_reported = False
            return []
        since = len([1 for step, _ in self._train_at if step > self._plateau_best[1]])
        if self._plateau_reported or since < self.s.plateau_windows:
            return []
        self._plateau_reported = True
        best, at = self._plateau_best
        return [Finding(
            kind="plateau", onset=at + 1, step=last, severity="info",
            message=(f"no {self.s.plateau_improvement:.0%} improvement of the loss ({math.exp(best):.4g}) for {since} "
                     "windows: the run has plateaued; lower the LR, or stop if it has converged"),
            data={"windows": since, "best": math.exp(best)})]

    # ---------------------------------------------------------- validation
    def val(self, step: int, value: float) -> list[Finding]:
        """Findings of one validation point (points must come in step order)."""
        if not math.isfinite(value):
            return []
        self._val.append((step, _log(value)))
        smooth = statistics.median(v for _, v in self._val[-3:])
        if len(self._val) < 3:
            return []
        if self._val_best is None or smooth < self._val_best[0]:
            best_step = min(self._val[-3:], key=lambda p: p[1])[0]
            self._val_best = (smooth, best_step)
            self._val_above = 0
            self._overfit_reported = False
            return []
        best, best_step = self._val_best
        if smooth - best <= math.log(self.s.overfit_ratio):
            self._val_above = 0
            return []
        self._val_above += 1
        train_then = self._train_level_at(best_step)
        train_now = self._train_at[-1][1] if self._train_at else None
        if (self._overfit_reported or self._val_above < self.s.overfit_points
                or train_then is None or train_now is None or train_now > train_then):
            return []
        self._overfit_reported = True
        ratio = _ratio(smooth - best)
        return [Finding(
            kind="overfit", onset=best_step, step=step, severity="warning",
            message=(f"validation loss has risen {ratio:.2f}x above its best (step {best_step}) while training loss "
                     "keeps falling: the model is overfitting; stop early, add regularisation or more data"),
            data={"ratio": round(ratio, 4), "best_step": best_step})]

    def _train_level_at(self, step: int) -> float | None:
        before = [lvl for s, lvl in self._train_at if s <= step]
        return before[-1] if before else None


# ------------------------------------------------------------------ liveness
class LivenessObservation(BaseModel):
    """What the daemon read of a run at one moment (the detector is given the time, never reads it)."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    now: float
    """Unix time of the observation."""
    status: str
    """Run status as stored."""
    step: int
    """Run step as stored."""
    heartbeat_at: float | None
    """Last heartbeat of the agent."""
    started_at: float | None
    """When the current training process attached."""
    newest_ready_at: float | None
    """When the newest ready checkpoint became ready."""
    writing_since: float | None
    """Creation time of the oldest checkpoint still `writing`."""


class LivenessDetectors:
    """hung and stalled_saves from successive observations of a run."""

    def __init__(self, settings: DetectorSettings | None = None) -> None:
        self.s = settings or DetectorSettings()
        self._step: tuple[int, float] | None = None  # step and when it was first seen
        self._hung_reported = False
        self._stall_reported = False
        self._writing_reported = False

    def observe(self, o: LivenessObservation) -> list[Finding]:
        if o.status != "running":
            self._step = None
            self._hung_reported = self._stall_reported = self._writing_reported = False
            return []
        out: list[Finding] = []
        if self._step is None or self._step[0] != o.step:
            self._step = (o.step, o.now)
            self._hung_reported = False
        out.extend(self._hung(o))
        out.extend(self._saves(o))
        return out

    def _hung(self, o: LivenessObservation) -> list[Finding]:
        assert self._step is not None
        silent = o.now - o.heartbeat_at if o.heartbeat_at is not None else 0.0
        stuck = o.now - self._step[1]
        if self._hung_reported or (silent <= self.s.hung_after_s and stuck <= self.s.stuck_after_s):
            return []
        self._hung_reported = True
        why = (f"no heartbeat for {silent:.0f}s" if silent > self.s.hung_after_s
               else f"heartbeat goes on but step {o.step} has not moved for {stuck:.0f}s")
        return [Finding(
            kind="hung", onset=o.step, step=o.step, severity="error",
            message=f"run is hung at step {o.step}: {why}; the process is frozen or stuck; restart it from its newest checkpoint",
            data={"silent_s": round(silent, 1), "stuck_s": round(stuck, 1)})]

    def _saves(self, o: LivenessObservation) -> list[Finding]:
        out: list[Finding] = []
        known = [t for t in (o.newest_ready_at, o.started_at) if t is not None]
        since = max(known) if known else None
        if since is not None and o.now - since > self.s.save_stall_s:
            if not self._stall_reported:
                self._stall_reported = True
                out.append(Finding(
                    kind="stalled_saves", onset=o.step, step=o.step, severity="warning",
                    message=(f"no new checkpoint for {o.now - since:.0f}s while running: saves have stopped (disk full, "
                             "checkpoint thread stuck, or no improvement); check the run's events and free space"),
                    data={"since_s": round(o.now - since, 1)}))
        else:
            self._stall_reported = False
        if o.writing_since is not None and o.now - o.writing_since > self.s.writing_stall_s:
            if not self._writing_reported:
                self._writing_reported = True
                out.append(Finding(
                    kind="stalled_saves", onset=o.step, step=o.step, severity="warning",
                    message=(f"a checkpoint has been `writing` for {o.now - o.writing_since:.0f}s: the write is stuck "
                             "(slow or hung file system); check the checkpoint folder's storage"),
                    data={"writing_s": round(o.now - o.writing_since, 1)}))
        else:
            self._writing_reported = False
        return out


def feed(det: LossDetectors, windows: Iterable[WindowLike], vals: Sequence[tuple[int, float]]) -> list[Finding]:
    """Findings of windows and validation points given together: a validation point is fed once
    the window holding its step has closed, as the daemon sees it; the rest after the windows."""
    pending = sorted(vals)
    out: list[Finding] = []
    for w in windows:
        out.extend(det.window(w))
        while pending and pending[0][0] <= w.last_step:
            out.extend(det.val(*pending.pop(0)))
    for point in pending:
        out.extend(det.val(*point))
    return out
