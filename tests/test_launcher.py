"""`trainwarden run` for real: the installed command launches real jobs, which crash, hang, get
signals and are restarted; what a user relies on is checked in the run's store and exit status.

- a crashed job is restarted and resumes from its checkpoint; launching again resumes the run;
- a job that keeps failing is restarted K times with a growing delay, then its status is passed on;
- SIGTERM to the launcher reaches the job (the agent saves and exits) and nothing is restarted;
  a second signal kills a job that ignores the first at once;
- a frozen job is found hung by the detector, stopped (SIGKILL when SIGTERM is not enough) and
  restarted;
- usage mistakes are one line with a shell's exit status, and leave no folder behind.
"""
from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
from conftest import cli, kinds, launcher_events, wait_for

from trainwarden.agent.store import Store, StoreError
from trainwarden.supervisor import launch_job, launch_rules, launcher
from trainwarden.supervisor.launch_rules import backoff_delay, default_name, exit_status, next_streak, verdict

HERE = Path(__file__).parent
JOB = (sys.executable, str(HERE / "launcher_job.py"))
FAST = ("--backoff", "0.1")


def stdout_events(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def kinds_so_far(run_dir: Path) -> list[str]:
    """For polling: the launcher's events, none while it has not made the store yet."""
    try:
        return kinds(run_dir)
    except StoreError:
        return []


def check_stderr(err: str) -> list[str]:
    """Every line the launcher wrote is one of its own (prefixed), and there are some."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and all(line.startswith("trainwarden run: ") for line in lines), err
    return lines


def run_info(run_dir: Path):
    """The run row, or None while the launcher has not created it yet."""
    try:
        with Store.open(run_dir) as s:
            return s.run()
    except StoreError:
        return None


# ------------------------------------------------------------ pure decisions
def test_backoff_doubles_from_the_initial_delay_and_is_capped() -> None:
    assert [backoff_delay(n, 1.0) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert [backoff_delay(n, 0.1) for n in range(3)] == pytest.approx([0.1, 0.2, 0.4])
    assert backoff_delay(10_000, 1.0) == 60
    assert backoff_delay(0, 90.0) == 90  # asked for more than the cap: as asked
    assert next_streak(3, ran_s=59.0) == 3
    assert next_streak(3, ran_s=launch_rules.HEALTHY_AFTER_S) == 0  # a long healthy run starts the delays over


def test_verdicts_and_exit_statuses() -> None:
    assert verdict(0, stopped=False, hung=False, restarts=0, max_restarts=3) == "finished"
    assert verdict(1, stopped=False, hung=False, restarts=2, max_restarts=3) == "restart"
    assert verdict(-9, stopped=False, hung=False, restarts=3, max_restarts=3) == "give_up"
    assert verdict(0, stopped=False, hung=True, restarts=0, max_restarts=3) == "restart"  # stopped by us: not done
    assert verdict(143, stopped=True, hung=True, restarts=0, max_restarts=3) == "stopped"
    assert verdict(1, stopped=False, hung=False, restarts=0, max_restarts=0) == "give_up"
    assert [exit_status(c) for c in (0, 3, -signal.SIGKILL, -signal.SIGTERM)] == [0, 3, 137, 143]


def test_default_names() -> None:
    now = time.mktime((2026, 11, 25, 10, 15, 0, 0, 0, -1))
    assert default_name(["python", "scripts/train.py", "--lr", "3"], now) == "train-20261125-101500"
    assert default_name(["torchrun", "--nproc-per-node", "2", "train_gpt.py"], now) == "train_gpt-20261125-101500"
    assert default_name(["python", "-m", "pkg.finetune"], now) == "finetune-20261125-101500"
    assert default_name(["/opt/bin/my job"], now) == "my_job-20261125-101500"


def test_the_agent_attaches_to_the_run_the_launcher_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The launcher makes the store and run row before the job starts; attach() with no folder
    (from the environment) takes the row over, keeping its name."""
    import trainwarden.agent as tw
    from tiny_train import build, train_step

    assert launch_job.ENV_RUN_DIR == tw.ENV_RUN_DIR
    run_dir = tmp_path / "made"
    with launcher.open_run(run_dir) as s:
        assert s.run().status == "created" and s.run().name == "made"
    model, optimizer, sched, batch = build()
    monkeypatch.setenv(tw.ENV_RUN_DIR, str(run_dir))
    with tw.attach(model=model, optimizer=optimizer, config=tw.AgentConfig(window=5, handle_signals=False)) as run:
        assert run.resume() == 0
        for _ in range(10):
            run.record(train_step(model, optimizer, sched, batch))
    info = run_info(run_dir)
    assert (info.name, info.status, info.step, info.pid) == ("made", "finished", 10, os.getpid())


# --------------------------------------------------------------------- jobs
def test_a_crashed_job_is_restarted_and_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    r = cli("run", "--root", tmp_path, "--name", "crashy", *FAST, "--", *JOB, "--steps", "60", "--crash-at", "45",
            timeout=180)
    assert r.returncode == 0, r.stderr
    out = stdout_events(r.stdout)
    resumed = [(e["step"], e["restart"]) for e in out if e["event"] == "resumed"]
    assert out[-1] == {"event": "done", "step": 60}
    run_dir = tmp_path / "crashy"
    with Store.open(run_dir) as s:
        before_crash = max(c.step for c in s.checkpoints() if c.branch == 0 and c.step <= 45)
    # Saves every 20 steps (one is skipped while the previous is still being written): the restart
    # continues from the newest checkpoint before the crash at 45, not from 0.
    assert before_crash >= 20 and resumed == [(0, 0), (before_crash, 1)]
    events = launcher_events(run_dir)
    assert [e.kind for e in events] == ["job_started", "job_exited", "job_restarted", "job_exited"]
    assert events[1].data["exit_code"] == 1 and events[1].severity == "warning"
    assert events[3].data["exit_code"] == 0
    with Store.open(run_dir) as s:
        info = s.run()
        steps = [step for step, _, _ in s.history(info.branch)]
    assert (info.name, info.status, info.step) == ("crashy", "finished", 60)
    assert steps == list(range(1, 61))  # one loss per step on the history the run continued
    assert len(check_stderr(r.stderr)) == 4

    # Launching again with the same name reuses the folder: the run goes on from where it ended.
    r = cli("run", "--root", tmp_path, "--name", "crashy", *FAST, "--", *JOB, "--steps", "70", timeout=120)
    assert r.returncode == 0, r.stderr
    assert [(e["event"], e["step"]) for e in stdout_events(r.stdout)] == [("resumed", 60), ("done", 70)]
    assert kinds(run_dir)[-2:] == ["job_started", "job_exited"]


@pytest.mark.parametrize("code, status", [
    ("raise SystemExit(3)", 3),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 128 + signal.SIGKILL),
])
def test_a_job_that_keeps_failing_is_given_up_with_its_exit_status(tmp_path: Path, code: str, status: int) -> None:
    r = cli("run", "--max-restarts", "2", *FAST, "--", sys.executable, "-c", code,
            env={"TRAINWARDEN_ROOT": str(tmp_path)}, timeout=60)
    assert r.returncode == status, r.stderr
    (run_dir,) = tmp_path.iterdir()  # under $TRAINWARDEN_ROOT, named after the program and the time
    assert re.fullmatch(r"python-\d{8}-\d{6}", run_dir.name)
    events = launcher_events(run_dir)
    assert [e.kind for e in events] == ["job_started", "job_exited", "job_restarted", "job_exited",
                                        "job_restarted", "job_exited", "restarts_exhausted"]
    assert [e.data["delay_s"] for e in events if "delay_s" in e.data] == pytest.approx([0.1, 0.2])
    assert all(e.data["exit_code"] == status for e in events if e.kind == "job_exited")
    lines = check_stderr(r.stderr)
    assert len(lines) == 7 and "giving up after 2 restarts" in lines[-1]


def test_sigterm_is_forwarded_to_the_job_which_saves_and_is_not_restarted(tmp_path: Path, launch) -> None:
    run_dir = tmp_path / "stopme"
    proc = launch("--root", tmp_path, "--name", "stopme", *FAST, "--", *JOB, "--steps", "1000000", "--sleep", "0.01")
    wait_for(lambda: (i := run_info(run_dir)) is not None and i.status == "running" and i.step >= 10, timeout=90)

    # A second launcher on a live run is refused: the agent would refuse to attach anyway.
    r = cli("run", "--root", tmp_path, "--name", "stopme", "--", *JOB)
    assert r.returncode == 2 and "is being written by process" in r.stderr and len(r.stderr.splitlines()) == 1

    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 128 + signal.SIGTERM, err  # the agent exits with 128 + SIGTERM after saving
    assert [e["event"] for e in stdout_events(out)] == ["resumed"]
    assert kinds(run_dir) == ["job_started", "stop_requested", "job_exited"]
    with Store.open(run_dir) as s:
        info = s.run()
        agent_events = [e.kind for e in s.events() if e.source == "agent"]
        saved = [c for c in s.checkpoints(["ready"]) if c.kind == "signal"]
    assert info.status == "stopped" and "signal" in agent_events
    assert [c.step for c in saved] == [info.step]
    check_stderr(err)


def test_a_second_signal_kills_a_job_that_ignores_the_first(tmp_path: Path, launch) -> None:
    stubborn = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('ready', flush=True); time.sleep(300)")
    proc = launch("--root", tmp_path, "--name", "stubborn", "--kill-grace", "300", "--", sys.executable, "-c", stubborn)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "stop_requested" in kinds_so_far(tmp_path / "stubborn"), timeout=30)
    time.sleep(0.3)  # the job ignores it and goes on
    assert proc.poll() is None
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGKILL, err
    assert time.monotonic() - t0 < 30  # at once, not after the 300 s grace
    events = launcher_events(tmp_path / "stubborn")
    assert [e.kind for e in events] == ["job_started", "stop_requested", "job_killed", "job_exited"]
    with pytest.raises(ProcessLookupError):
        os.kill(events[0].data["pid"], 0)


def test_a_signal_while_waiting_to_restart_ends_it(tmp_path: Path, launch) -> None:
    proc = launch("--root", tmp_path, "--name", "waiting", "--backoff", "300", "--", sys.executable, "-c",
                  "raise SystemExit(5)")
    wait_for(lambda: "job_exited" in kinds_so_far(tmp_path / "waiting"), timeout=30)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)  # not after the 300 s delay
    assert proc.returncode == 5  # the last job's status
    assert kinds(tmp_path / "waiting") == ["job_started", "job_exited", "job_not_restarted"]


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie waiting for init to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_what_a_job_leaves_behind_in_its_process_group_is_ended(tmp_path: Path) -> None:
    leaves_a_child = "import subprocess; print(subprocess.Popen(['sleep', '300']).pid, flush=True)"
    r = cli("run", "--root", tmp_path, "--name", "leaver", "--", sys.executable, "-c", leaves_a_child)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: not alive(int(r.stdout.strip())), timeout=30)


def test_a_frozen_job_is_found_hung_stopped_and_restarted(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text("[detect]\nhung_after_s = 4\n")
    r = cli("run", "--root", tmp_path, "--name", "frozen", "--policy", policy, *FAST, "--kill-grace", "60",
            "--", *JOB, "--steps", "60", "--freeze-at", "30", timeout=240)
    assert r.returncode == 0, r.stderr
    events = launcher_events(tmp_path / "frozen")
    assert [e.kind for e in events] == ["job_started", "job_hung", "job_exited", "job_restarted", "job_exited"]
    assert "no heartbeat" in events[1].message and events[2].data["hung"] is True
    # SIGTERM (with SIGCONT) let the frozen agent save at its next step: the restart goes on from there.
    resumed = [(e["step"], e["restart"]) for e in stdout_events(r.stdout) if e["event"] == "resumed"]
    assert resumed[0] == (0, 0) and resumed[1][0] >= 30 and resumed[1][1] == 1
    assert run_info(tmp_path / "frozen").status == "finished"


def test_a_hung_job_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    """A job whose heartbeat stops and which ignores SIGTERM gets SIGKILL after the grace period;
    with no restarts allowed, the launcher exits with the kill's status. (The agent is imitated
    through the store, to keep torch out of this test.)"""
    frozen = ("import os, signal, time\n"
              "from trainwarden.agent.store import Store\n"
              "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
              "with Store.open(os.environ['TRAINWARDEN_RUN_DIR']) as s:\n"
              "    now = time.time()\n"
              "    s.update_run(status='running', pid=os.getpid(), started_at=now, heartbeat_at=now)\n"
              "time.sleep(300)\n")
    policy = tmp_path / "policy.toml"
    policy.write_text("[detect]\nhung_after_s = 1\n")
    r = cli("run", "--root", tmp_path, "--name", "stuck", "--policy", policy, "--max-restarts", "0",
            "--kill-grace", "1", "--", sys.executable, "-c", frozen, timeout=120)
    assert r.returncode == 128 + signal.SIGKILL, r.stderr
    assert kinds(tmp_path / "stuck") == ["job_started", "job_hung", "job_killed", "job_exited", "restarts_exhausted"]
    assert run_info(tmp_path / "stuck").status == "crashed"  # not left `running` for a dead process
    check_stderr(r.stderr)


# ------------------------------------------------------------------- misuse
@pytest.mark.parametrize("argv, status, text", [
    ([], 2, "no command to run"),
    (["--"], 2, "no command to run"),
    (["--", "no-such-program-trainwarden"], 127, "no-such-program-trainwarden: command not found"),
    (["--", "./no-such-file.sh"], 127, "no such file"),
    (["--max-restarts", "-1", "--", "true"], 2, "--max-restarts"),
    (["--backoff", "0", "--", "true"], 2, "--backoff"),
])
def test_usage_mistakes_are_one_line_and_make_no_folder(tmp_path: Path, argv: list[str], status: int, text: str) -> None:
    root = tmp_path / "root"
    r = cli("run", "--root", root, *argv)
    assert r.returncode == status and text in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert not root.exists()


def test_a_file_that_cannot_be_executed_is_126(tmp_path: Path) -> None:
    script = tmp_path / "train.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    r = cli("run", "--root", tmp_path / "root", "--", script)
    assert r.returncode == 126 and "cannot execute" in r.stderr and len(r.stderr.splitlines()) == 1


def test_a_bad_policy_is_refused_before_anything_starts(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text("[detect]\nhung_after_s = -1\n")
    r = cli("run", "--root", tmp_path / "root", "--policy", policy, "--", "true")
    assert r.returncode == 2 and "detect.hung_after_s" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert not (tmp_path / "root").exists()
