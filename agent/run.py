"""The agent: what a training loop talks to.

`record()` is the hot path: it appends the detached loss to a buffer and returns. Once per
window the buffer goes to the CPU in one copy, is summarised, and handed to the store writer
thread; automatic checkpoint decisions are taken there too. Commands from the store are applied
at the step boundary inside `record()`; the training thread never waits for the store, except
when a checkpoint is asked for while the previous one is still being written.
"""
from __future__ import annotations

import atexit
import collections
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from array import array
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from . import checkpoint as ck
from .cadence import save_due
from .commands import CommandError, validate
from .config import AgentConfig
from .lr import LRControl
from .records import CheckpointInfo, CommandInfo
from . import dist
from .store import Store, StoreError
from .threads import Checkpointer, SaveJob, StoreWriter
from .window import improved, window_stats

log = logging.getLogger("trainwarden.agent")

ENV_RUN_DIR = "TRAINWARDEN_RUN_DIR"
from . import __version__ as VERSION
_SIGNALS = ("SIGTERM", "SIGUSR1")
SHARED_CHECK_S = 35.0
"""How long a rank waits to see rank 0's probe file in the checkpoints folder before concluding
that it is not shared (NFS's default attribute cache keeps a directory listing up to 30 s);
$TRAINWARDEN_SHARED_CHECK_S overrides it."""


class AttachError(StoreError):
    """`attach()` cannot start recording; the message says why in one line."""


class _Rejected(Exception):
    """A command that cannot be applied; the message is the reason given to the issuer."""


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
        self.step = 0
        """Steps recorded on the current history (the checkpoint's step after a resume or rollback)."""
        self.should_stop = False
        """True once a `stop` command arrived: leave the loop and call close()."""

        self._sharded = dist.is_sharded(model) if distributed_checkpoint is None else bool(distributed_checkpoint)
        if self._sharded and not dist.sharded_supported():
            raise AttachError(f"sharded checkpoints need torch >= {dist.SHARDED_MIN_TORCH}; this is torch {torch.__version__}")
        self._group = dist.join(config.dist_timeout_s)  # None for a single process
        self._leader = self._group is None or self._group.leader
        self._rank = self._group.rank if self._group is not None else 0
        self._store: Store | None = None  # rank 0's only: other ranks never open the store
        self._branch, self._next_branch, self._best_loss, multiplier = 0, 1, None, 1.0
        failure: StoreError | None = None
        if self._leader:
            try:
                multiplier = self._open_store(name)
            except StoreError as exc:
                failure = exc
        if self._group is not None:  # every rank fails together, or none waits forever for rank 0
            reason, multiplier = self._group.from_leader((str(failure) if failure else None, multiplier))
            if reason is not None and failure is None:
                failure = AttachError(f"rank 0 could not attach: {reason}")
        if failure is not None:
            raise failure
        if self._group is not None:
            self._check_shared_checkpoints()
        self._lr = LRControl(optimizer, multiplier)

        self._buf: list[Any] = []  # this window's losses: floats, or detached device tensors
        self._buf_on_device = False  # whether _buf holds a device tensor (then it needs _to_floats)
        self._history = array("f")  # per-step losses of the current history, flushed windows only
        self._window_t0 = time.perf_counter()
        self._begun = False
        self._closed = False
        self._paused = False
        self._window = config.window
        self._attention = True  # commands, a signal, or (first) deciding where the history goes on
        self._inbox: collections.deque[CommandInfo] = collections.deque()
        self._wake = threading.Event()
        self._signal: int | None = None
        self._crashed = False

        self._snapshots = ck.SnapshotBuffers()
        self._stager: Any = None  # sharded checkpoints: DCP's staging buffers, kept between saves
        self._reserving = False  # whether the snapshot buffers were handed to the checkpoint thread to reserve
        self._reserved = threading.Event()  # set once they are (or the attempt failed)
        self._last_save_time = time.monotonic()
        self._last_save_step = 0
        self._save_cost_s: float | None = None  # measured stall + writer CPU of the last save

        self._plan_entry: dict[str, Any] = {}  # distributed: the plan entry of the command being applied
        self._preloaded: dict[int, dict[str, Any] | None] = {}  # rank 0: rollback states verified for the plan
        self.applied_commands: list[tuple[int, str, int]] = []
        """(command id, kind, step) of every command this process applied, in order: under torchrun,
        every rank's list is the same."""

        self._writer: StoreWriter | _NoWriter
        if self._leader:
            self._writer = StoreWriter(Store.open(run_dir), config.command_poll_interval_s,
                                       config.heartbeat_interval_s, self._on_commands, self._write_heartbeat)
        else:
            self._writer = _NoWriter()
        self._checkpointer = Checkpointer(Store.open(run_dir) if self._leader else None, config.keep_best,
                                          config.keep_last, lambda: self._branch, self._on_saved, run_dir)
        self._writer.start()
        self._checkpointer.start()
        self._install_handlers()

    def _open_store(self, name: str | None) -> float:
        """Rank 0: open (or create) the store and claim the run; returns the LR multiplier."""
        run_dir, config = self.run_dir, self.config
        store = Store.open(run_dir, create=True)
        self._store = store
        try:
            store.init_run(name or run_dir.name, config.model_dump(), VERSION)
            info = store.run()
            self._refuse_second_writer(info)
            self._recover_interrupted_saves()
            self._branch = info.branch
            self._next_branch = store.next_branch_id()
            self._best_loss = min((c.loss for c in ck.best_first(store.checkpoints(["ready"]))), default=None)
            now = time.time()
            store.update_run(status="running", pid=os.getpid(), host=socket.gethostname(), started_at=now,
                             heartbeat_at=now, ended_at=None, agent_version=VERSION, config=config.model_dump())
            return info.lr_multiplier
        except StoreError:
            store.close()
            raise
        except Exception as exc:
            store.close()
            raise AttachError(f"cannot attach to {run_dir}: {exc}") from None

    def _check_shared_checkpoints(self) -> None:
        """Every rank must see the checkpoints folder rank 0 writes (on several nodes: shared
        storage), or sharded checkpoints would be missing the shards of other nodes and a rollback
        could not load on them. Rank 0 leaves a file there and every rank looks for it."""
        assert self._group is not None
        folder = self.run_dir / "checkpoints"
        name = f".shared-{os.getpid()}-{time.time_ns()}" if self._leader else None
        if self._leader:
            (folder / str(name)).touch()
        name = self._group.from_leader(name)
        deadline = time.monotonic() + float(os.environ.get("TRAINWARDEN_SHARED_CHECK_S", SHARED_CHECK_S))
        while not (seen := (folder / name).exists()) and time.monotonic() < deadline:
            time.sleep(0.5)  # NFS may take its attribute-cache time to show a new file
        blind = [(rank, host) for rank, host in enumerate(self._group.exchange(None if seen else socket.gethostname()))
                 if host is not None]
        if self._leader:
            (folder / name).unlink(missing_ok=True)
        if blind:
            rank, host = blind[0]
            message = (f"rank {rank} (host {host}) does not see {folder} as rank 0 writes it: checkpoints of a job on "
                       "several nodes must be on storage every node shares (a symlinked checkpoints/ folder; see "
                       "docs/operations.md)")
            if self._store is not None:
                self._store.add_event("attach_refused", "error", message)
                self._store.update_run(status="crashed", ended_at=time.time())
                self._store.close()
            raise AttachError(message)

    # ------------------------------------------------------------------ public
    @property
    def world_size(self) -> int:
        """How many ranks the job has (1 for a single process)."""
        return self._group.world_size if self._group is not None else 1

    @property
    def rank(self) -> int:
        """This process's rank (0 for a single process); rank 0 owns the store."""
        return self._rank

    @property
    def lr(self) -> float:
        """The effective learning rate of parameter group 0 (schedule times multiplier)."""
        return self._lr.effective_lr

    @property
    def branch(self) -> int:
        """The branch of history being recorded."""
        return self._branch

    def resume(self) -> int:
        """Load the newest good checkpoint of the run's current history, if any.

        Restores weights, optimizer, scheduler, scaler, RNG states, the step counter and the loss
        history. A checkpoint that fails its checksum or the safe loader is marked corrupt, with a
        warning event, and the previous one is tried. Returns the step to continue from (0 if fresh).
        """
        if self._begun:
            raise RuntimeError("resume() must be called before the first record()")
        candidates: list[CheckpointInfo] = []
        if self._store is not None:
            segments = self._store.lineage(self._branch)
            candidates = ck.newest_first(c for c in self._store.checkpoints(["ready"]) if ck.in_lineage(c, segments))
        while True:
            loaded = self._load_first(candidates) if self._leader else None
            if self._group is not None:  # rank 0 chose; every rank loads the same checkpoint
                chosen = self._group.from_leader(loaded[0] if loaded else None)
                loaded = (chosen, loaded[1] if loaded else None) if chosen is not None else None
            if loaded is None:
                self._begin_fresh()
                return 0
            info = loaded[0]
            try:
                state = self._load_everywhere(info, loaded[1])
                break
            except _Rejected as exc:  # some rank could not load it: the next older one, on every rank
                self._mark_corrupt(info, str(exc))
                candidates = [c for c in candidates if (c.step, c.id) < (info.step, info.id)]
        self._restore(state)
        reason = f"resumed from checkpoint {info.id} at step {info.step} after a restart"
        self._continue_from(info, reason)
        self._event("resumed", "info", f"resumed from checkpoint {info.id} at step {info.step}",
                    {"checkpoint": info.id, "branch": self._branch})
        return self.step

    def record(self, loss: torch.Tensor | float) -> None:
        """Record the training loss of the step just taken. Cheap: no GPU sync, no I/O."""
        if isinstance(loss, torch.Tensor):
            if loss.is_cpu:
                # Nothing to wait for on the CPU, and a float now (0.13 us) is cheaper than a
                # detached tensor (0.28 us) converted at the window's end.
                loss = loss.item()
            else:
                loss = loss.detach()  # converted with the rest of the window, in one transfer
                self._buf_on_device = True
        else:
            loss = float(loss)
        self._buf.append(loss)
        self.step += 1
        if self._attention:  # rare: the first step, a command, a signal
            self._service()
        if self.step % self._window == 0:
            if self._group is None:
                self._close_window()
            else:
                self._boundary()

    def record_val(self, value: torch.Tensor | float, name: str = "val_loss") -> None:
        """Record a validation loss or another named scalar at the current step."""
        number = float(value.detach().float().cpu()) if isinstance(value, torch.Tensor) else float(value)
        branch, step = self._branch, self.step
        self._writer.submit(lambda s: s.add_metric(branch, step, name, number))

    def save(self, kind: str = "manual") -> None:
        """Checkpoint now (waits only if the previous checkpoint is still being written)."""
        if not self._begun:
            self._begin_fresh()
        self._save(kind, wait=True)

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until the checkpoint being written (if any) is on disk and everything recorded
        in complete windows is in the store. Training never needs this; scripts and tests may."""
        self._checkpointer.idle.wait(timeout)
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
        elif issubclass(kind, SystemExit):  # after a signal the run is closed already
            self._shutdown("stopped" if self.should_stop else "finished", save=self.config.save_on_close,
                           collective=self._group is None)
        elif issubclass(kind, KeyboardInterrupt):
            self._shutdown("stopped", save=False)
        else:
            self._shutdown("crashed", save=False, why=f"{kind.__name__}: {exc}")

    # ------------------------------------------------------------- beginnings
    def _begin_fresh(self) -> None:
        """Start at step 0. A history that already has steps gets a new branch, so no step is
        recorded twice."""
        if self._closed:
            raise RuntimeError("this run is closed: attach again to record more steps")
        self._begun = True
        if self._store is not None and self._store.max_step(self._branch) > 0:
            self._fork(self._branch, 0, None, "started again from step 0 (no usable checkpoint)")

    def _continue_from(self, info: CheckpointInfo, reason: str) -> None:
        """Continue after `info`'s step: fill any steps the store lacks from the checkpoint's
        history, and fork a new branch if the store already has steps after it."""
        self._begun = True
        if self._store is None:  # not rank 0: the store is rank 0's business
            self._branch = info.branch
            return
        recorded = self._store.max_step(info.branch)
        if recorded < info.step:
            missing = self._history[recorded:info.step].tolist()
            self._writer.submit(lambda s: s.add_window(info.branch, recorded + 1, missing, window_stats(missing), None, None))
        if info.branch != self._branch or recorded > info.step:
            self._fork(info.branch, info.step, info.id, reason)

    def _fork(self, parent: int, fork_step: int, ckpt_id: int | None, reason: str) -> tuple[int, int]:
        new = self._next_branch
        self._next_branch += 1
        self._branch = new
        self._writer.submit(lambda s: (s.add_branch(new, parent, fork_step, ckpt_id, reason),
                                       s.update_run(branch=new, step=fork_step)))
        return parent, new

    # --------------------------------------------------------------- windows
    def _close_window(self) -> None:
        """Move the buffered losses to the CPU in one go and hand them to the writer."""
        values = self._take_window()
        if not values:
            return
        stats = self._write_window(values)
        if len(values) == self._window and stats["nonfinite"] == 0:
            self._maybe_autosave(stats["mean"])

    def _take_window(self) -> list[float]:
        buf = self._buf
        self._buf = []
        values = _to_floats(buf) if self._buf_on_device else buf
        self._buf_on_device = False
        return values

    def _write_window(self, values: list[float]) -> dict[str, Any]:
        """Append a window to the history and hand it to the store writer; returns its stats."""
        now = time.perf_counter()
        steps_per_s = len(values) / max(now - self._window_t0, 1e-9)
        self._window_t0 = now
        self._history.extend(values)
        stats = window_stats(values)
        branch, first, lr = self._branch, self.step - len(values) + 1, self.lr

        def write(s: Store) -> dict[str, Any]:
            s.add_window(branch, first, values, stats, lr, steps_per_s)
            return {"step": first + len(values) - 1, "last_loss": stats["mean"], "lr": lr}

        self._writer.submit(write)
        return stats

    def _maybe_autosave(self, loss: float | None) -> None:
        """Save when the cadence says so: "best" if the loss improved, else "last".
        A window with a NaN/Inf loss is never saved automatically."""
        if self._autosave_due():
            self._save(None, wait=False, loss=loss)

    def _autosave_due(self) -> bool:
        if not self._reserving and not self._sharded:  # DCP stages into its own buffers
            self._reserve_snapshots()
        since = time.monotonic() - self._last_save_time
        if not save_due(self.config, since, self.step - self._last_save_step, self._save_cost_s):
            return False
        if not self._checkpointer.idle.is_set():
            # A save in flight: try at the next window. The buffer reservation alone delays only
            # adaptive saves, whose timing is free; fixed intervals keep their steps and wait for it.
            fixed = self.config.save_every_steps is not None or self.config.save_every_seconds is not None
            if self._reserved.is_set() or not fixed or self._sharded:
                return False
        return True

    # ------------------------------------------------------------ distributed
    def _boundary(self, closing: bool = False) -> None:
        """A window boundary of a distributed job: one exchange settles what every rank does
        next (save, commands, a signal); rank 0 writes the window (its own losses, or the mean)."""
        assert self._group is not None
        share = self.config.loss_across_ranks == "mean"
        if self._leader or share:
            values = self._take_window()
        else:  # rank 0's losses are the store's: no need to copy this rank's to the CPU
            values, self._buf, self._buf_on_device = [], [], False
        plan = None
        if self._leader:
            full = len(values) == self._window and all(math.isfinite(v) for v in values)
            plan = {"save": not closing and full and self._autosave_due(),
                    "commands": [] if closing else self._drain_inbox()}
        got = self._group.exchange({"signal": self._signal, "plan": plan, "losses": values if share else None})
        stats = None
        if self._leader and values:
            if share:  # the mean over ranks, step by step; every rank recorded the same steps
                values = [sum(col) / len(col) for col in zip(*(g["losses"] for g in got))]
            stats = self._write_window(values)
        if closing:
            return
        self._follow(got, stats)

    def _follow(self, got: list[dict[str, Any]], stats: dict[str, Any] | None) -> None:
        """Do on this rank what rank 0's plan says, in the same order as every other rank."""
        plan = got[0]["plan"]
        if plan["save"]:
            self._save(None, wait=False, loss=stats["mean"] if stats and stats["nonfinite"] == 0 else None)
        self._obey(got)
        if self._paused:
            self._pause_loop()

    def _obey(self, got: list[dict[str, Any]]) -> None:
        """Apply the plan's commands, then act on a signal any rank reported (it exits)."""
        for entry in got[0]["plan"]["commands"]:
            self._plan_entry = entry
            self._apply(entry["cmd"])
        self._plan_entry = {}
        signum = next((g["signal"] for g in got if g["signal"]), None)
        if signum is not None:
            self._signal = signum
            self._on_signal_at_boundary()

    def _drain_inbox(self) -> list[dict[str, Any]]:
        """Rank 0: the pending commands as plan entries. A rollback's target is chosen and verified
        here, so every rank loads the same checkpoint (or every rank rejects it)."""
        entries = []
        while self._inbox:
            cmd = self._inbox.popleft()
            entry: dict[str, Any] = {"cmd": cmd}
            if cmd.kind == "rollback":
                try:
                    info, state = self._rollback_target(validate(cmd.kind, cmd.args)["target"])
                    entry["target"] = info
                    self._preloaded[info.id] = state
                except (CommandError, _Rejected) as exc:
                    entry["reject"] = str(exc)
            entries.append(entry)
        return entries

    def _reserve_snapshots(self) -> None:
        """At the first full window (the optimizer has its state by then), have the checkpoint
        thread allocate the snapshot buffers, so the first save stalls only for the copy."""
        self._reserving = True
        tree = self._state_tree()

        def reserve() -> None:
            try:
                self._snapshots.reserve(tree)
            finally:
                self._reserved.set()

        self._checkpointer.call(reserve)

    def _state_tree(self) -> dict[str, Any]:
        """The live state a checkpoint copies (tensors shared with the model and optimizer)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    # ------------------------------------------------------------ checkpoints
    def _save(self, kind: str | None, *, wait: bool, loss: float | None = None, command: CommandInfo | None = None) -> None:
        """Checkpoint now; `kind` None: "best" if `loss` improved on the best saved, else "last".
        In a distributed job every rank calls this at the same step (it runs collectives)."""
        self._checkpointer.idle.wait()  # the snapshot buffers are reused: one save in flight
        t0 = time.perf_counter()
        history: list[float] = []
        if self._leader:
            pending = _to_floats(self._buf) if self._buf_on_device else self._buf
            history = self._history.tolist() + pending
            if loss is None and history:
                stats = window_stats(history[-self.config.window:])
                loss = stats["mean"] if stats["nonfinite"] == 0 else None
        if kind is None:
            kind = "best" if improved(loss, self._best_loss, self.config.best_margin) else "last"
        if kind == "best" or (loss is not None and improved(loss, self._best_loss, 0.0)):
            self._best_loss = loss
        self._last_save_time = time.monotonic()
        self._last_save_step = self.step
        common = {"step": self.step, "branch": self._branch, "lr_multiplier": self._lr.multiplier,
                  "loss_history": torch.tensor(history, dtype=torch.float32)}
        if self._sharded:
            self._save_sharded(kind, loss, common, command, t0)
        else:
            rngs = self._group.exchange(ck.capture_rng()) if self._group is not None else None
            if not self._leader:
                return  # rank 0 writes the file, with every rank's RNG states
            state = self._snapshots.copy(self._state_tree())
            state.update(format=ck.FORMAT, version=ck.FORMAT_VERSION, rng=ck.capture_rng(), **common)
            if rngs is not None:
                state["rng_ranks"] = rngs
            self._checkpointer.submit(SaveJob(state, self.step, self._branch, loss, kind, time.perf_counter() - t0,
                                              command, time.monotonic()))
        if wait:
            self._checkpointer.idle.wait()

    def _save_sharded(self, kind: str, loss: float | None, common: dict[str, Any],
                      command: CommandInfo | None, t0: float) -> None:
        """Every rank stages its shards now and DCP writes them in the background; rank 0's
        checkpoint thread marks the checkpoint ready once every rank has finished."""
        from . import sharded

        ckpt_id, rel = None, None
        if self._store is not None:
            ckpt_id, rel = self._store.add_checkpoint(self.step, self._branch, loss, kind, suffix=sharded.SUFFIX)
        if self._group is not None:
            rel = self._group.from_leader(rel)
        extra = {"scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                 "scaler": self.scaler.state_dict() if self.scaler is not None else None}
        state = sharded.save_state(self.model, self.optimizer, {**common, **extra} if self._leader else None,
                                   ck.capture_rng(), self._rank)
        group = self._group.checkpoint if self._group is not None else None
        if self._stager is None:
            self._stager = sharded.make_stager()
        try:
            future = sharded.start_save(state, self.run_dir / rel, group, self._stager)
        except Exception as exc:  # e.g. an unwritable folder: training goes on, as for a file
            future = _Failed(exc)
        self._checkpointer.submit(SaveJob({}, self.step, self._branch, loss, kind, time.perf_counter() - t0,
                                          command, time.monotonic(), future, ckpt_id, rel))

    def _on_saved(self, job: SaveJob, ckpt_id: int | None, writer_cpu_s: float, error: str | None) -> None:
        """Called on the checkpoint thread when a save finished (or failed)."""
        if error is None:
            write_s = writer_cpu_s
            if self._group is not None or self._sharded:
                # The write's wall time, not the writer's CPU time: a sharded write runs on DCP's
                # threads (their CPU is not measured here), and in a distributed job whatever slows
                # rank 0 while it writes (GIL hand-offs, a core shared with a rank) holds every rank.
                # With CPU time, saves cost a 2-rank DDP job 2-3x their share (distributed_overhead.py).
                write_s = time.monotonic() - job.submitted_at
            self._save_cost_s = job.stall_s + write_s
        else:
            self._best_loss = min((c.loss for c in ck.best_first(self._checkpointer_ready())), default=None)

    def _checkpointer_ready(self) -> list[CheckpointInfo]:
        try:
            with Store.open(self.run_dir) as s:
                return s.checkpoints(["ready"])
        except StoreError:
            return []

    def _load_first(self, candidates: list[CheckpointInfo]) -> tuple[CheckpointInfo, dict[str, Any] | None] | None:
        """The first candidate that loads (a file) or verifies (a sharded folder, whose loading
        is collective) cleanly; the others are marked corrupt with an event."""
        for info in candidates:
            try:
                if _is_sharded_path(info.path):
                    from . import sharded
                    sharded.verify(self.run_dir / info.path, info.checksum)
                    return info, None
                return info, ck.load_file(self.run_dir / info.path, info.checksum)
            except ck.CheckpointCorrupt as exc:
                self._mark_corrupt(info, str(exc))
        return None

    def _mark_corrupt(self, info: CheckpointInfo, reason: str) -> None:
        self._last_load_error = reason
        self._writer.submit(lambda s, i=info, r=reason: (
            s.set_checkpoint_status(i.id, "corrupt", r),
            s.add_event("checkpoint_corrupt", "warning", f"checkpoint {i.id} (step {i.step}) skipped: {r}",
                        step=i.step, branch=i.branch, data={"checkpoint": i.id})))
        if self._leader:
            log.warning("trainwarden: checkpoint %d skipped: %s", info.id, reason)

    def _load_everywhere(self, info: CheckpointInfo, state: dict[str, Any] | None) -> dict[str, Any]:
        """`info`'s state on this rank (a sharded one is loaded into the model and optimizer
        already). In a distributed job every rank must succeed, else every rank gets _Rejected."""
        problem = None
        try:
            if _is_sharded_path(info.path):
                from . import sharded
                group = self._group.sync if self._group is not None else None
                common, rng = sharded.load(self.run_dir / info.path, self.model, self.optimizer, self._rank, group)
                state = {**common, "rng": rng}
            elif state is None:
                state = ck.load_file(self.run_dir / info.path, info.checksum)
        except ck.CheckpointCorrupt as exc:
            problem = f"rank {self._rank}: {exc}"
        if self._group is not None:
            problems = [p for p in self._group.exchange(problem) if p]
            if problems:
                raise _Rejected(f"checkpoint {info.id} cannot be loaded on every rank ({problems[0]})")
        elif problem is not None:
            raise _Rejected(f"checkpoint {info.id} cannot be used: {problem}")
        assert state is not None
        return state

    def _restore(self, state: dict[str, Any]) -> None:
        if "model" in state:  # a sharded checkpoint's weights were loaded by DCP already
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        rng = state.get("rng") if self._rank == 0 else None
        ranks = state.get("rng_ranks")
        if ranks is not None:  # written by rank 0 of a distributed job: each rank its own
            rng = ranks[self._rank] if self._rank < len(ranks) else None
        if rng is not None:  # None: saved by fewer ranks than load it; this rank keeps its own
            ck.restore_rng(rng)
        self.step = int(state["step"])
        self._history = array("f", state["loss_history"].tolist())
        self._buf = []
        self._buf_on_device = False
        self._last_save_step = self.step
        self._window_t0 = time.perf_counter()

    # --------------------------------------------------------------- commands
    def _on_commands(self, commands: list[CommandInfo]) -> None:
        """Called on the store thread when new commands are pending."""
        self._inbox.extend(commands)
        self._attention = True
        self._wake.set()

    def _service(self) -> None:
        """Apply what other threads left for the training thread, at a step boundary."""
        self._attention = False
        if not self._begun:
            self._begin_fresh()
        if self._group is not None:  # distributed: commands and signals wait for the window boundary
            return
        while self._inbox:
            self._apply(self._inbox.popleft())
        if self._paused:
            self._pause_loop()
        if self._signal is not None:
            self._on_signal_at_boundary()

    def _apply(self, cmd: CommandInfo) -> None:
        try:
            args = validate(cmd.kind, cmd.args)
            getattr(self, f"_cmd_{cmd.kind}")(cmd, args)
            self.applied_commands.append((cmd.id, cmd.kind, self.step))
        except (CommandError, _Rejected) as exc:
            self._ack(cmd, "rejected", str(exc))
        except Exception as exc:  # a command must never kill training
            log.exception("trainwarden: command %d (%s) failed", cmd.id, cmd.kind)
            self._ack(cmd, "rejected", f"failed: {type(exc).__name__}: {exc}")

    def _ack(self, cmd: CommandInfo, status: str, result: str, run: dict[str, Any] | None = None,
             event: tuple[str, str] | None = None) -> None:
        """Acknowledge a command together with its effect on the run row, in one transaction:
        if the process dies before it is written, the command is still pending and is applied
        again by the next process, so its effect is neither lost nor doubled."""
        step, branch = self.step, self._branch

        def write(s: Store) -> None:
            with s.transaction():
                s.ack_command(cmd.id, status, result, step)
                if run:
                    s.update_run(**run)
                if event:
                    s.add_event(event[0], "info", f"{event[1]} (command {cmd.id} from {cmd.issuer})",
                                step=step, branch=branch, data={"command": cmd.id})

        self._writer.submit(write)

    def _cmd_pause(self, cmd: CommandInfo, args: dict[str, Any]) -> None:
        if self._paused:
            raise _Rejected("already paused")
        self._flush_partial()
        self._paused = True
        self._ack(cmd, "applied", f"paused at step {self.step}", {"status": "paused", "step": self.step})

    def _cmd_resume(self, cmd: CommandInfo, args: dict[str, Any]) -> None:
        if not self._paused:
            raise _Rejected("not paused")
        self._paused = False
        self._ack(cmd, "applied", f"resumed at step {self.step}", {"status": "running"})

    def _cmd_stop(self, cmd: CommandInfo, args: dict[str, Any]) -> None:
        self.should_stop = True
        self._paused = False
        self._ack(cmd, "applied", f"stopping at step {self.step}")

    def _cmd_save(self, cmd: CommandInfo, args: dict[str, Any]) -> None:
        self._save("command", wait=False, command=cmd)  # acknowledged by the checkpoint thread

    def _cmd_set_lr(self, cmd: CommandInfo, args: dict[str, Any]) -> None:
        scheduled = self._lr.scheduled_lr
        if not scheduled > 0:
            raise _Rejected(f"the schedule's learning rate is {scheduled} at this step; use a scale factor instead")
        self._set_multiplier(cmd, args["value"] / scheduled)

    def _cmd_scale_lr(self, cmd: CommandInfo, args: dict[str, Any]) -> None:
        self._set_multiplier(cmd, self._lr.multiplier * args["factor"])

    def _set_multiplier(self, cmd: CommandInfo, multiplier: float) -> None:
        if not (math.isfinite(multiplier) and multiplier > 0):
            raise _Rejected(f"the resulting LR multiplier {multiplier} is not a positive finite number")
        before = self.lr
        self._lr.multiplier = multiplier
        text = f"learning rate {before:.6g} -> {self.lr:.6g} (multiplier {multiplier:.6g})"
        self._ack(cmd, "applied", text, {"lr_multiplier": multiplier, "lr": self.lr}, ("lr_changed", text))

    def _cmd_rollback(self, cmd: CommandInfo, args: dict[str, Any]) -> None:
        if self._group is None:
            info, state = self._rollback_target(args["target"])
        else:  # rank 0 chose and verified the target before the exchange
            if "reject" in self._plan_entry:
                raise _Rejected(self._plan_entry["reject"])
            info = self._plan_entry["target"]
            state = self._preloaded.pop(info.id, None)
        state = self._load_everywhere(info, state)
        self._flush_partial()  # the abandoned steps stay in the store under their branch
        old_branch, old_step = self._branch, self.step
        self._restore(state)
        reason = f"rollback to checkpoint {info.id} (step {info.step}) by {cmd.issuer}"
        _, new = self._fork(info.branch, info.step, info.id, reason)
        text = f"rolled back from step {old_step} (branch {old_branch}) to checkpoint {info.id} at step {info.step}; new branch {new}"
        self._ack(cmd, "applied", text, {"step": self.step}, ("rollback", text))

    def _rollback_target(self, target: int | str) -> tuple[CheckpointInfo, dict[str, Any]]:
        # Retention runs on the checkpoint thread after each save: let it finish, so a file it is
        # deleting is seen as `deleted`, not mistaken for a corrupt one half-way through loading.
        self._checkpointer.idle.wait()
        if isinstance(target, int):
            info = self._store.checkpoint(target)
            if info is None:
                raise _Rejected(f"checkpoint {target} does not exist")
            if info.status != "ready":
                raise _Rejected(f"checkpoint {target} is not ready (status {info.status})")
            candidates = [info]
        else:
            ready = self._store.checkpoints(["ready"])
            if target == "best":
                candidates = ck.best_first(ready)
            else:
                segments = self._store.lineage(self._branch)
                candidates = ck.newest_first(c for c in ready if ck.in_lineage(c, segments))
            if not candidates:
                raise _Rejected(f"no ready checkpoint to roll back to ({target})")
        loaded = self._load_first(candidates)
        if loaded is None:
            if isinstance(target, int):
                raise _Rejected(f"checkpoint {target} cannot be used: {self._last_load_error}")
            raise _Rejected(f"no usable checkpoint for {target}: every candidate failed verification")
        return loaded

    def _pause_loop(self) -> None:
        """Block at this step boundary until resume or stop; other commands apply meanwhile."""
        log.info("trainwarden: paused at step %d", self.step)
        if self._group is not None:
            self._pause_loop_distributed()
            return
        while self._paused and self._signal is None:
            self._wake.wait(0.5)
            self._wake.clear()
            while self._inbox and self._paused:
                self._apply(self._inbox.popleft())
        self._attention = bool(self._inbox)

    def _pause_loop_distributed(self) -> None:
        """Every rank waits here at the same step. They meet in an exchange on trainwarden's own
        group about twice a second (rank 0 brings the commands that came meanwhile), so neither
        that group's timeout nor the user's is ever reached, however long the pause."""
        assert self._group is not None
        while self._paused:
            if self._leader:
                self._wake.wait(0.5)
                self._wake.clear()
            plan = {"save": False, "commands": self._drain_inbox()} if self._leader else None
            self._obey(self._group.exchange({"signal": self._signal, "plan": plan, "losses": None}))

    def _flush_partial(self) -> None:
        if self._group is None:
            self._close_window()
        elif self._buf:  # distributed: only at close or a boundary, where every rank is
            self._write_window(self._take_window()) if self._leader else self._take_window()

    # ---------------------------------------------------------------- signals
    def _install_handlers(self) -> None:
        self._previous: dict[int, Any] = {}
        if self.config.handle_signals and threading.current_thread() is threading.main_thread():
            for name in _SIGNALS:
                signum = getattr(signal, name, None)
                if signum is not None:
                    self._previous[signum] = signal.signal(signum, self._on_signal)
        self._previous_excepthook = sys.excepthook
        sys.excepthook = self._excepthook
        atexit.register(self._at_exit)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._signal is not None:  # a second signal: the loop is not reaching a step boundary
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self._signal = signum
        self._attention = True
        self._wake.set()

    def _on_signal_at_boundary(self) -> None:
        signum = self._signal or signal.SIGTERM
        name = signal.Signals(signum).name
        self._flush_partial()
        self._event("signal", "warning", f"{name} received at step {self.step}: saving a final checkpoint and exiting")
        self._save("signal", wait=True)
        self._shutdown("stopped", save=False, why=f"{name}", collective=False)
        raise SystemExit(128 + signum)

    def _excepthook(self, kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        self._crashed = True
        self._crash_reason = f"{kind.__name__}: {exc}"
        self._previous_excepthook(kind, exc, tb)

    def _at_exit(self) -> None:
        if not self._closed:
            if self._crashed:
                self._shutdown("crashed", save=False, why=getattr(self, "_crash_reason", None))
            else:
                self.close()

    # --------------------------------------------------------------- shutdown
    def _shutdown(self, status: str, *, save: bool, why: str | None = None, collective: bool = False) -> None:
        """End the run. `collective`: every rank of a distributed job is here at the same step,
        so the last partial window is exchanged and the final save may run collectives."""
        if self._closed:
            return
        self._closed = True
        begun, self._begun = self._begun, False
        self._attention = True  # so a record() after close() reaches _begin_fresh and fails loudly
        try:
            together = collective and self._group is not None and begun
            if together:
                try:
                    self._boundary(closing=True)
                except Exception as exc:  # e.g. the process group was destroyed first
                    log.warning("trainwarden: ranks could not meet at close (%s): no final checkpoint", exc)
                    together, save = False, False
            self._flush_partial()
            if save and begun and self.step > self._last_save_step and (together or self._group is None):
                self._save("final", wait=True)
            self._checkpointer.idle.wait()
            step = self.step
            if status == "crashed":
                self._event("crashed", "error", f"training process failed at step {step}: {why}")

            def finish(s: Store) -> None:
                s.update_run(status=status, step=step, ended_at=time.time(), heartbeat_at=time.time())

            self._writer.submit(finish)
        finally:
            self._checkpointer.stop()
            self._writer.stop()
            if self._stager is not None:
                self._stager.close()
            if self._group is not None:
                self._group.close()
            self._lr.remove()
            for signum, handler in self._previous.items():
                try:
                    signal.signal(signum, handler)
                except (ValueError, TypeError):
                    pass
            if sys.excepthook == self._excepthook:
                sys.excepthook = self._previous_excepthook
            atexit.unregister(self._at_exit)
            if self._store is not None:
                self._store.close()

    # ---------------------------------------------------------------- helpers
    def _event(self, kind: str, severity: str, message: str, data: dict[str, Any] | None = None) -> None:
        step, branch = self.step, self._branch
        self._writer.submit(lambda s: s.add_event(kind, severity, message, step=step, branch=branch, data=data))

    def _write_heartbeat(self, store: Store) -> None:
        if self._begun:
            store.update_run(heartbeat_at=time.time(), step=self.step)
        else:  # before resume() the step is not known yet: keep showing the stored one, not 0
            store.update_run(heartbeat_at=time.time())

    def _refuse_second_writer(self, info: Any) -> None:
        if info.status not in ("running", "paused") or info.pid is None or info.pid == os.getpid():
            return
        if info.host == socket.gethostname():
            try:
                os.kill(info.pid, 0)
            except ProcessLookupError:
                return
            except PermissionError:
                pass
            raise AttachError(f"{self.run_dir} is already being written by process {info.pid}; stop it first")
        if info.heartbeat_at and time.time() - info.heartbeat_at < 3 * self.config.heartbeat_interval_s:
            raise AttachError(f"{self.run_dir} is already being written by process {info.pid} on {info.host}")

    def _recover_interrupted_saves(self) -> None:
        """Saves left in `writing` by a process that died: mark them failed, drop their files.
        Also drop the files of checkpoints retention had marked deleted when the process died."""
        assert self._store is not None
        for c in self._store.checkpoints(["writing"]):
            self._store.set_checkpoint_status(c.id, "failed", "interrupted: the training process ended during the write")
            ck.remove_file(self.run_dir / c.path)
        folder = self.run_dir / "checkpoints"
        for tmp in folder.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        deleted = {c.path for c in self._store.checkpoints(["deleted"])}
        for f in [*folder.glob("*.pt"), *folder.glob("*.dcp")]:
            if f"{folder.name}/{f.name}" in deleted:
                ck.remove_file(f)


class _NoWriter:
    """The store writer of ranks other than 0: they write nothing to the store."""

    def start(self) -> None:
        pass

    def submit(self, job: Any) -> None:
        pass

    def flush(self, timeout: float = 30.0) -> bool:
        return True

    def stop(self, timeout: float = 30.0) -> None:
        pass


class _Failed:
    """The future of a sharded save that could not even start: raises its error when asked."""

    def __init__(self, exc: Exception) -> None:
        self._exc = exc

    def result(self, timeout: float | None = None) -> None:
        raise self._exc


def _is_sharded_path(path: str) -> bool:
    return path.endswith(".dcp")


def _to_floats(buf: list[Any]) -> list[float]:
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
