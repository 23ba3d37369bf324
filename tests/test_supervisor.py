"""The real daemon (`trainwarden supervise`, its own process) over real stores written by real
trainings (tests/tiny_train.py in subprocesses): it finds rebounds, writes events and commands,
survives kill -9 without losing or repeating an intervention, asks before acting in `ask` mode,
skips stores it cannot read and keeps its policy when a reload fails."""
from __future__ import annotations

import json
import math
import signal
import sqlite3
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import cli, wait_for

from trainwarden.agent.store import Store
from trainwarden.supervisor.policy import window_level

# Small windows (tiny_train's --window 10), a short cooldown: the whole loop in seconds.
POLICY = """
cooldown_steps = 50
rollback_margin_steps = 10
"""
JUMP = ["--steps", "1200", "--window", "10", "--lr-jump", "300:8", "--save-every-steps", "50", "--sleep", "0.004"]


def write_policy(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY + extra)
    return path


def supervisor_events(run: Path) -> list:
    with Store.open(run) as s:
        return [e for e in s.events() if e.source == "supervisor"]


def interventions(run: Path) -> list:
    with Store.open(run) as s:
        return s.interventions()


def commands(run: Path) -> list:
    with Store.open(run) as s:
        return s.commands()


def assert_judged_on_their_own_windows(run: Path, cooldown: int, window: int) -> None:
    """Every verdict on a remedy (cured, or not and a further cut) was reached on the windows it must
    be judged on: the first three full windows of the remedy's branch (or a descendant) past its
    onset and its cooldown, written before the verdict, their median level its level. Not on the
    abandoned branch's steps, nor the new branch's first windows, nor whatever came last."""
    with Store.open(run) as s:
        events = s.events()
        judged = 0
        for iv in s.interventions():
            verdicts = [e for e in events if e.source == "supervisor" and (
                (e.kind == "cured" and e.data.get("intervention") == iv.id) or e.data.get("key") == f"cure:{iv.id}")]
            if not verdicts:
                continue
            remedy = [e.branch for e in events if e.source == "agent" and e.data.get("command") in iv.commands][-1]
            start = max(iv.onset, max(s.command(i).applied_step for i in iv.commands) + cooldown)
            own = [b for b, _, _ in s.lineage(verdicts[0].branch)]
            assert remedy in own, (iv.id, remedy, own)
            mine = set(own[own.index(remedy):])
            windows = [w for w in s.lineage_windows(verdicts[0].branch)
                       if w.branch in mine and w.first_step > start and w.count == window][:3]
            assert len(windows) == 3 and all(w.time <= verdicts[0].time for w in windows), (iv.id, iv.outcome)
            data = verdicts[0].data
            level = data["level"] if verdicts[0].kind == "cured" else data["finding"]["data"]["level"]
            assert math.isclose(level, statistics.median(window_level(w.losses) for w in windows)), (iv.id, level)
            judged += 1
        assert judged


def test_rebound_is_rolled_back_and_the_lr_cut_until_cured(tmp_path, daemon, trainer):
    root = tmp_path / "runs"
    d = daemon(root, policy=write_policy(tmp_path))
    d.wait_log("watching")
    run = root / "jump"
    t = trainer(run, *JUMP)
    d.wait_log("new run", timeout=10)
    code, out, err = t.wait(timeout=240)
    assert code == 0, err
    wait_for(lambda: all(iv.status != "issued" for iv in interventions(run)), timeout=20)
    ivs = interventions(run)
    assert ivs and ivs[0].finding in ("spike", "nan", "divergence")
    first = ivs[0]
    assert first.mode == "auto" and first.status == "applied"
    assert 295 <= first.onset <= 330  # the LR jump is at step 300
    with Store.open(run) as s:
        rollback = s.command(first.commands[0])
        target = s.checkpoint(rollback.args["target"])
        assert rollback.kind == "rollback" and target.step <= first.onset - 10
        branches = s.branches()
        assert len(branches) >= 2 and any(b.parent == 0 for b in branches)
        assert s.max_step(0) > target.step  # the abandoned steps are kept under branch 0
        info = s.run()
    cuts = [c for c in commands(run) if c.kind == "scale_lr" and c.status == "applied"]
    assert info.lr_multiplier == 0.5 ** len(cuts) and len(cuts) >= 2  # x8 needs more than one cut
    assert out[-1]["lr"] <= 0.05 * 8 * 0.5 ** len(cuts) + 1e-12
    kinds = [e.kind for e in supervisor_events(run)]
    assert "intervention" in kinds and "intervention_applied" in kinds
    assert "cured" in kinds or "needs_person" in kinds
    log = d.text()
    assert f"jump step {first.step} {first.finding}:" in log and "intervention 1:" in log
    assert_judged_on_their_own_windows(run, cooldown=50, window=10)


def test_kill_9_mid_intervention_neither_loses_nor_repeats_it(tmp_path, daemon, trainer):
    root = tmp_path / "runs"
    policy = write_policy(tmp_path)
    run = root / "jump"
    # The agent reads commands every 3 s: a wide window in which the intervention is issued
    # (its commands written) but not yet applied.
    t = trainer(run, *JUMP, "--poll", "3")
    d = daemon(root, policy=policy)

    def issued() -> bool:
        try:
            return any(iv.status == "issued" for iv in interventions(run))
        except Exception:
            return False
    wait_for(issued, timeout=120, interval=0.01)
    d.kill9()
    pending = [c for c in commands(run) if c.status == "pending"]
    assert {c.kind for c in pending} >= {"rollback", "scale_lr"}  # killed between issuing and applying

    d2 = daemon(root, policy=policy)
    code, _, err = t.wait(timeout=240)
    assert code == 0, err
    def settled() -> bool:
        # An intervention issued in the run's last moments may never be applied: the job ended first.
        with Store.open(run) as s:
            return all(iv.status != "issued" or all(s.command(i).status == "pending" for i in iv.commands)
                       for iv in s.interventions()) and s.run().status == "finished"
    wait_for(settled, timeout=20, what="the interventions' acknowledgements")
    d2.stop()
    ivs = interventions(run)
    assert ivs[0].status == "applied"  # followed up by the restarted daemon
    events = supervisor_events(run)
    assert [e.data.get("intervention") for e in events if e.kind == "intervention_applied"].count(ivs[0].id) == 1
    keys = Counter(e.data["key"] for e in events if "key" in e.data)
    assert max(keys.values()) == 1  # no finding recorded twice
    same = Counter((iv.finding, iv.onset, iv.branch) for iv in ivs)
    assert max(same.values()) == 1  # no intervention repeated
    issued_ids = [i for iv in ivs for i in iv.commands]
    assert len(issued_ids) == len(set(issued_ids))
    assert sorted(c.id for c in commands(run)) == sorted(issued_ids)  # every command belongs to one intervention


def test_a_daemon_started_after_the_trouble_still_acts_on_fresh_findings(tmp_path, daemon, trainer):
    root = tmp_path / "runs"
    run = root / "late"
    t = trainer(run, "--steps", "100000", "--window", "10", "--lr-jump", "300:8", "--save-every-steps", "50",
                "--sleep", "0.01")

    def past_jump() -> bool:
        try:
            with Store.open(run) as s:
                return s.run().step >= 330
        except Exception:
            return False
    wait_for(past_jump, timeout=60)
    d = daemon(root, policy=write_policy(tmp_path))
    d.wait_log("intervention 1:", timeout=30)
    wait_for(lambda: interventions(run)[0].status == "applied", timeout=20)
    assert cli("stop", run).returncode == 0
    t.wait(timeout=60)


def test_ask_mode_proposes_and_an_operator_approves_or_denies(tmp_path, daemon, trainer):
    root = tmp_path / "runs"
    policy = write_policy(tmp_path, '[modes]\nspike = "ask"\nnan = "ask"\ndivergence = "ask"\n')
    # Stores the daemon cannot read sit beside the run: reported and skipped, the run is served.
    (root / "corrupt").mkdir(parents=True)
    (root / "corrupt" / "trainwarden.db").write_bytes(b"this is not sqlite" * 100)
    Store.open(root / "future", create=True).close()
    with sqlite3.connect(root / "future" / "trainwarden.db") as c:
        c.execute("PRAGMA user_version = 99")
    run = root / "asked"
    t = trainer(run, "--steps", "100000", "--window", "10", "--lr-jump", "300:8", "--save-every-steps", "50",
                "--sleep", "0.01")
    d = daemon(root, policy=policy)
    log = d.wait_log("proposal 1:", timeout=90)
    assert "corrupt: store unreadable, skipped" in log and "future: store unreadable, skipped" in log
    assert "schema version 99" in log
    assert [c.kind for c in commands(run)] == []  # nothing done without a person
    first = interventions(run)[0]
    assert first.status == "proposed" and first.mode == "ask"

    bad = cli("approve", run, "99")
    assert bad.returncode == 2 and "no intervention 99" in bad.stderr
    out = cli("approve", run, str(first.id), "--timeout", "30")
    assert out.returncode == 0, out.stderr
    assert "rollback applied" in out.stdout and "scale_lr applied" in out.stdout
    again = cli("approve", run, str(first.id))
    assert again.returncode == 1 and ("is issued" in again.stderr or "is applied" in again.stderr)
    with Store.open(run) as s:
        iv = s.intervention(first.id)
        assert iv.decided_by and iv.decided_by.count("@") == 1
        assert s.run().lr_multiplier == 0.5
        assert any(e.kind == "proposal_approved" for e in s.events())

    # x8 with one cut still rebounds: a second proposal, which the operator denies.
    d.wait_log("proposal 2:", timeout=90)
    out = cli("deny", run, "2")
    assert out.returncode == 0 and "denied" in out.stdout
    assert interventions(run)[1].status == "denied"
    assert [c.kind for c in commands(run)] == ["rollback", "scale_lr"]
    assert cli("stop", run).returncode == 0
    t.wait(timeout=60)


def test_invalid_policy_is_refused_and_a_failed_reload_keeps_the_old_one(tmp_path, daemon):
    root = tmp_path / "runs"
    bad = tmp_path / "bad.toml"
    bad.write_text("lr_scale = 3\n")
    out = cli("supervise", "--root", root, "--policy", bad, timeout=30)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"trainwarden: error: {bad}: lr_scale: Input should be less than or equal to 1, got 3"]

    good = tmp_path / "policy.toml"
    good.write_text("lr_scale = 0.25\n")
    d = daemon(root, policy=good)
    d.wait_log("watching")
    good.write_text('[modes]\nspike = "never"\n')
    d.proc.send_signal(signal.SIGHUP)
    log = d.wait_log("policy reload failed")
    assert f"keeping the previous policy: {good}: modes.spike:" in log
    good.write_text('lr_scale = 0.3\n[modes]\nspike = "observe"\n')
    d.proc.send_signal(signal.SIGHUP)
    assert "spike=observe" in d.wait_log("policy reloaded")
    assert d.proc.poll() is None


def test_replay_of_a_run_folder_and_of_its_csv(tmp_path, trainer):
    run = tmp_path / "run"
    code, _, err = trainer(run, "--steps", "600", "--window", "10", "--lr-jump", "300:8").wait()
    assert code == 0, err
    out = cli("replay", run)
    assert out.returncode == 0, out.stderr
    findings = [json.loads(line) for line in out.stdout.splitlines()]
    assert findings[0]["kind"] in ("spike", "nan", "divergence") and 295 <= findings[0]["onset"] <= 320
    assert set(findings[0]) == {"step", "onset", "kind", "severity", "message", "action"}


@pytest.mark.timeout(900)  # ~70 s alone; far longer on a loaded machine
def test_end_to_end_example_under_trainwarden_run_recovers_to_a_healthy_final_loss(tmp_path, daemon):
    """The issue's proof: examples/train_mlp.py, whose schedule multiplies the LR by 30 at step 750,
    launched with `trainwarden run`, the daemon in auto mode beside it."""
    example = Path(__file__).resolve().parents[1] / "examples" / "train_mlp.py"
    job = [sys.executable, str(example), "--steps", "2500", "--hidden", "64", "--val-every", "250"]
    healthy = tmp_path / "healthy"
    subprocess.run([*job, "--run-dir", str(healthy)], check=True, capture_output=True, timeout=300)

    root = tmp_path / "runs"
    policy = tmp_path / "policy.toml"
    policy.write_text("cooldown_steps = 250\n")  # the defaults otherwise, 50-step windows
    d = daemon(root, policy=policy)
    d.wait_log("watching")
    out = cli("run", "--root", root, "--name", "jump", "--", *job, "--lr-jump", "750:30", timeout=600)
    assert out.returncode == 0, out.stderr
    run = root / "jump"
    wait_for(lambda: all(iv.status != "issued" for iv in interventions(run)), timeout=20)
    first = interventions(run)[0]
    assert first.finding in ("spike", "nan", "divergence") and 745 <= first.onset <= 800
    with Store.open(run) as s:
        rollback = s.command(first.commands[0])
        assert rollback.kind == "rollback" and rollback.status == "applied"
        assert s.checkpoint(rollback.args["target"]).step <= first.onset - 50
        halved = s.command(first.commands[1])
        assert (halved.kind, halved.args, halved.status) == ("scale_lr", {"factor": 0.5}, "applied")
        branches = s.branches()
        assert len(branches) >= 2 and s.max_step(0) > first.onset  # the rebounded steps are kept
        assert s.run().status == "finished"
        final = statistics.median(statistics.median(w.losses) for w in s.lineage_windows(s.run().branch)[-10:])
    with Store.open(healthy) as s:
        reference = statistics.median(statistics.median(w.losses) for w in s.lineage_windows(s.run().branch)[-10:])
    assert final <= 1.5 * reference, (final, reference)
    assert_judged_on_their_own_windows(run, cooldown=250, window=50)


def test_budget_spent_pauses_the_run_for_a_person_per_run_overrides_apply(tmp_path, daemon, trainer):
    root = tmp_path / "runs"
    run = root / "limited"
    run.mkdir(parents=True)
    (run / "warden.toml").write_text("max_interventions = 1\n")  # this run only; the daemon's file says 6
    t = trainer(run, "--steps", "100000", "--window", "10", "--lr-jump", "300:8", "--save-every-steps", "50",
                "--sleep", "0.004")
    d = daemon(root, policy=write_policy(tmp_path))
    d.wait_log("needs_person", timeout=120)
    wait_for(lambda: interventions(run)[-1].status == "applied", timeout=20)
    ivs = interventions(run)
    assert [iv.finding for iv in ivs] == [ivs[0].finding, "budget"]
    with Store.open(run) as s:
        assert s.run().status == "paused"
        assert s.command(ivs[1].commands[0]).kind == "pause"
    assert cli("stop", run).returncode == 0
    t.wait(timeout=60)


def test_polling_discovery_and_the_file_system_type(tmp_path):
    from trainwarden.supervisor.discovery import fs_type

    assert fs_type(Path("/proc/self")) == "proc"
    root = tmp_path / "runs"
    args = ["trainwarden", "supervise", "--root", str(root), "--poll"]
    log = tmp_path / "poll.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(args, stderr=fh)
        try:
            wait_for(lambda: "(polling)" in log.read_text(), timeout=30)
            Store.open(root / "a" / "b", create=True).close()  # nested two deep
            wait_for(lambda: f"new run {root / 'a' / 'b'}" in log.read_text(), timeout=10)
        finally:
            proc.terminate()
            proc.wait(15)
