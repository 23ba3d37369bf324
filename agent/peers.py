"""What the agent's roles need from the other ranks, chosen once at attach time.

`SoloPeers` is a single process: rank 0 of 1, every agreement is with itself. `RankPeers` wraps a
`dist.Group` of several ranks. The saver, the loader and the attach sequence call the same
methods on either, so none of them asks whether the job is distributed.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from . import checkpoint as ck
from . import dist
from .claim import AttachError
from .commands import Rejected
from .records import CheckpointInfo
from .store import Store

SHARED_CHECK_S = 35.0
"""How long a rank waits to see rank 0's probe file in the checkpoints folder before concluding
that it is not shared (NFS's default attribute cache keeps a directory listing up to 30 s);
$TRAINWARDEN_SHARED_CHECK_S overrides it."""


class SoloPeers:
    """A single process: it leads, and agrees with itself."""

    rank = 0
    world_size = 1
    leader = True
    sync_group: Any = None
    """No collective group: sharded loads run on the default (single-process) path."""
    checkpoint_group: Any = None
    """No collective group for sharded writes either."""

    def from_leader(self, value: Any) -> Any:
        """Rank 0's `value`: this process's own."""
        return value

    def rng_states(self) -> list[Any] | None:
        """Every rank's RNG states for a single-file checkpoint; None: the file's own `rng` is enough."""
        return None

    def all_loaded(self, info: CheckpointInfo, problem: str | None) -> None:
        """Raise Rejected unless the checkpoint loaded (`problem` is None)."""
        if problem is not None:
            raise Rejected(f"checkpoint {info.id} cannot be used: {problem}")

    def check_shared(self, folder: Path, store: Store | None) -> None:
        """Every rank sees the checkpoints folder: trivially so for one process."""

    def close(self) -> None:
        """Nothing to release."""


class RankPeers:
    """One rank of a job of several: rank 0 leads, agreements are collectives on trainwarden's groups."""

    def __init__(self, group: dist.Group) -> None:
        self._group = group
        self.rank = group.rank
        self.world_size = group.world_size
        self.leader = group.leader
        self.sync_group: Any = group.sync
        """The training thread's gloo group (also for sharded loads, which run on it)."""
        self.checkpoint_group: Any = group.checkpoint
        """The gloo group of sharded writes, used by their background thread only."""

    def from_leader(self, value: Any) -> Any:
        """Rank 0's `value`, on every rank."""
        return self._group.from_leader(value)

    def exchange(self, mine: Any) -> list[Any]:
        """Every rank's `mine`, in rank order."""
        return self._group.exchange(mine)

    def rng_states(self) -> list[Any] | None:
        """Every rank's RNG states, for rank 0 to write into a single-file checkpoint."""
        return self._group.exchange(ck.capture_rng())

    def all_loaded(self, info: CheckpointInfo, problem: str | None) -> None:
        """Raise Rejected on every rank unless the checkpoint loaded on every rank."""
        problems = [p for p in self._group.exchange(problem) if p]
        if problems:
            raise Rejected(f"checkpoint {info.id} cannot be loaded on every rank ({problems[0]})")

    def check_shared(self, folder: Path, store: Store | None) -> None:
        """Every rank must see the checkpoints folder rank 0 writes (on several nodes: shared
        storage), or sharded checkpoints would be missing the shards of other nodes and a rollback
        could not load on them. Rank 0 leaves a file there and every rank looks for it; if one
        cannot see it, every rank raises AttachError (and rank 0 marks the run crashed)."""
        name = f".shared-{os.getpid()}-{time.time_ns()}" if self.leader else None
        if self.leader:
            (folder / str(name)).touch()
        name = self._group.from_leader(name)
        deadline = time.monotonic() + float(os.environ.get("TRAINWARDEN_SHARED_CHECK_S", SHARED_CHECK_S))
        while not (seen := (folder / name).exists()) and time.monotonic() < deadline:
            time.sleep(0.5)  # NFS may take its attribute-cache time to show a new file
        blind = [(rank, host) for rank, host in enumerate(self._group.exchange(None if seen else socket.gethostname()))
                 if host is not None]
        if self.leader:
            (folder / name).unlink(missing_ok=True)
        if blind:
            rank, host = blind[0]
            message = (f"rank {rank} (host {host}) does not see {folder} as rank 0 writes it: checkpoints of a job on "
                       "several nodes must be on storage every node shares (a symlinked checkpoints/ folder; see "
                       "docs/operations.md)")
            if store is not None:
                store.add_event("attach_refused", "error", message)
                store.update_run(status="crashed", ended_at=time.time())
                store.close()
            raise AttachError(message)

    def close(self) -> None:
        """Destroy trainwarden's groups."""
        self._group.close()


Peers = SoloPeers | RankPeers


def join(timeout_s: float) -> Peers:
    """This process's peers: a job of several ranks when the default process group has them."""
    group = dist.join(timeout_s)
    return SoloPeers() if group is None else RankPeers(group)

