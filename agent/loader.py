"""The loader: choosing, verifying and loading checkpoints (for resume and rollback), marking the
ones that fail as corrupt, and restoring a loaded state into the training objects."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import checkpoint as ck
from .commands import Rejected
from .records import CheckpointInfo
from .store import Store

if TYPE_CHECKING:
    from .peers import Peers
    from .recorder import LossRecorder
    from .saver import Saver, TrainingObjects
    from .threads import NoWriter, StoreWriter

log = logging.getLogger("trainwarden.agent")

Loaded = tuple[CheckpointInfo, "dict[str, Any] | None"]
"""A checkpoint and its state: loaded already (a file), or None (a sharded folder, whose loading
is collective, or a file another rank chose)."""


class Loader:
    """Loads checkpoints on every rank alike; rank 0 (the store's owner) chooses which."""

    def __init__(
        self, run_dir: Path, objects: TrainingObjects, peers: Peers, store: Store | None,
        writer: StoreWriter | NoWriter, recorder: LossRecorder, saver: Saver,
    ) -> None:
        self.preloaded: dict[int, dict[str, Any] | None] = {}
        """Rank 0: states of rollback targets verified before they are applied, by checkpoint id."""
        self._run_dir = run_dir
        self._objects = objects
        self._peers = peers
        self._store = store
        self._writer = writer
        self._recorder = recorder
        self._saver = saver
        self._last_error = ""  # why the last candidate failed (for an explicit rollback target)

    def resume(self) -> CheckpointInfo | None:
        """Load and restore the newest good checkpoint of the current history, on every rank; a
        checkpoint that fails anywhere is marked corrupt and the previous one is tried. Returns
        the checkpoint used, or None when there is none."""
        candidates: list[CheckpointInfo] = []
        if self._store is not None:
            segments = self._store.lineage(self._recorder.branch)
            candidates = ck.newest_first(c for c in self._store.checkpoints(["ready"]) if ck.in_lineage(c, segments))
        while True:
            loaded = self.load_first(candidates) if self._peers.leader else None
            chosen = self._peers.from_leader(loaded[0] if loaded else None)  # every rank loads the same one
            if chosen is None:
                return None
            try:
                state = self.load_everywhere(chosen, loaded[1] if loaded else None)
                break
            except Rejected as exc:  # some rank could not load it: the next older one, on every rank
                self.mark_corrupt(chosen, str(exc))
                candidates = [c for c in candidates if (c.step, c.id) < (chosen.step, chosen.id)]
        self.restore(state)
        return chosen

    def rollback_target(self, target: int | str) -> CheckpointInfo:
        """Rank 0: the checkpoint a rollback to `target` goes to, verified (its state kept in
        `preloaded`), or Rejected with the reason."""
        # Retention runs on the checkpoint thread after each save: let it finish, so a file it is
        # deleting is seen as `deleted`, not mistaken for a corrupt one half-way through loading.
        self._saver.checkpointer.idle.wait()
        store = self._store
        assert store is not None
        if isinstance(target, int):
            info = store.checkpoint(target)
            if info is None:
                raise Rejected(f"checkpoint {target} does not exist")
            if info.status != "ready":
                raise Rejected(f"checkpoint {target} is not ready (status {info.status})")
            candidates = [info]
        else:
            ready = store.checkpoints(["ready"])
            if target == "best":
                candidates = ck.best_first(ready)
            else:
                segments = store.lineage(self._recorder.branch)
                candidates = ck.newest_first(c for c in ready if ck.in_lineage(c, segments))
            if not candidates:
                raise Rejected(f"no ready checkpoint to roll back to ({target})")
        loaded = self.load_first(candidates)
        if loaded is None:
            if isinstance(target, int):
                raise Rejected(f"checkpoint {target} cannot be used: {self._last_error}")
            raise Rejected(f"no usable checkpoint for {target}: every candidate failed verification")
        self.preloaded[loaded[0].id] = loaded[1]
        return loaded[0]

    def load_first(self, candidates: list[CheckpointInfo]) -> Loaded | None:
        """The first candidate that loads (a file) or verifies (a sharded folder, whose loading
        is collective) cleanly; the others are marked corrupt with an event."""
        for info in candidates:
            try:
                if _is_sharded_path(info.path):
                    from . import sharded
                    sharded.verify(self._run_dir / info.path, info.checksum)
                    return info, None
                return info, ck.load_file(self._run_dir / info.path, info.checksum)
            except ck.CheckpointCorrupt as exc:
                self.mark_corrupt(info, str(exc))
        return None

    def mark_corrupt(self, info: CheckpointInfo, reason: str) -> None:
        self._last_error = reason
        self._writer.submit(lambda s, i=info, r=reason: (
            s.set_checkpoint_status(i.id, "corrupt", r),
            s.add_event("checkpoint_corrupt", "warning", f"checkpoint {i.id} (step {i.step}) skipped: {r}",
                        step=i.step, branch=i.branch, data={"checkpoint": i.id})))
        if self._peers.leader:
            log.warning("trainwarden: checkpoint %d skipped: %s", info.id, reason)

    def load_everywhere(self, info: CheckpointInfo, state: dict[str, Any] | None) -> dict[str, Any]:
        """`info`'s state on this rank (a sharded one is loaded into the model and optimizer
        already). Every rank must succeed, else every rank gets Rejected."""
        problem = None
        try:
            if _is_sharded_path(info.path):
                from . import sharded
                o = self._objects
                common, rng = sharded.load(self._run_dir / info.path, o.model, o.optimizer, self._peers.rank,
                                           self._peers.sync_group)
                state = {**common, "rng": rng}
            elif state is None:
                state = ck.load_file(self._run_dir / info.path, info.checksum)
        except ck.CheckpointCorrupt as exc:
            problem = f"rank {self._peers.rank}: {exc}"
        self._peers.all_loaded(info, problem)
        assert state is not None
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """Put a loaded state into the training objects, the RNGs and the recorder."""
        o, rank = self._objects, self._peers.rank
        if "model" in state:  # a sharded checkpoint's weights were loaded by DCP already
            o.model.load_state_dict(state["model"])
            o.optimizer.load_state_dict(state["optimizer"])
        if o.scheduler is not None and state.get("scheduler") is not None:
            o.scheduler.load_state_dict(state["scheduler"])
        if o.scaler is not None and state.get("scaler") is not None:
            o.scaler.load_state_dict(state["scaler"])
        rng = state.get("rng") if rank == 0 else None
        ranks = state.get("rng_ranks")
        if ranks is not None:  # written by rank 0 of a distributed job: each rank its own
            rng = ranks[rank] if rank < len(ranks) else None
        if rng is not None:  # None: saved by fewer ranks than load it; this rank keeps its own
            ck.restore_rng(rng)
        step = int(state["step"])
        self._recorder.reset(step, state["loss_history"].tolist())
        self._saver.restored(step)


def _is_sharded_path(path: str) -> bool:
    return path.endswith(".dcp")
