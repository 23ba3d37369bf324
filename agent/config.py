"""The agent's configuration: one pydantic model, every field documented."""
from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class AgentConfig(BaseModel):
    """How the agent records losses, saves checkpoints and talks to the store.

    The defaults suit a single-GPU job; every interval is in steps or seconds of wall time.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    window: int = Field(50, ge=1, le=1_000_000)
    """Steps per window: losses are moved to the CPU, summarised and written once per window."""

    best_margin: float = Field(0.01, ge=0.0, lt=1.0)
    """Relative improvement of the windowed loss over the best saved one that makes a new "best"."""

    checkpoint_budget: float = Field(0.02, gt=0.0, le=1.0)
    """Adaptive saving (CheckFreq-style): the share of training time the agent may cost. Saves
    come as often as keeps their measured cost under half of it, the other half being headroom
    for per-step recording and the contention a background write causes. Used when neither
    `save_every_steps` nor `save_every_seconds` is set."""

    save_every_steps: int | None = Field(None, ge=1)
    """Fixed interval in steps between automatic saves, instead of the adaptive one."""

    save_every_seconds: float | None = Field(None, gt=0.0)
    """Fixed interval in seconds between automatic saves, instead of the adaptive one."""

    min_save_interval_s: float = Field(0.0, ge=0.0)
    """Never save automatically more often than this, whatever the other settings say."""

    keep_best: int = Field(3, ge=1)
    """Retention: how many checkpoints with the lowest loss to keep."""

    keep_last: int = Field(2, ge=1)
    """Retention: how many of the newest checkpoints of the current history to keep."""

    save_on_close: bool = True
    """Save a final checkpoint in `close()` when steps were recorded since the last save."""

    command_poll_interval_s: float = Field(1.0, gt=0.0, le=60.0)
    """How often the background thread looks for new commands in the store."""

    heartbeat_interval_s: float = Field(2.0, gt=0.0, le=600.0)
    """How often the background thread writes the run's heartbeat and current step."""

    handle_signals: bool = True
    """Install SIGTERM/SIGUSR1 handlers that save a checkpoint at the next step boundary and exit."""

    loss_across_ranks: Literal["rank0", "mean"] = "rank0"
    """Distributed jobs: the loss the store shows, rank 0's ("rank0") or the mean over ranks
    ("mean"; gathered once per window, with the window's other exchange, never per step)."""

    dist_timeout_s: float = Field(1800.0, gt=0.0)
    """Distributed jobs: timeout of trainwarden's own gloo groups (the per-window exchange, pauses
    and sharded checkpoint writes). A rank that does not reach a window boundary within it fails."""

    @model_validator(mode="after")
    def _finite(self) -> "AgentConfig":
        for name in ("best_margin", "checkpoint_budget", "save_every_seconds", "min_save_interval_s", "dist_timeout_s"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
        return self
