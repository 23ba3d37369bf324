"""The agent's two background threads: the store writer and the checkpoint writer.

Both own their own SQLite connection. Neither may ever take the training process down: every
failure is logged (and, where the store still works, written as an event) and the thread goes on.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import checkpoint as ck
from .records import CommandInfo
from .store import Store

log = logging.getLogger("trainwarden.agent")

Job = Callable[[Store], "dict[str, Any] | None"]
_STOP = object()
_LINGER_S = 0.01
"""How long the store writer lets jobs gather after the first one: when steps are fast, a burst
of windows then costs one wake-up and one transaction instead of one each. Each wake-up and
each SQLite call hands the GIL back and forth with the training thread, which costs it more than
the writes themselves: half of record()'s 5 us in benchmarks/record_overhead.py without the wait."""


class StoreWriter(threading.Thread):
    """Writes windows, metrics, acknowledgements and heartbeats in order, batching what queues up
    within `_LINGER_S` into one transaction; between jobs it polls the commands table and heartbeats."""

    def __init__(self, store: Store, poll_s: float, heartbeat_s: float) -> None:
        super().__init__(name="trainwarden-store", daemon=True)
        self._store = store  # opened by the caller, used only by this thread from now on
        self._poll_s = poll_s
        self._heartbeat_s = heartbeat_s
        self._on_commands: Callable[[list[CommandInfo]], None] = _ignore
        self._heartbeat: Callable[[Store], None] = _ignore
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._hurry = threading.Event()  # set by flush() and stop(): write without lingering
        self._seen_command = 0

    def start(  # type: ignore[override]
        self, on_commands: Callable[[list[CommandInfo]], None], heartbeat: Callable[[Store], None],
    ) -> None:
        """Start writing: new pending commands go to `on_commands`, and `heartbeat` writes the
        run's sign of life (both called on this thread). Given here, not to the constructor,
        because what they reach needs the writer first."""
        self._on_commands = on_commands
        self._heartbeat = heartbeat
        super().start()

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every job submitted so far is written."""
        done = threading.Event()
        self._queue.put(lambda store: done.set())
        self._hurry.set()
        return done.wait(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        self._queue.put(_STOP)
        self._hurry.set()
        self.join(timeout)

    def run(self) -> None:
        store = self._store
        next_poll = next_beat = 0.0
        stopping = False
        try:
            while not stopping:
                now = time.monotonic()
                timeout = max(0.0, min(next_poll, next_beat) - now)
                batch: list[Any] = []
                try:
                    batch.append(self._queue.get(timeout=timeout))
                    self._hurry.wait(_LINGER_S)
                    self._hurry.clear()  # after the wait, so a job queued before a later set() is drained now
                    while len(batch) < 1000:
                        batch.append(self._queue.get_nowait())
                except queue.Empty:
                    pass
                if _STOP in batch:
                    stopping = True
                    batch = [j for j in batch if j is not _STOP]
                self._write(store, batch)
                now = time.monotonic()
                if now >= next_poll or stopping:
                    self._poll(store)
                    next_poll = now + self._poll_s
                if now >= next_beat:
                    self._guard(store, self._heartbeat)
                    next_beat = now + self._heartbeat_s
        finally:
            store.close()

    def _write(self, store: Store, batch: list[Job]) -> None:
        """Run a batch of jobs in one transaction. A job may return a dict of run-row fields to
        update (other return values are ignored); only the newest value of each is written."""
        if not batch:
            return
        try:
            with store.transaction():
                updates: dict[str, Any] = {}
                for job in batch:
                    out = job(store)
                    if isinstance(out, dict):
                        updates.update(out)
                if updates:
                    store.update_run(**updates)
        except Exception as exc:
            log.warning("trainwarden: batched store write failed (%s); retrying one by one", exc)
            for job in batch:
                self._guard(store, job)

    def _guard(self, store: Store, job: Job) -> None:
        try:
            with store.transaction():
                out = job(store)
                if isinstance(out, dict):
                    store.update_run(**out)
        except Exception as exc:
            log.warning("trainwarden: store write failed: %s", exc)

    def _poll(self, store: Store) -> None:
        try:
            commands = store.commands(status="pending", after_id=self._seen_command)
        except Exception as exc:
            log.warning("trainwarden: cannot read commands: %s", exc)
            return
        if commands:
            self._seen_command = commands[-1].id
            self._on_commands(commands)


class NoWriter:
    """The store writer of ranks other than 0: they write nothing to the store."""

    def start(self, on_commands: Any = None, heartbeat: Any = None) -> None:
        pass

    def submit(self, job: Any) -> None:
        pass

    def flush(self, timeout: float = 30.0) -> bool:
        return True

    def stop(self, timeout: float = 30.0) -> None:
        pass


def _ignore(_: Any) -> None:
    pass


@dataclass
class SaveJob:
    """A snapshot waiting to be written, and what to tell the store about it."""

    state: dict[str, Any]
    """The CPU snapshot (its tensors live in the reused snapshot buffers)."""
    step: int
    """Step the snapshot was taken after."""
    branch: int
    """Branch the state belongs to."""
    loss: float | None
    """Windowed training loss at the snapshot."""
    kind: str
    """best, last, manual, command, signal or final."""
    stall_s: float
    """Seconds the training thread spent taking the snapshot."""
    command: CommandInfo | None = None
    """The `save` command to acknowledge once the file is ready (or failed)."""
    submitted_at: float = 0.0
    """time.monotonic() when the training thread handed it over (for the write's wall time)."""
    future: Any = None
    """Sharded checkpoints: DCP's future for this rank's write (`state` is then empty)."""
    ckpt_id: int | None = None
    """Sharded checkpoints: the store row, made on the training thread so every rank knew the folder."""
    path: str | None = None
    """Sharded checkpoints: the folder, relative to the run folder."""


class Checkpointer(threading.Thread):
    """Writes snapshots to disk one at a time, marks them ready, applies retention; between
    saves, runs other slow work the next save depends on (`call`)."""

    def __init__(
        self, store: Store | None, keep_best: int, keep_last: int, current_branch: Callable[[], int],
        on_done: Callable[[SaveJob, int | None, float, str | None], None], run_dir: Any = None,
    ) -> None:
        super().__init__(name="trainwarden-checkpoint", daemon=True)
        # Opened by the caller, used only by this thread from now on. None on ranks other than 0
        # of a distributed job: they only wait for their part of sharded writes.
        self._store = store
        self._run_dir = store.run_dir if store is not None else run_dir
        self._keep_best = keep_best
        self._keep_last = keep_last
        self._current_branch = current_branch
        self._on_done = on_done
        self._queue: queue.SimpleQueue[SaveJob | Callable[[], None] | None] = queue.SimpleQueue()
        self.idle = threading.Event()
        self.idle.set()

    def submit(self, job: SaveJob) -> None:
        self.idle.clear()
        self._queue.put(job)

    def call(self, fn: Callable[[], None]) -> None:
        """Run `fn` on this thread; saves submitted after it wait for it (and `idle` covers it)."""
        self.idle.clear()
        self._queue.put(fn)

    def stop(self, timeout: float = 600.0) -> None:
        self._queue.put(None)
        self.join(timeout)

    def run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                break
            try:
                if isinstance(job, SaveJob) and job.future is not None:
                    self._write_sharded(self._store, job)
                elif isinstance(job, SaveJob):
                    self._write(self._store, job)
                else:
                    job()
            except Exception as exc:  # e.g. the store itself is unwritable: log, never raise
                if isinstance(job, SaveJob):
                    log.error("trainwarden: checkpoint at step %d failed: %s", job.step, exc)
                    self._on_done(job, None, 0.0, str(exc))
                else:
                    log.warning("trainwarden: background preparation failed: %s", exc)
            finally:
                if self._queue.empty():
                    self.idle.set()
        if self._store is not None:
            self._store.close()

    def _write_sharded(self, store: Store | None, job: SaveJob) -> None:
        """Wait for DCP's write of this rank's shards. Rank 0's completes only once every rank has
        written (DCP gathers their results before writing its metadata); rank 0 then writes the
        completion marker and marks the checkpoint ready. Other ranks (no store) only wait."""
        from . import sharded

        cpu0 = time.thread_time()
        folder = self._run_dir / str(job.path)
        try:
            job.future.result()
            if store is None:
                return
            nbytes, digest = sharded.finish(folder)
        except (Exception, sharded.CheckpointException) as exc:  # DCP's own is a BaseException
            error = sharded.why(exc)
            if store is None:
                log.error("trainwarden: this rank's part of checkpoint at step %d failed: %s", job.step, error)
                return
            sharded.remove(folder)
            assert job.ckpt_id is not None
            self._failed(store, job, job.ckpt_id, RuntimeError(error))
            return
        assert job.ckpt_id is not None
        self._ready(store, job, job.ckpt_id, nbytes, digest, cpu0)

    def _write(self, store: Store, job: SaveJob) -> None:
        cpu0 = time.thread_time()
        ckpt_id, rel = store.add_checkpoint(job.step, job.branch, job.loss, job.kind)
        try:
            nbytes, digest = ck.write_file(job.state, self._run_dir / rel)
        except Exception as exc:
            self._failed(store, job, ckpt_id, exc)
            return
        self._ready(store, job, ckpt_id, nbytes, digest, cpu0)

    def _failed(self, store: Store, job: SaveJob, ckpt_id: int, exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {exc.strerror}" if isinstance(exc, OSError) and exc.strerror else str(exc)
        message = (
            f"checkpoint {ckpt_id} at step {job.step} could not be written ({reason}); "
            "training continues and older checkpoints are intact"
        )
        with store.transaction():
            store.set_checkpoint_status(ckpt_id, "failed", reason)
            store.add_event("checkpoint_failed", "error", message, step=job.step, branch=job.branch,
                            data={"checkpoint": ckpt_id, "error": reason})
            if job.command is not None:
                store.ack_command(job.command.id, "rejected", f"checkpoint write failed: {reason}", job.step)
        log.error("trainwarden: %s", message)
        self._on_done(job, None, 0.0, reason)

    def _ready(self, store: Store, job: SaveJob, ckpt_id: int, nbytes: int, digest: str, cpu0: float) -> None:
        with store.transaction():
            store.checkpoint_ready(ckpt_id, nbytes, digest)
            if job.command is not None:
                store.ack_command(job.command.id, "applied", f"checkpoint {ckpt_id} at step {job.step} is ready", job.step)
        self._retain(store)
        self._on_done(job, ckpt_id, time.thread_time() - cpu0, None)

    def _retain(self, store: Store) -> None:
        ready = store.checkpoints(["ready"])
        segments = store.lineage(self._current_branch())
        for c in ck.retention(ready, segments, self._keep_best, self._keep_last):
            # The row first, then the file: a process killed in between leaves a `deleted` row
            # whose file the next attach removes, never a `ready` row without its file.
            if not store.retire_checkpoint(c.id):
                continue  # pinned by the supervisor since we listed them
            try:
                ck.remove_file(self._run_dir / c.path)
            except OSError as exc:
                log.warning("trainwarden: cannot delete %s: %s", c.path, exc)
                store.set_checkpoint_status(c.id, "ready")
