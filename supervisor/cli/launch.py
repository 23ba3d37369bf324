"""The verbs that start something: run (a training job under the launcher), supervise (the daemon),
tui, demo, install-systemd."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..launch_rules import LaunchOptions
from ..launcher import launch
from .common import ENV_ROOT, EXIT_OK, CliError, check_timeout, default_root


def _roots(args: argparse.Namespace) -> list[Path]:
    return [Path(r) for r in (args.root or [str(default_root())])]


def cmd_run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise CliError("no command to run: give it after --, e.g. `trainwarden run -- python train.py`")
    return launch(LaunchOptions(
        command=command, root=Path(args.root) if args.root else default_root(), name=args.name,
        max_restarts=args.max_restarts, policy=args.policy, backoff=args.backoff, kill_grace=args.kill_grace,
        nproc_per_node=args.nproc_per_node))


def cmd_supervise(args: argparse.Namespace) -> int:
    from ..daemon import Supervisor, setup_logging

    setup_logging()
    supervisor = Supervisor(_roots(args), Path(args.policy) if args.policy else None, poll=args.poll)
    supervisor.run()
    return EXIT_OK


def cmd_tui(args: argparse.Namespace) -> int:
    roots = _roots(args)
    for root in roots:
        if not root.is_dir():
            raise CliError(f"{root}: no such folder (give --root DIR, or set ${ENV_ROOT})")
    check_timeout(args.timeout)
    try:
        from trainwarden.tui.app import run_tui
    except ImportError as exc:  # textual is a dependency; a broken install says which part is missing
        raise CliError(f"the TUI cannot start: {exc}") from None
    return run_tui(roots, timeout=args.timeout)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    if args.steps < 1000:
        raise CliError(f"--steps must be at least 1000 (the rebound comes at 30% of the run), got {args.steps}")
    try:
        return run_demo(Path(args.root) if args.root else None, Path(args.out) if args.out else None,
                        args.tui, args.steps, args.seed)
    except KeyboardInterrupt:  # the demo's processes were stopped on the way out
        print("trainwarden: demo interrupted; what it recorded stays in its root", file=sys.stderr)
        return 130


def cmd_install_systemd(args: argparse.Namespace) -> int:
    from ..service import install

    kind = "system" if args.system else "user"
    text, path, steps = install(kind, args.root, args.policy, args.print,
                                target_dir=Path(args.unit_dir) if args.unit_dir else None)
    if path is None:
        print(text, end="")
        return EXIT_OK
    print(f"wrote {path}\nnow run:")
    for step in steps:
        print(f"  {step}")
    return EXIT_OK
