"""The loss recorder: the hot path, the window buffer and the in-memory loss history.

`record()` appends the detached loss to a buffer and returns. Once per window the buffer goes to
the CPU in one copy, is summarised and handed to the store writer thread. What happens at a
window boundary, at a step that needs attention (commands, a signal, the first step) and when a
partial window must be written now depends on the job (one process or several ranks): the
coordinator chosen at attach time installs those three hooks, so `record()` never asks.
"""
from __future__ import annotations

import time
from array import array
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from .store import Store
from .window import window_stats

if TYPE_CHECKING:
    from .lr import LRControl
    from .threads import NoWriter, StoreWriter


def _not_attached() -> None:
    raise RuntimeError("the loss recorder has no coordinator yet")


class LossRecorder:
    """The training thread's record of losses: step counter, branch, window buffer, history."""

    def __init__(self, window: int, writer: StoreWriter | NoWriter, lr: LRControl, branch: int) -> None:
        self.step = 0
        """Steps recorded on the current history."""
        self.branch = branch
        """The branch of history being recorded."""
        self.attention = True
        """Set by other threads (and at close) when the next step boundary has work: commands, a
        signal, or (first) deciding where the history goes on."""
        self.history = array("f")
        """Per-step losses of the current history, flushed windows only."""
        self.window_t0 = time.perf_counter()
        """When the current window began (for its steps per second)."""
        self.on_attention: Callable[[], None] = _not_attached
        """Hook: a step boundary with `attention` set (installed by the coordinator)."""
        self.on_window: Callable[[], None] = _not_attached
        """Hook: `step` reached a multiple of the window (installed by the coordinator)."""
        self.flush_partial: Callable[[], None] = _not_attached
        """Hook: write what is buffered now, e.g. before a pause or a rollback (installed by the coordinator)."""
        self._window = window
        self._writer = writer
        self._lr = lr
        self._buf: list[Any] = []  # this window's losses: floats, or detached device tensors
        self._on_device = False  # whether _buf holds a device tensor (then it needs to_floats)

    def record(self, loss: torch.Tensor | float) -> None:
        """Record the training loss of the step just taken. Cheap: no GPU sync, no I/O."""
        if isinstance(loss, torch.Tensor):
            if loss.is_cpu:
                # Nothing to wait for on the CPU, and a float now (0.13 us) is cheaper than a
                # detached tensor (0.28 us) converted at the window's end.
                loss = loss.item()
            else:
                loss = loss.detach()  # converted with the rest of the window, in one transfer
                self._on_device = True
        else:
            loss = float(loss)
        self._buf.append(loss)
        self.step += 1
        if self.attention:  # rare: the first step, a command, a signal
            self.on_attention()
        if self.step % self._window == 0:
            self.on_window()

    @property
    def buffered(self) -> bool:
        """Whether losses are waiting for the end of their window."""
        return bool(self._buf)

    def take_window(self) -> list[float]:
        """The buffered losses as floats (one device-to-host copy); the buffer starts again empty."""
        buf = self._buf
        self._buf = []
        values = to_floats(buf) if self._on_device else buf
        self._on_device = False
        return values

    def drop_window(self) -> None:
        """Forget the buffered losses (a rank whose losses the store does not show)."""
        self._buf = []
        self._on_device = False

    def pending(self) -> list[float]:
        """The buffered losses as floats, left in the buffer (for a checkpoint's history)."""
        return to_floats(self._buf) if self._on_device else list(self._buf)

    def write_window(self, values: list[float]) -> dict[str, Any]:
        """Append a window to the history and hand it to the store writer; returns its stats."""
        now = time.perf_counter()
        steps_per_s = len(values) / max(now - self.window_t0, 1e-9)
        self.window_t0 = now
        self.history.extend(values)
        stats = window_stats(values)
        branch, first, lr = self.branch, self.step - len(values) + 1, self._lr.effective_lr

        def write(s: Store) -> dict[str, Any]:
            s.add_window(branch, first, values, stats, lr, steps_per_s)
            return {"step": first + len(values) - 1, "last_loss": stats["mean"], "lr": lr}

        self._writer.submit(write)
        return stats

    def reset(self, step: int, history: list[float]) -> None:
        """Continue from a checkpoint's step and loss history; buffered losses are dropped."""
        self.step = step
        self.history = array("f", history)
        self.drop_window()
        self.window_t0 = time.perf_counter()

    def event(self, kind: str, severity: str, message: str, data: dict[str, Any] | None = None) -> None:
        """Write an event about the current step and branch."""
        step, branch = self.step, self.branch
        self._writer.submit(lambda s: s.add_event(kind, severity, message, step=step, branch=branch, data=data))


def to_floats(buf: list[Any]) -> list[float]:
    """Losses as Python floats, with one device-to-host copy for the whole buffer. `record()`
    keeps CPU losses as floats already, so this sees device tensors (and rarely floats too)."""
    if buf and all(isinstance(x, torch.Tensor) for x in buf):
        # Losses are 0-dim as a rule: stack them as they are, since a reshape per tensor would cost
        # about 1 us each, more than the rest of the window's work. Mixed shapes take the slow path.
        try:
            stacked = torch.stack(buf)
        except RuntimeError:
            stacked = None
        if stacked is None or stacked.numel() != len(buf):
            stacked = torch.stack([x.reshape(()) for x in buf])
        return stacked.reshape(-1).to("cpu", torch.float32).tolist()
    return [float(x) for x in buf]  # a mix of floats and device tensors: one sync per tensor
