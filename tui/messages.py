"""What the screens ask of the app: open a run, or act on one.

A screen posts these; they bubble up to `TrainwardenApp`, whose handlers run the action (see
`actions.py`) in a worker. The screens never call the app, so they only need what they show.
"""
from __future__ import annotations

from pathlib import Path

from textual.message import Message


class OpenRun(Message):
    """Show a run's detail screen, on one of its tabs (None: the events)."""

    def __init__(self, path: Path, tab: str | None = None) -> None:
        super().__init__()
        self.path = path
        self.tab = tab


class RunRequest(Message):
    """A key asked for something done to a run."""

    def __init__(self, path: Path, name: str) -> None:
        super().__init__()
        self.path = path
        self.name = name


class PauseResume(RunRequest):
    """Pause a running run, resume a paused one."""


class AskLR(RunRequest):
    """Ask the operator for a new learning rate (or a factor), then send it."""


class AskRollback(RunRequest):
    """Ask the operator for a checkpoint, then roll back to it."""


class SaveNow(RunRequest):
    """Save a checkpoint now."""


class AskStop(RunRequest):
    """Stop the run once the operator confirms."""


class Decide(RunRequest):
    """Approve or deny a proposal: `proposal`, or the only one pending (None)."""

    def __init__(self, path: Path, name: str, *, approve: bool, proposal: int | None) -> None:
        super().__init__(path, name)
        self.approve = approve
        self.proposal = proposal
