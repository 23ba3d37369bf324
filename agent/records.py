"""Typed rows of the store, as the agent, the CLI and (later) the daemon and TUI see them."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

RunStatus = Literal["created", "running", "paused", "stopped", "finished", "crashed"]
CheckpointStatus = Literal["writing", "ready", "failed", "corrupt", "deleted"]
CommandStatus = Literal["pending", "applied", "rejected"]
InterventionStatus = Literal["proposed", "issued", "applied", "rejected", "denied"]


class _Row(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)


class RunInfo(_Row):
    """The run's identity and live state (one row per store)."""

    name: str
    """Display name of the run (defaults to the folder's name)."""
    status: RunStatus
    """Lifecycle state as last written by the agent."""
    pid: int | None
    """Process id of the training process that last attached."""
    host: str | None
    """Host name of the training process that last attached."""
    created_at: float
    """Unix time the store was created."""
    started_at: float | None
    """Unix time the current (or last) training process attached."""
    heartbeat_at: float | None
    """Unix time of the agent's last sign of life."""
    ended_at: float | None
    """Unix time the training process closed, if it did."""
    step: int
    """Steps recorded on the current branch."""
    branch: int
    """Id of the branch the run is currently writing."""
    lr: float | None
    """Effective learning rate of parameter group 0 (schedule times multiplier)."""
    lr_multiplier: float
    """Operator's multiplier applied on top of the scheduler's learning rate."""
    last_loss: float | None
    """Mean training loss of the newest window (None if non-finite or none yet)."""
    config: dict[str, Any]
    """The agent configuration the run was attached with."""
    agent_version: str | None
    """trainwarden version of the agent that last attached."""


class BranchInfo(_Row):
    """A line of history: the root branch, or one forked by a rollback or restart."""

    id: int
    """Branch id; 0 is the root."""
    parent: int | None
    """Branch this one was forked from (None for the root)."""
    fork_step: int
    """Steps up to and including this one are inherited from the parent."""
    checkpoint_id: int | None
    """Checkpoint the branch started from, if any."""
    reason: str
    """Why the branch was started (rollback, resume after a crash, ...)."""
    created_at: float
    """Unix time the branch was started."""


class WindowInfo(_Row):
    """Summary and raw values of one window of consecutive training steps."""

    id: int
    """Row id, increasing in write order."""
    branch: int
    """Branch the steps belong to."""
    first_step: int
    """First step in the window."""
    last_step: int
    """Last step in the window (inclusive)."""
    count: int
    """Number of steps in the window."""
    mean: float | None
    """Mean of the finite losses (None when none was finite)."""
    min: float | None
    """Smallest finite loss."""
    max: float | None
    """Largest finite loss."""
    std: float | None
    """Standard deviation of the finite losses."""
    nonfinite: int
    """How many losses were NaN or infinite."""
    lr: float | None
    """Effective learning rate of group 0 at the end of the window."""
    steps_per_s: float | None
    """Training speed over the window."""
    losses: list[float]
    """Raw per-step losses, first_step to last_step."""
    time: float
    """Unix time the window closed."""


class MetricInfo(_Row):
    """A named scalar recorded at a step (validation loss and the like)."""

    id: int
    """Row id."""
    branch: int
    """Branch it was recorded on."""
    step: int
    """Step it was recorded at."""
    name: str
    """Metric name, e.g. val_loss."""
    value: float | None
    """Value (None when non-finite)."""
    time: float
    """Unix time it was recorded."""


class CheckpointInfo(_Row):
    """A checkpoint file and what is known about it."""

    id: int
    """Checkpoint id (used by `rollback`)."""
    step: int
    """Step the state was captured after."""
    branch: int
    """Branch the state belongs to."""
    loss: float | None
    """Mean training loss of the last window before the save (None if non-finite)."""
    kind: str
    """Why it was saved: best, last, manual, command, signal, final."""
    status: CheckpointStatus
    """writing, ready, failed, corrupt or deleted."""
    path: str
    """File name relative to the run folder."""
    bytes: int | None
    """File size once written."""
    checksum: str | None
    """Checksum of the file once written, as "algorithm:hex" (e.g. xxh3_128); a bare hex digest is sha256."""
    pinned: bool
    """Pinned checkpoints are never deleted by retention."""
    created_at: float
    """Unix time the snapshot was taken."""
    ready_at: float | None
    """Unix time the file was complete and verified on disk."""
    error: str | None
    """Why writing failed or why the file was found corrupt."""


class CommandInfo(_Row):
    """An instruction to the training process, and its acknowledgement."""

    id: int
    """Command id."""
    kind: str
    """pause, resume, set_lr, scale_lr, rollback, save or stop."""
    args: dict[str, Any]
    """Arguments, e.g. {"value": 0.001} for set_lr."""
    issuer: str
    """Who asked: user@host, or the supervisor."""
    status: CommandStatus
    """pending until the agent applies or rejects it."""
    result: str | None
    """What happened, or why it was rejected."""
    created_at: float
    """Unix time it was issued."""
    applied_at: float | None
    """Unix time the agent acknowledged it."""
    applied_step: int | None
    """Step boundary at which it was applied."""


class EventInfo(_Row):
    """Something worth telling an operator."""

    id: int
    """Event id, increasing."""
    time: float
    """Unix time."""
    step: int | None
    """Step it refers to."""
    branch: int | None
    """Branch it refers to."""
    kind: str
    """Short machine-readable kind, e.g. checkpoint_failed."""
    severity: Literal["info", "warning", "error"]
    """How much attention it needs."""
    source: str
    """Who wrote it: agent, cli, supervisor."""
    message: str
    """One readable line."""
    data: dict[str, Any]
    """Extra structured details."""


class InterventionInfo(_Row):
    """A decision of the supervisor to act on a finding: issued at once (auto) or proposed (ask)."""

    id: int
    """Intervention id (used by `approve` / `deny`)."""
    created_at: float
    """Unix time it was decided."""
    finding: str
    """Kind of the finding it treats (spike, nan, divergence, plateau, overfit; budget for the pause
    when the budget is spent)."""
    onset: int
    """Step where the trouble began."""
    step: int
    """Step where the trouble was seen."""
    branch: int
    """Branch the finding was seen on."""
    mode: str
    """auto (issued by the daemon), ask (proposed to an operator), or cure (a further cut after a
    remedy that did not cure)."""
    status: InterventionStatus
    """proposed, issued, applied, rejected or denied."""
    actions: list[dict[str, Any]]
    """The commands, as {"kind": ..., "args": {...}}."""
    commands: list[int]
    """Ids of the commands written for it, once issued."""
    reason: str
    """One line: what it does and why."""
    level_before: float | None
    """Loss level before the onset: the remedy is judged against it after the cooldown."""
    decided_by: str | None
    """Who approved or denied a proposal."""
    decided_at: float | None
    """When a proposal was approved or denied."""
    outcome: str | None
    """After the cooldown: cured, or not cured (and what followed)."""
