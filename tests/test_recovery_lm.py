"""Recovery of a language model (examples/train_gpt.py, the hazard of benchmarks/recovery_lm.py) under
the real daemon, and the example's loop counter following `run.step` through a rollback.

What a user relies on: when a GPT's loss climbs because its warm-up peak LR is far too high, the
daemon finds the climb where it began, rolls the run back to a checkpoint from before it with the
LR lowered, and the run ends far better than it would have alone; and a training loop written like
the example ends exactly at its --steps whatever rollbacks happened on the way.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli, issue, wait_for

from trainwarden.agent.store import Store
from trainwarden.supervisor.detectors import REBOUND_KINDS
from trainwarden.supervisor.policy import Policy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from recovery_lm import (  # noqa: E402  (the benchmark's hazard: one home)
    HAZARD_LR, QUICK_SEED, QUICK_STEPS, climb, final_val, job)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_gpt.py"
MARGIN = Policy().rollback_margin_steps  # the daemon runs with the default policy


@pytest.mark.timeout(900)
def test_lm_recovery_gpt_climb_is_found_rolled_back_and_ends_better_than_alone(tmp_path, daemon, launch):
    hazard = job(HAZARD_LR, QUICK_SEED, QUICK_STEPS)  # still in the warm-up at the end: the climb is over by ~1850
    alone = tmp_path / "alone"
    out = subprocess.run([*hazard, "--run-dir", str(alone)], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    real = climb(alone)
    assert real is not None, "the hazard did not climb: the test's premise is gone"

    root = tmp_path / "runs"
    d = daemon(root)  # the default policy: auto for rebounds
    d.wait_log("watching")
    proc = launch("--root", root, "--name", "gpt", "--", *hazard)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    run = root / "gpt"

    def settled() -> bool:
        with Store.open(run) as s:
            return all(iv.status not in ("issued", "proposed") for iv in s.interventions())
    wait_for(settled, timeout=30, what="the interventions' acknowledgements")
    with Store.open(run) as s:
        found = [e.data["finding"] for e in s.events() if e.source == "supervisor" and e.kind in REBOUND_KINDS]
        assert found, f"no rebound finding; the daemon's log:\n{d.text()}"
        onset = found[0]["onset"]
        # Near the real climb: after the loss bottomed out, no later than where it was 1.3x its bottom.
        assert real["bottom_step"] - MARGIN <= onset <= real["high_step"], (found[0], real)
        first = s.interventions()[0]
        assert first.mode == "auto" and first.status == "applied" and first.finding in REBOUND_KINDS
        rollback, cut = (s.command(i) for i in first.commands[:2])
        assert rollback.kind == "rollback" and rollback.status == "applied"
        assert s.checkpoint(rollback.args["target"]).step <= first.onset - MARGIN
        assert (cut.kind, cut.status) == ("scale_lr", "applied") and cut.args["factor"] < 1
        info = s.run()
        assert info.lr_multiplier < 1 and info.status == "finished" and info.branch != 0
        assert s.max_step(0) > first.onset  # the climbed steps are kept under the first branch
        assert s.history(info.branch)[-1][0] == QUICK_STEPS
    supervised, unsupervised = final_val(run), final_val(alone)
    assert supervised <= 0.8 * unsupervised, (supervised, unsupervised)


def test_the_example_loop_ends_at_its_steps_after_a_rollback(tmp_path):
    """The loop reads its counter from run.step: rolled back by an operator, it trains on to exactly
    --steps (a counter of its own would stop as many steps short as the rollback went back)."""
    run = tmp_path / "gpt"
    small = ["--run-dir", str(run), "--batch", "8", "--layers", "1", "--d-model", "32", "--heads", "2",
             "--warmup", "20", "--val-every", "50"]
    first = subprocess.run([sys.executable, str(EXAMPLE), *small, "--steps", "150"], capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr
    with Store.open(run) as s:
        target = min((c for c in s.checkpoints(["ready"])), key=lambda c: c.step)
    assert target.step < 150
    # Queued while no process is attached: the next one reads it at once and pauses at its first
    # step (how fast the machine is does not matter), then the rollback comes from the command line.
    issue(run, "pause")
    proc = subprocess.Popen([sys.executable, str(EXAMPLE), *small, "--steps", "300"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        def paused() -> bool:
            with Store.open(run) as s:
                return s.run().status == "paused"
        wait_for(paused, timeout=120, what="the run pausing")
        back = cli("rollback", run, str(target.id))
        assert back.returncode == 0, back
        from_step = int(re.search(r"^applied: rolled back from step (\d+) ", back.stdout, re.M).group(1))
        assert cli("resume", run).returncode == 0
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert f"rolled back from step {from_step} to step {target.step}" in out and "done at step 300" in out
    with Store.open(run) as s:
        info = s.run()
        assert info.status == "finished" and info.step == 300 and info.branch != 0
        assert [step for step, _, _ in s.history(info.branch)] == list(range(1, 301))
        vals = [m.step for m in s.lineage_metrics(info.branch, "val_loss")]
    assert vals == list(range(50, 301, 50))  # once each, the restored step's included
