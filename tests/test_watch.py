"""One run's watcher (supervisor/watch.py) ticked in-process against a real store that this test
writes as an agent would, to pin down races a subprocess test would hit only by chance."""
from __future__ import annotations

import math
import random
import time
from pathlib import Path

import pytest

from trainwarden.agent.store import Store
from trainwarden.agent.window import window_stats
from trainwarden.supervisor.policy import Policy
from trainwarden.supervisor.watch import RunWatch

rng = random.Random(0)


def losses(factor: float = 1.0) -> list[float]:
    return [factor * math.exp(rng.gauss(0, 0.1)) for _ in range(50)]


@pytest.fixture
def agent(tmp_path: Path):
    s = Store.open(tmp_path / "run", create=True)
    yield s
    s.close()


def start(s: Store) -> None:
    s.init_run("run", {}, "test")
    now = time.time()
    s.update_run(status="running", pid=1, host="elsewhere", started_at=now, heartbeat_at=now)


def window(s: Store, k: int, factor: float = 1.0) -> None:
    values = losses(factor)
    with s.transaction():
        s.add_window(0, k * 50 + 1, values, window_stats(values), 1e-3, 50.0)
        s.update_run(step=k * 50 + 50)


def test_a_commit_during_a_tick_is_seen_by_the_next_tick(agent: Store) -> None:
    start(agent)
    window(agent, 0)
    cid, rel = agent.add_checkpoint(50, 0, 1.0, "best")
    (agent.run_dir / rel).write_bytes(b"x")
    agent.checkpoint_ready(cid, 1, "xxh3_128:0")
    for k in range(1, 9):
        window(agent, k)
    lines: list[str] = []
    watch = RunWatch(agent.run_dir, Policy(), lambda level, line: lines.append(line))
    watch.tick(time.time())
    assert agent.commands() == []

    store = watch._store
    read_checkpoints = store.checkpoints

    def rebound_meanwhile(*a, **kw):  # after the tick has read the windows, before it ends
        store.checkpoints = read_checkpoints
        window(agent, 9, 5.0)
        return read_checkpoints(*a, **kw)

    store.checkpoints = rebound_meanwhile
    agent.update_run(heartbeat_at=time.time())
    watch.tick(time.time())
    assert agent.commands() == []  # the rebound landed after this tick's read
    watch.tick(time.time())  # no other commit since: the next tick must still see it
    assert [c.kind for c in agent.commands()] == ["rollback", "scale_lr"]
    assert any("spike" in line for line in lines)
    watch.close()


def test_a_store_without_its_run_row_yet_is_not_an_error(agent: Store) -> None:
    lines: list[tuple[str, str]] = []
    watch = RunWatch(agent.run_dir, Policy(), lambda level, line: lines.append((level, line)))
    watch.tick(time.time())
    assert watch.error is None and lines == []
    start(agent)
    watch.tick(time.time())
    assert watch.run is not None and watch.run.status == "running" and watch.error is None
    watch.close()
