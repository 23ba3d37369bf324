"""What the app was started with, handed to its screens and actions (none of them changes it)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

Clock = Callable[[], float]


@dataclass(frozen=True)
class Settings:
    """The roots watched, the operator's name, and the timings."""

    roots: tuple[Path, ...]
    who: str
    """The issuer written on every command (`user@host` unless given)."""
    clock: Clock
    """Unix time now; tests pin it."""
    timeout: float
    """Seconds a command may wait for the run's acknowledgement before the operator is told."""
    refresh_s: float
    """Seconds between reads of the stores."""
