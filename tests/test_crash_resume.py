"""Crash safety for real: a training subprocess is killed with SIGKILL at random moments, many
times over (some of them while a checkpoint is being written), and restarted each time.

What a user relies on, checked after every kill and restart:
- a restart resumes from the newest `ready` checkpoint of the current history, with exactly its
  weights, and the process's killed saves are marked failed ("interrupted") with their files gone;
- no kill ever leaves a `ready` checkpoint whose file does not verify;
- steps once recorded are never lost: abandoned steps stay in the store under their old branch;
and at the end, after one uninterrupted run to completion:
- the current history has exactly one loss per step 1..N, equal to the final checkpoint's history;
- the weights are bit-identical to those of a run of N steps that was never interrupted
  (resume restores weights, optimizer, RNG and step exactly, so the data stream goes on unchanged).
"""
from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import wait_for
from tiny_train import build, params_digest, train_step

from trainwarden.agent.checkpoint import file_checksum, in_lineage, newest_first
from trainwarden.agent.store import Store

KILLS = 21
BALLAST_MB = 2
# Checkpoints of over 2 MiB every 30 steps: the background writer is busy a fair share of the time,
# so random kills land inside a write now and then, and every third kill waits for one on purpose.
# Windows of 10 steps reach the store between checkpoints, so most kills leave steps recorded
# after the newest checkpoint: the restart must abandon them to a branch and never lose them.
ARGS = ("--window", "10", "--save-every-steps", "30", "--ballast-mb", str(BALLAST_MB), "--sleep", "0.001")
FOREVER = ("--steps", str(10**9))


def fresh_model() -> torch.nn.Module:
    """The model tiny_train builds with ARGS, before any training."""
    model, _, _, _ = build()
    model.register_buffer("ballast", torch.zeros(int(BALLAST_MB * 2**20) // 4))
    return model


def file_digest(path: Path) -> str:
    """Digest of a checkpoint file's weights, computed as tiny_train computes the live model's."""
    model = fresh_model()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"])
    return params_digest(model)


def expected_resume(run_dir: Path) -> tuple[int | None, int, str | None]:
    """(checkpoint id, step, weights digest) a restart must resume from: the newest ready
    checkpoint of the current history; (None, 0, None) when there is none."""
    if not (run_dir / "trainwarden.db").exists():
        return None, 0, None
    with Store.open(run_dir) as s:
        segments = s.lineage(s.run().branch)
        candidates = newest_first(c for c in s.checkpoints(["ready"]) if in_lineage(c, segments))
    if not candidates:
        return None, 0, None
    newest = candidates[0]
    return newest.id, newest.step, file_digest(run_dir / newest.path)


def assert_ready_checkpoints_verify(run_dir: Path) -> None:
    with Store.open(run_dir) as s:
        ready = s.checkpoints(["ready"])
    for c in ready:
        path = run_dir / c.path
        assert path.is_file(), f"ready checkpoint {c.id} has no file"
        assert file_checksum(path) == c.checksum, f"ready checkpoint {c.id} does not match its checksum"


def kill_during_a_write(proc, run_dir: Path, timeout: float = 10.0) -> None:
    """SIGKILL as soon as a checkpoint's temporary file is seen, i.e. while a write is in flight."""
    folder = run_dir / "checkpoints"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:  # spin: a write may last a millisecond
        if any(name.endswith(".tmp") for name in os.listdir(folder)):
            break
    proc.send_signal(signal.SIGKILL)


def recorded_steps(run_dir: Path) -> dict[tuple[int, int], float]:
    with Store.open(run_dir) as s:
        return {(branch, step): loss for step, branch, loss in s.history()}


@pytest.mark.timeout(400)
def test_sigkill_at_random_moments_then_resume(run_dir, trainer):
    rng = random.Random(0x5EED)
    interrupted_kills = 0  # kills that left a save in `writing` or a temporary file
    resumed_steps: list[int] = []
    seen_resume_events = 0
    ever_recorded: dict[tuple[int, int], float] = {}

    for i in range(KILLS + 1):  # the last start is not killed: it runs to completion
        last = i == KILLS
        ckpt_id, step, digest = expected_resume(run_dir)
        if ckpt_id is None:  # no checkpoint yet (the first start, or a kill before the first save)
            digest = params_digest(fresh_model())
        leftovers, writing = [], []
        if i > 0:
            with Store.open(run_dir) as s:
                writing = s.checkpoints(["writing"])
                deleted = s.checkpoints(["deleted"])
            leftovers = list((run_dir / "checkpoints").glob("*.tmp")) + [run_dir / c.path for c in writing]
            # A kill between retention's marking a checkpoint deleted and removing its file.
            leftovers += [run_dir / c.path for c in deleted]
            leftovers = [p for p in leftovers if p.exists()]
            interrupted_kills += bool(writing or any(p.suffix == ".tmp" for p in leftovers))

        target = step + 200 if last else None
        t = trainer(run_dir, *(("--steps", str(target)) if last else FOREVER), *ARGS)
        event = t.next_event()
        assert event["event"] == "resumed", event
        assert event["step"] == step, f"restart {i} resumed at step {event['step']}, the newest ready checkpoint is at {step}"
        assert event["params"] == digest, f"restart {i}: the weights differ from those of the checkpoint at step {step}"
        resumed_steps.append(step)

        if ckpt_id is not None:
            # The agent says which checkpoint it used: the one that was ready and newest.
            def resumed_event():
                with Store.open(run_dir) as s:
                    found = [e for e in s.events() if e.kind == "resumed"]
                return found if len(found) > seen_resume_events else None

            found = wait_for(resumed_event, timeout=20)
            seen_resume_events = len(found)
            assert found[-1].data["checkpoint"] == ckpt_id and found[-1].step == step
        # The previous process's interrupted saves: marked failed, their files removed.
        with Store.open(run_dir) as s:
            for c in writing:
                now = s.checkpoint(c.id)
                assert now.status == "failed" and now.error.startswith("interrupted:"), now
        assert not [p for p in leftovers if p.exists()], "files of interrupted saves were left behind"

        if last:
            break
        time.sleep(rng.uniform(0.3, 2.5))
        if i % 3 == 2:
            kill_during_a_write(t.proc, run_dir)
        else:
            t.proc.send_signal(signal.SIGKILL)
        assert t.proc.wait(timeout=30) == -signal.SIGKILL, "the trainer ended before it was killed"

        assert_ready_checkpoints_verify(run_dir)
        now_recorded = recorded_steps(run_dir)
        assert ever_recorded.items() <= now_recorded.items(), "recorded steps were lost or changed"
        ever_recorded = now_recorded

    with Store.open(run_dir) as s:
        forks = len(s.branches()) - 1
    print(f"kills during a checkpoint write: {interrupted_kills} of {KILLS}; restarts that forked: {forks}; "
          f"resumed at steps {resumed_steps}")
    assert resumed_steps == sorted(resumed_steps), "a restart went back further than the newest checkpoint"
    assert len(set(resumed_steps)) > KILLS // 2, f"training hardly progressed between kills: {resumed_steps}"
    assert interrupted_kills >= 1, "no kill landed during a checkpoint write: make checkpoints bigger"

    code, events, err = t.wait(timeout=120)
    assert code == 0, err
    done = events[-1]
    n = target
    assert done["event"] == "done" and done["step"] == n

    with Store.open(run_dir) as s:
        info = s.run()
        assert info.status == "finished" and info.step == n
        lineage = s.history(info.branch)
        everything = s.history()
        checkpoints = s.checkpoints()
        branches = s.branches()
    assert [step for step, _, _ in lineage] == list(range(1, n + 1)), "the history has a gap or a duplicate"
    assert len(branches) > 1, "no restart ever forked a branch: the test did not exercise abandoned steps"
    per_branch: dict[int, list[int]] = {}
    for step, branch, _ in everything:
        per_branch.setdefault(branch, []).append(step)
    for branch, steps in per_branch.items():  # each branch's own steps: consecutive, none twice
        assert steps == list(range(steps[0], steps[-1] + 1)), f"branch {branch} has a gap or a duplicate"
    assert ever_recorded.items() <= recorded_steps(run_dir).items(), "abandoned steps were deleted"
    assert len(everything) >= len(ever_recorded) and len(everything) >= n

    assert not [c for c in checkpoints if c.status == "writing"]
    interrupted = [c for c in checkpoints if c.status == "failed"]
    assert interrupted and all(c.error.startswith("interrupted:") for c in interrupted)
    assert not [c for c in checkpoints if c.status == "corrupt"], "a kill left a checkpoint that did not load"
    assert_ready_checkpoints_verify(run_dir)
    assert not list((run_dir / "checkpoints").glob("*.tmp"))

    # The final checkpoint carries the same history as the store, and the weights a run of n
    # steps would have had if it had never been interrupted.
    (final,) = [c for c in checkpoints if c.status == "ready" and c.step == n and c.branch == info.branch]
    state = torch.load(run_dir / final.path, map_location="cpu", weights_only=True)
    assert state["loss_history"].tolist() == [loss for _, _, loss in lineage]
    model, optimizer, sched, batch = build()
    for _ in range(n):
        train_step(model, optimizer, sched, batch)
    for name, tensor in model.state_dict().items():
        assert torch.equal(state["model"][name], tensor), f"{name} differs from an uninterrupted run"
    model.register_buffer("ballast", torch.zeros(int(BALLAST_MB * 2**20) // 4))
    assert done["params"] == params_digest(model)
