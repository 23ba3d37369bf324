"""What an operator does to a run, the same from the CLI and the TUI: read its liveness, write a
validated command signed with the operator's name, wait for the agent to acknowledge commands,
approve or deny a proposed intervention.

Everything goes through the run's store, so it works whether or not the daemon is running.
"""
from __future__ import annotations

import getpass
import os
import socket
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from trainwarden.agent.commands import CommandError, validate
from trainwarden.agent.records import CommandInfo, InterventionInfo, RunInfo
from trainwarden.agent.store import Store

from . import interventions
from .errors import UserError

LIVE = ("running", "paused")
ACK_POLL_S = 0.1
LIVENESS_CHECK_S = 1.0


class OperatorError(UserError, ValueError):
    """The operator's request cannot be carried out; the message says why in one line."""


def issuer() -> str:
    """Who is acting: `user@host`, recorded as the command's issuer."""
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry and no $USER (a container): the uid still names them
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def liveness(info: RunInfo, now: float | None = None) -> str:
    """The run's status as an operator should read it: a run marked running whose process is
    gone is shown as crashed, and one whose heartbeat stopped as stale."""
    if info.status not in LIVE:
        return info.status
    now = time.time() if now is None else now
    if info.pid is not None and info.host == socket.gethostname():
        try:
            os.kill(info.pid, 0)
        except ProcessLookupError:
            return "crashed"
        except PermissionError:
            pass
    beat = float(info.config.get("heartbeat_interval_s", 2.0))
    if info.status == "running" and info.heartbeat_at is not None and now - info.heartbeat_at > max(10.0, 5 * beat):
        return "stale"
    return info.status


def send_command(s: Store, kind: str, args: dict[str, Any], who: str) -> int:
    """Validate a command as the agent will, check a rollback target exists and is ready, and
    queue it; returns the command id."""
    try:
        args = validate(kind, args)
    except CommandError as exc:
        raise OperatorError(str(exc)) from None
    target = args.get("target")
    if kind == "rollback" and isinstance(target, int):
        ckpt = s.checkpoint(target)
        if ckpt is None:
            raise OperatorError(f"checkpoint {target} does not exist in {s.run().name}")
        if ckpt.status != "ready":
            raise OperatorError(f"checkpoint {ckpt.id} is not ready (status {ckpt.status})")
    return s.add_command(kind, args, who)


class Acks(BaseModel):
    """How waiting for the agent's acknowledgement of some commands ended."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    outcome: Literal["acknowledged", "not_live", "ended", "timeout"]
    """acknowledged: every command was applied or rejected; not_live: the run was not live, so no
    waiting at all; ended: the run stopped being live while waiting; timeout: the time ran out."""
    state: str
    """The run's liveness when the wait ended (see `liveness`)."""
    commands: list[CommandInfo] = []
    """The acknowledged commands, in the order asked for (only when acknowledged)."""


def wait_for_acks(s: Store, info: RunInfo, command_ids: list[int], timeout: float) -> Acks:
    """Wait until the agent has acknowledged every command, the run is no longer live, or `timeout`
    seconds have passed. Commands left pending stay queued: a relaunched run applies them."""
    state = liveness(info)
    if state not in LIVE:
        return Acks(outcome="not_live", state=state)
    deadline = time.monotonic() + timeout
    next_check = time.monotonic() + LIVENESS_CHECK_S
    while time.monotonic() < deadline:
        cmds = [s.command(i) for i in command_ids]
        if all(c is not None and c.status != "pending" for c in cmds):
            return Acks(outcome="acknowledged", state=state, commands=[c for c in cmds if c is not None])
        if time.monotonic() >= next_check:  # the process may end while we wait: say so now
            next_check += LIVENESS_CHECK_S
            state = liveness(s.run())
            if state not in ("running", "paused", "stale"):
                return Acks(outcome="ended", state=state)
        time.sleep(ACK_POLL_S)
    return Acks(outcome="timeout", state=state)


def decide_proposal(s: Store, intervention_id: int, approve: bool, who: str, source: str) -> tuple[InterventionInfo, list[int]]:
    """Approve (write its commands) or deny a proposal, with an event saying who did it.

    Returns the intervention and the ids of the commands written (none for a denial).
    """
    info = s.run()
    iv = s.intervention(intervention_id)
    if iv is None:
        raise OperatorError(f"{info.name} has no intervention {intervention_id}")
    verb = "approved" if approve else "denied"
    with s.transaction():
        if approve:
            ids = interventions.issue(s, iv.id, iv.actions, who, pin=False)
        else:
            ids = [] if interventions.deny(s, iv.id) else None
        if ids is None:  # someone (the daemon's budget, another operator) decided it first
            current = s.intervention(iv.id)
            raise OperatorError(f"intervention {iv.id} is {current.status if current else 'gone'}, not a pending proposal")
        interventions.note_decision(s, iv.id, who)
        s.add_event(f"proposal_{verb}", "info", f"proposal {iv.id} {verb} by {who}: {iv.reason}",
                    step=info.step, branch=info.branch, data={"intervention": iv.id, "commands": ids}, source=source)
    return iv, ids

