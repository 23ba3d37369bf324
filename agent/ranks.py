"""The boundaries of a job of several ranks: one exchange per window settles what every rank
does next.

Between window boundaries `record()` only raises flags. At a boundary rank 0 builds a `Plan`
(whether an automatic save is due, and the pending commands with a rollback's checkpoint already
chosen and verified); one exchange carries each rank's `Report` (rank 0's plan, any pending
signal and, with `loss_across_ranks="mean"`, its window of losses); then every rank follows the
plan in the same order: save, commands, signal, pause.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .control import PlannedCommand
from .coordinator import Coordinator, OnSignal

if TYPE_CHECKING:
    from .control import Controller
    from .peers import RankPeers
    from .recorder import LossRecorder
    from .saver import Saver
    from .timeline import Timeline

log = logging.getLogger("trainwarden.agent")


@dataclass(slots=True)
class Plan:
    """What rank 0 decided every rank does at this boundary."""

    save: bool
    """Take an automatic checkpoint (rank 0's cadence, on a full window of finite losses)."""
    commands: list[PlannedCommand]
    """The commands to apply, in order."""


@dataclass(slots=True)
class Report:
    """What one rank brings to a boundary's exchange (kept small: it is pickled into a 4 KiB slot)."""

    signal: int | None
    """A signal this rank received, if any."""
    plan: Plan | None
    """Rank 0's plan; None from other ranks."""
    losses: list[float] | None
    """This rank's window of losses, when the store shows their mean; else None."""


class RankCoordinator(Coordinator):
    """One rank of several: commands and signals wait for the window boundary, where every rank
    meets in an exchange on trainwarden's own group."""

    def __init__(self, peers: RankPeers, recorder: LossRecorder, timeline: Timeline, saver: Saver,
                 controller: Controller, window: int, share_losses: bool, on_signal: OnSignal) -> None:
        super().__init__(recorder, timeline, saver, controller, window, on_signal)
        self._peers = peers
        self._leader = peers.leader
        self._share = share_losses

    def boundary(self, closing: bool = False) -> None:
        """Exchange the plan, signals and (shared) losses; rank 0 writes the window (its own
        losses, or the mean); then follow the plan unless the run is closing."""
        rec = self._recorder
        if self._leader or self._share:
            values = rec.take_window()
        else:  # rank 0's losses are the store's: no need to copy this rank's to the CPU
            values = []
            rec.drop_window()
        plan = None
        if self._leader:
            full = len(values) == self._window and all(math.isfinite(v) for v in values)
            plan = Plan(not closing and full and self._saver.autosave_due(),
                        [] if closing else self._controller.drain())
        got: list[Report] = self._peers.exchange(Report(self._controller.signal, plan, values if self._share else None))
        stats = None
        if self._leader and values:
            if self._share:  # the mean over ranks, step by step; every rank recorded the same steps
                values = [sum(col) / len(col) for col in zip(*(r.losses for r in got))]  # type: ignore[arg-type]
            stats = rec.write_window(values)
        if closing:
            return
        self._follow(got, stats)

    def flush_partial(self) -> None:
        """Only at close or a boundary, where every rank is: no exchange, rank 0 writes its own."""
        rec = self._recorder
        if rec.buffered:
            if self._leader:
                rec.write_window(rec.take_window())
            else:
                rec.take_window()

    def pause_loop(self) -> None:
        """Every rank waits here at the same step. They meet in an exchange on trainwarden's own
        group about twice a second (rank 0 brings the commands that came meanwhile), so neither
        that group's timeout nor the user's is ever reached, however long the pause."""
        log.info("trainwarden: paused at step %d", self._recorder.step)
        c = self._controller
        while c.paused:
            if self._leader:
                c.wait(0.5)
            plan = Plan(False, c.drain()) if self._leader else None
            self._obey(self._peers.exchange(Report(c.signal, plan, None)))

    def meet_at_close(self, begun: bool, collective: bool) -> bool:
        """When every rank closes together, exchange the last partial window; a final save runs
        only then (it takes collectives)."""
        if not (collective and begun):
            return False
        try:
            self.boundary(closing=True)
        except Exception as exc:  # e.g. the process group was destroyed first
            log.warning("trainwarden: ranks could not meet at close (%s): no final checkpoint", exc)
            return False
        return True

    def _follow(self, got: list[Report], stats: dict[str, Any] | None) -> None:
        """Do on this rank what rank 0's plan says, in the same order as every other rank."""
        plan = got[0].plan
        assert plan is not None
        if plan.save:
            self._saver.save(None, wait=False, loss=stats["mean"] if stats and stats["nonfinite"] == 0 else None)
        self._obey(got)
        if self._controller.paused:
            self.pause_loop()

    def _obey(self, got: list[Report]) -> None:
        """Apply the plan's commands, then act on a signal any rank reported (it exits)."""
        plan = got[0].plan
        assert plan is not None
        for planned in plan.commands:
            self._controller.execute(planned)
        signum = next((r.signal for r in got if r.signal), None)
        if signum is not None:
            self._controller.signal = signum
            self._on_signal()
