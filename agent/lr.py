"""The learning-rate multiplier, kept outside the scheduler.

The scheduler keeps computing its own (unscaled) learning rates; the multiplier is applied to
every parameter group only for the duration of `optimizer.step()`, through the optimizer's step
hooks, and taken off again afterwards. So no scheduler (StepLR, LambdaLR, OneCycleLR,
ReduceLROnPlateau, chained or not) can undo an operator's change, loading a scheduler's state
cannot restore an old LR, and the multiplier survives rollbacks and restarts because the store
and the checkpoints hold it, not the scheduler.
"""
from __future__ import annotations

from typing import Any

import torch


class LRControl:
    """Applies `multiplier` to an optimizer's learning rates while it steps."""

    def __init__(self, optimizer: torch.optim.Optimizer, multiplier: float = 1.0) -> None:
        self.optimizer = optimizer
        self.multiplier = multiplier
        self._saved: list[Any] | None = None
        self._handles = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
        ]

    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        m = self.multiplier
        if m == 1.0:
            return
        self._saved = [g["lr"] for g in optimizer.param_groups]
        for g, lr in zip(optimizer.param_groups, self._saved):
            g["lr"] = lr * m

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._saved is None:
            return
        for g, lr in zip(optimizer.param_groups, self._saved):
            g["lr"] = lr
        self._saved = None

    @property
    def scheduled_lr(self) -> float:
        """What the scheduler set for group 0, before the multiplier."""
        lr = self.optimizer.param_groups[0]["lr"]
        return float(lr)

    @property
    def effective_lr(self) -> float:
        """The learning rate group 0 steps with."""
        return self.scheduled_lr * self.multiplier

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
