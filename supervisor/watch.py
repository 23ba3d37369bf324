"""One run under supervision: read what is new in its store, run the detectors, ask the policy,
and write the decision (an event) and the action (commands) back into the store.

Everything the watcher must remember across a daemon restart is in the store: the findings it
recorded (event keys), its interventions and their commands. A watcher that starts fresh replays
the run's current history through new detectors; findings it recorded before are recognised by
their keys, so a daemon killed at any moment neither loses nor repeats an intervention: the
finding's event, the intervention and its commands are written in one transaction.
"""
from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from trainwarden.agent.records import InterventionInfo, RunInfo
from trainwarden.agent.store import RunNotStartedError, Segments, Store, StoreError

from . import interventions as ivs
from .alerts import Alert
from .detectors import Finding, LivenessDetectors, LivenessObservation, LossDetectors, feed
from .policy import (
    CURE_WINDOWS, RELAPSE_WINDOWS, Decision, Policy, PolicyError, cure_reference, cure_verdict, decide, relapse,
    window_level, with_run_overrides,
)

ISSUER = "supervisor"
SOURCE = "supervisor"

Log = Callable[[str, str], None]  # (level, line)


class WindowLevel(NamedTuple):
    """One window of the current history, as a remedy is judged on it."""

    branch: int
    first_step: int
    last_step: int
    count: int
    level: float


def _owner(step: int, segments: Segments) -> int:
    """The branch of a history that owns `step`."""
    for branch, after, upto in segments:
        if after < step and (upto is None or step <= upto):
            return branch
    return segments[-1][0] if segments else 0


class RunWatch:
    """Supervises one run folder; `tick()` once a second does everything for it."""

    def __init__(self, run_dir: Path, policy: Policy, log: Log, alert: Callable[[Alert], None] | None = None) -> None:
        self.run_dir = run_dir
        self.base_policy = policy
        self._log = log
        self._alert = alert
        self._store: Store | None = None
        self.error: str | None = None  # why the store cannot be used, while it cannot
        self.name = run_dir.name
        self.run: RunInfo | None = None
        self._version: int | None = None
        self._policy: Policy = policy
        self._policy_stamp: tuple[Any, ...] | None = None
        self._det: LossDetectors | None = None
        self._branch: int | None = None
        self._segments: Segments = []
        self._window_cursor = 0
        self._metric_cursor = 0
        self._levels: list[WindowLevel] = []  # the current history's windows (as the detectors saw them), in step order
        self._remedy_branches: dict[int, int] = {}  # intervention id -> branch its commands were applied on
        self._written: dict[int, float] = {}  # step -> when the window or metric ending there was written
        self._live = LivenessDetectors(policy.detect)
        self._keys: set[str] | None = None
        self._ckpt_times: tuple[float | None, float | None] = (None, None)
        self.last_action: str | None = None
        self._lines: list[tuple[str, str, Alert]] = []  # log lines (and alerts) of events not yet committed
        self._in_tx = False

    # -------------------------------------------------------------- lifecycle
    def set_policy(self, policy: Policy) -> None:
        """A reloaded daemon policy: the run's overrides are applied again on the next tick."""
        self.base_policy = policy
        self._policy_stamp = None

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def _open(self) -> Store:
        if self._store is None:
            self._store = Store.open(self.run_dir)
            self._version = None
        return self._store

    # ------------------------------------------------------------------- tick
    def tick(self, now: float) -> None:
        """Read, detect, decide and act once. Store trouble is reported (once) and skipped."""
        try:
            s = self._open()
            version = s.data_version()
            changed = version != self._version
            if changed or self.run is None:
                self.run = s.run()
                self.name = self.run.name
                if self.error is not None:
                    self._log("info", f"{self.run_dir}: readable again")
                    self.error = None
            if not changed and self.run.status != "running":
                return  # idle: nothing new, and no clock-driven check applies
            self._refresh_policy(s)
            if self._keys is None:
                self._keys = s.supervisor_keys()
            findings: list[Finding] = []
            if changed:
                findings += self._loss_findings(s)
                self._refresh_checkpoint_times(s)
            findings += self._live.observe(LivenessObservation(
                now=now, status=self.run.status, step=self.run.step, heartbeat_at=self.run.heartbeat_at,
                started_at=self.run.started_at, newest_ready_at=self._ckpt_times[0], writing_since=self._ckpt_times[1]))
            for f in findings:
                self._handle(s, f, now)
            if changed:
                self._follow(s, now)
            # The counter read before this tick's reads: a commit that landed during the tick is
            # seen by the next one (our own writes never move it).
            self._version = version
        except RunNotStartedError:
            self.close()  # being created right now: look again next tick, it is not an error
        except (StoreError, sqlite3.Error, OSError) as exc:
            self._fail(str(exc))

    def _fail(self, why: str) -> None:
        """Report an unusable store once (and again if the reason changes), then keep trying."""
        if self.error != why:
            self._log("error", f"{self.run_dir}: store unreadable, skipped: {why}")
        self.error = why
        self.close()
        self._det = None

    def _refresh_policy(self, s: Store) -> None:
        path = self.run_dir / "warden.toml"
        try:
            st = path.stat()
            stamp: tuple[Any, ...] = (id(self.base_policy), st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = (id(self.base_policy), None)
        if stamp == self._policy_stamp:
            return
        self._policy_stamp = stamp
        try:
            policy = with_run_overrides(self.base_policy, self.run_dir)
        except PolicyError as exc:
            self._event(s, "policy_error", "error", f"run policy not applied, keeping the previous one: {exc}")
            return
        if policy.detect != self._policy.detect:
            self._det = None  # new thresholds: replay the history through new detectors
            self._live = LivenessDetectors(policy.detect)
        self._policy = policy

    # ---------------------------------------------------------------- detect
    def _loss_findings(self, s: Store) -> list[Finding]:
        assert self.run is not None
        if self._det is None or self.run.branch != self._branch:
            return self._rebuild(s)
        windows = s.windows(branch=self._branch, after_id=self._window_cursor)
        vals = s.lineage_metrics(self._branch, "val_loss", after_id=self._metric_cursor)
        return self._feed(windows, vals, s)

    def _rebuild(self, s: Store) -> list[Finding]:
        """New detectors over the current history (at start, after a rollback, on new thresholds)."""
        assert self.run is not None
        self._branch = self.run.branch
        self._segments = s.lineage(self._branch)
        self._det = LossDetectors(self._policy.detect)
        self._window_cursor = self._metric_cursor = 0
        self._written.clear()
        self._levels.clear()
        return self._feed(s.lineage_windows(self._branch), s.lineage_metrics(self._branch, "val_loss"), s)

    def _feed(self, windows: list[Any], vals: list[Any], s: Store) -> list[Finding]:
        assert self._det is not None
        if windows:
            self._window_cursor = max(self._window_cursor, max(w.id for w in windows))
        self._levels += [WindowLevel(w.branch, w.first_step, w.last_step, w.count, window_level(w.losses)) for w in windows]
        if vals:
            self._metric_cursor = max(self._metric_cursor, max(m.id for m in vals))
        self._written.update((w.last_step, w.time) for w in windows)
        self._written.update((m.step, m.time) for m in vals)
        points = [(m.step, m.value) for m in vals if m.value is not None]
        return feed(self._det, windows, points)

    def _refresh_checkpoint_times(self, s: Store) -> None:
        ckpts = s.checkpoints(["ready", "writing"])
        ready = [c.ready_at for c in ckpts if c.status == "ready" and c.ready_at is not None]
        writing = [c.created_at for c in ckpts if c.status == "writing"]
        self._ckpt_times = (max(ready) if ready else None, min(writing) if writing else None)

    # ---------------------------------------------------------------- decide
    def _key(self, f: Finding) -> str:
        if f.kind in ("hung", "stalled_saves"):
            assert self.run is not None
            return f"{f.kind}:{self.run.started_at}:{f.step}:{','.join(sorted(f.data))}"
        return f"{f.kind}:b{_owner(f.onset, self._segments)}:{f.onset}"

    def _handle(self, s: Store, f: Finding, now: float, key: str | None = None, note: str = "") -> None:
        """Record a finding once, and act on it as the policy says."""
        assert self._keys is not None and self.run is not None
        key = key or self._key(f)
        if key in self._keys:
            return
        interventions = s.interventions()
        record = ivs.run_record(s, self.run, interventions, self._policy.cooldown_steps)
        decision = decide(f, self._policy, record, age_s=now - self._written.get(f.step, now))
        acts = decision.mode in ("auto", "ask")
        again = ivs.rebound_again(f, interventions, self._policy.detect.window) if acts and not note else ""
        reason = "; ".join(x for x in (note if acts else "", again, decision.reason) if x)
        data = {"key": key, "finding": f.model_dump(), "decision": decision.mode}
        with self._transaction(s):
            self._event(s, f.kind, f.severity, f"{f.message} [{decision.mode}: {reason}]", step=f.step, data=data)
            if decision.mode in ("auto", "ask", "budget"):
                self._intervene(s, f, decision, reason, note)
        self._keys.add(key)

    def _intervene(self, s: Store, f: Finding, decision: Decision, reason: str, note: str) -> None:
        assert self.run is not None
        actions = [a.model_dump() for a in decision.actions]
        kind = ivs.BUDGET if decision.mode == "budget" else f.kind
        mode = "cure" if note and decision.mode == "auto" else decision.mode
        level = f.data.get("level_before")
        iid = ivs.propose(s, kind, f.onset, f.step, self.run.branch, mode, actions, reason,
                          level if isinstance(level, (int, float)) else None)
        if decision.mode == "ask":
            self._event(s, "proposal", "warning",
                        f"proposal {iid}: {reason} — approve with `trainwarden approve {self.run_dir} {iid}` "
                        f"or deny with `trainwarden deny {self.run_dir} {iid}`",
                        step=f.step, data={"intervention": iid})
            self.last_action = f"proposed {iid} on {self.name}"
            return
        ids = ivs.issue(s, iid, actions, ISSUER, pin=True)
        if decision.mode == "budget":
            self._event(s, "needs_person", "error", f"intervention budget spent: run paused; {reason}",
                        step=f.step, data={"intervention": iid, "commands": ids})
        else:
            self._event(s, "intervention", "warning", f"intervention {iid}: {reason}",
                        step=f.step, data={"intervention": iid, "commands": ids})
        self.last_action = f"intervention {iid} on {self.name}: {reason}"

    # ------------------------------------------------------------------ follow
    def _follow(self, s: Store, now: float) -> None:
        """Interventions in flight: note their acknowledgement; after the cooldown, judge the cure."""
        assert self.run is not None
        interventions = s.interventions()
        ended = self.run.status in ("finished", "stopped")
        for iv in interventions:
            if iv.status != "issued":
                continue
            if ended:
                # The job is gone: a command it never read would wait forever (a crashed job is
                # left alone, its relaunch still applies them).
                with self._transaction(s):
                    ivs.reject_unread(s, iv, self.run)
            settled = ivs.acknowledged(s, iv)
            if settled is None:
                continue
            ok, results = settled
            with self._transaction(s):
                ivs.close(s, iv, ok)
                self._event(s, "intervention_applied" if ok else "intervention_rejected", "info" if ok else "warning",
                            f"intervention {iv.id} {'applied' if ok else 'rejected'}: {results}",
                            step=ivs.applied_step(s, iv), data={"intervention": iv.id})
        self._judge(s, s.interventions(), now)

    def _judge(self, s: Store, interventions: list[InterventionInfo], now: float) -> None:
        """The newest applied remedy, on its own windows past the onset and the cooldown: cured, or a
        further cut; once cured, a level that settles above the cure bar again is a relapse."""
        assert self.run is not None
        todo = ivs.remedies(interventions)
        if not todo or todo[-1].outcome not in (None, ivs.CURED) or todo[-1].level_before is None:
            return
        iv = todo[-1]
        windows = self._remedy_windows(s, iv)
        if windows is None:
            return
        before = cure_reference(iv.level_before, ivs.restored_loss(s, iv))
        if iv.outcome is None:
            self._judge_cure(s, todo, windows, before, now)
        else:
            self._watch_relapse(s, iv, windows[CURE_WINDOWS:], before, now)

    def _remedy_windows(self, s: Store, iv: InterventionInfo) -> list[WindowLevel] | None:
        """The full windows of the remedy's own history whose steps are past the onset (the run went
        through the troubled place again) and the cooldown, in step order; None when the current
        history does not descend from the branch the remedy was applied on (someone rolled the run
        back since: those windows say nothing about this remedy)."""
        assert self.run is not None
        owners = [branch for branch, _, _ in self._segments]
        branch = self._remedy_branch(s, iv)
        if branch not in owners:
            return None
        own = set(owners[owners.index(branch):])
        # Steps of the remedy's own branch: a rollback's commands are acknowledged at the step it
        # restored (the fork step), and the abandoned branch's later steps count for nothing here.
        start = max(iv.onset, ivs.applied_step(s, iv) + self._policy.cooldown_steps)
        size = self.run.config.get("window")
        full = size if isinstance(size, int) else self._policy.detect.window
        # A window cut at a fork or flushed early (a pause) is partial: it mixes histories or is short.
        return [w for w in self._levels if w.branch in own and w.first_step > start and w.count >= full]

    def _remedy_branch(self, s: Store, iv: InterventionInfo) -> int:
        """The branch the intervention's commands were applied on (read once: it does not change)."""
        if iv.id not in self._remedy_branches:
            self._remedy_branches[iv.id] = ivs.remedy_branch(s, iv)
        return self._remedy_branches[iv.id]

    def _judge_cure(self, s: Store, todo: list[InterventionInfo], windows: list[WindowLevel], before: float, now: float) -> None:
        """Cured (the chain of cuts ends), or not and a further cut, once the remedy's windows are there."""
        iv = todo[-1]
        verdict = cure_verdict([w.level for w in windows], before, self._policy)
        if verdict is None:
            return
        ok, level = verdict
        at = windows[CURE_WINDOWS - 1].last_step
        if ok:
            with self._transaction(s):
                ivs.mark_cured(s, todo)
                self._event(s, "cured", "info",
                            f"intervention {iv.id} cured the run: loss level {level:.4g} vs {self._words(before, iv)}",
                            step=at, data={"intervention": iv.id, "level": level})
            return
        # One transaction with the further cut: a kill in between must not leave the outcome
        # written and the cut never made.
        with self._transaction(s):
            ivs.mark_outcome(s, iv, f"not cured: level {level:.4g} vs {self._words(before, iv)}")
            finding = Finding(
                kind=iv.finding, onset=iv.onset, step=at, severity="error",
                message=(f"intervention {iv.id} did not cure the run: after the cooldown the loss level {level:.4g} is still "
                         f"above {self._policy.cure_ratio:g} x {self._words(before, iv)}"),
                # The further cut inherits the level before the onset, not this cut's reference: a
                # rolled-back-to checkpoint's higher loss must not loosen the judgement of the next
                # cut, which restores a checkpoint of its own.
                data={"level_before": iv.level_before, "level": level, "after": iv.id})
            self._handle(s, finding, now, key=f"cure:{iv.id}", note="not cured: a further cut")

    def _watch_relapse(self, s: Store, iv: InterventionInfo, windows: list[WindowLevel], before: float, now: float) -> None:
        """After a cure, the loss settling above the cure bar again is a finding, not silence: the
        spike detector may have reported this trouble already (held during the cooldown) and stay
        quiet about it."""
        i = relapse([w.level for w in windows], before, self._policy)
        if i is None:
            return
        high = windows[i - RELAPSE_WINDOWS + 1: i + 1]
        levels = ", ".join(f"{w.level:.4g}" for w in high)
        with self._transaction(s):  # the outcome and the finding (and its cut) together, as above
            ivs.mark_outcome(s, iv, f"cured, then relapsed: levels {levels} from step {high[0].first_step}")
            finding = Finding(
                kind=iv.finding, onset=high[0].first_step, step=high[-1].last_step, severity="error",
                message=(f"the loss settled above {self._policy.cure_ratio:g} x {self._words(before, iv)} again after "
                         f"intervention {iv.id} cured the run: levels {levels} from step {high[0].first_step}"),
                data={"level_before": iv.level_before, "level": high[-1].level, "after": iv.id})
            self._handle(s, finding, now, key=f"relapse:{iv.id}", note="relapsed after a cure: a further cut")

    @staticmethod
    def _words(reference: float, iv: InterventionInfo) -> str:
        """What the cure was judged against, for the event."""
        if reference == iv.level_before:
            return f"{reference:.4g} before the onset at step {iv.onset}"
        return f"{reference:.4g}, the loss of the checkpoint it rolled back to (higher than before the onset)"

    # ----------------------------------------------------------------- events
    def _event(self, s: Store, kind: str, severity: str, message: str, *, step: int | None = None,
               data: dict[str, Any] | None = None) -> None:
        assert self.run is not None
        step = self.run.step if step is None else step
        s.add_event(kind, severity, message, step=step, branch=self.run.branch, data=data, source=SOURCE)
        alert = Alert(run=self.name, path=str(self.run_dir), kind=kind, severity=severity, step=step, message=message,
                      time=time.time())
        self._lines.append((severity, f"{self.name} step {step} {kind}: {message}", alert))
        if not self._in_tx:
            self._flush_lines()

    @contextlib.contextmanager
    def _transaction(self, s: Store) -> Iterator[None]:
        """The store's transaction; the log lines of its events are written once it committed
        (never a line for an event that was rolled back)."""
        outer = not self._in_tx
        self._in_tx = True
        try:
            with s.transaction():
                yield
        except BaseException:
            if outer:
                self._lines.clear()
            raise
        finally:
            if outer:
                self._in_tx = False
        if outer:
            self._flush_lines()

    def _flush_lines(self) -> None:
        for level, line, alert in self._lines:
            self._log(level, line)
            if self._alert is not None:
                self._alert(alert)
        self._lines.clear()

