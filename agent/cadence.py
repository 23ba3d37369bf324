"""When to checkpoint automatically: pure decisions, no clock and no I/O."""
from __future__ import annotations

from .config import AgentConfig

SAVE_SHARE = 0.5
"""The part of `checkpoint_budget` that automatic saves may fill with their measured cost (stall
plus the writer thread's CPU). The rest is headroom for what that measurement cannot see: the
per-step recording, and the caches, memory bandwidth and GIL that a background write shares with
training. Measured on the example MLP, saves filling the whole 2% made the agent cost ~3%."""


def save_due(config: AgentConfig, seconds_since: float, steps_since: int, save_cost_s: float | None) -> bool:
    """Whether an automatic save is due at this window boundary.

    Fixed intervals (steps or seconds) when configured; otherwise CheckFreq-style adaptation:
    save as often as keeps the measured cost of a save (training-thread stall plus the writer's
    CPU time) under `SAVE_SHARE` of `checkpoint_budget`, so that the agent as a whole stays under
    the budget. With no measurement yet, save to get one.
    """
    if seconds_since < config.min_save_interval_s:
        return False
    if config.save_every_steps is not None or config.save_every_seconds is not None:
        by_steps = config.save_every_steps is not None and steps_since >= config.save_every_steps
        by_time = config.save_every_seconds is not None and seconds_since >= config.save_every_seconds
        return by_steps or by_time
    return save_cost_s is None or seconds_since >= save_cost_s / (config.checkpoint_budget * SAVE_SHARE)
