"""Pure detectors: they see windows of per-step losses, validation points and observations of a
run's liveness, and say what looks wrong. No I/O and no clock: the daemon, `replay` and the
benchmark feed them the same data and get the same findings.

Loss detectors work on log(loss): a rebound is a ratio, whatever the loss's scale. A window's
level is the median of its steps, which a few wild minibatches of a tiny-batch run cannot move;
thresholds grow with the run's own noise (window to window, and within a window; see levels.py),
so a noisy run needs a larger rebound to raise an alarm than a smooth one, and a smooth one is
watched down to a small fixed ratio. Only rises count: a sudden drop (an LR decay) just lowers the
reference.
"""
from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from .levels import Level, Onset, locate_onset, log_loss, median_se, robust_sigma, step_sigma, summarise

FindingKind = Literal["spike", "nan", "divergence", "plateau", "overfit", "stalled_saves", "hung"]
Severity = Literal["info", "warning", "error"]
KINDS: tuple[str, ...] = ("spike", "nan", "divergence", "plateau", "overfit", "stalled_saves", "hung")
REBOUND_KINDS = frozenset({"spike", "nan", "divergence"})
LOSS_KINDS = REBOUND_KINDS | {"plateau", "overfit"}  # findings about the loss curve (not liveness)

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
    warmup_windows: int = Field(4, ge=1, le=10_000)
    """Windows seen before rises are judged against the recent level (the first descent is not);
    a blow-up above the run's starting loss is judged from the first window on."""
    history_windows: int = Field(10, ge=3, le=10_000)
    """Recent windows that make the reference level (their lowest median)."""
    spike_ratio: float = Field(1.03, gt=1.0, le=1e6)
    """Smallest rise of a window's median over the reference level that counts, however smooth
    the curve (the floor under the noise-scaled threshold)."""
    spike_z: float = Field(4.5, gt=0.0, le=1e6)
    """A rise must also exceed this many times the run's window-to-window noise."""
    blowup_ratio: float = Field(1.3, gt=1.0, le=1e6)
    """A window's median this far above the run's starting loss is a finding at any step."""
    rearm_windows: int = Field(3, ge=1, le=10_000)
    """After a rise, windows without a new high after which the level is the run's new normal and
    a further rise is a new finding."""
    divergence_ratio: float = Field(1.5, gt=1.0, le=1e6)
    """A sustained rise of the smoothed level to this multiple of its best is a divergence (for
    climbs too slow for any window to show)."""
    divergence_z: float = Field(8.0, gt=0.0, le=1e6)
    """A divergence must also exceed this many times the window-to-window noise."""
    plateau_windows: int = Field(40, ge=2, le=1_000_000)
    """Windows without a meaningful improvement of the best level that make a plateau."""
    plateau_improvement: float = Field(0.01, ge=0.0, lt=1.0)
    """Relative drop of the smoothed level that counts as an improvement (0.01 = 1%)."""
    overfit_ratio: float = Field(1.1, gt=1.0, le=1e6)
    """Validation loss at this multiple of its best (smoothed over 3 points) while training loss
    is still at or below its level then: overfitting."""
    overfit_points: int = Field(3, ge=1, le=10_000)
    """Consecutive validation points that must stay above the overfit threshold."""
    hung_after_s: float = Field(120.0, gt=0.0, le=1e9)
    """A running run whose heartbeat is older than this, or whose step has not moved for
    `stuck_after_s`, is hung."""
    stuck_after_s: float = Field(1800.0, gt=0.0, le=1e9)
    """A running run whose heartbeat goes on but whose step has not changed for this long is hung
    (the training thread is stuck, e.g. in a collective)."""
    save_stall_s: float = Field(7200.0, gt=0.0, le=1e9)
    """No new ready checkpoint for this long while the run is running: stalled saves."""
    writing_stall_s: float = Field(1800.0, gt=0.0, le=1e9)
    """A checkpoint still `writing` after this long: stalled saves."""


class WindowLike(Protocol):
    """What a detector needs of a window (the store's WindowInfo has it)."""

    first_step: int
    last_step: int
    losses: Sequence[float]


def _ratio(log_delta: float) -> float:
    return math.exp(log_delta)


@dataclass
class _Episode:
    """A rise that was reported and has not ended: no new finding of it until it does."""

    ref: float
    """The reference level it rose from (log)."""
    thr: float
    """The threshold it crossed (log)."""
    peak: float
    """Its highest window level so far (log)."""
    peak_at: float
    """The middle step of that window."""
    quiet: list[Level] = field(default_factory=list)
    """The windows since `peak` was last raised."""


class LossDetectors:
    """spike, nan, divergence, plateau and overfit, fed window by window (and validation points
    as they come).

    A rise is reported once; while it lasts nothing more is said of it. It ends when the level
    is back near where it rose from, or when the level has stopped rising for `rearm_windows`:
    the run's new normal, from which a further rise is a new finding.
    """

    def __init__(self, settings: DetectorSettings | None = None) -> None:
        self.s = settings or DetectorSettings()
        self._levels: deque[Level] = deque(maxlen=self.s.history_windows)  # recent healthy windows
        self._recent: deque[Level] = deque(maxlen=max(8, self.s.warmup_windows + 2))  # every judged window
        self._diffs: deque[float] = deque(maxlen=self.s.history_windows * 3)
        self._ses: deque[float] = deque(maxlen=self.s.history_windows)
        self._sizes: deque[int] = deque(maxlen=self.s.history_windows)
        self._smooth: deque[float] = deque(maxlen=3)
        self._start: tuple[float, float] | None = None  # first loss and median of the first 10 (log)
        self._calm = math.inf  # lowest per-step noise of the early windows (a blow-up inflates its own)
        self._early_peak: tuple[float, int] | None = None  # highest 10-step median of the early windows, its step
        self._seen = 0
        self._noise_cache: float | None = None
        self._since = 0  # no onset is placed before this step (the last time the detector re-armed)
        self._episode: _Episode | None = None
        self._nan = False
        self._best: tuple[float, int] | None = None  # best smoothed level and the step it was seen
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
        return math.exp(min(lv.level for lv in self._levels)) if self._levels else None

    @property
    def current_level(self) -> float | None:
        """The newest smoothed loss level (median of the last three window medians)."""
        return math.exp(self._train_at[-1][1]) if self._train_at else None

    # ------------------------------------------------------------- windows
    def window(self, w: WindowLike) -> list[Finding]:
        """Findings of one closed window (windows must come in step order)."""
        losses = list(w.losses)
        out = self._nonfinite(losses, w.first_step, w.last_step)
        lv = summarise(w.first_step, w.last_step, losses)
        if lv is None:  # too few finite values to judge a level
            return out
        if self._start is None:
            self._start = (lv.logs[0], statistics.median(lv.logs[:10]))
        # A short window (flushed at a pause, a rollback or the end) has a noisier median than
        # the thresholds assume: it may raise a NaN finding but is not judged for a rise.
        full = len(losses) >= max(self._sizes, default=0) // 2
        self._sizes.append(len(losses))
        if not full:
            return out
        self._seen += 1
        self._noise_cache = None
        previous = self._recent[-1] if self._recent else None
        self._recent.append(lv)
        if self._episode is not None:
            self._follow(lv, previous)
        else:
            # Until the recent level can be judged, the starting loss is the only reference; after
            # it, a rise above the start is a rise above the recent level too (or the new normal).
            early = self._seen <= self.s.warmup_windows or len(self._levels) < 3
            found = self._blowup(lv) if early else self._rise(lv)
            if found is not None:
                out.append(found)
            else:
                self._remember(lv, previous)
        self._smooth.append(lv.level)
        self._train_at.append((lv.last, statistics.median(self._smooth)))
        if self._seen > self.s.warmup_windows:
            out.extend(self._divergence(lv.last))
            out.extend(self._plateau(lv.last))
        return out

    def _nonfinite(self, losses: list[float], first: int, last: int) -> list[Finding]:
        bad = [i for i, x in enumerate(losses) if not math.isfinite(x)]
        if not bad:
            self._nan = False
            return []
        if self._nan:
            return []
        self._nan = True
        onset = first + bad[0]
        return [Finding(
            kind="nan", onset=onset, step=last, severity="error",
            message=(f"non-finite loss at step {onset} ({len(bad)} of {len(losses)} steps in the window): "
                     "usually an LR too high or a bad batch; roll back to before it and lower the LR"),
            data={"nonfinite": len(bad), "level_before": self.reference_level})]

    def _noise(self) -> float:
        """Window-to-window noise of the level (log): the larger of the spread of recent level
        changes (slow wandering, correlated noise) and what the windows' own per-step noise
        implies for the difference of two medians. Cached until a window changes either."""
        if self._noise_cache is None:
            self._noise_cache = self._estimate_noise()
        return self._noise_cache

    def _estimate_noise(self) -> float:
        from_diffs = robust_sigma(list(self._diffs)) if len(self._diffs) >= 5 else 0.0
        from_steps = math.sqrt(2) * statistics.median(self._ses) if self._ses else 0.0
        return max(from_diffs, from_steps)

    def _remember(self, lv: Level, previous: Level | None) -> None:
        """A healthy window: it joins the reference and the noise estimate."""
        self._noise_cache = None
        if previous is not None and self._levels and previous is self._levels[-1]:
            self._diffs.append(lv.level - previous.level)
        self._levels.append(lv)
        self._ses.append(lv.se)

    def _blowup(self, lv: Level) -> Finding | None:
        """Far above the run's starting loss, in the first windows (before the recent level is known).

        The start is the first loss (a blow-up can begin at the second step) or the median of the
        first ten; the height is the highest 10-step median so far (an early blow-up may come back
        within the window); the noise is that of the calmest early window, since the blow-up
        inflates its own window's."""
        assert self._start is not None
        self._calm = min(self._calm, step_sigma(lv.logs))
        for i in range(0, len(lv.logs) - 9, 10):
            block = statistics.median(lv.logs[i:i + 10])
            if self._early_peak is None or block > self._early_peak[0]:
                self._early_peak = (block, lv.steps[i])
        assert self._early_peak is not None
        peak = self._early_peak[0]
        se_block = median_se(self._calm, 10)
        first, head = self._start
        floor = math.log(self.s.blowup_ratio)
        rises = [(peak - first, max(floor, self.s.spike_z * math.hypot(se_block, self._calm))),
                 (peak - head, max(floor, self.s.spike_z * math.hypot(se_block, se_block)))]
        start, thr = next(((peak - r, t) for r, t in rises if r > t), (None, 0.0))
        if start is None:
            return None
        self._early_peak = None  # reported: a later blow-up is measured afresh
        ref = min((x.level for x in self._levels), default=start)
        onset = self._locate(min(ref, start), earliest=self._since)
        ratio = _ratio(peak - start)
        return self._report(
            "spike", onset.step, lv, min(ref, start), thr, "blowup",
            f"loss blew up to {ratio:.2f}x the run's starting level {math.exp(start):.4g} from step {onset.step}: "
            "likely an LR too high for this stage (no or too short a warm-up); roll back to before it and lower the LR",
            ratio)

    def _rise(self, lv: Level) -> Finding | None:
        """Above the recent healthy level by more than the noise allows: in this window's median,
        in its second half (a rise that began mid-window), or in the last two windows together."""
        ref = min(x.level for x in self._levels)
        noise = self._noise()
        floor = math.log(self.s.spike_ratio)
        thr = max(floor, self.s.spike_z * noise)
        tail_thr = max(floor, 1.5 * self.s.spike_z * noise)  # half the steps: a noisier median
        pair_thr = max(floor, 0.7 * self.s.spike_z * noise)  # two windows agreeing: less noise
        prev = self._levels[-1]
        pair = (prev.last + 1 >= lv.first and lv.level >= prev.level
                and min(lv.level, prev.level) - ref > pair_thr and prev.level > ref)
        if not (lv.level - ref > thr or lv.tail - ref > tail_thr or pair or self._burst(lv, ref, floor, noise)):
            return None
        onset = self._locate(ref, earliest=self._since)
        ratio = _ratio(max(lv.level, lv.tail) - ref)
        if onset.shape == "climb":
            return self._report(
                "divergence", onset.step, lv, ref, thr, "climb",
                f"loss has been climbing since step {onset.step}: now {ratio:.2f}x its level {math.exp(ref):.4g} before "
                "it; the run is destabilising (likely an LR too high); roll back to before the climb and lower the LR",
                ratio)
        return self._report(
            "spike", onset.step, lv, ref, thr, "step",
            f"loss rebounded {ratio:.2f}x above its recent level {math.exp(ref):.4g} from step {onset.step}: "
            "likely an LR too high or bad batches; roll back to before the onset and lower the LR",
            ratio)

    def _burst(self, lv: Level, ref: float, floor: float, noise: float) -> bool:
        """A spike shorter than a window (gone before the window ends, so its median barely moves):
        two consecutive 10-step medians both above the reference by more than their own noise and
        the reference's allow."""
        blocks = [statistics.median(lv.logs[i:i + 10]) for i in range(0, len(lv.logs) - 9, 10)]
        se = median_se(step_sigma(lv.logs), 10)
        thr = max(floor, self.s.spike_z * math.hypot(se, noise / math.sqrt(2)))
        return any(min(a, b) - ref > thr for a, b in zip(blocks, blocks[1:]))

    def _locate(self, ref: float, earliest: int) -> Onset:
        """Where the rise began, fitted on the recent windows' steps (from the reference window on,
        as far back as the recent windows go, never before the last re-arm)."""
        windows = list(self._recent)
        ref_window = min(self._levels, key=lambda x: x.level) if self._levels else windows[0]
        lo = max(earliest, ref_window.first, windows[0].first)
        steps = [s for w in windows for s in w.steps]
        logs = [v for w in windows for v in w.logs]
        block = max(1, self.s.window // 10)
        return locate_onset(steps, logs, lo, block)

    def _report(self, kind: FindingKind, onset: int, lv: Level, ref: float, thr: float, shape: str, message: str,
                ratio: float) -> Finding:
        self._episode = _Episode(ref=ref, thr=thr, peak=lv.level, peak_at=(lv.first + lv.last) / 2)
        return Finding(
            kind=kind, onset=onset, step=lv.last, severity="error" if ratio >= 3 else "warning", message=message,
            data={"ratio": round(ratio, 4), "level_before": math.exp(ref), "threshold": round(_ratio(thr), 4),
                  "shape": shape, "noise": round(self._noise(), 5)})

    def _follow(self, lv: Level, previous: Level | None) -> None:
        """A reported rise goes on, comes back down, or settles at a new normal."""
        ep = self._episode
        assert ep is not None
        self._noise_cache = None
        if previous is not None and ep.quiet and previous is ep.quiet[-1]:
            self._diffs.append(lv.level - previous.level)  # the new regime's own noise
        # A new high by more than the noise: still rising (a slow climb must not pass for a new normal).
        if lv.level > ep.peak + self._noise():
            ep.peak, ep.peak_at, ep.quiet = lv.level, (lv.first + lv.last) / 2, []
        elif lv.level > ep.peak:  # a new high within the noise: not a sign of rest either
            ep.peak, ep.peak_at = lv.level, (lv.first + lv.last) / 2
        else:
            ep.quiet.append(lv)
        if lv.level - ep.ref < ep.thr / 2:  # back near where it rose from: the old reference holds
            self._end_episode(lv.first)
            self._remember(lv, None)
        elif len(ep.quiet) >= self.s.rearm_windows and self._flat(ep):  # settled higher: the new normal
            self._end_episode(ep.quiet[0].first)
            self._levels.clear()
            self._ses.clear()
            for q in ep.quiet:
                self._levels.append(q)
                self._ses.append(q.se)
            self._best = None  # a slow divergence is measured from the new normal too

    def _flat(self, ep: _Episode) -> bool:
        """The quiet windows and the peak show no trend larger than the noise: a slow climb (a new
        high by less than the noise each window) is not a new normal."""
        points = sorted([(ep.peak_at, ep.peak)] + [((q.first + q.last) / 2, q.level) for q in ep.quiet])
        xs, ys = [x for x, _ in points], [y for _, y in points]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
        return slope * (xs[-1] - xs[0]) < self._noise() / 2

    def _end_episode(self, since: int) -> None:
        self._episode = None
        self._since = since

    def _divergence(self, last: int) -> list[Finding]:
        """A rise too slow for any window to show against the recent level: the smoothed level
        far above its best and still rising."""
        smooth = self._train_at[-1][1]
        if self._best is None or smooth < self._best[0]:
            self._best = (smooth, last)
        best, best_step = self._best
        thr = max(math.log(self.s.divergence_ratio), self.s.divergence_z * self._noise())
        if self._episode is not None:
            return []  # the same trouble, already reported
        rising = len(self._train_at) >= 3 and smooth > self._train_at[-3][1]
        if smooth - best <= thr or not rising:
            return []
        ratio = _ratio(smooth - best)
        lv = self._recent[-1]
        self._episode = _Episode(ref=best, thr=thr, peak=lv.level, peak_at=(lv.first + lv.last) / 2)
        return [Finding(
            kind="divergence", onset=best_step + 1, step=last, severity="error",
            message=(f"loss has risen {ratio:.2f}x above its best {math.exp(best):.4g} (step {best_step}) and is still "
                     "rising: the run is diverging, likely an LR too high; roll back to before the rise and lower the LR"),
            data={"ratio": round(ratio, 4), "level_before": math.exp(best), "best_step": best_step, "shape": "climb"})]

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
        self._val.append((step, log_loss(value)))
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
