"""A fixed set of stores for the TUI's snapshot tests and the screenshots in docs/: five runs in
every state, one of them rolled back by the supervisor, all times pinned to `NOW`.

The stores are written through the real `Store` API (the same rows the agent and the daemon
write); only their timestamps are rewritten afterwards, so the pictures do not change with the
clock. Losses come from a seeded generator: the same numbers on every machine.
"""
from __future__ import annotations

import math
import os
import random
import socket
import sqlite3
from pathlib import Path

from trainwarden.agent.store import DB_NAME, Store
from trainwarden.agent.window import window_stats

NOW = 1_764_470_000.0  # 2025-11-30 02:33:20 UTC
WHO = "ana@gpu-node-3"
WINDOW = 50


def _curve(rng: random.Random, steps: range, level: float, floor: float, tau: float, noise: float) -> list[float]:
    return [floor + (level - floor) * math.exp(-s / tau) * math.exp(rng.gauss(0, noise)) for s in steps]


def _windows(s: Store, branch: int, losses: list[float], first: int, lr: float) -> None:
    for i in range(0, len(losses), WINDOW):
        chunk = losses[i:i + WINDOW]
        s.add_window(branch, first + i, chunk, window_stats(chunk), lr, 180.0)


def _run(root: Path, name: str, status: str, config: dict | None = None) -> Store:
    s = Store.open(root / name, create=True)
    s.init_run(name, config or {"heartbeat_interval_s": 2.0}, "0.1.0")
    # A live run's pid is this process (alive, on this host); the others' do not matter.
    s.update_run(status=status, pid=os.getpid(), host=socket.gethostname())
    return s


def build(root: Path) -> Path:
    """Write the scene under `root` (which must not exist yet); returns `root`."""
    rng = random.Random(7)
    root.mkdir(parents=True)

    # gpt-small: an LR jump at 3000 made the loss rebound; the supervisor rolled back to the
    # checkpoint at 2800 and halved the LR; branch 1 carries on below the old curve.
    s = _run(root, "gpt-small", "running")
    base = _curve(rng, range(1, 3001), 4.2, 1.6, 900, 0.05)
    jump = [base[-1] * (1 + 0.0009 * i) ** 2 * math.exp(rng.gauss(0, 0.06)) for i in range(1, 451)]
    _windows(s, 0, base + jump, 1, 6e-4)
    for step in range(250, 3451, 250):
        value = base[step - 1] * 1.08 if step <= 3000 else jump[step - 3001] * 1.1
        s.add_metric(0, step, "val_loss", value)
    ckpts = {}
    for step in (500, 1000, 1500, 2000, 2400, 2800):
        cid, _ = s.add_checkpoint(step, 0, base[step - 1], "best")
        s.checkpoint_ready(cid, 48_300_000, "xxh3_128:00")
        ckpts[step] = cid
    s.add_event("spike", "warning", "loss rebounded 1.9x above its level since step 3000 (LR too high?): "
                "roll back and lower the LR [auto: default remedy]", step=3400, branch=0, source="supervisor",
                data={"key": "spike:b0:3000"})
    iv = s.add_intervention("spike", 3000, 3400, 0, "auto", "proposed",
                            [{"kind": "rollback", "args": {"target": ckpts[2800]}}, {"kind": "scale_lr", "args": {"factor": 0.5}}],
                            "spike since step 3000: roll back to checkpoint 6 (step 2800), LR x0.5", 1.71)
    ids = s.issue_intervention(iv, [{"kind": "rollback", "args": {"target": ckpts[2800]}},
                                    {"kind": "scale_lr", "args": {"factor": 0.5}}], "supervisor", "proposed") or []
    for cid in ids:
        s.ack_command(cid, "applied", "ok", 3450)
    s.update_intervention(iv, status="applied", outcome="cured")
    s.add_branch(1, 0, 2800, ckpts[2800], f"rollback to checkpoint {ckpts[2800]} (command {ids[0]})")
    s.add_event("rollback", "info", f"rolled back to checkpoint {ckpts[2800]} at step 2800; branch 1", step=2800,
                branch=1, source="agent")
    after = _curve(rng, range(2801, 4801), base[2799] * 1.02, 1.25, 2600, 0.05)
    _windows(s, 1, after, 2801, 3e-4)
    for step in range(3000, 4801, 250):
        s.add_metric(1, step, "val_loss", after[step - 2801] * 1.08)
    for step in (3600, 4400):
        cid, _ = s.add_checkpoint(step, 1, after[step - 2801], "best")
        s.checkpoint_ready(cid, 48_300_000, "xxh3_128:00")
    s.add_event("cured", "info", "intervention 1 cured the run: loss level 1.52 vs 1.71 before the onset",
                step=3600, branch=1, source="supervisor")
    s.add_command("set_lr", {"value": 0.00025}, WHO)
    s.update_run(step=4800, branch=1, lr=3e-4, lr_multiplier=0.5, last_loss=after[-1], heartbeat_at=NOW - 1)
    s.close()

    # vit-base: running and healthy, but waiting for an operator on a plateau proposal.
    s = _run(root, "vit-base", "running")
    losses = _curve(rng, range(1, 6001), 6.9, 2.1, 1400, 0.04)
    _windows(s, 0, losses, 1, 1e-3)
    cid, _ = s.add_checkpoint(6000, 0, losses[-1], "best")
    s.checkpoint_ready(cid, 350_000_000, "xxh3_128:00")
    s.add_event("plateau", "info", "no improvement for 20 windows: consider a lower LR [ask]", step=6000, branch=0,
                source="supervisor", data={"key": "plateau:b0:5000"})
    s.add_intervention("plateau", 5000, 6000, 0, "ask", "proposed", [{"kind": "scale_lr", "args": {"factor": 0.5}}],
                       "plateau since step 5000: LR x0.5", None)
    s.update_run(step=6000, lr=1e-3, last_loss=losses[-1], heartbeat_at=NOW - 1)
    s.close()

    # resnet-sweep-3: paused by an operator.
    s = _run(root, "resnet-sweep-3", "paused")
    losses = _curve(rng, range(1, 2001), 2.3, 0.4, 500, 0.08)
    _windows(s, 0, losses, 1, 0.1)
    s.update_run(step=2000, lr=0.1, last_loss=losses[-1], heartbeat_at=NOW - 1)
    s.close()

    # bert-finetune: finished; lstm-baseline: its process died.
    for name, status, steps in (("bert-finetune", "finished", 1500), ("lstm-baseline", "crashed", 900)):
        s = _run(root, name, status)
        losses = _curve(rng, range(1, steps + 1), 1.1, 0.3, 300, 0.05)
        _windows(s, 0, losses, 1, 2e-5)
        cid, _ = s.add_checkpoint(steps, 0, losses[-1], "final" if status == "finished" else "best")
        s.checkpoint_ready(cid, 440_000_000, "xxh3_128:00")
        s.update_run(step=steps, lr=2e-5, last_loss=losses[-1], heartbeat_at=NOW - (4000 if status == "finished" else 9000))
        s.close()

    # A folder whose store is not a database.
    (root / "old-experiment").mkdir()
    (root / "old-experiment" / DB_NAME).write_bytes(b"this is not a database")

    for name, idle in (("gpt-small", 0), ("vit-base", 300), ("resnet-sweep-3", 600), ("bert-finetune", 4000),
                       ("lstm-baseline", 9000)):
        _pin_times(root / name / DB_NAME, NOW - idle)
    return root


def _pin_times(db: Path, NOW: float) -> None:  # noqa: N803 (the scene's NOW, moved back for idle runs)
    """Rewrite every timestamp relative to NOW, in the order the rows were written."""
    conn = sqlite3.connect(db)
    conn.execute("UPDATE run SET created_at = ?, started_at = ?", (NOW - 7200, NOW - 7000))
    conn.execute("UPDATE run SET ended_at = ? WHERE status = 'finished'", (NOW - 4000,))
    conn.execute("UPDATE windows SET time = ? - (SELECT MAX(id) FROM windows) + id", (NOW,))
    conn.execute("UPDATE metrics SET time = ? - (SELECT MAX(id) FROM metrics) + id", (NOW,))
    conn.execute("UPDATE checkpoints SET created_at = ? - 60 * ((SELECT MAX(id) FROM checkpoints) - id) - 30,"
                 " ready_at = ? - 60 * ((SELECT MAX(id) FROM checkpoints) - id) - 25", (NOW, NOW))
    conn.execute("UPDATE events SET time = ? - 90 * ((SELECT MAX(id) FROM events) - id) - 40", (NOW,))
    conn.execute("UPDATE commands SET created_at = ? - 100 * ((SELECT MAX(id) FROM commands) - id) - 20,"
                 " applied_at = CASE WHEN applied_at IS NULL THEN NULL ELSE ? - 100 * ((SELECT MAX(id) FROM commands) - id) - 19 END",
                 (NOW, NOW))
    conn.execute("UPDATE interventions SET created_at = ? - 500 + id", (NOW,))
    conn.execute("UPDATE branches SET created_at = ? - 400 + id", (NOW,))
    conn.commit()
    conn.close()
