"""The LR multiplier: an operator's LR change survives the scheduler, rollbacks and restarts."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import FAST, issue, train_until_acked
from tiny_train import build, train_step

import trainwarden.agent as tw


def warmup_cosine(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / (total - warmup))))
    return factor


SCHEDULERS = {
    "step": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=40, gamma=0.5),
    "warmup_cosine": lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(20, 400)),
    "onecycle": lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=2000),
}


class Setup:
    """A tiny model, its optimizer and scheduler, attached, with a probe on the LR each step uses."""

    def __init__(self, run_dir, scheduler: str, window: int = 5) -> None:
        self.model, self.opt, _, self.batch = build(lr=0.05)
        self.sched = SCHEDULERS[scheduler](self.opt)
        self.run = tw.attach(run_dir, model=self.model, optimizer=self.opt, scheduler=self.sched,
                             config=tw.AgentConfig(window=window, save_every_steps=window, **FAST))
        self.used: list[float] = []  # LR group 0 stepped with; our hook runs before this one
        self.opt.register_step_pre_hook(lambda o, a, k: self.used.append(float(o.param_groups[0]["lr"])))

    def step(self) -> torch.Tensor:
        return train_step(self.model, self.opt, self.sched, self.batch)

    def train(self, n: int) -> None:
        for _ in range(n):
            self.run.record(self.step())

    def scheduled(self) -> float:
        return float(self.opt.param_groups[0]["lr"])


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_set_lr_is_not_undone_by_the_scheduler(run_dir, scheduler):
    s = Setup(run_dir, scheduler)
    s.train(23)
    cmd = train_until_acked(s.run, s.step, issue(run_dir, "set_lr", {"value": 0.01}))
    assert cmd.status == "applied", cmd.result
    assert "-> 0.01 " in cmd.result  # the LR at the step boundary where it was applied
    with tw.Store.open(run_dir) as store:
        multiplier = store.run().lr_multiplier
    assert s.run.lr == pytest.approx(s.scheduled() * multiplier)
    # From now on every optimizer step uses the schedule's shape times the operator's multiplier.
    for _ in range(60):
        scheduled_before_step = s.scheduled()
        s.run.record(s.step())
        assert s.used[-1] == pytest.approx(scheduled_before_step * multiplier, rel=1e-9)
    assert s.run.lr == pytest.approx(s.scheduled() * multiplier)
    s.run.close()


def test_step_lr_keeps_decaying_from_the_operators_value(run_dir):
    s = Setup(run_dir, "step")
    s.train(3)
    cmd = train_until_acked(s.run, s.step, issue(run_dir, "set_lr", {"value": 0.02}))
    assert cmd.status == "applied" and s.run.step < 40, "the test expects the change before the first decay"
    s.used.clear()
    s.train(40 - s.run.step)  # up to the first decay: the operator's value, not the schedule's 0.05
    assert s.used and all(lr == pytest.approx(0.02) for lr in s.used)
    s.used.clear()
    s.train(5)  # after StepLR's decay: halved from the operator's value
    assert all(lr == pytest.approx(0.01) for lr in s.used)
    s.run.close()


def test_scale_lr_compounds_and_each_command_applies_once(run_dir):
    s = Setup(run_dir, "step")
    s.train(3)
    first = issue(run_dir, "scale_lr", {"factor": 0.5})
    second = issue(run_dir, "scale_lr", {"factor": 0.5})
    train_until_acked(s.run, s.step, first)
    train_until_acked(s.run, s.step, second)
    s.train(20)
    assert s.run.lr == pytest.approx(s.scheduled() * 0.25)
    with tw.Store.open(run_dir) as store:
        assert store.run().lr_multiplier == pytest.approx(0.25)
        assert [c.status for c in store.commands()] == ["applied", "applied"]
    s.run.close()


def test_multiplier_survives_rollback_and_restart(run_dir):
    s = Setup(run_dir, "warmup_cosine")
    s.train(30)
    train_until_acked(s.run, s.step, issue(run_dir, "scale_lr", {"factor": 0.1}))
    s.train(10)
    cmd = train_until_acked(s.run, s.step, issue(run_dir, "rollback", {"target": "best"}))
    assert cmd.status == "applied", cmd.result
    s.used.clear()
    scheduled = s.scheduled()
    s.run.record(s.step())
    assert s.used[-1] == pytest.approx(scheduled * 0.1)  # the rollback kept the lower LR
    s.train(20)
    s.run.close()

    again = Setup(run_dir, "warmup_cosine")  # a new process, as after a crash or a requeue
    step = again.run.resume()
    assert step > 0
    assert again.run.lr == pytest.approx(again.scheduled() * 0.1)
    scheduled = again.scheduled()
    again.run.record(again.step())
    assert again.used[-1] == pytest.approx(scheduled * 0.1)
    again.run.close()


def test_set_lr_is_rejected_while_the_schedule_is_at_zero(run_dir):
    model, opt, _, batch = build(lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.0 if step < 1000 else 1.0)
    run = tw.attach(run_dir, model=model, optimizer=opt, scheduler=sched, config=tw.AgentConfig(**FAST))
    step = lambda: train_step(model, opt, sched, batch)  # noqa: E731
    cmd = train_until_acked(run, step, issue(run_dir, "set_lr", {"value": 0.01}))
    assert cmd.status == "rejected"
    assert "scale factor" in cmd.result
    cmd = train_until_acked(run, step, issue(run_dir, "scale_lr", {"factor": 2.0}))
    assert cmd.status == "applied"
    run.close()


@pytest.mark.parametrize("args", [{"value": -0.1}, {"value": 0}, {"value": "nan"}, {"value": "fast"}, {}])
def test_bad_learning_rates_written_to_the_store_are_rejected(run_dir, args):
    s = Setup(run_dir, "step")
    before = s.run.lr
    cmd = train_until_acked(s.run, s.step, issue(run_dir, "set_lr", args))
    assert cmd.status == "rejected"
    assert "learning rate" in cmd.result
    s.train(5)
    assert s.run.lr == pytest.approx(before * (s.scheduled() / 0.05))  # unchanged multiplier
    s.run.close()
