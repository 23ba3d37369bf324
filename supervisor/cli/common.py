"""What every verb of the command line shares: exit codes, the error for bad input, and how a run
is named on the command line (a folder, or a name under the default root)."""
from __future__ import annotations

import math
import os
from pathlib import Path

from trainwarden.agent.store import Store

ENV_ROOT = "TRAINWARDEN_ROOT"
EXIT_OK, EXIT_REJECTED, EXIT_BAD_INPUT, EXIT_NOT_ACKED = 0, 1, 2, 3


class CliError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def default_root() -> Path:
    """The folder holding runs: $TRAINWARDEN_ROOT, else ./runs."""
    return Path(os.environ.get(ENV_ROOT, "runs"))


def resolve_run(text: str) -> Path:
    """A run given as a folder path, or as a name under the default root."""
    path = Path(text)
    if not path.exists() and not path.is_absolute() and (default_root() / text).exists():
        path = default_root() / text
    return path


def open_store(text: str) -> Store:
    """The store of the run named by `text` (StoreError, shown as one line, when it has none)."""
    return Store.open(resolve_run(text))


def check_timeout(timeout: float) -> None:
    """--timeout must be a finite number of seconds >= 0."""
    if not (math.isfinite(timeout) and timeout >= 0):
        raise CliError(f"--timeout must be a number of seconds >= 0, got {timeout}")
