"""An intervention's lifecycle, the supervisor's side of it (the rows live in the store's
`interventions` table, agent/store.py):

    proposed --(the daemon acts, or an operator approves)--> issued --(the agent acknowledges
    every command)--> applied | rejected;   proposed --(an operator denies)--> denied

and what an applied remedy means afterwards: the budget it used, the cooldown it starts, the pin on
its rollback target, the branch it was applied on, and its outcome (cured, not cured, relapsed).
The daemon (watch.py) and the operator's verbs (operator.py: the CLI and the TUI) both go through
these functions. Each reads or writes through one Store; the caller holds the transaction.
"""
from __future__ import annotations

import time
from typing import Any

from trainwarden.agent.records import InterventionInfo, RunInfo
from trainwarden.agent.store import Store, in_lineage

from .detectors import REBOUND_KINDS, Finding
from .policy import CheckpointChoice, RunRecord

COUNTED = ("issued", "applied", "rejected")  # statuses of interventions that used the budget
REMEDY_MODES = ("auto", "ask", "cure")
CURED = "cured"  # an intervention's outcome; any other outcome closes its follow-up
BUDGET = "budget"  # the finding of the intervention that pauses a run whose budget is spent


# ------------------------------------------------------------------ states
def propose(s: Store, finding: str, onset: int, step: int, branch: int, mode: str, actions: list[dict[str, Any]],
            reason: str, level_before: float | None) -> int:
    """A new intervention in the `proposed` state; returns its id."""
    return s.add_intervention(finding, onset, step, branch, mode, "proposed", actions, reason, level_before)


def issue(s: Store, intervention_id: int, actions: list[dict[str, Any]], issuer: str, *, pin: bool) -> list[int] | None:
    """Write a proposed intervention's commands and mark it `issued`; the command ids, or None when
    it is no longer proposed (someone else decided first). `pin`: keep its rollback targets safe
    from the agent's retention (the daemon's chains of cuts may need them again)."""
    if pin:
        for a in actions:
            if a["kind"] == "rollback":
                s.set_pinned(a["args"]["target"], True)
    return s.issue_intervention(intervention_id, actions, issuer, "proposed")


def deny(s: Store, intervention_id: int) -> bool:
    """Mark a proposed intervention `denied`; False when it is not a pending proposal any more."""
    iv = s.intervention(intervention_id)
    if iv is None or iv.status != "proposed":
        return False
    s.update_intervention(intervention_id, status="denied")
    return True


def note_decision(s: Store, intervention_id: int, who: str) -> None:
    """Record who approved or denied a proposal, and when."""
    s.update_intervention(intervention_id, decided_by=who, decided_at=time.time())


def reject_unread(s: Store, iv: InterventionInfo, run: RunInfo) -> None:
    """Close the pending commands of an issued intervention as rejected: the run ended (finished or
    stopped) before reading them, and they would wait forever."""
    for c in (s.command(i) for i in iv.commands):
        if c is not None and c.status == "pending":
            s.ack_command(c.id, "rejected", f"not applied: the run {run.status} at step {run.step} first", run.step)


def acknowledged(s: Store, iv: InterventionInfo) -> tuple[bool, str] | None:
    """Whether every command of an issued intervention was applied, and their results in one line,
    once the agent has acknowledged them all; None while one is still pending."""
    cmds = [s.command(i) for i in iv.commands]
    if any(c is None or c.status == "pending" for c in cmds):
        return None
    ok = all(c.status == "applied" for c in cmds if c is not None)
    return ok, "; ".join(f"{c.kind}: {c.result}" for c in cmds if c is not None)


def close(s: Store, iv: InterventionInfo, applied: bool) -> None:
    """Mark an acknowledged intervention `applied` (every command applied) or `rejected`."""
    s.update_intervention(iv.id, status="applied" if applied else "rejected")


# ---------------------------------------------------------- budget, cooldown
def applied_step(s: Store, iv: InterventionInfo) -> int:
    """The step at which the agent applied the intervention's commands (its own step if unknown)."""
    steps = [c.applied_step for c in (s.command(i) for i in iv.commands) if c is not None and c.applied_step is not None]
    return max(steps) if steps else iv.step


def run_record(s: Store, run: RunInfo, interventions: list[InterventionInfo], cooldown_steps: int) -> RunRecord:
    """What the policy's decision needs of the run: the interventions counted against the budget
    (since the last budget pause), the one still pending, the cooldown after the last applied
    remedy, and the ready checkpoints of the current history."""
    last_budget = max((iv.id for iv in interventions if iv.finding == BUDGET), default=0)
    since = [iv for iv in interventions if iv.id > last_budget]
    counted = sum(1 for iv in since if iv.mode in REMEDY_MODES and iv.status in COUNTED)
    waiting = next((iv.id for iv in since if iv.status in ("proposed", "issued")), None)
    cooldown = None
    applied = [iv for iv in since if iv.status == "applied" and iv.mode in REMEDY_MODES]
    if applied:
        cooldown = applied_step(s, applied[-1]) + cooldown_steps
    segments = s.lineage(run.branch)
    ready = [c for c in s.checkpoints(["ready"]) if in_lineage(c, segments)]
    return RunRecord(
        step=run.step, status=run.status, interventions=counted, cooldown_until=cooldown,
        waiting_for=waiting, budget_exhausted=bool(last_budget) and not since and run.status == "paused",
        checkpoints=[CheckpointChoice(id=c.id, step=c.step, loss=c.loss) for c in ready])


def rebound_again(f: Finding, interventions: list[InterventionInfo], window: int) -> str:
    """A note when a rebound's onset is near an earlier rebound intervention's: a further cut."""
    if f.kind not in REBOUND_KINDS:
        return ""
    for iv in reversed(interventions):
        if iv.finding in REBOUND_KINDS and abs(iv.onset - f.onset) <= 4 * window:
            return f"rebounded again near intervention {iv.id}'s onset: a further cut"
    return ""


# ---------------------------------------------------------------- the cure
def remedies(interventions: list[InterventionInfo]) -> list[InterventionInfo]:
    """The applied remedies of rebounds, oldest first: the chain of cuts whose newest is judged."""
    return [iv for iv in interventions
            if iv.status == "applied" and iv.mode in REMEDY_MODES and iv.finding in REBOUND_KINDS]


def remedy_branch(s: Store, iv: InterventionInfo) -> int:
    """The branch the intervention's commands were applied on: the one its rollback started. The
    agent acknowledges a command together with an event that names its command and branch."""
    ids = set(iv.commands)
    acks = [e.branch for e in s.events() if e.source == "agent" and e.data.get("command") in ids]
    # No such event: commands that write none (a lone resume) changed no branch.
    return next((b for b in reversed(acks) if b is not None), iv.branch)


def restored_loss(s: Store, iv: InterventionInfo) -> float | None:
    """The loss of the checkpoint the intervention rolled back to (None without a rollback)."""
    for a in iv.actions:
        if a["kind"] == "rollback":
            ckpt = s.checkpoint(a["args"]["target"])
            return None if ckpt is None else ckpt.loss
    return None


def mark_cured(s: Store, chain: list[InterventionInfo]) -> None:
    """The newest remedy of the chain cured the run: the chain of cuts is over, so its rollback
    targets need no pin any more."""
    s.update_intervention(chain[-1].id, outcome=CURED)
    for done in chain:
        for a in done.actions:
            if a["kind"] == "rollback":
                s.set_pinned(a["args"]["target"], False)


def mark_outcome(s: Store, iv: InterventionInfo, outcome: str) -> None:
    """Close the remedy's follow-up with an outcome other than cured (not cured, relapsed)."""
    s.update_intervention(iv.id, outcome=outcome)
