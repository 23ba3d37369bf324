"""The agent's view of a torch.distributed job (torchrun, DDP, FSDP).

Every rank runs an agent; rank 0 owns the store. What the ranks must agree on (which commands to
apply, whether to save, whether a signal arrived, the window's losses) is settled once per window
with one small collective, `exchange()`, on a gloo group of trainwarden's own. That group has its
own timeout and never carries the user's traffic, so a paused job waiting in trainwarden's
collectives cannot trip the timeout of the user's (NCCL) group, and the user's collectives are
never interleaved with ours. A second group is kept for checkpoint writes, which run collectives
on a background thread (as PyTorch's asynchronous checkpointing recommends): two threads must
never issue collectives on the same group, or the ranks may see them in different orders.
"""
from __future__ import annotations

import datetime
import pickle
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist


SLOT_BYTES = 4096
"""Bytes per rank in the per-window exchange's single collective (a plan without commands, a
signal and 400 shared losses fit; anything bigger takes a second round)."""


@dataclass
class Group:
    """This process's place in a distributed job, and trainwarden's own process groups."""

    rank: int
    """This process's global rank."""
    world_size: int
    """How many ranks the job has."""
    sync: Any
    """gloo group for the per-window exchange, used by the training thread only."""
    checkpoint: Any
    """gloo group for sharded checkpoint writes, used by their background thread only."""

    @property
    def leader(self) -> bool:
        """Whether this rank owns the store (rank 0)."""
        return self.rank == 0

    _send: torch.Tensor | None = field(default=None, repr=False)
    """This rank's buffer for `exchange()` (made at the first one, then reused)."""
    _slots: list[torch.Tensor] = field(default_factory=list, repr=False)
    """Every rank's buffer as `exchange()` receives them (reused)."""

    def exchange(self, mine: Any) -> list[Any]:
        """Every rank's `mine`, in rank order (picklable values only).

        One all-gather of fixed-size byte buffers, reused from window to window; a value too big
        for its slot (a long window of shared losses, a plan with many commands) takes a second
        round through `all_gather_object`. `all_gather_object` alone costs two collectives (sizes,
        then data) and fresh tensors each time: in a 2-rank job whose steps take milliseconds,
        that was a third of the agent's time (measured with distributed_overhead.py).
        """
        data = pickle.dumps(mine, protocol=pickle.HIGHEST_PROTOCOL)
        if self._send is None:
            self._send = torch.zeros(SLOT_BYTES, dtype=torch.uint8)
            self._slots = [torch.zeros(SLOT_BYTES, dtype=torch.uint8) for _ in range(self.world_size)]
        send = self._send
        fits = len(data) <= SLOT_BYTES - 8
        send[:8] = torch.tensor([len(data) if fits else -1], dtype=torch.int64).view(torch.uint8)
        if fits:
            send[8:8 + len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        dist.all_gather(self._slots, send, group=self.sync)
        sizes = [int(t[:8].view(torch.int64).item()) for t in self._slots]
        if min(sizes) < 0:  # every rank sees the same sizes, so every rank takes this round
            out: list[Any] = [None] * self.world_size
            dist.all_gather_object(out, mine, group=self.sync)
            return out
        return [pickle.loads(t[8:8 + n].numpy().tobytes()) for t, n in zip(self._slots, sizes)]

    def from_leader(self, value: Any) -> Any:
        """Rank 0's `value` on every rank."""
        box = [value if self.leader else None]
        dist.broadcast_object_list(box, src=0, group=self.sync)
        return box[0]

    def close(self) -> None:
        """Destroy trainwarden's groups (a job that attaches again makes new ones; none may leak)."""
        for group in (self.sync, self.checkpoint):
            try:
                dist.destroy_process_group(group)
            except Exception:  # the default group went first: ours went with it
                pass

    def all_agree(self, ok: bool) -> bool:
        """True when `ok` is true on every rank."""
        return all(self.exchange(bool(ok)))


def join(timeout_s: float) -> Group | None:
    """The job's Group when this process is one of several ranks of an initialised default
    process group; None for a single process (then the agent behaves as it always did).

    Creating the groups is itself a collective: every rank must call `attach()`, at the same point.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return None
    world = dist.get_world_size()
    if world <= 1:
        return None
    timeout = datetime.timedelta(seconds=timeout_s)
    sync = dist.new_group(backend="gloo", timeout=timeout)
    checkpoint = dist.new_group(backend="gloo", timeout=timeout)
    return Group(dist.get_rank(), world, sync, checkpoint)


SHARDED_MIN_TORCH = "2.6"
"""Sharded checkpoints need FSDP2's public `fully_shard`, `get_state_dict` and `dcp.async_save`."""


def sharded_supported() -> bool:
    return torch.__version__ >= SHARDED_MIN_TORCH  # TorchVersion compares as a version, not a string


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether the model holds DTensor parameters (FSDP2 `fully_shard`, tensor parallel): its
    state then exists only across the ranks and is saved with torch.distributed.checkpoint."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch before 2.4 spells it torch.distributed._tensor
        try:
            from torch.distributed._tensor import DTensor  # type: ignore[no-redef]
        except ImportError:
            return False
    return any(isinstance(p, DTensor) for p in model.parameters())
