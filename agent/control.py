"""The controller: commands from the store and signals from the OS, applied on the training
thread at a step boundary.

A command is applied in two parts. `prepare()` (one process, or rank 0 of a job) parses the row
and, for a rollback, chooses and verifies the checkpoint; `execute()` (every rank, in the same
order) runs the handler registered for the command's type and acknowledges it exactly once, in
the same transaction as its effect on the run row.
"""
from __future__ import annotations

import collections
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .commands import BaseCommand, Command, CommandError, Pause, Rejected, Resume, Rollback, Save, ScaleLR, SetLR, Stop, parse
from .records import CheckpointInfo, CommandInfo
from .store import Store

if TYPE_CHECKING:
    from .loader import Loader
    from .lr import LRControl
    from .recorder import LossRecorder
    from .saver import Saver
    from .threads import NoWriter, StoreWriter
    from .timeline import Timeline

log = logging.getLogger("trainwarden.agent")


@dataclass(slots=True)
class PlannedCommand:
    """A command as one process, or rank 0 for every rank, prepared it (sent in the window's plan)."""

    row: CommandInfo
    """The store's row: id, kind, arguments, issuer."""
    command: Command | None = None
    """The parsed command; None when it is rejected."""
    reject: str | None = None
    """Why it is rejected, said to the issuer."""
    target: CheckpointInfo | None = None
    """A rollback's checkpoint, chosen and verified by rank 0."""


Handler = Callable[[PlannedCommand], None]


class Controller:
    """Command inbox, the handlers by command type, the pause state and the pending signal."""

    def __init__(
        self, recorder: LossRecorder, timeline: Timeline, writer: StoreWriter | NoWriter, lr: LRControl,
        saver: Saver, loader: Loader, on_stop: Callable[[], None],
    ) -> None:
        self.inbox: collections.deque[CommandInfo] = collections.deque()
        """Commands handed over by the store thread, not yet prepared."""
        self.paused = False
        """Whether a pause holds the loop at its step boundary."""
        self.signal: int | None = None
        """A SIGTERM/SIGUSR1 received here (or reported by another rank), acted on at a step boundary."""
        self.applied: list[tuple[int, str, int]] = []
        """(command id, kind, step) of every command this process applied, in order."""
        self._wake = threading.Event()  # set when a command or a signal arrives (for a paused loop)
        self._recorder = recorder
        self._timeline = timeline
        self._writer = writer
        self._lr = lr
        self._saver = saver
        self._loader = loader
        self._on_stop = on_stop
        self._handlers: dict[type[BaseCommand], Handler] = {
            Pause: self._pause, Resume: self._resume, Stop: self._stop, Save: self._save,
            SetLR: self._set_lr, ScaleLR: self._scale_lr, Rollback: self._rollback,
        }

    # ----------------------------------------------------------- other threads
    def on_commands(self, commands: list[CommandInfo]) -> None:
        """Called on the store thread when new commands are pending."""
        self.inbox.extend(commands)
        self._recorder.attention = True
        self._wake.set()

    def on_signal(self, signum: int) -> bool:
        """Called by the signal handler; False when a signal was already waiting (the loop is not
        reaching a step boundary)."""
        if self.signal is not None:
            return False
        self.signal = signum
        self._recorder.attention = True
        self._wake.set()
        return True

    def wait(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for a command or a signal."""
        self._wake.wait(timeout)
        self._wake.clear()

    # ---------------------------------------------------------- training thread
    def apply_pending(self, *, while_paused: bool = False) -> None:
        """One process: prepare and apply the commands that came, in order (`while_paused`: only
        until one ends the pause)."""
        while self.inbox and (self.paused or not while_paused):
            self.execute(self.prepare(self.inbox.popleft()))

    def drain(self) -> list[PlannedCommand]:
        """Rank 0: every pending command, prepared for the plan every rank follows."""
        planned = []
        while self.inbox:
            planned.append(self.prepare(self.inbox.popleft()))
        return planned

    def prepare(self, row: CommandInfo) -> PlannedCommand:
        """Parse a command and choose a rollback's checkpoint, so every rank loads the same one (or
        every rank rejects it)."""
        try:
            command = parse(row.kind, row.args)
            target = self._loader.rollback_target(command.target) if isinstance(command, Rollback) else None
            return PlannedCommand(row, command, None, target)
        except (CommandError, Rejected) as exc:
            return PlannedCommand(row, reject=str(exc))
        except Exception as exc:  # a command must never kill training
            log.exception("trainwarden: command %d (%s) failed", row.id, row.kind)
            return PlannedCommand(row, reject=f"failed: {type(exc).__name__}: {exc}")

    def execute(self, planned: PlannedCommand) -> None:
        """Apply a prepared command (or reject it), acknowledging it once."""
        row = planned.row
        try:
            if planned.command is None:
                raise Rejected(planned.reject)
            self._handlers[type(planned.command)](planned)
            self.applied.append((row.id, row.kind, self._recorder.step))
        except Rejected as exc:
            self.ack(row, "rejected", str(exc))
        except Exception as exc:  # a command must never kill training
            log.exception("trainwarden: command %d (%s) failed", row.id, row.kind)
            self.ack(row, "rejected", f"failed: {type(exc).__name__}: {exc}")

    def ack(self, row: CommandInfo, status: str, result: str, run: dict[str, Any] | None = None,
            event: tuple[str, str] | None = None) -> None:
        """Acknowledge a command together with its effect on the run row, in one transaction:
        if the process dies before it is written, the command is still pending and is applied
        again by the next process, so its effect is neither lost nor doubled."""
        step, branch = self._recorder.step, self._recorder.branch

        def write(s: Store) -> None:
            with s.transaction():
                s.ack_command(row.id, status, result, step)
                if run:
                    s.update_run(**run)
                if event:
                    s.add_event(event[0], "info", f"{event[1]} (command {row.id} from {row.issuer})",
                                step=step, branch=branch, data={"command": row.id})

        self._writer.submit(write)

    # ---------------------------------------------------------------- handlers
    def _pause(self, p: PlannedCommand) -> None:
        if self.paused:
            raise Rejected("already paused")
        self._recorder.flush_partial()
        self.paused = True
        step = self._recorder.step
        self.ack(p.row, "applied", f"paused at step {step}", {"status": "paused", "step": step})

    def _resume(self, p: PlannedCommand) -> None:
        if not self.paused:
            raise Rejected("not paused")
        self.paused = False
        self.ack(p.row, "applied", f"resumed at step {self._recorder.step}", {"status": "running"})

    def _stop(self, p: PlannedCommand) -> None:
        self._on_stop()
        self.paused = False
        self.ack(p.row, "applied", f"stopping at step {self._recorder.step}")

    def _save(self, p: PlannedCommand) -> None:
        self._saver.save("command", wait=False, command=p.row)  # acknowledged by the checkpoint thread

    def _set_lr(self, p: PlannedCommand) -> None:
        assert isinstance(p.command, SetLR)
        scheduled = self._lr.scheduled_lr
        if not scheduled > 0:
            raise Rejected(f"the schedule's learning rate is {scheduled} at this step; use a scale factor instead")
        self._set_multiplier(p.row, p.command.value / scheduled)

    def _scale_lr(self, p: PlannedCommand) -> None:
        assert isinstance(p.command, ScaleLR)
        self._set_multiplier(p.row, self._lr.multiplier * p.command.factor)

    def _set_multiplier(self, row: CommandInfo, multiplier: float) -> None:
        if not (math.isfinite(multiplier) and multiplier > 0):
            raise Rejected(f"the resulting LR multiplier {multiplier} is not a positive finite number")
        before = self._lr.effective_lr
        self._lr.multiplier = multiplier
        after = self._lr.effective_lr
        text = f"learning rate {before:.6g} -> {after:.6g} (multiplier {multiplier:.6g})"
        self.ack(row, "applied", text, {"lr_multiplier": multiplier, "lr": after}, ("lr_changed", text))

    def _rollback(self, p: PlannedCommand) -> None:
        info = p.target
        assert info is not None
        state = self._loader.load_everywhere(info, self._loader.preloaded.pop(info.id, None))
        rec = self._recorder
        rec.flush_partial()  # the abandoned steps stay in the store under their branch
        old_branch, old_step = rec.branch, rec.step
        self._loader.restore(state)
        reason = f"rollback to checkpoint {info.id} (step {info.step}) by {p.row.issuer}"
        new = self._timeline.fork(info.branch, info.step, info.id, reason)
        text = (f"rolled back from step {old_step} (branch {old_branch}) to checkpoint {info.id} at step {info.step}; "
                f"new branch {new}")
        self.ack(p.row, "applied", text, {"step": rec.step}, ("rollback", text))
