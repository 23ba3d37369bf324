"""The verbs that steer a run: pause, resume, save, stop, lr, rollback, approve, deny. Each writes
validated commands into the run's store (through operator.py, as the TUI does), then waits for the
agent's acknowledgement unless told not to."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from trainwarden.agent.commands import positive_finite, rollback_target
from trainwarden.agent.records import RunInfo
from trainwarden.agent.store import Store

from ..display import fmt
from ..operator import OperatorError, decide_proposal, issuer, send_command, wait_for_acks
from .common import EXIT_NOT_ACKED, EXIT_OK, EXIT_REJECTED, CliError, check_timeout, open_store


def _send(args: argparse.Namespace, kind: str, cmd_args: dict[str, Any]) -> int:
    """Write a command, then wait for the agent's acknowledgement unless told not to."""
    check_timeout(args.timeout)
    with open_store(args.run) as s:
        info = s.run()
        try:
            command_id = send_command(s, kind, cmd_args, issuer())
        except OperatorError as exc:
            raise CliError(f"{exc}; see `trainwarden checkpoints`" if kind == "rollback" else str(exc)) from None
        print(f"command {command_id}: {kind} {json.dumps(cmd_args) if cmd_args else ''}".rstrip())
        return EXIT_OK if args.no_wait else _wait(s, info, [command_id], args.timeout)


def _wait(s: Store, info: RunInfo, command_ids: list[int], timeout: float) -> int:
    """Wait for the agent to acknowledge every command; print each result."""
    acks = wait_for_acks(s, info, command_ids, timeout)
    queued = ", ".join(map(str, command_ids))
    if acks.outcome == "acknowledged":
        for c in acks.commands:
            print(f"{c.status}: {c.result}" if len(acks.commands) == 1 else f"{c.kind} {c.status}: {c.result}")
        return EXIT_OK if all(c.status == "applied" for c in acks.commands) else EXIT_REJECTED
    if acks.outcome == "not_live":
        print(f"queued: {info.name} is {acks.state}; the command will be applied when training attaches again",
              file=sys.stderr)
    elif acks.outcome == "ended":
        print(f"not acknowledged: {info.name} is {acks.state} now; the command stays queued "
              f"(id {queued}) and is applied when training attaches again", file=sys.stderr)
    else:
        print(f"not acknowledged within {timeout:g}s; the command stays queued (id {queued})", file=sys.stderr)
    return EXIT_NOT_ACKED


def cmd_simple(args: argparse.Namespace) -> int:
    return _send(args, args.verb, {})


def cmd_lr(args: argparse.Namespace) -> int:
    if args.value is not None and args.scale is not None:
        raise CliError("give either a learning rate or --scale, not both")
    if args.value is not None:
        return _send(args, "set_lr", {"value": positive_finite(args.value, "learning rate")})
    if args.scale is not None:
        return _send(args, "scale_lr", {"factor": positive_finite(args.scale, "LR scale factor")})
    with open_store(args.run) as s:
        info = s.run()
    print(f"lr {fmt(info.lr, '.6g')} (multiplier {info.lr_multiplier:.6g})")
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace) -> int:
    chosen = [t for t in (args.checkpoint, "best" if args.best else None, "last" if args.last else None) if t]
    if len(chosen) > 1:
        raise CliError("give one of CHECKPOINT, --best or --last")
    return _send(args, "rollback", {"target": rollback_target(chosen[0] if chosen else "best")})


def _decide(args: argparse.Namespace, approve: bool) -> int:
    """Approve (write its commands) or deny a proposal; works with the daemon down."""
    check_timeout(args.timeout)
    with open_store(args.run) as s:
        info = s.run()
        try:
            iv, ids = decide_proposal(s, args.id, approve, issuer(), source="cli")
        except OperatorError as exc:
            if s.intervention(args.id) is None:
                raise CliError(f"{exc} (see `trainwarden events {args.run}`)") from None
            print(f"trainwarden: {exc}", file=sys.stderr)  # decided already: refused (exit 1), not bad input
            return EXIT_REJECTED
        print(f"proposal {iv.id} {'approved' if approve else 'denied'}: {iv.reason}")
        if not approve or args.no_wait:
            return EXIT_OK
        return _wait(s, info, ids, args.timeout)


def cmd_approve(args: argparse.Namespace) -> int:
    return _decide(args, approve=True)


def cmd_deny(args: argparse.Namespace) -> int:
    return _decide(args, approve=False)
