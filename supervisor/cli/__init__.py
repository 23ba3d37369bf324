"""The `trainwarden` command line: look at runs and steer them through their stores, launch and
supervise trainings. A front end only: each verb parses its arguments, calls the library
(supervisor/*.py) and prints.

Exit codes: 0 done, 1 the agent rejected the command, 2 bad input or an unreadable store,
3 the command was queued but not acknowledged (the run is not live, or the timeout passed).
`trainwarden run` exits with its job's status instead (126/127 when the program cannot be started).
"""
from __future__ import annotations

import sqlite3
import sys
from collections.abc import Sequence

from trainwarden.agent.commands import CommandError
from trainwarden.agent.store import StoreError

from ..errors import UserError
from .common import EXIT_BAD_INPUT, EXIT_OK, CliError
from .parser import build_parser

__all__ = ["main", "build_parser"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb; returns the exit code. Every error the user can act on is one line on stderr."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (CliError, UserError, CommandError, StoreError) as exc:
        print(f"trainwarden: error: {exc}", file=sys.stderr)
        # A library error may carry a status of its own (the launcher's 126/127, as a shell gives them).
        status = getattr(exc, "exit_status", None)
        return EXIT_BAD_INPUT if status is None else status
    except sqlite3.Error as exc:  # e.g. locked for longer than the busy timeout by a hung writer
        print(f"trainwarden: error: cannot use the run's store: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        return EXIT_OK
