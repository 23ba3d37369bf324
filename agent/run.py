"""The agent's front: `attach()` and `Run`, what a training loop talks to.

`Run` wires the roles together at attach time and keeps the public API, the context manager and
shutdown. The work is done by:

- `LossRecorder` (recorder.py): the hot path, the window buffer, the in-memory loss history;
- `Timeline` (timeline.py): the branch being recorded, forks, whether the step is settled;
- `Saver` (saver.py) and `Loader` (loader.py): checkpoints out and in;
- `Controller` (control.py): commands by type, pause state, the pending signal;
- a coordinator (coordinator.py, ranks.py) and peers (peers.py), one process or several ranks,
  chosen here once;
- `ProcessHooks` (signals.py): signal handlers, excepthook, atexit.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from . import dist
from . import peers as peers_mod
from .claim import AttachError, claim
from .config import AgentConfig
from .control import Controller
from .coordinator import Coordinator, SoloCoordinator
from .loader import Loader
from .lr import LRControl
from .ranks import RankCoordinator
from .recorder import LossRecorder
from .recorder import to_floats as _to_floats  # noqa: F401  (tests reach it here)
from .saver import Saver, TrainingObjects
from .signals import ProcessHooks
from .store import Store
from .threads import NoWriter, StoreWriter
from .timeline import Timeline

log = logging.getLogger("trainwarden.agent")

ENV_RUN_DIR = "TRAINWARDEN_RUN_DIR"

__all__ = ["ENV_RUN_DIR", "AttachError", "Run", "attach"]


def attach(
    run_dir: str | os.PathLike[str] | None = None, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: Any = None, scaler: Any = None, config: AgentConfig | None = None, name: str | None = None,
    distributed_checkpoint: bool | None = None,
) -> "Run":
    """Attach an agent to a training loop, writing to the store in `run_dir`.

    `run_dir` defaults to $TRAINWARDEN_RUN_DIR. The folder and store are created if missing.

    Under torchrun (an initialised process group of several ranks) every rank calls `attach()`
    at the same point: rank 0 owns the store, the others write nothing to it, and commands reach
    every rank at the same window boundary. `distributed_checkpoint` chooses sharded checkpoints
    written with torch.distributed.checkpoint (default: when the model has DTensor parameters,
    as FSDP2's `fully_shard` makes them); otherwise rank 0 writes one file.
    """
    if run_dir is None:
        run_dir = os.environ.get(ENV_RUN_DIR)
        if not run_dir:
            raise AttachError(f"no run folder: pass run_dir to attach() or set ${ENV_RUN_DIR}")
    return Run(Path(run_dir), model, optimizer, scheduler, scaler, config or AgentConfig(), name, distributed_checkpoint)


class Run:
    """A training run attached to its store. Create it with `attach()`."""

    def __init__(
        self, run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
        scheduler: Any, scaler: Any, config: AgentConfig, name: str | None,
        distributed_checkpoint: bool | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.config = config
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.should_stop = False
        """True once a `stop` command arrived: leave the loop and call close()."""

        sharded = dist.is_sharded(model) if distributed_checkpoint is None else bool(distributed_checkpoint)
        if sharded and not dist.sharded_supported():
            raise AttachError(f"sharded checkpoints need torch >= {dist.SHARDED_MIN_TORCH}; this is torch {torch.__version__}")
        self._peers = peers_mod.join(config.dist_timeout_s)
        start = claim(run_dir, name, config, self._peers)
        self._store: Store | None = start.store  # rank 0's only: other ranks never open the store
        self._lr = LRControl(optimizer, start.lr_multiplier)

        self._writer: StoreWriter | NoWriter = NoWriter()
        if self._peers.leader:
            self._writer = StoreWriter(Store.open(run_dir), config.command_poll_interval_s, config.heartbeat_interval_s)
        self._recorder = LossRecorder(config.window, self._writer, self._lr, start.branch)
        self._timeline = Timeline(self._store, self._writer, self._recorder, start.next_branch)
        objects = TrainingObjects(model, optimizer, scheduler, scaler)
        self._saver = Saver(config, run_dir, objects, sharded, self._peers, self._store, self._recorder, self._lr,
                            start.best_loss)
        self._loader = Loader(run_dir, objects, self._peers, self._store, self._writer, self._recorder, self._saver)
        self._controller = Controller(self._recorder, self._timeline, self._writer, self._lr, self._saver,
                                      self._loader, self._request_stop)
        self.applied_commands: list[tuple[int, str, int]] = self._controller.applied
        """(command id, kind, step) of every command this process applied, in order: under torchrun,
        every rank's list is the same."""
        self._coordinator: Coordinator
        if isinstance(self._peers, peers_mod.RankPeers):
            self._coordinator = RankCoordinator(self._peers, self._recorder, self._timeline, self._saver,
                                                self._controller, config.window, config.loss_across_ranks == "mean",
                                                self._exit_on_signal)
        else:
            self._coordinator = SoloCoordinator(self._recorder, self._timeline, self._saver, self._controller,
                                                config.window, self._exit_on_signal)
        # The hot path goes straight to the recorder: no call through Run per step.
        self.record = self._recorder.record  # type: ignore[method-assign]
        self._hooks = ProcessHooks(config.handle_signals, self._controller.on_signal, self._at_exit)

        self._writer.start(self._controller.on_commands, self._timeline.heartbeat)
        self._saver.checkpointer.start()
        self._hooks.install()

    # ------------------------------------------------------------------ public
    @property
    def step(self) -> int:
        """Steps recorded on the current history (the checkpoint's step after a resume or rollback)."""
        return self._recorder.step

    @step.setter
    def step(self, value: int) -> None:
        self._recorder.step = value

    @property
    def world_size(self) -> int:
        """How many ranks the job has (1 for a single process)."""
        return self._peers.world_size

    @property
    def rank(self) -> int:
        """This process's rank (0 for a single process); rank 0 owns the store."""
        return self._peers.rank

    @property
    def lr(self) -> float:
        """The effective learning rate of parameter group 0 (schedule times multiplier)."""
        return self._lr.effective_lr

    @property
    def branch(self) -> int:
        """The branch of history being recorded."""
        return self._recorder.branch

    def resume(self) -> int:
        """Load the newest good checkpoint of the run's current history, if any.

        Restores weights, optimizer, scheduler, scaler, RNG states, the step counter and the loss
        history. A checkpoint that fails its checksum or the safe loader is marked corrupt, with a
        warning event, and the previous one is tried. Returns the step to continue from (0 if fresh).
        """
        if self._timeline.begun:
            raise RuntimeError("resume() must be called before the first record()")
        info = self._loader.resume()
        if info is None:
            self._timeline.begin_fresh()
            return 0
        self._timeline.continue_from(info, f"resumed from checkpoint {info.id} at step {info.step} after a restart")
        self._recorder.event("resumed", "info", f"resumed from checkpoint {info.id} at step {info.step}",
                             {"checkpoint": info.id, "branch": self._recorder.branch})
        return self._recorder.step

    def record(self, loss: torch.Tensor | float) -> None:
        """Record the training loss of the step just taken. Cheap: no GPU sync, no I/O."""
        # Replaced in __init__ by the recorder's own method; kept here for help() and type checkers.
        self._recorder.record(loss)

    def record_val(self, value: torch.Tensor | float, name: str = "val_loss") -> None:
        """Record a validation loss or another named scalar at the current step."""
        number = float(value.detach().float().cpu()) if isinstance(value, torch.Tensor) else float(value)
        branch, step = self._recorder.branch, self._recorder.step
        self._writer.submit(lambda s: s.add_metric(branch, step, name, number))

    def save(self, kind: str = "manual") -> None:
        """Checkpoint now (waits only if the previous checkpoint is still being written)."""
        if not self._timeline.begun:
            self._timeline.begin_fresh()
        self._saver.save(kind, wait=True)

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until the checkpoint being written (if any) is on disk and everything recorded
        in complete windows is in the store. Training never needs this; scripts and tests may."""
        self._saver.checkpointer.idle.wait(timeout)
        self._writer.flush(timeout)

    def close(self) -> None:
        """Flush the partial window, save a final checkpoint, wait for writes, mark the run done.
        In a distributed job every rank calls it (before destroying the process group)."""
        self._shutdown("stopped" if self.should_stop else "finished", save=self.config.save_on_close, collective=True)

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.close()
        elif issubclass(kind, SystemExit):  # after a signal the run is closed already; ranks cannot meet here
            self._shutdown("stopped" if self.should_stop else "finished", save=self.config.save_on_close)
        elif issubclass(kind, KeyboardInterrupt):
            self._shutdown("stopped", save=False)
        else:
            self._shutdown("crashed", save=False, why=f"{kind.__name__}: {exc}")

    # ---------------------------------------------------------------- endings
    def _request_stop(self) -> None:
        self.should_stop = True

    def _exit_on_signal(self) -> None:
        """At a step boundary after SIGTERM/SIGUSR1 (on any rank): flush, save a `signal`
        checkpoint, close the run and exit with 128 + signum."""
        signum = self._controller.signal or signal.SIGTERM
        name = signal.Signals(signum).name
        self._recorder.flush_partial()
        self._recorder.event("signal", "warning", f"{name} received at step {self._recorder.step}: "
                             "saving a final checkpoint and exiting")
        self._saver.save("signal", wait=True)
        self._shutdown("stopped", save=False, why=name)
        raise SystemExit(128 + signum)

    def _at_exit(self, crash_reason: str | None) -> None:
        if not self._timeline.closed:
            if crash_reason is not None:
                self._shutdown("crashed", save=False, why=crash_reason)
            else:
                self.close()

    def _shutdown(self, status: str, *, save: bool, why: str | None = None, collective: bool = False) -> None:
        """End the run. `collective`: every rank of a distributed job is here at the same step,
        so the last partial window is exchanged and the final save may run collectives."""
        timeline, rec = self._timeline, self._recorder
        if timeline.closed:
            return
        timeline.closed = True
        begun, timeline.begun = timeline.begun, False
        rec.attention = True  # so a record() after close() reaches begin_fresh() and fails loudly
        try:
            may_save = self._coordinator.meet_at_close(begun, collective)
            self._coordinator.flush_partial()
            if save and may_save and begun and rec.step > self._saver.last_save_step:
                self._saver.save("final", wait=True)
            self._saver.checkpointer.idle.wait()
            step = rec.step
            if status == "crashed":
                rec.event("crashed", "error", f"training process failed at step {step}: {why}")

            def finish(s: Store) -> None:
                s.update_run(status=status, step=step, ended_at=time.time(), heartbeat_at=time.time())

            self._writer.submit(finish)
        finally:
            self._saver.stop()
            self._writer.stop()
            self._peers.close()
            self._lr.remove()
            self._hooks.remove()
            if self._store is not None:
                self._store.close()
