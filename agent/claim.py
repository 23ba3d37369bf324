"""Claiming a run at attach time: rank 0 opens (or creates) the store, refuses a second live
writer, cleans up after a process that died mid-save and marks the run running; every rank then
learns whether that worked and which LR multiplier to start with."""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__ as VERSION
from . import checkpoint as ck
from .config import AgentConfig
from .records import RunInfo
from .store import Store, StoreError

if TYPE_CHECKING:
    from .peers import Peers


class AttachError(StoreError):
    """`attach()` cannot start recording; the message says why in one line."""


@dataclass
class Claim:
    """What the store says about the run when this process attaches (defaults: ranks other than 0,
    which never open the store)."""

    store: Store | None = None
    """Rank 0's connection for the training thread; None on other ranks."""
    branch: int = 0
    """Branch the run was writing."""
    next_branch: int = 1
    """Id the next forked branch gets."""
    best_loss: float | None = None
    """Lowest loss of a ready checkpoint (for "best" saves)."""
    lr_multiplier: float = 1.0
    """The operator's LR multiplier, the same on every rank."""


def claim(run_dir: Path, name: str | None, config: AgentConfig, peers: Peers) -> Claim:
    """Claim the run on rank 0 and share the outcome: every rank fails together, or none waits
    forever for rank 0."""
    result, failure = Claim(), None
    if peers.leader:
        try:
            result = _open(run_dir, name, config)
        except StoreError as exc:
            failure = exc
    reason, multiplier = peers.from_leader((str(failure) if failure else None, result.lr_multiplier))
    if reason is not None and failure is None:
        failure = AttachError(f"rank 0 could not attach: {reason}")
    if failure is not None:
        raise failure
    result.lr_multiplier = multiplier
    peers.check_shared(run_dir / "checkpoints", result.store)
    return result


def _open(run_dir: Path, name: str | None, config: AgentConfig) -> Claim:
    """Rank 0: open (or create) the store and claim the run."""
    store = Store.open(run_dir, create=True)
    try:
        store.init_run(name or run_dir.name, config.model_dump(), VERSION)
        info = store.run()
        _refuse_second_writer(run_dir, info, config.heartbeat_interval_s)
        _recover_interrupted_saves(store, run_dir)
        best = min((c.loss for c in ck.best_first(store.checkpoints(["ready"]))), default=None)
        now = time.time()
        store.update_run(status="running", pid=os.getpid(), host=socket.gethostname(), started_at=now,
                         heartbeat_at=now, ended_at=None, agent_version=VERSION, config=config.model_dump())
        return Claim(store, info.branch, store.next_branch_id(), best, info.lr_multiplier)
    except StoreError:
        store.close()
        raise
    except Exception as exc:
        store.close()
        raise AttachError(f"cannot attach to {run_dir}: {exc}") from None


def _refuse_second_writer(run_dir: Path, info: RunInfo, heartbeat_interval_s: float) -> None:
    if info.status not in ("running", "paused") or info.pid is None or info.pid == os.getpid():
        return
    if info.host == socket.gethostname():
        try:
            os.kill(info.pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            pass
        raise AttachError(f"{run_dir} is already being written by process {info.pid}; stop it first")
    if info.heartbeat_at and time.time() - info.heartbeat_at < 3 * heartbeat_interval_s:
        raise AttachError(f"{run_dir} is already being written by process {info.pid} on {info.host}")


def _recover_interrupted_saves(store: Store, run_dir: Path) -> None:
    """Saves left in `writing` by a process that died: mark them failed, drop their files.
    Also drop the files of checkpoints retention had marked deleted when the process died."""
    for c in store.checkpoints(["writing"]):
        store.set_checkpoint_status(c.id, "failed", "interrupted: the training process ended during the write")
        ck.remove_file(run_dir / c.path)
    folder = run_dir / "checkpoints"
    for tmp in folder.glob("*.tmp"):
        tmp.unlink(missing_ok=True)
    deleted = {c.path for c in store.checkpoints(["deleted"])}
    for f in [*folder.glob("*.pt"), *folder.glob("*.dcp")]:
        if f"{folder.name}/{f.name}" in deleted:
            ck.remove_file(f)

