"""Preemption signals for real: SIGTERM or SIGUSR1 sent to a training subprocess.

What a user relies on (a scheduler preempting the job, or someone asking it to checkpoint and
leave): at the next step boundary the agent writes every step recorded so far, saves a `signal`
checkpoint of exactly that step, marks the run `stopped`, reports a `signal` event, and exits
with 128 + the signal's number; a restart continues from exactly that step, on the same history.
"""
from __future__ import annotations

import signal
import time

import pytest
import torch
from conftest import cli, wait_for
from tiny_train import build, params_digest, train_step

from trainwarden.agent.checkpoint import file_checksum
from trainwarden.agent.store import Store

# A window of 64 steps, so the signal almost always lands inside a partial window.
ARGS = ("--window", "64", "--sleep", "0.002")


def replayed_digest(steps: int) -> str:
    """Weights of tiny_train's model after `steps` uninterrupted steps, trained here."""
    model, optimizer, sched, batch = build()
    for _ in range(steps):
        train_step(model, optimizer, sched, batch)
    return params_digest(model)


def file_digest(path) -> str:
    model, _, _, _ = build()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"])
    return params_digest(model)


def wait_until_training(run_dir, past_step: int = 100) -> None:
    """Until the store shows `past_step` steps: the signal then comes mid-training."""
    def progressed():
        with Store.open(run_dir) as s:
            return s.max_step(s.run().branch) >= past_step
    wait_for(progressed, timeout=60)


def check_stopped_by_signal(run_dir, name: str, code: int, events: list[dict], err: str, expected: int) -> int:
    """The store after a signal stop; returns the step the process stopped at."""
    assert code == expected, f"exit status {code}, expected {expected} (128 + {name}): {err}"
    assert not events, f"the process went on to finish instead of stopping: {events}"
    with Store.open(run_dir) as s:
        info = s.run()
        (event,) = [e for e in s.events() if e.kind == "signal"]
        stopped_at = event.step
        assert name in event.message and info.status == "stopped" and info.step == stopped_at
        ckpts = [c for c in s.checkpoints() if c.kind == "signal"]
        lineage = s.history(info.branch)
    assert stopped_at > 0
    (ckpt,) = ckpts
    assert ckpt.status == "ready" and ckpt.step == stopped_at and ckpt.branch == info.branch
    assert file_checksum(run_dir / ckpt.path) == ckpt.checksum
    # Every step up to the signal is in the store, the partial window included.
    assert [step for step, _, _ in lineage] == list(range(1, stopped_at + 1))
    state = torch.load(run_dir / ckpt.path, map_location="cpu", weights_only=True)
    assert state["step"] == stopped_at
    assert state["loss_history"].tolist() == [loss for _, _, loss in lineage]
    # The saved weights are those of exactly `stopped_at` steps, not of an earlier step.
    assert file_digest(run_dir / ckpt.path) == replayed_digest(stopped_at)
    return stopped_at


def check_restart_continues(run_dir, trainer, stopped_at: int) -> None:
    with Store.open(run_dir) as s:
        branch = s.run().branch
        (ckpt,) = [c for c in s.checkpoints() if c.kind == "signal"]
    digest = file_digest(run_dir / ckpt.path)
    target = stopped_at + 30
    code, events, err = trainer(run_dir, "--steps", str(target), *ARGS).wait(timeout=120)
    assert code == 0, err
    resumed, done = events[0], events[-1]
    assert resumed["event"] == "resumed" and resumed["step"] == stopped_at and resumed["params"] == digest
    assert resumed["branch"] == branch, "a clean stop should leave nothing to abandon: no new branch"
    assert done["event"] == "done" and done["step"] == target
    assert done["params"] == replayed_digest(target)
    with Store.open(run_dir) as s:
        info = s.run()
        assert info.status == "finished" and info.branch == branch
        assert [step for step, _, _ in s.history(branch)] == list(range(1, target + 1))
        assert len(s.history()) == target, "no step was recorded twice"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1"])
def test_signal_saves_at_the_step_boundary_and_exits(run_dir, trainer, name):
    signum = signal.Signals[name]
    t = trainer(run_dir, "--steps", str(10**9), *ARGS)
    assert t.next_event()["event"] == "resumed"
    wait_until_training(run_dir)
    t.proc.send_signal(signum)
    code, events, err = t.wait(timeout=60)
    stopped_at = check_stopped_by_signal(run_dir, name, code, events, err, 128 + signum)
    check_restart_continues(run_dir, trainer, stopped_at)


@pytest.mark.timeout(180)
def test_sigterm_while_paused_saves_and_exits(run_dir, trainer):
    """A preempted job that an operator had paused still leaves a checkpoint of its step."""
    t = trainer(run_dir, "--steps", str(10**9), *ARGS)
    assert t.next_event()["event"] == "resumed"
    wait_until_training(run_dir)
    done = cli("pause", run_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    with Store.open(run_dir) as s:
        assert s.run().status == "paused"
        paused_at = s.run().step
    time.sleep(0.5)  # still paused: no step goes by
    t.proc.send_signal(signal.SIGTERM)
    code, events, err = t.wait(timeout=60)
    stopped_at = check_stopped_by_signal(run_dir, "SIGTERM", code, events, err, 143)
    assert stopped_at == paused_at
    check_restart_continues(run_dir, trainer, stopped_at)


@pytest.mark.timeout(120)
def test_a_second_sigterm_ends_a_process_that_reaches_no_step_boundary(run_dir, trainer):
    """When a step never ends, a second signal must still end the process (default action)."""
    t = trainer(run_dir, "--steps", str(10**9), "--sleep", "60")
    assert t.next_event()["event"] == "resumed"

    def in_first_step():  # step 1 recorded (the heartbeat says so): now in the 60 s sleep
        with Store.open(run_dir) as s:
            return s.run().step >= 1
    wait_for(in_first_step, timeout=30)
    t.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert t.proc.poll() is None, "the first signal waits for the step boundary"
    t.proc.send_signal(signal.SIGTERM)
    assert t.proc.wait(timeout=30) == -signal.SIGTERM
