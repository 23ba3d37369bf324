"""The saver: when to checkpoint, taking the snapshot on the training thread, and handing it to
the checkpoint thread (one file written by rank 0, or every rank's shards with DCP)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import checkpoint as ck
from .cadence import save_due
from .config import AgentConfig
from .records import CheckpointInfo, CommandInfo
from .store import Store, StoreError
from .threads import Checkpointer, SaveJob
from .window import improved, window_stats

if TYPE_CHECKING:
    from .lr import LRControl
    from .peers import Peers
    from .recorder import LossRecorder


@dataclass
class TrainingObjects:
    """What a checkpoint captures and restores, as the training loop passed it to attach()."""

    model: torch.nn.Module
    """The model (plain, DDP-wrapped or FSDP2-sharded)."""
    optimizer: torch.optim.Optimizer
    """Its optimizer."""
    scheduler: Any = None
    """An LR scheduler, if any."""
    scaler: Any = None
    """A grad scaler, if any."""

    def state_tree(self) -> dict[str, Any]:
        """The live state a file checkpoint copies (tensors shared with the model and optimizer)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            **self.extra_state(),
        }

    def extra_state(self) -> dict[str, Any]:
        """Scheduler and scaler state (None for those not given)."""
        return {"scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None}


class Saver:
    """Checkpoints the training objects: cadence, snapshot buffers, file and sharded saves."""

    def __init__(
        self, config: AgentConfig, run_dir: Path, objects: TrainingObjects, sharded: bool, peers: Peers,
        store: Store | None, recorder: LossRecorder, lr: LRControl, best_loss: float | None,
    ) -> None:
        self.snapshots = ck.SnapshotBuffers()
        """CPU buffers a file checkpoint's snapshot is copied into, reused from save to save."""
        self.reserved = threading.Event()
        """Set once the checkpoint thread has allocated the snapshot buffers (or failed to)."""
        self.last_save_step = 0
        """Step of the last save (or of the restored checkpoint)."""
        self.best_loss = best_loss
        """Lowest loss saved so far: a save that beats it by `best_margin` is a "best"."""
        self._config = config
        self._run_dir = run_dir
        self._objects = objects
        self._sharded = sharded
        self._peers = peers
        self._store = store  # rank 0's training-thread connection: sharded rows are made here
        self._recorder = recorder
        self._lr = lr
        self._reserving = False  # whether the buffers were handed to the checkpoint thread to reserve
        self._stager: Any = None  # sharded checkpoints: DCP's staging buffers, kept between saves
        self._last_save_time = time.monotonic()
        self._save_cost_s: float | None = None  # measured stall + write time of the last save
        # A sharded write runs on DCP's threads (their CPU is not measured here), and in a
        # distributed job whatever slows rank 0 while it writes (GIL hand-offs, a core shared with
        # a rank) holds every rank: there a save costs its write's wall time, not the writer's
        # CPU time. With CPU time, saves cost a 2-rank DDP job 2-3x their share.
        self._cost_is_wall_time = sharded or peers.world_size > 1
        self.checkpointer = Checkpointer(Store.open(run_dir) if peers.leader else None, config.keep_best,
                                         config.keep_last, lambda: recorder.branch, self._on_saved, run_dir)
        """The checkpoint thread (rank 0 writes files and rows; other ranks wait for their shards)."""

    def maybe_autosave(self, loss: float | None) -> None:
        """Save when the cadence says so: "best" if the loss improved, else "last".
        Called only for full windows without a NaN/Inf loss."""
        if self.autosave_due():
            self.save(None, wait=False, loss=loss)

    def autosave_due(self) -> bool:
        """Whether the cadence wants a save at this window boundary (also starts the buffer reservation)."""
        if not self._reserving and not self._sharded:  # DCP stages into its own buffers
            self._reserve_snapshots()
        since = time.monotonic() - self._last_save_time
        if not save_due(self._config, since, self._recorder.step - self.last_save_step, self._save_cost_s):
            return False
        if not self.checkpointer.idle.is_set():
            # A save in flight: try at the next window. The buffer reservation alone delays only
            # adaptive saves, whose timing is free; fixed intervals keep their steps and wait for it.
            fixed = self._config.save_every_steps is not None or self._config.save_every_seconds is not None
            if self.reserved.is_set() or not fixed or self._sharded:
                return False
        return True

    def save(self, kind: str | None, *, wait: bool, loss: float | None = None, command: CommandInfo | None = None) -> None:
        """Checkpoint now; `kind` None: "best" if `loss` improved on the best saved, else "last".
        In a distributed job every rank calls this at the same step (it runs collectives)."""
        self.checkpointer.idle.wait()  # the snapshot buffers are reused: one save in flight
        t0 = time.perf_counter()
        rec = self._recorder
        history: list[float] = []
        if self._peers.leader:
            history = rec.history.tolist() + rec.pending()
            if loss is None and history:
                stats = window_stats(history[-self._config.window:])
                loss = stats["mean"] if stats["nonfinite"] == 0 else None
        if kind is None:
            kind = "best" if improved(loss, self.best_loss, self._config.best_margin) else "last"
        if kind == "best" or (loss is not None and improved(loss, self.best_loss, 0.0)):
            self.best_loss = loss
        self._last_save_time = time.monotonic()
        self.last_save_step = rec.step
        common = {"step": rec.step, "branch": rec.branch, "lr_multiplier": self._lr.multiplier,
                  "loss_history": torch.tensor(history, dtype=torch.float32)}
        job = SaveJob({}, rec.step, rec.branch, loss, kind, 0.0, command)
        if self._sharded:
            self._save_sharded(job, common, t0)
        else:
            self._save_file(job, common, t0)
        if wait:
            self.checkpointer.idle.wait()

    def _save_file(self, job: SaveJob, common: dict[str, Any], t0: float) -> None:
        """Rank 0 snapshots into the reused buffers and the checkpoint thread writes one file."""
        rngs = self._peers.rng_states()
        if not self._peers.leader:
            return  # rank 0 writes the file, with every rank's RNG states
        state = self.snapshots.copy(self._objects.state_tree())
        state.update(format=ck.FORMAT, version=ck.FORMAT_VERSION, rng=ck.capture_rng(), **common)
        if rngs is not None:
            state["rng_ranks"] = rngs
        job.state, job.stall_s, job.submitted_at = state, time.perf_counter() - t0, time.monotonic()
        self.checkpointer.submit(job)

    def _save_sharded(self, job: SaveJob, common: dict[str, Any], t0: float) -> None:
        """Every rank stages its shards now and DCP writes them in the background; rank 0's
        checkpoint thread marks the checkpoint ready once every rank has finished."""
        from . import sharded

        ckpt_id, rel = None, None
        if self._store is not None:
            ckpt_id, rel = self._store.add_checkpoint(job.step, job.branch, job.loss, job.kind, suffix=sharded.SUFFIX)
        rel = self._peers.from_leader(rel)
        o = self._objects
        extra = o.extra_state()
        state = sharded.save_state(o.model, o.optimizer, {**common, **extra} if self._peers.leader else None,
                                   ck.capture_rng(), self._peers.rank)
        if self._stager is None:
            self._stager = sharded.make_stager()
        try:
            future = sharded.start_save(state, self._run_dir / rel, self._peers.checkpoint_group, self._stager)
        except Exception as exc:  # e.g. an unwritable folder: training goes on, as for a file
            future = _Failed(exc)
        job.stall_s, job.submitted_at = time.perf_counter() - t0, time.monotonic()
        job.future, job.ckpt_id, job.path = future, ckpt_id, rel
        self.checkpointer.submit(job)

    def restored(self, step: int) -> None:
        """A checkpoint's state was restored: it counts as saved at its step."""
        self.last_save_step = step

    def stop(self) -> None:
        """Stop the checkpoint thread (after the save in flight) and release DCP's staging buffers."""
        self.checkpointer.stop()
        if self._stager is not None:
            self._stager.close()

    def _reserve_snapshots(self) -> None:
        """At the first full window (the optimizer has its state by then), have the checkpoint
        thread allocate the snapshot buffers, so the first save stalls only for the copy."""
        self._reserving = True
        tree = self._objects.state_tree()

        def reserve() -> None:
            try:
                self.snapshots.reserve(tree)
            finally:
                self.reserved.set()

        self.checkpointer.call(reserve)

    def _on_saved(self, job: SaveJob, ckpt_id: int | None, writer_cpu_s: float, error: str | None) -> None:
        """Called on the checkpoint thread when a save finished (or failed)."""
        if error is None:
            write_s = time.monotonic() - job.submitted_at if self._cost_is_wall_time else writer_cpu_s
            self._save_cost_s = job.stall_s + write_s
        else:
            self.best_loss = min((c.loss for c in ck.best_first(self._ready_checkpoints())), default=None)

    def _ready_checkpoints(self) -> list[CheckpointInfo]:
        try:
            with Store.open(self._run_dir) as s:
                return s.checkpoints(["ready"])
        except StoreError:
            return []


class _Failed:
    """The future of a sharded save that could not even start: raises its error when asked."""

    def __init__(self, exc: Exception) -> None:
        self._exc = exc

    def result(self, timeout: float | None = None) -> None:
        raise self._exc
