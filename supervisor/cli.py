"""The `trainwarden` command line: look at runs and steer them through their stores.

Exit codes: 0 done, 1 the agent rejected the command, 2 bad input or an unreadable store,
3 the command was queued but not acknowledged (the run is not live, or the timeout passed).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from trainwarden.agent.commands import CommandError, positive_finite, rollback_target
from trainwarden.agent.records import CheckpointInfo, RunInfo
from trainwarden.agent.store import Store, StoreError

from .daemon import find_runs
from .operator import LIVE, OperatorError, decide_proposal, issuer, liveness, send_command

ENV_ROOT = "TRAINWARDEN_ROOT"
EXIT_OK, EXIT_REJECTED, EXIT_BAD_INPUT, EXIT_NOT_ACKED = 0, 1, 2, 3


class CliError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


# ------------------------------------------------------------------- helpers
def default_root() -> Path:
    return Path(os.environ.get(ENV_ROOT, "runs"))


def resolve_run(text: str) -> Path:
    """A run given as a folder path, or as a name under the default root."""
    path = Path(text)
    if not path.exists() and not path.is_absolute() and (default_root() / text).exists():
        path = default_root() / text
    return path


def open_store(text: str) -> Store:
    try:
        return Store.open(resolve_run(text))
    except StoreError as exc:
        raise CliError(str(exc)) from None


def age(seconds_ago: float | None) -> str:
    if seconds_ago is None:
        return "-"
    s = max(0.0, seconds_ago)
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    if s < 172800:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"


def fmt(value: float | None, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


def size(nbytes: int | None) -> str:
    if nbytes is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1024 or unit == "GB":
            return f"{nbytes:.0f}{unit}" if unit == "B" else f"{nbytes:.1f}{unit}"
        nbytes /= 1024
    return "-"


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [list(map(str, header))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def newest_ready(ckpts: list[CheckpointInfo]) -> CheckpointInfo | None:
    ready = [c for c in ckpts if c.status == "ready"]
    return max(ready, key=lambda c: c.ready_at or 0.0) if ready else None


# ------------------------------------------------------------------ commands
def cmd_ls(args: argparse.Namespace) -> int:
    root = Path(args.root) if args.root else default_root()
    if not root.is_dir():
        raise CliError(f"{root}: no such folder")
    rows = []
    now = time.time()
    for path in find_runs(root):
        try:
            with Store.open(path) as s:
                info = s.run()
                latest = newest_ready(s.checkpoints(["ready"]))
        except (StoreError, sqlite3.Error) as exc:
            rows.append([path.name, "unreadable", "-", "-", "-", "-", "-", str(path)])
            print(f"trainwarden: warning: {path}: {exc}", file=sys.stderr)
            continue
        rows.append([
            info.name, liveness(info, now), info.step, fmt(info.last_loss), fmt(info.lr, ".3g"),
            age(now - latest.ready_at) if latest and latest.ready_at else "-",
            age(now - info.heartbeat_at) if info.heartbeat_at else "-", str(path),
        ])
    if not rows:
        print(f"no runs under {root}")
        return EXIT_OK
    print(table(rows, ["NAME", "STATUS", "STEP", "LOSS", "LR", "CKPT AGE", "HEARTBEAT", "PATH"]))
    return EXIT_OK


def _checkpoint_rows(ckpts: list[CheckpointInfo], now: float) -> list[list[Any]]:
    return [[c.id, c.step, c.branch, fmt(c.loss), c.kind, c.status, size(c.bytes),
             age(now - c.created_at), c.error or ""] for c in ckpts]


_CKPT_HEADER = ["ID", "STEP", "BRANCH", "LOSS", "KIND", "STATUS", "SIZE", "AGE", "NOTE"]


def cmd_show(args: argparse.Namespace) -> int:
    with open_store(args.run) as s:
        info = s.run()
        windows = s.windows(newest=True, limit=args.windows)
        ckpts = s.checkpoints()
        branches = s.branches()
        pending = s.commands(status="pending")
        recent = s.commands()[-5:]
    if args.json:
        print(json.dumps({
            "run": info.model_dump() | {"liveness": liveness(info)},
            "windows": [w.model_dump(exclude={"losses"}) for w in windows],
            "checkpoints": [c.model_dump() for c in ckpts],
            "branches": [b.model_dump() for b in branches],
            "pending_commands": [c.model_dump() for c in pending],
        }, indent=2))
        return EXIT_OK
    now = time.time()
    print(f"run      {info.name}  ({resolve_run(args.run)})")
    print(f"status   {liveness(info, now)}   pid {info.pid} on {info.host}   heartbeat {age(now - info.heartbeat_at) if info.heartbeat_at else '-'} ago")
    print(f"step     {info.step}   branch {info.branch}   loss {fmt(info.last_loss)}")
    print(f"lr       {fmt(info.lr, '.4g')}   multiplier {info.lr_multiplier:.4g}")
    print("\nlast windows")
    print(table([[w.branch, f"{w.first_step}-{w.last_step}", fmt(w.mean), fmt(w.min), fmt(w.max), w.nonfinite,
                  fmt(w.lr, '.3g'), fmt(w.steps_per_s, '.1f')] for w in windows],
                ["BRANCH", "STEPS", "MEAN", "MIN", "MAX", "NON-FINITE", "LR", "STEPS/S"]))
    print("\ncheckpoints")
    shown = [c for c in ckpts if c.status != "deleted"]
    print(table(_checkpoint_rows(shown, now), _CKPT_HEADER) if shown else "(none)")
    print("\nbranches")
    print(table([[b.id, "-" if b.parent is None else b.parent, b.fork_step, b.reason] for b in branches],
                ["ID", "PARENT", "FORK STEP", "REASON"]))
    print("\ncommands (pending first, then the latest)")
    cmds = pending + [c for c in recent if c.status != "pending"]
    print(table([[c.id, c.kind, json.dumps(c.args) if c.args else "", c.status, c.result or "", c.issuer] for c in cmds],
                ["ID", "KIND", "ARGS", "STATUS", "RESULT", "ISSUER"]) if cmds else "(none)")
    return EXIT_OK


def cmd_checkpoints(args: argparse.Namespace) -> int:
    with open_store(args.run) as s:
        ckpts = s.checkpoints()
    if not args.all:
        ckpts = [c for c in ckpts if c.status != "deleted"]
    if args.json:
        print(json.dumps([c.model_dump() for c in ckpts], indent=2))
    else:
        print(table(_checkpoint_rows(ckpts, time.time()), _CKPT_HEADER) if ckpts else "no checkpoints")
    return EXIT_OK


def cmd_history(args: argparse.Namespace) -> int:
    with open_store(args.run) as s:
        if args.csv:
            out = csv.writer(sys.stdout, lineterminator="\n")
            out.writerow(["step", "branch", "train_loss"])
            for step, branch, loss in s.history():
                out.writerow([step, branch, repr(loss)])
            return EXIT_OK
        branches = s.branches()
        spans = {b.id: (b.fork_step, s.max_step(b.id)) for b in branches}
        current = s.run().branch
    print(table([[b.id, "-" if b.parent is None else b.parent, f"{spans[b.id][0] + 1}-{spans[b.id][1]}",
                  "current" if b.id == current else "", b.reason] for b in branches],
                ["BRANCH", "PARENT", "STEPS", "", "REASON"]))
    print("\n(use --csv for every recorded step: step,branch,train_loss)")
    return EXIT_OK


def cmd_events(args: argparse.Namespace) -> int:
    with open_store(args.run) as s:
        events = s.events(limit=args.limit)
    if args.json:
        for e in events:
            print(json.dumps(e.model_dump()))
        return EXIT_OK
    for e in events:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.time))
        print(f"{stamp}  {e.severity:7s} {e.kind:18s} step {e.step if e.step is not None else '-':>7}  {e.message}")
    return EXIT_OK


def _send(args: argparse.Namespace, kind: str, cmd_args: dict[str, Any]) -> int:
    """Write a command, then wait for the agent's acknowledgement unless told not to."""
    _check_timeout(args)
    with open_store(args.run) as s:
        info = s.run()
        try:
            command_id = send_command(s, kind, cmd_args, issuer())
        except OperatorError as exc:
            raise CliError(f"{exc}; see `trainwarden checkpoints`" if kind == "rollback" else str(exc)) from None
        print(f"command {command_id}: {kind} {json.dumps(cmd_args) if cmd_args else ''}".rstrip())
        return EXIT_OK if args.no_wait else _wait(s, info, [command_id], args.timeout)


def _check_timeout(args: argparse.Namespace) -> None:
    if not (math.isfinite(args.timeout) and args.timeout >= 0):
        raise CliError(f"--timeout must be a number of seconds >= 0, got {args.timeout}")


def _wait(s: Store, info: RunInfo, command_ids: list[int], timeout: float) -> int:
    """Wait for the agent to acknowledge every command; print each result."""
    queued = ", ".join(map(str, command_ids))
    state = liveness(info)
    if state not in LIVE:
        print(f"queued: {info.name} is {state}; the command will be applied when training attaches again",
              file=sys.stderr)
        return EXIT_NOT_ACKED
    deadline = time.monotonic() + timeout
    next_check = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        cmds = [s.command(i) for i in command_ids]
        if all(c is not None and c.status != "pending" for c in cmds):
            for c in cmds:
                print(f"{c.status}: {c.result}" if len(cmds) == 1 else f"{c.kind} {c.status}: {c.result}")
            return EXIT_OK if all(c.status == "applied" for c in cmds) else EXIT_REJECTED
        if time.monotonic() >= next_check:  # the process may end while we wait: say so now
            next_check += 1.0
            state = liveness(s.run())
            if state not in ("running", "paused", "stale"):
                print(f"not acknowledged: {info.name} is {state} now; the command stays queued "
                      f"(id {queued}) and is applied when training attaches again", file=sys.stderr)
                return EXIT_NOT_ACKED
        time.sleep(0.1)
    print(f"not acknowledged within {timeout:g}s; the command stays queued (id {queued})", file=sys.stderr)
    return EXIT_NOT_ACKED


def cmd_simple(args: argparse.Namespace) -> int:
    return _send(args, args.verb, {})


def cmd_lr(args: argparse.Namespace) -> int:
    try:
        if args.value is not None and args.scale is not None:
            raise CliError("give either a learning rate or --scale, not both")
        if args.value is not None:
            return _send(args, "set_lr", {"value": positive_finite(args.value, "learning rate")})
        if args.scale is not None:
            return _send(args, "scale_lr", {"factor": positive_finite(args.scale, "LR scale factor")})
    except CommandError as exc:
        raise CliError(str(exc)) from None
    with open_store(args.run) as s:
        info = s.run()
    print(f"lr {fmt(info.lr, '.6g')} (multiplier {info.lr_multiplier:.6g})")
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace) -> int:
    chosen = [t for t in (args.checkpoint, "best" if args.best else None, "last" if args.last else None) if t]
    if len(chosen) > 1:
        raise CliError("give one of CHECKPOINT, --best or --last")
    try:
        target = rollback_target(chosen[0] if chosen else "best")
    except CommandError as exc:
        raise CliError(str(exc)) from None
    return _send(args, "rollback", {"target": target})


def _decide(args: argparse.Namespace, approve: bool) -> int:
    """Approve (write its commands) or deny a proposal; works with the daemon down."""
    _check_timeout(args)
    with open_store(args.run) as s:
        info = s.run()
        try:
            iv, ids = decide_proposal(s, args.id, approve, issuer(), source="cli")
        except OperatorError as exc:
            if s.intervention(args.id) is None:
                raise CliError(f"{exc} (see `trainwarden events {args.run}`)") from None
            print(f"trainwarden: {exc}", file=sys.stderr)
            return EXIT_REJECTED
        print(f"proposal {iv.id} {'approved' if approve else 'denied'}: {iv.reason}")
        if not approve or args.no_wait:
            return EXIT_OK
        return _wait(s, info, ids, args.timeout)


def cmd_approve(args: argparse.Namespace) -> int:
    return _decide(args, approve=True)


def cmd_deny(args: argparse.Namespace) -> int:
    return _decide(args, approve=False)


def cmd_replay(args: argparse.Namespace) -> int:
    from .policy import PolicyError, load_policy
    from .replay import CurveError, replay

    try:
        policy = load_policy(args.policy)
        findings = replay(Path(args.path), policy.detect)
    except (PolicyError, CurveError) as exc:
        raise CliError(str(exc)) from None
    for f in findings:
        print(json.dumps({"step": f.step, "onset": f.onset, "kind": f.kind, "severity": f.severity,
                          "message": f.message, "action": policy.mode(f.kind)}))
    return EXIT_OK


def cmd_supervise(args: argparse.Namespace) -> int:
    from .daemon import Supervisor, SupervisorError, setup_logging
    from .policy import PolicyError

    setup_logging()
    roots = [Path(r) for r in (args.root or [str(default_root())])]
    try:
        supervisor = Supervisor(roots, Path(args.policy) if args.policy else None, poll=args.poll)
        supervisor.run()
    except (PolicyError, SupervisorError) as exc:  # a bad policy file, or a root that cannot be made
        raise CliError(str(exc)) from None
    return EXIT_OK


def cmd_tui(args: argparse.Namespace) -> int:
    roots = [Path(r) for r in (args.root or [str(default_root())])]
    for root in roots:
        if not root.is_dir():
            raise CliError(f"{root}: no such folder (give --root DIR, or set ${ENV_ROOT})")
    _check_timeout(args)
    try:
        from trainwarden.tui.app import run_tui
    except ImportError as exc:  # textual is a dependency; a broken install says which part is missing
        raise CliError(f"the TUI cannot start: {exc}") from None
    return run_tui(roots, timeout=args.timeout)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DemoError, run_demo

    if args.steps < 1000:
        raise CliError(f"--steps must be at least 1000 (the rebound comes at 30% of the run), got {args.steps}")
    try:
        return run_demo(Path(args.root) if args.root else None, Path(args.out) if args.out else None,
                        args.tui, args.steps, args.seed)
    except DemoError as exc:
        raise CliError(str(exc)) from None
    except KeyboardInterrupt:  # the demo's processes were stopped on the way out
        print("trainwarden: demo interrupted; what it recorded stays in its root", file=sys.stderr)
        return 130


def cmd_install_systemd(args: argparse.Namespace) -> int:
    from .service import ServiceError, install

    kind = "system" if args.system else "user"
    try:
        text, path, steps = install(kind, args.root, args.policy, args.print,
                                    target_dir=Path(args.unit_dir) if args.unit_dir else None)
    except ServiceError as exc:
        raise CliError(str(exc)) from None
    if path is None:
        print(text, end="")
        return EXIT_OK
    print(f"wrote {path}\nnow run:")
    for step in steps:
        print(f"  {step}")
    return EXIT_OK


# ---------------------------------------------------------------------- main
def _count(text: str) -> int:
    """argparse type: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """Usage mistakes as one line, like every other error of the command line."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"trainwarden: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="trainwarden",
        description="Watch and steer PyTorch training runs through their trainwarden stores.",
        epilog="Exit codes: 0 ok, 1 rejected by the run, 2 bad input, 3 not acknowledged. "
               f"RUN is a run folder, or a name under ${ENV_ROOT} (default ./runs).",
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")

    p = sub.add_parser("ls", help="list runs under a root folder")
    p.add_argument("root", nargs="?", help=f"folder to search (default ${ENV_ROOT} or ./runs)")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("show", help="status, step, LR, loss, windows, checkpoints, branches, commands")
    p.add_argument("run")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--windows", type=_count, default=5, help="how many recent windows to show")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("checkpoints", help="list a run's checkpoints")
    p.add_argument("run")
    p.add_argument("--all", action="store_true", help="include deleted ones")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_checkpoints)

    p = sub.add_parser("history", help="the loss history: branches, or every step with --csv")
    p.add_argument("run")
    p.add_argument("--csv", action="store_true", help="print step,branch,train_loss for every recorded step")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("events", help="what the agent, the supervisor and operators reported")
    p.add_argument("run")
    p.add_argument("--limit", type=_count, default=50, help="how many of the newest events")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_events)

    def waiting(p: argparse.ArgumentParser) -> None:
        p.add_argument("run")
        p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the acknowledgement")
        p.add_argument("--no-wait", action="store_true", help="queue the command and return at once")

    for verb, text in (("pause", "hold the run at its next step boundary"), ("resume", "continue a paused run"),
                       ("save", "checkpoint now (acknowledged once the file is ready)"),
                       ("stop", "ask the run to stop at its next step boundary")):
        p = sub.add_parser(verb, help=text)
        waiting(p)
        p.set_defaults(func=cmd_simple)

    p = sub.add_parser("lr", help="set the learning rate (or scale it); without a value, show it")
    waiting(p)
    p.add_argument("value", nargs="?", help="new learning rate of parameter group 0 (others follow)")
    p.add_argument("--scale", metavar="F", help="multiply the learning rate by F instead")
    # argparse takes "-1e-3" or "-inf" for an option and says "unrecognized arguments"; read
    # them as values, so the LR check can say what is wrong with them.
    p._negative_number_matcher = re.compile(r"^-(\d|\.\d|inf|nan)", re.IGNORECASE)
    p.set_defaults(func=cmd_lr)

    p = sub.add_parser("rollback", help="reload a checkpoint and its loss history in the live run")
    waiting(p)
    p.add_argument("checkpoint", nargs="?", help="checkpoint id (see `trainwarden checkpoints`)")
    p.add_argument("--best", action="store_true", help="the ready checkpoint with the lowest loss (default)")
    p.add_argument("--last", action="store_true", help="the newest ready checkpoint of the current history")
    p.set_defaults(func=cmd_rollback)

    for verb, text, func in (("approve", "approve a proposed intervention (writes its commands)", cmd_approve),
                             ("deny", "deny a proposed intervention", cmd_deny)):
        p = sub.add_parser(verb, help=text)
        waiting(p)
        p.add_argument("id", type=int, help="intervention id (from `trainwarden events RUN`)")
        p.set_defaults(func=func)

    p = sub.add_parser("replay", help="run the detectors over a recorded curve (CSV or run folder): JSON lines")
    p.add_argument("path", help="CSV with step,train_loss[,val_loss], or a run folder")
    p.add_argument("--policy", help="policy TOML whose detector settings and modes to use")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("supervise", help="the daemon: watch runs under the roots and act on findings")
    p.add_argument("--root", action="append", help=f"folder holding runs (repeatable; default ${ENV_ROOT} or ./runs)")
    p.add_argument("--policy", help="policy TOML (reloaded on SIGHUP)")
    p.add_argument("--poll", action="store_true", help="poll the roots instead of inotify (automatic on NFS/CIFS)")
    p.set_defaults(func=cmd_supervise)

    p = sub.add_parser("install-systemd", help="install the daemon as a systemd service (user unit, or a system template)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--user", action="store_true", help="a user unit in ~/.config/systemd/user (the default)")
    which.add_argument("--system", action="store_true", help="the system template unit trainwarden@.service (User=%%i)")
    p.add_argument("--root", action="append", help="folder holding runs (repeatable; default ~/runs, or /home/USER/runs)")
    p.add_argument("--policy", help="policy TOML for the daemon")
    p.add_argument("--print", action="store_true", help="print the unit instead of writing it")
    p.add_argument("--unit-dir", help="write the unit here instead of the standard folder")
    p.set_defaults(func=cmd_install_systemd)

    p = sub.add_parser("demo", help="the whole loop in about a minute: a rebound caught, rolled back, cured")
    p.add_argument("--root", help="folder for the demo's runs (default: a new temporary folder)")
    p.add_argument("--out", help="PNG of the loss histories (default ROOT/demo.png; needs matplotlib)")
    p.add_argument("--tui", action="store_true", help="watch it happen in the TUI (the trainings run slower)")
    p.add_argument("--steps", type=_count, default=5000, help="training steps (default 5000)")
    p.add_argument("--seed", type=_count, default=0, help="seed of the data and the weights")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("tui", help="the operator's screen: every run live, keys to steer them")
    p.add_argument("--root", action="append", help=f"folder holding runs (repeatable; default ${ENV_ROOT} or ./runs)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a command's acknowledgement")
    p.set_defaults(func=cmd_tui)

    from . import export, launcher  # their options live with them
    launcher.register(sub)
    export.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CliError as exc:
        print(f"trainwarden: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StoreError as exc:
        print(f"trainwarden: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except sqlite3.Error as exc:  # e.g. locked for longer than the busy timeout by a hung writer
        print(f"trainwarden: error: cannot use the run's store: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
