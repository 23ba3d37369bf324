"""When to checkpoint automatically: pure decisions, no clock and no I/O."""
from __future__ import annotations

from .config import AgentConfig


def save_due(config: AgentConfig, seconds_since: float, steps_since: int, save_cost_s: float | None) -> bool:
    """Whether an automatic save is due at this window boundary.

    Fixed intervals (steps or seconds) when configured; otherwise CheckFreq-style adaptation:
    save as often as keeps the measured cost of a save (training-thread stall plus the writer's
    CPU time) under `checkpoint_budget` of the time. With no measurement yet, save to get one.
    """
    if seconds_since < config.min_save_interval_s:
        return False
    if config.save_every_steps is not None or config.save_every_seconds is not None:
        by_steps = config.save_every_steps is not None and steps_since >= config.save_every_steps
        by_time = config.save_every_seconds is not None and seconds_since >= config.save_every_seconds
        return by_steps or by_time
    return save_cost_s is None or seconds_since >= save_cost_s / config.checkpoint_budget
