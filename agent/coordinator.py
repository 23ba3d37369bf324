"""What happens at step and window boundaries, chosen once at attach time.

`SoloCoordinator` (one process) closes each window itself and applies commands and signals at
the next step. `RankCoordinator` (agent/ranks.py) settles them once per window in one exchange,
so every rank does the same thing at the same step. Either installs the recorder's hooks, so the
hot path calls straight into the one that applies.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .control import Controller
    from .recorder import LossRecorder
    from .saver import Saver
    from .timeline import Timeline

log = logging.getLogger("trainwarden.agent")

OnSignal = Callable[[], None]
"""Acts on `controller.signal` at a step boundary: saves, closes the run and exits (never returns)."""


class Coordinator(ABC):
    """The window and step boundaries of a job."""

    def __init__(self, recorder: LossRecorder, timeline: Timeline, saver: Saver, controller: Controller,
                 window: int, on_signal: OnSignal) -> None:
        self._recorder = recorder
        self._timeline = timeline
        self._saver = saver
        self._controller = controller
        self._window = window
        self._on_signal = on_signal
        recorder.on_attention = self.service
        recorder.on_window = self.boundary
        recorder.flush_partial = self.flush_partial

    def service(self) -> None:
        """A step boundary with something to do: at least settle where the history goes on."""
        self._recorder.attention = False
        if not self._timeline.begun:
            self._timeline.begin_fresh()

    @abstractmethod
    def boundary(self) -> None:
        """The step count reached a multiple of the window."""

    @abstractmethod
    def flush_partial(self) -> None:
        """Write the buffered losses now (a pause, a rollback, a signal, close)."""

    @abstractmethod
    def pause_loop(self) -> None:
        """Block at this step boundary until resume or stop; other commands apply meanwhile."""

    @abstractmethod
    def meet_at_close(self, begun: bool, collective: bool) -> bool:
        """Settle the last window at close; returns whether a final save may run."""


class SoloCoordinator(Coordinator):
    """One process: commands and signals apply at the next step, windows close on their own."""

    def service(self) -> None:
        super().service()
        c = self._controller
        c.apply_pending()
        if c.paused:
            self.pause_loop()
        if c.signal is not None:
            self._on_signal()

    def boundary(self) -> None:
        """Move the buffered losses to the CPU in one go, hand them to the writer, and save if
        the cadence says so (never after a window with a NaN/Inf loss)."""
        values = self._recorder.take_window()
        if not values:
            return
        stats = self._recorder.write_window(values)
        if len(values) == self._window and stats["nonfinite"] == 0:
            self._saver.maybe_autosave(stats["mean"])

    def flush_partial(self) -> None:
        self.boundary()

    def pause_loop(self) -> None:
        log.info("trainwarden: paused at step %d", self._recorder.step)
        c = self._controller
        while c.paused and c.signal is None:
            c.wait(0.5)
            c.apply_pending(while_paused=True)
        self._recorder.attention = bool(c.inbox)

    def meet_at_close(self, begun: bool, collective: bool) -> bool:
        return True  # nobody to meet: the final save is this process's own decision
