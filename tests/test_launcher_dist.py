"""`trainwarden run --nproc-per-node` and preemption, for real: the installed command runs jobs of
two gloo ranks on the CPU under torchrun (tests/dist_job.py, no agent), and plain jobs, and gets
SIGUSR1 as a Slurm batch shell does. Slurm itself cannot be here: `scontrol` is a shell script on
PATH that notes its arguments.

- a group runs every rank with the run's environment, and restarts as a whole after a rank fails;
- SIGUSR1 reaches every rank (or a plain job's process), nothing is restarted, the launcher exits
  with 128+SIGUSR1 and requeues the Slurm job (once, and only under Slurm; a failure is an event);
- a bad --nproc-per-node, or a command torchrun cannot run, is one line and leaves no folder.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
from conftest import cli, kinds, launcher_events, wait_for

from trainwarden.supervisor.launch_rules import (
    TORCHRUN_SIGNALS, descendants, forwarded_signal, group_problem, stopped_status, torchrun_argv, torchrun_target,
)

HERE = Path(__file__).parent
DIST_JOB = str(HERE / "dist_job.py")
USR1 = signal.SIGUSR1


def seen(out: Path) -> dict[tuple[int, int], dict]:
    """What each rank of each attempt wrote, by (restart, rank)."""
    found = (json.loads(p.read_text()) for p in out.glob("rank*-restart*.json"))
    return {(s["restart"], s["rank"]): s for s in found}


@pytest.fixture
def scontrol(tmp_path: Path) -> Path:
    """A fake `scontrol` that appends its arguments to a file; its folder goes first on PATH.
    Returns the file it writes."""
    bin_dir, log = tmp_path / "bin", tmp_path / "scontrol.log"
    bin_dir.mkdir()
    fake = bin_dir / "scontrol"
    fake.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\n')
    fake.chmod(0o755)
    return log


def slurm_env(scontrol_log: Path, job_id: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SLURM_JOB_ID"}
    env["PATH"] = f"{scontrol_log.parent / 'bin'}{os.pathsep}{env['PATH']}"
    if job_id is not None:
        env["SLURM_JOB_ID"] = job_id
    return env


# ------------------------------------------------------------ pure decisions
def test_the_torchrun_command_line() -> None:
    head = ["/env/python", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4", "--max-restarts", "0"]
    argv = torchrun_argv(4, ["python", "train.py", "--lr", "3"], python="/env/python", forwards_usr1=False)
    assert argv == [*head, "train.py", "--lr", "3"]
    argv = torchrun_argv(4, ["python", "train.py"], python="/env/python", forwards_usr1=True)
    assert argv == [*head, "--signals-to-handle", TORCHRUN_SIGNALS, "train.py"]
    assert "SIGUSR1" in TORCHRUN_SIGNALS.split(",") and "SIGTERM" in TORCHRUN_SIGNALS.split(",")
    assert torchrun_target(["/opt/env/bin/python3.11", "-u", "train.py", "-u"]) == ["train.py", "-u"]
    assert torchrun_target(["python3", "-m", "pkg.train", "--lr", "3"]) == ["-m", "pkg.train", "--lr", "3"]
    assert torchrun_target(["python", "-mpkg.train"]) == ["-m", "pkg.train"]
    assert torchrun_target(["scripts/train.py", "--x"]) == ["scripts/train.py", "--x"]  # run with python by torchrun
    assert torchrun_target(["./train.sh", "--x"]) == ["--no-python", "./train.sh", "--x"]
    assert torchrun_target(["pythonic-tool"]) == ["--no-python", "pythonic-tool"]  # not an interpreter
    for command in (["python", "-c", "pass"], ["python"], ["python", "-m"], ["python", "-X", "dev", "t.py"],
                    ["torchrun", "t.py"], ["python", "-m", "torch.distributed.run", "t.py"]):
        with pytest.raises(ValueError):
            torchrun_target(command)


def test_which_signal_the_job_gets_and_the_status_reported() -> None:
    assert forwarded_signal(USR1, grouped=True, forwards_usr1=True) == USR1
    assert forwarded_signal(USR1, grouped=False, forwards_usr1=False) == USR1
    assert forwarded_signal(USR1, grouped=True, forwards_usr1=False) == signal.SIGTERM  # old torchrun would die of it
    assert forwarded_signal(signal.SIGINT, grouped=False, forwards_usr1=True) == signal.SIGTERM
    # torchrun exits with 1 after passing a signal on: reported as the ranks' own 128+N
    assert stopped_status(1, USR1, grouped=True) == 138
    assert stopped_status(1, signal.SIGTERM, grouped=True) == 143
    assert stopped_status(1, None, grouped=True) == 1  # a rank failed: torchrun's status as it is
    assert stopped_status(1, USR1, grouped=False) == 1
    assert stopped_status(-signal.SIGKILL, USR1, grouped=True) == 137


def test_descendants_and_what_a_group_needs(tmp_path: Path) -> None:
    parents = {10: 1, 11: 10, 12: 10, 13: 11, 20: 1, 14: 14}
    assert descendants(parents, 10) == [11, 12, 13]
    assert descendants(parents, 13) == [] and descendants(parents, 14) == []
    script = tmp_path / "t.py"
    script.write_text("")
    assert group_problem([str(script)]) is None and group_problem(["-m", "any.module"]) is None
    assert group_problem([str(tmp_path / "missing.py")]) == (127, f"{tmp_path / 'missing.py'}: no such file")
    assert group_problem(["--no-python", "no-such-program-trainwarden"])[0] == 127


# --------------------------------------------------------------------- jobs
def test_a_group_runs_every_rank_and_restarts_as_a_whole_after_a_rank_crashed(tmp_path: Path) -> None:
    """`python -m MODULE` form: torchrun runs the module in two ranks of one gloo group; rank 1
    fails in the first attempt, torchrun ends the group and the launcher starts it again."""
    out = tmp_path / "out"
    out.mkdir()
    r = cli("run", "--root", tmp_path, "--name", "pair", "--backoff", "0.1", "--nproc-per-node", "2", "--",
            "python", "-m", "dist_job", "--out", out, "--crash-rank", "1", env={"PYTHONPATH": str(HERE)}, timeout=120)
    assert r.returncode == 0, r.stderr
    ranks = seen(out)
    assert sorted(ranks) == [(0, 0), (0, 1), (1, 0), (1, 1)]  # both ranks ran again, as restart 1
    for (_, rank), s in ranks.items():
        assert (s["rank"], s["env_rank"], s["world_size"], s["sum"]) == (rank, rank, 2, 3.0)
        assert s["run_dir"] == str(tmp_path / "pair")
    events = launcher_events(tmp_path / "pair")
    assert [e.kind for e in events] == ["job_started", "job_exited", "job_restarted", "job_exited"]
    assert events[0].data["nproc_per_node"] == 2 and events[0].data["command"][:3] == ["python", "-m", "dist_job"]
    assert events[0].data["argv"][1:3] == ["-m", "torch.distributed.run"]
    assert "2 ranks under torchrun" in events[0].message
    assert events[1].data["exit_code"] == 1 and events[1].severity == "warning"  # torchrun's: a rank failed
    assert events[2].data["nproc_per_node"] == 2 and events[3].data["exit_code"] == 0


def test_sigusr1_reaches_every_rank_and_requeues_the_slurm_job(tmp_path: Path, launch, scontrol: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    proc = launch("--root", tmp_path, "--name", "preempted", "--backoff", "0.1", "--nproc-per-node", "2", "--",
                  sys.executable, DIST_JOB, "--out", out, "--wait-signal", env=slurm_env(scontrol, "4242"))
    wait_for(lambda: len(seen(out)) == 2 or proc.poll() is not None, timeout=90)
    pids = [s["pid"] for s in seen(out).values()]
    proc.send_signal(USR1)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + USR1, err
    assert sorted(p.name for p in out.glob("*.signal")) == ["rank0.signal", "rank1.signal"]
    assert {p.read_text() for p in out.glob("*.signal")} == {str(int(USR1))}  # SIGUSR1 itself, not SIGTERM
    assert sorted(seen(out)) == [(0, 0), (0, 1)]  # not restarted
    events = launcher_events(tmp_path / "preempted")
    assert [e.kind for e in events] == ["job_started", "stop_requested", "job_exited", "requeued"]
    assert events[1].data["signal"] == "SIGUSR1" and events[1].data["sent"] == "SIGUSR1"
    assert events[2].data["exit_code"] == 138 and events[2].severity == "info"
    assert events[3].data["slurm_job_id"] == "4242"
    assert scontrol.read_text() == "requeue 4242\n"  # once
    assert not any(_alive(pid) for pid in pids)


def test_a_group_that_does_not_stop_is_killed_whole_after_the_grace(tmp_path: Path, launch, scontrol: Path) -> None:
    """torchrun's own shutdown timeout is set longer here, so only the launcher can end the ranks in
    time: its SIGKILL must reach them, although torchrun puts each in a session of its own."""
    out = tmp_path / "out"
    out.mkdir()
    env = {**slurm_env(scontrol, None), "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "300"}
    proc = launch("--root", tmp_path, "--name", "stubborn", "--kill-grace", "1", "--nproc-per-node", "2", "--",
                  sys.executable, DIST_JOB, "--out", out, "--wait-signal", "--stubborn", env=env)
    wait_for(lambda: len(seen(out)) == 2 or proc.poll() is not None, timeout=90)
    pids = [s["pid"] for s in seen(out).values()]
    proc.send_signal(USR1)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGKILL, err
    assert len(list(out.glob("*.signal"))) == 2  # each rank got SIGUSR1, and did not stop
    assert kinds(tmp_path / "stubborn") == ["job_started", "stop_requested", "job_killed", "job_exited"]
    wait_for(lambda: not any(_alive(pid) for pid in pids), timeout=10)
    assert not scontrol.exists()  # not under Slurm


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


PLAIN_JOB = """
import os, signal, sys, time
out = sys.argv[1]
def on_signal(signum, frame):
    open(out, "w").write(str(signum))
    sys.exit(128 + signum)
signal.signal(signal.SIGUSR1, on_signal)
print("ready", flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("job_id, fails", [(None, False), ("77", True)])
def test_sigusr1_reaches_a_plain_job(tmp_path: Path, launch, scontrol: Path, job_id: str | None, fails: bool) -> None:
    """Without $SLURM_JOB_ID no scontrol is run; a requeue that fails is one event and stderr line."""
    if fails:
        scontrol.parent.joinpath("bin", "scontrol").write_text(
            f'#!/bin/sh\necho "$@" >> "{scontrol}"\necho "scontrol: error: Invalid job id specified" >&2\nexit 1\n')
    got = tmp_path / "got"
    proc = launch("--root", tmp_path, "--name", "plain", "--", sys.executable, "-c", PLAIN_JOB, got,
                  env=slurm_env(scontrol, job_id))
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(USR1)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + USR1, err
    assert got.read_text() == str(int(USR1))
    events = launcher_events(tmp_path / "plain")
    lines = err.splitlines()
    assert all(line.startswith("trainwarden run: ") for line in lines), err
    if not fails:
        assert [e.kind for e in events] == ["job_started", "stop_requested", "job_exited"]
        assert not scontrol.exists()
    else:
        assert [e.kind for e in events] == ["job_started", "stop_requested", "job_exited", "requeue_failed"]
        assert scontrol.read_text() == "requeue 77\n"
        assert "Invalid job id specified" in events[-1].message and events[-1].message in lines[-1]


def test_sigusr1_while_waiting_to_restart_requeues_at_once(tmp_path: Path, launch, scontrol: Path) -> None:
    proc = launch("--root", tmp_path, "--name", "waiting", "--backoff", "300", "--", sys.executable, "-c",
                  "raise SystemExit(5)", env=slurm_env(scontrol, "9"))
    wait_for(lambda: (tmp_path / "waiting" / "trainwarden.db").exists() and "job_exited" in kinds(tmp_path / "waiting"),
             timeout=30)
    proc.send_signal(USR1)
    proc.communicate(timeout=30)  # not after the 300 s delay
    assert proc.returncode == 5
    assert kinds(tmp_path / "waiting") == ["job_started", "job_exited", "job_not_restarted", "requeued"]
    assert scontrol.read_text() == "requeue 9\n"


# ------------------------------------------------------------------- misuse
@pytest.mark.parametrize("argv, status, text", [
    (["--nproc-per-node", "0", "--", "python", "t.py"], 2, "--nproc-per-node"),
    (["--nproc-per-node", "x", "--", "python", "t.py"], 2, "--nproc-per-node"),
    (["--nproc-per-node", "-2", "--", "python", "t.py"], 2, "--nproc-per-node"),
    (["--nproc-per-node", "2", "--", "python", "-c", "pass"], 2, "torchrun passes no other interpreter options"),
    (["--nproc-per-node", "2", "--", "torchrun", "t.py"], 2, "runs torchrun itself"),
    (["--nproc-per-node", "2", "--", "python", "no-such-script.py"], 127, "no-such-script.py: no such file"),
    (["--nproc-per-node", "2", "--", "no-such-program-trainwarden"], 127, "command not found"),
])
def test_bad_group_options_are_one_line_and_make_no_folder(tmp_path: Path, argv: list[str], status: int,
                                                          text: str) -> None:
    root = tmp_path / "root"
    r = cli("run", "--root", root, *argv)
    assert r.returncode == status and text in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert not root.exists()
