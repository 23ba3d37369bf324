"""The policy: what the supervisor does about each finding. A pydantic model read from TOML (the
daemon's --policy file, then a run's own warden.toml on top), and pure decision functions that
turn a finding and a run's intervention record into actions. No I/O here beyond reading the file.
"""
from __future__ import annotations

import math
import statistics
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .alerts import AlertSettings
from .detectors import REBOUND_KINDS, DetectorSettings, Finding
from .errors import UserError

Mode = Literal["observe", "ask", "auto"]
RUN_POLICY_FILE = "warden.toml"


class PolicyError(UserError, ValueError):
    """A policy file is missing, not TOML, or names a bad field; the message says which in one line."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Modes(_Model):
    """Per finding kind: observe (event only), ask (a proposal an operator approves) or auto (act)."""

    spike: Mode = "auto"
    """A sharp rebound: roll back before it, lower the LR, carry on."""
    nan: Mode = "auto"
    """A non-finite loss: the same remedy as a spike."""
    divergence: Mode = "auto"
    """A sustained rise: the same remedy as a spike."""
    plateau: Mode = "observe"
    """No improvement for a long while; ask/auto scale the LR by `plateau_lr_scale`."""
    overfit: Mode = "observe"
    """Validation rising while training falls; ask/auto stop the run (its best checkpoint stays)."""
    stalled_saves: Literal["observe"] = "observe"
    """No new checkpoint for too long: an event for a person (nothing to command)."""
    hung: Literal["observe"] = "observe"
    """No heartbeat: an event; `trainwarden run` restarts hung jobs it launched."""


class Policy(_Model):
    """How the supervisor reacts to findings. Every field has a default that suits a single-GPU run."""

    modes: Modes = Field(default_factory=Modes)
    """Action mode per finding kind."""
    rollback: bool = True
    """Rebound remedy: roll back to the best ready checkpoint from before the onset."""
    rollback_margin_steps: int = Field(50, ge=0)
    """The checkpoint rolled back to must be at least this many steps before the onset (the onset
    is an estimate; a margin keeps the trouble's first steps out of the restored state)."""
    lr_scale: float = Field(0.5, gt=0.0, le=1.0)
    """Rebound remedy: multiply the learning rate by this (1.0 keeps it)."""
    plateau_lr_scale: float = Field(0.5, gt=0.0, le=1.0)
    """Plateau remedy when its mode is ask or auto."""
    cooldown_steps: int = Field(200, ge=0)
    """Steps after an intervention during which new rebound findings are recorded but not acted on;
    at its end the remedy is judged (cured or a further cut)."""
    cure_ratio: float = Field(1.25, ge=1.0)
    """Cured when, after the cooldown, the loss level is at most this multiple of its level before
    the onset (or of the rolled-back-to checkpoint's loss, if higher); otherwise a further cut
    follows (rollback again, LR scaled again). After a cure, three windows in a row above that bar
    are a relapse and a further cut."""
    max_interventions: int = Field(6, ge=1)
    """Interventions per run; the next one pauses the run and asks for a person instead."""
    act_within_s: float = Field(300.0, gt=0.0)
    """A finding in data written more than this many seconds before the daemon read it (a daemon
    that was down, say) is recorded but not acted on: the run has moved on. In seconds, not steps:
    a fast run makes hundreds of steps between two ticks of the daemon."""
    detect: DetectorSettings = Field(default_factory=DetectorSettings)
    """Detector thresholds."""
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    """Where to send the supervisor's events (webhook, local command); off unless set. Read from
    the daemon's policy only: a run's warden.toml cannot redirect alerts."""

    @field_validator("lr_scale", "plateau_lr_scale", "cure_ratio", "act_within_s")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @model_validator(mode="after")
    def _sane(self) -> "Policy":
        if self.max_interventions < 1:
            raise ValueError("max_interventions must be at least 1")
        return self

    def mode(self, kind: str) -> Mode:
        return getattr(self.modes, kind)


# ------------------------------------------------------------------ loading
def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise PolicyError(f"{path}: no such policy file") from None
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path}: not valid TOML: {exc}") from None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _validate(data: dict[str, Any], source: str) -> Policy:
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        given = f", got {err['input']!r}" if "input" in err and not isinstance(err["input"], dict) else ""
        raise PolicyError(f"{source}: {where}: {err['msg']}{given}{more}") from None


def load_policy(path: str | Path | None = None) -> Policy:
    """The policy in a TOML file (defaults when None); PolicyError names the file and the field."""
    if path is None:
        return Policy()
    path = Path(path)
    return _validate(_read_toml(path), str(path))


def with_run_overrides(base: Policy, run_dir: str | Path) -> Policy:
    """`base` with the run's own warden.toml on top (if it has one)."""
    path = Path(run_dir) / RUN_POLICY_FILE
    if not path.exists():
        return base
    own = _read_toml(path)
    if "alerts" in own:  # whoever can write a run folder must not be able to send the lab's alerts elsewhere
        raise PolicyError(f"{path}: alerts: set in the daemon's policy only, not per run")
    return _validate(_merge(base.model_dump(), own), str(path))


# ----------------------------------------------------------------- decisions
class CheckpointChoice(BaseModel):
    """A ready checkpoint of the run's current history, as the decision needs it."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    id: int
    """Checkpoint id."""
    step: int
    """Step it was taken after."""
    loss: float | None
    """Its windowed training loss (None if unknown)."""


class Action(BaseModel):
    """One command to write into the run's store."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    kind: Literal["rollback", "scale_lr", "resume", "pause", "stop"]
    """Command kind, as the agent knows it."""
    args: dict[str, Any] = Field(default_factory=dict)
    """Command arguments."""


class RunRecord(BaseModel):
    """What the decision needs to know of the run and of earlier interventions."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    step: int
    """The run's current step."""
    status: str
    """The run's status."""
    interventions: int
    """Interventions issued so far (proposals approved included)."""
    cooldown_until: int | None
    """Step before which rebound findings are not acted on (after the last intervention)."""
    waiting_for: int | None = None
    """An intervention still proposed or not yet applied: nothing new is decided until it is."""
    budget_exhausted: bool = False
    """The run was already paused for having used its budget."""
    checkpoints: list[CheckpointChoice] = Field(default_factory=list)
    """Ready checkpoints of the current history."""


class Decision(BaseModel):
    """What to do about a finding: nothing but an event, a proposal, or commands."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    mode: Literal["observe", "ask", "auto", "held", "budget"]
    """observe: event only; ask: proposal; auto: act; held: would act but may not now (cooldown,
    stale finding); budget: the budget is spent, the run is paused for a person."""
    actions: list[Action] = Field(default_factory=list)
    """Commands to write (for ask: the proposed ones)."""
    reason: str
    """One line for the event."""


def rollback_target(checkpoints: Sequence[CheckpointChoice], onset: int, margin: int) -> CheckpointChoice | None:
    """The best (lowest loss, then newest) checkpoint at least `margin` steps before `onset`."""
    before = [c for c in checkpoints if c.step <= onset - margin]
    if not before:
        return None
    return min(before, key=lambda c: (math.inf if c.loss is None or not math.isfinite(c.loss) else c.loss, -c.step))


def remedy(finding_kind: str, onset: int, policy: Policy, record: RunRecord) -> tuple[list[Action], str]:
    """The commands that treat a finding, and a line saying what they do."""
    if finding_kind == "plateau":
        return [Action(kind="scale_lr", args={"factor": policy.plateau_lr_scale})], f"scale the LR by {policy.plateau_lr_scale:g}"
    if finding_kind == "overfit":
        return [Action(kind="stop")], "stop the run (its best checkpoint is kept)"
    actions: list[Action] = []
    words: list[str] = []
    if policy.rollback:
        target = rollback_target(record.checkpoints, onset, policy.rollback_margin_steps)
        if target is not None:
            actions.append(Action(kind="rollback", args={"target": target.id}))
            words.append(f"roll back to checkpoint {target.id} (step {target.step})")
        else:
            words.append(f"no ready checkpoint {policy.rollback_margin_steps} steps before step {onset} to roll back to")
    if policy.lr_scale != 1.0:
        actions.append(Action(kind="scale_lr", args={"factor": policy.lr_scale}))
        words.append(f"scale the LR by {policy.lr_scale:g}")
    if record.status == "paused":
        actions.append(Action(kind="resume"))
        words.append("resume")
    return actions, ", ".join(words)


def decide(finding: Finding, policy: Policy, record: RunRecord, age_s: float = 0.0) -> Decision:
    """What to do about a finding whose data was written `age_s` seconds before it was seen."""
    mode = policy.mode(finding.kind)
    if mode == "observe":
        return Decision(mode="observe", reason="observed (policy: observe)")
    if record.status not in ("running", "paused"):
        return Decision(mode="held", reason=f"not acted on: the run is {record.status}")
    if age_s > policy.act_within_s:
        return Decision(mode="held", reason=f"not acted on: seen {age_s:.0f}s after it was recorded (act_within_s {policy.act_within_s:g})")
    if record.waiting_for is not None:
        return Decision(mode="held", reason=f"not acted on: intervention {record.waiting_for} is still pending")
    if finding.kind in REBOUND_KINDS and record.cooldown_until is not None and finding.step < record.cooldown_until:
        return Decision(mode="held", reason=f"not acted on: cooling down after an intervention until step {record.cooldown_until}")
    if record.budget_exhausted:
        return Decision(mode="held", reason="not acted on: the run waits for a person (intervention budget spent)")
    if record.interventions >= policy.max_interventions:
        return Decision(mode="budget", actions=[Action(kind="pause")],
                        reason=(f"{record.interventions} interventions used (max_interventions {policy.max_interventions}): "
                                "pausing the run for a person to look at it"))
    actions, words = remedy(finding.kind, finding.onset, policy, record)
    if not actions:
        return Decision(mode="held", reason=f"nothing to do: {words}")
    return Decision(mode=mode, actions=actions, reason=words)


def cure_reference(level_before: float, restored_loss: float | None) -> float:
    """The level a remedy must bring the loss back near: the level before the onset, or the loss of
    the checkpoint it rolled back to when that is higher.

    A rollback restarts from a checkpoint taken `rollback_margin_steps` or more before the onset,
    often at a higher loss than the run had reached just before it; with the LR cut, the run can
    need far longer than the cooldown to come back below its pre-onset level. Judging against that
    level alone made each further cut slow the run more (and so fail the next judgement), until the
    budget was spent and a healthy run was paused.
    """
    if restored_loss is None or not math.isfinite(restored_loss):
        return level_before
    return max(level_before, restored_loss)


def cured(level_now: float, reference: float, policy: Policy) -> bool:
    """Whether the loss is back near where it was before the trouble (levels are loss values;
    `reference` from `cure_reference`)."""
    return level_now <= reference * policy.cure_ratio


CURE_WINDOWS = 3
"""Full windows past the cooldown that a remedy is judged on. The median of three window levels
ignores one wild window (a median of two is moved half-way by it), and three windows still give
the verdict soon after the cooldown."""

RELAPSE_WINDOWS = 3
"""Consecutive full windows above the cure bar, after a cure, that make a relapse: one high window
is noise, three in a row are a level."""


def window_level(losses: Sequence[float]) -> float:
    """A window's loss level: the median of its steps, which a few wild minibatches cannot move.
    A non-finite loss counts as infinitely high (NaN would make the median meaningless)."""
    values = [v if math.isfinite(v) else math.inf for v in losses]
    return statistics.median(values) if values else math.inf


def cure_verdict(levels: Sequence[float], reference: float, policy: Policy) -> tuple[bool, float] | None:
    """(cured, level) of a remedy, from the levels of the full windows of its own history past the
    onset and the cooldown, in step order; None until there are `CURE_WINDOWS` of them.

    Only the first `CURE_WINDOWS` count, whenever the supervisor looks: the verdict depends on the
    run, not on how far it got before the daemon's next tick."""
    if len(levels) < CURE_WINDOWS:
        return None
    level = statistics.median(levels[:CURE_WINDOWS])
    return cured(level, reference, policy), level


def relapse(levels: Sequence[float], reference: float, policy: Policy) -> int | None:
    """After a cure: the index of the window that completes the first run of `RELAPSE_WINDOWS`
    consecutive levels above the cure bar (the loss settled high again), None while there is none.
    `levels` are those of the full windows after the ones the cure was judged on, in step order."""
    run = 0
    for i, level in enumerate(levels):
        run = run + 1 if not cured(level, reference, policy) else 0
        if run == RELAPSE_WINDOWS:
            return i
    return None


def policy_summary(policy: Policy) -> str:
    modes = ", ".join(f"{k}={v}" for k, v in policy.modes.model_dump().items())
    a = policy.alerts
    to = [f"webhook ({a.format})" if a.webhook else "", "command" if a.command else ""]
    alerts = f"; alerts ({'/'.join(a.severities)}) to {' and '.join(t for t in to if t)}" if a.enabled else ""
    return (f"{modes}; lr_scale {policy.lr_scale:g}, cooldown {policy.cooldown_steps} steps, "
            f"max {policy.max_interventions} interventions{alerts}")
