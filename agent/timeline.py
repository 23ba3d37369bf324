"""Where recorded steps go: the branch of history, new branches when history is rewritten
(rollback, restart), and whether the step counter is settled yet."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .records import CheckpointInfo
from .store import Store
from .window import window_stats

if TYPE_CHECKING:
    from .recorder import LossRecorder
    from .threads import NoWriter, StoreWriter


class Timeline:
    """The run's branches and lifecycle as the training thread sees them."""

    def __init__(self, store: Store | None, writer: StoreWriter | NoWriter, recorder: LossRecorder,
                 next_branch: int) -> None:
        self.begun = False
        """Whether the step counter is settled: by resume() or by the first record()."""
        self.closed = False
        """Whether the run was closed; recording more needs a new attach."""
        self._store = store  # rank 0's; other ranks leave the branches to it
        self._writer = writer
        self._recorder = recorder
        self._next_branch = next_branch

    def begin_fresh(self) -> None:
        """Start at step 0. A history that already has steps gets a new branch, so no step is
        recorded twice."""
        if self.closed:
            raise RuntimeError("this run is closed: attach again to record more steps")
        self.begun = True
        if self._store is not None and self._store.max_step(self._recorder.branch) > 0:
            self.fork(self._recorder.branch, 0, None, "started again from step 0 (no usable checkpoint)")

    def continue_from(self, info: CheckpointInfo, reason: str) -> None:
        """Continue after `info`'s step: fill any steps the store lacks from the checkpoint's
        history, and fork a new branch if the store already has steps after it."""
        self.begun = True
        if self._store is None:  # not rank 0: the store is rank 0's business
            self._recorder.branch = info.branch
            return
        recorded = self._store.max_step(info.branch)
        if recorded < info.step:
            missing = self._recorder.history[recorded:info.step].tolist()
            self._writer.submit(lambda s: s.add_window(info.branch, recorded + 1, missing, window_stats(missing), None, None))
        if info.branch != self._recorder.branch or recorded > info.step:
            self.fork(info.branch, info.step, info.id, reason)

    def fork(self, parent: int, fork_step: int, ckpt_id: int | None, reason: str) -> int:
        """Start a new branch off `parent` after `fork_step`; returns its id."""
        new = self._next_branch
        self._next_branch += 1
        self._recorder.branch = new
        self._writer.submit(lambda s: (s.add_branch(new, parent, fork_step, ckpt_id, reason),
                                       s.update_run(branch=new, step=fork_step)))
        return new

    def heartbeat(self, store: Store) -> None:
        """The store writer's sign of life (on its thread)."""
        if self.begun:
            store.update_run(heartbeat_at=time.time(), step=self._recorder.step)
        else:  # before resume() the step is not known yet: keep showing the stored one, not 0
            store.update_run(heartbeat_at=time.time())
