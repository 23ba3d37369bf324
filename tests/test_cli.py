"""The `trainwarden` command line, run as a user runs it, against real training processes.

What a user relies on: a command reaches the running training process, is applied once at a step
boundary, and is acknowledged; the exit code says what happened (0 applied, 1 rejected by the
run, 2 bad input with one `trainwarden: error:` line and nothing written, 3 not acknowledged);
the read-only commands show what the store holds, and a dead process shows as `crashed`.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from conftest import Trainer, cli, wait_for

from trainwarden.agent.checkpoint import best_first
from trainwarden.agent.store import DB_NAME, Store

BASE_LR = 0.05  # tiny_train's default learning rate (no scheduler)
# A run that keeps going until told otherwise, slowly enough to be steered, polling often.
LIVE = ("--steps", str(10**9), "--sleep", "0.005", "--poll", "0.2", "--window", "10")
ROLLED_BACK = re.compile(
    r"^applied: rolled back from step (\d+) \(branch (\d+)\) to checkpoint (\d+) at step (\d+); new branch (\d+)$")


# ------------------------------------------------------------------- helpers
def ok(*args: str, env: dict[str, str] | None = None) -> str:
    """Run the CLI, expect exit 0, return stdout."""
    r = cli(*args, env=env)
    assert r.returncode == 0, f"{args}: exit {r.returncode}\n{r.stdout}{r.stderr}"
    return r.stdout


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def show_json(run: Path) -> dict:
    return json.loads(ok("show", str(run), "--json"))


def start_live(trainer, run_dir: Path, past_step: int = 30, *extra: str) -> Trainer:
    """A training process that is running and has recorded `past_step` steps."""
    t = trainer(run_dir, *LIVE, *extra)
    assert t.next_event()["event"] == "resumed"

    def progressed():
        with Store.open(run_dir) as s:
            return s.run().step >= past_step
    wait_for(progressed, timeout=60)
    return t


def pause(run_dir: Path) -> int:
    """Pause through the CLI; returns the step the run paused at."""
    line = last_line(ok("pause", str(run_dir)))
    m = re.fullmatch(r"applied: paused at step (\d+)", line)
    assert m, line
    return int(m.group(1))


def stop(t: Trainer, run_dir: Path) -> dict:
    """Stop through the CLI; the process must exit 0 at the acknowledged step. Returns its done event."""
    line = last_line(ok("stop", str(run_dir)))
    m = re.fullmatch(r"applied: stopping at step (\d+)", line)
    assert m, line
    code, events, err = t.wait(timeout=60)
    assert code == 0, err
    done = events[-1]
    assert done["event"] == "done" and done["step"] == int(m.group(1)), events
    return done


def settled_checkpoints(run_dir: Path) -> list:
    """The run's checkpoints once no save is in flight (call while the run is paused)."""
    seen: list = []

    def settled():
        with Store.open(run_dir) as s:
            now = s.checkpoints()
        key = [(c.id, c.status) for c in now]
        stable = seen and seen[-1] == key and not any(c.status == "writing" for c in now)
        seen.append(key)
        return now if stable else None
    return wait_for(settled, timeout=30, interval=0.3)


def command_rows(run_dir: Path) -> list:
    with Store.open(run_dir) as s:
        return s.commands()


def wait_acked(run_dir: Path, command_id: int):
    def acked():
        with Store.open(run_dir) as s:
            cmd = s.command(command_id)
        return cmd if cmd.status != "pending" else None
    return wait_for(acked, timeout=30)


def history_csv(run_dir: Path) -> dict[int, list[int]]:
    """`history --csv` as {branch: [steps in printed order]}; checks the header and the values."""
    rows = list(csv.reader(io.StringIO(ok("history", str(run_dir), "--csv"))))
    assert rows[0] == ["step", "branch", "train_loss"]
    by_branch: dict[int, list[int]] = {}
    for step, branch, loss in rows[1:]:
        float(loss)
        by_branch.setdefault(int(branch), []).append(int(step))
    return by_branch


def dump(run_dir: Path) -> list[str]:
    """Everything the store's database holds, for "nothing was written" checks."""
    with contextlib.closing(sqlite3.connect(run_dir / DB_NAME)) as conn:
        return list(conn.iterdump())


def assert_bad_input(r: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2, one `trainwarden: error:` line on stderr, nothing on stdout (no command was written)."""
    assert r.returncode == 2, f"exit {r.returncode}\n{r.stdout}{r.stderr}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trainwarden: error: "), r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert r.stdout == ""


def ls_rows(text: str) -> dict[str, list[str]]:
    """`ls` output as {PATH: [NAME, STATUS, ...]} (the last column is the path)."""
    lines = text.strip().splitlines()
    assert lines[0].split()[:2] == ["NAME", "STATUS"], text
    return {line.split()[-1]: line.split() for line in lines[1:]}


@pytest.fixture(scope="module")
def finished_store(tmp_path_factory) -> Path:
    """A short run that trained 60 steps and finished (checkpoints 1 at step 10 and 2 at step 60)."""
    run_dir = tmp_path_factory.mktemp("cli") / "finished"
    t = Trainer(run_dir, "--steps", "60", "--window", "10")
    try:
        code, events, err = t.wait(timeout=120)
    finally:
        t.kill()
    assert code == 0, err
    with Store.open(run_dir) as s:
        assert s.run().status == "finished" and s.run().step == 60
        assert len(s.checkpoints(["ready"])) >= 2
    return run_dir


@pytest.fixture
def finished(finished_store, tmp_path) -> Path:
    """A private copy of the finished run, free to modify."""
    copy = tmp_path / "finished"
    shutil.copytree(finished_store, copy)
    return copy


# ------------------------------------------------------------ pause / resume
class TestPauseResume:
    @pytest.mark.timeout(90)
    def test_pause_holds_the_run_resume_continues_and_stop_ends_a_paused_run(self, run_dir, trainer):
        t = start_live(trainer, run_dir)
        at = pause(run_dir)
        shown = show_json(run_dir)
        assert shown["run"]["status"] == "paused" and shown["run"]["liveness"] == "paused"
        assert shown["run"]["step"] == at
        with Store.open(run_dir) as s:
            assert s.max_step(0) == at, "the partial window is written when the run pauses"
        time.sleep(1.0)  # a paused run takes no step, however long it waits
        assert show_json(run_dir)["run"]["step"] == at
        with Store.open(run_dir) as s:
            assert s.max_step(0) == at
        assert t.proc.poll() is None

        r = cli("pause", run_dir)
        assert r.returncode == 1 and last_line(r.stdout) == "rejected: already paused", r.stdout + r.stderr

        assert last_line(ok("resume", str(run_dir))) == f"applied: resumed at step {at}"
        assert show_json(run_dir)["run"]["status"] == "running"

        def advanced():
            return show_json(run_dir)["run"]["step"] > at + 20
        wait_for(advanced, timeout=30)

        r = cli("resume", run_dir)
        assert r.returncode == 1, r.stdout + r.stderr
        assert last_line(r.stdout) == "rejected: not paused"

        at = pause(run_dir)
        done = stop(t, run_dir)  # stop is honoured while paused, at the paused step
        assert done["step"] == at
        info = show_json(run_dir)["run"]
        assert info["status"] == "stopped" and info["step"] == at
        # Every command was answered: none is left pending.
        assert [c.status for c in command_rows(run_dir)] == ["applied", "rejected", "applied", "rejected",
                                                            "applied", "applied"]


# ---------------------------------------------------------------------- stop
class TestStop:
    @pytest.mark.timeout(90)
    def test_stop_ends_the_process_cleanly_at_the_acknowledged_step(self, run_dir, trainer):
        t = start_live(trainer, run_dir)
        done = stop(t, run_dir)
        assert done["step"] < 10**9
        with Store.open(run_dir) as s:
            info = s.run()
            (cmd,) = s.commands()
            saved = [c.step for c in s.checkpoints(["ready"])]
        assert info.status == "stopped" and info.step == done["step"] and info.ended_at is not None
        assert cmd.kind == "stop" and cmd.status == "applied" and cmd.applied_step == done["step"]
        assert done["step"] in saved, "the stopped run's last step is checkpointed"
        row = ls_rows(ok("ls", str(run_dir)))[str(run_dir)]
        assert row[1] == "stopped" and row[2] == str(done["step"])


# ------------------------------------------------------------ learning rate
class TestLearningRate:
    @pytest.mark.timeout(90)
    def test_set_and_scale_reach_the_optimizer_exactly_once(self, run_dir, trainer):
        t = start_live(trainer, run_dir)
        out = ok("lr", str(run_dir), "0.01")
        assert out.splitlines()[0].startswith("command 1: set_lr")
        assert last_line(out).startswith("applied: learning rate 0.05 -> 0.01")
        info = show_json(run_dir)["run"]
        assert info["lr"] == pytest.approx(0.01) and info["lr_multiplier"] == pytest.approx(0.01 / BASE_LR)
        assert last_line(ok("lr", str(run_dir))) == "lr 0.01 (multiplier 0.2)"

        assert last_line(ok("lr", str(run_dir), "--scale", "0.5")).startswith("applied: learning rate 0.01 -> 0.005")
        assert show_json(run_dir)["run"]["lr"] == pytest.approx(0.005)

        # Two scale commands queued at once: each applied exactly once, 0.5 * 0.5.
        ids = []
        for _ in range(2):
            out = ok("lr", str(run_dir), "--scale", "0.5", "--no-wait")
            ids.append(int(re.match(r"command (\d+): scale_lr", out).group(1)))
        for command_id in ids:
            assert wait_acked(run_dir, command_id).status == "applied"
        info = show_json(run_dir)["run"]
        assert info["lr_multiplier"] == pytest.approx(0.1 * 0.25)
        assert info["lr"] == pytest.approx(0.005 * 0.25)

        events = [json.loads(line) for line in ok("events", str(run_dir), "--json").splitlines()]
        assert [e["kind"] for e in events if e["kind"] == "lr_changed"] == ["lr_changed"] * 4
        assert "lr_changed" in ok("events", str(run_dir))

        # Windows recorded after the change carry the new learning rate.
        def newer_window_with_new_lr():
            windows = show_json(run_dir)["windows"]
            return windows and windows[-1]["lr"] == pytest.approx(0.005 * 0.25)
        wait_for(newer_window_with_new_lr, timeout=30)

        done = stop(t, run_dir)
        assert done["lr"] == pytest.approx(0.005 * 0.25), "the training process itself ends with the new LR"
        assert show_json(run_dir)["run"]["lr_multiplier"] == pytest.approx(0.025)


# ---------------------------------------------------------------------- save
class TestSave:
    @pytest.mark.timeout(90)
    def test_save_writes_a_ready_command_checkpoint(self, run_dir, trainer):
        t = start_live(trainer, run_dir)
        at = pause(run_dir)  # so that no later save makes retention delete it while we look
        line = last_line(ok("save", str(run_dir)))
        m = re.fullmatch(r"applied: checkpoint (\d+) at step (\d+) is ready", line)
        assert m, line
        ckpt_id, step = int(m.group(1)), int(m.group(2))
        assert step == at
        listed = json.loads(ok("checkpoints", str(run_dir), "--json"))
        (ckpt,) = [c for c in listed if c["id"] == ckpt_id]
        assert ckpt["kind"] == "command" and ckpt["status"] == "ready" and ckpt["step"] == step
        assert (run_dir / ckpt["path"]).is_file() and ckpt["bytes"] == (run_dir / ckpt["path"]).stat().st_size
        table = ok("checkpoints", str(run_dir)).splitlines()
        assert any(row.split()[:2] == [str(ckpt_id), str(step)] and "command" in row.split() for row in table)
        stop(t, run_dir)


# ------------------------------------------------------------------ rollback
class TestRollback:
    @staticmethod
    def rollback(run_dir: Path, *how: str) -> tuple[int, int, int, int, int]:
        """(from step, from branch, checkpoint id, checkpoint step, new branch) from the acknowledgement."""
        line = last_line(ok("rollback", str(run_dir), *how))
        m = ROLLED_BACK.fullmatch(line)
        assert m, line
        return tuple(int(x) for x in m.groups())

    @staticmethod
    def check_branch(run_dir: Path, new: int, ckpt) -> None:
        shown = show_json(run_dir)
        assert shown["run"]["branch"] == new and shown["run"]["step"] == ckpt.step
        (branch,) = [b for b in shown["branches"] if b["id"] == new]
        assert (branch["parent"], branch["fork_step"], branch["checkpoint_id"]) == (ckpt.branch, ckpt.step, ckpt.id)

    @staticmethod
    def train_on(run_dir: Path, branch: int, past_step: int) -> None:
        def progressed():
            with Store.open(run_dir) as s:
                return s.max_step(branch) > past_step
        wait_for(progressed, timeout=30)

    @pytest.mark.timeout(90)
    def test_rollback_best(self, run_dir, trainer):
        t = start_live(trainer, run_dir, past_step=150)
        paused_at = pause(run_dir)
        best = best_first(c for c in settled_checkpoints(run_dir) if c.status == "ready")[0]
        from_step, from_branch, ckpt_id, ckpt_step, new = self.rollback(run_dir, "--best")
        assert (from_step, from_branch, ckpt_id, ckpt_step) == (paused_at, 0, best.id, best.step)
        assert new == 1
        self.check_branch(run_dir, new, best)
        ok("resume", str(run_dir))
        self.train_on(run_dir, new, best.step + 30)
        done = stop(t, run_dir)
        assert done["branch"] == new
        history = history_csv(run_dir)
        assert sorted(history) == [0, 1]
        assert history[0] == list(range(1, paused_at + 1)), "the abandoned branch keeps every step it recorded"
        assert history[1] == list(range(best.step + 1, done["step"] + 1))

    @pytest.mark.timeout(90)
    def test_rollback_to_an_id_then_to_the_last_checkpoint(self, run_dir, trainer):
        t = start_live(trainer, run_dir, past_step=150)
        paused_at = pause(run_dir)
        ready = [c for c in settled_checkpoints(run_dir) if c.status == "ready"]
        older = min(ready, key=lambda c: c.step)
        assert older.step < paused_at, [(c.id, c.step) for c in ready]
        *_, ckpt_id, ckpt_step, b1 = self.rollback(run_dir, str(older.id))
        assert (ckpt_id, ckpt_step, b1) == (older.id, older.step, 1)
        self.check_branch(run_dir, b1, older)
        ok("resume", str(run_dir))

        def saved_on_new_branch():
            with Store.open(run_dir) as s:
                return any(c.branch == b1 for c in s.checkpoints(["ready"]))
        wait_for(saved_on_new_branch, timeout=30)
        paused_again = pause(run_dir)
        last = max((c for c in settled_checkpoints(run_dir) if c.status == "ready" and c.branch == b1),
                   key=lambda c: (c.step, c.id))
        from_step, from_branch, ckpt_id, ckpt_step, b2 = self.rollback(run_dir, "--last")
        assert (from_step, from_branch, ckpt_id, ckpt_step, b2) == (paused_again, b1, last.id, last.step, 2)
        self.check_branch(run_dir, b2, last)
        ok("resume", str(run_dir))
        self.train_on(run_dir, b2, last.step + 20)
        done = stop(t, run_dir)
        assert done["branch"] == b2

        history = history_csv(run_dir)
        assert history[0] == list(range(1, paused_at + 1))
        assert history[b1] == list(range(older.step + 1, paused_again + 1))
        assert history[b2] == list(range(last.step + 1, done["step"] + 1))
        events = [json.loads(line) for line in ok("events", str(run_dir), "--json").splitlines()]
        rollbacks = [(e["branch"], e["step"]) for e in events if e["kind"] == "rollback"]
        assert rollbacks == [(b1, older.step), (b2, last.step)]


# ------------------------------------------ commands the running agent rejects
class TestAgentRejectsBadCommands:
    @pytest.mark.timeout(90)
    def test_bad_commands_written_into_the_store_are_rejected_and_training_goes_on(self, run_dir, trainer):
        t = start_live(trainer, run_dir, past_step=60)

        def a_ready_checkpoint():
            with Store.open(run_dir) as s:
                return s.checkpoints(["ready"])
        wait_for(a_ready_checkpoint, timeout=30)
        with Store.open(run_dir) as s:
            failed = s.checkpoints(["ready"])[0]
            s.set_checkpoint_status(failed.id, "failed", "made unusable by the test")
            sent = {
                s.add_command("set_lr", {"value": -1}, "x"): "learning rate must be greater than 0",
                s.add_command("set_lr", {"value": "abc"}, "x"): "learning rate must be a number",
                s.add_command("set_lr", {}, "x"): "learning rate must be a number",
                s.add_command("scale_lr", {"factor": float("inf")}, "x"): "LR scale factor must be finite",
                s.add_command("explode", {}, "x"): "unknown command 'explode'",
                s.add_command("rollback", {"target": "nonsense"}, "x"): "rollback target must be a checkpoint id",
                s.add_command("rollback", {"target": 99999}, "x"): "checkpoint 99999 does not exist",
                s.add_command("rollback", {"target": failed.id}, "x"): f"checkpoint {failed.id} is not ready",
            }
        with contextlib.closing(sqlite3.connect(run_dir / DB_NAME)) as conn, conn:
            cur = conn.execute("INSERT INTO commands (kind, args, issuer, created_at)"
                               " VALUES ('set_lr', 'not json', 'x', 0)")
            sent[cur.lastrowid] = "arguments are not a JSON object"
        for command_id, reason in sent.items():
            cmd = wait_acked(run_dir, command_id)
            assert cmd.status == "rejected" and reason in cmd.result, (cmd.kind, cmd.args, cmd.result)

        shown = show_json(run_dir)
        assert shown["run"]["liveness"] == "running" and shown["run"]["branch"] == 0
        assert shown["run"]["lr_multiplier"] == 1.0 and shown["run"]["lr"] == pytest.approx(BASE_LR)
        step = shown["run"]["step"]
        wait_for(lambda: show_json(run_dir)["run"]["step"] > step + 20, timeout=30)
        # The agent still takes commands after the rejected ones.
        assert last_line(ok("lr", str(run_dir), "--scale", "0.5")).startswith("applied:")
        done = stop(t, run_dir)
        assert done["lr"] == pytest.approx(BASE_LR / 2) and done["branch"] == 0


# --------------------------------------------------- exit 2: bad input, nothing written
class TestBadInput:
    @pytest.mark.timeout(60)
    @pytest.mark.parametrize("args, needle", [
        (("-1",), "learning rate must be greater than 0"),
        (("--", "-1e-3"), "learning rate must be greater than 0"),
        (("-1e-3",), "learning rate must be greater than 0"),
        (("-inf",), "learning rate must be finite"),
        (("--scale", "-1e-3"), "LR scale factor must be greater than 0"),
        (("-0.5",), "learning rate must be greater than 0"),
        (("0",), "learning rate must be greater than 0"),
        (("nan",), "learning rate must be finite"),
        (("inf",), "learning rate must be finite"),
        (("1e400",), "learning rate must be finite"),
        (("abc",), "learning rate must be a number"),
        (("--scale", "0"), "LR scale factor must be greater than 0"),
        (("--scale", "-2"), "LR scale factor must be greater than 0"),
        (("--scale", "nan"), "LR scale factor must be finite"),
        (("0.01", "--scale", "2"), "not both"),
    ])
    def test_bad_learning_rates(self, finished, args, needle):
        before = dump(finished)
        assert_bad_input(cli("lr", finished, *args), needle)
        assert dump(finished) == before

    @pytest.mark.timeout(60)
    def test_bad_rollback_targets(self, finished):
        with Store.open(finished) as s:
            first, second = s.checkpoints(["ready"])[:2]
            s.set_checkpoint_status(first.id, "failed", "disk full")
            s.set_checkpoint_status(second.id, "deleted")
        before = dump(finished)
        for args, needles in [
            (("999",), ("checkpoint 999 does not exist",)),
            ((str(first.id),), (f"checkpoint {first.id} is not ready (status failed)",)),
            ((str(second.id),), (f"checkpoint {second.id} is not ready (status deleted)",)),
            (("0",), ("checkpoint ids start at 1",)),
            (("abc",), ("rollback target must be a checkpoint id",)),
            ((str(first.id), "--best"), ("give one of CHECKPOINT, --best or --last",)),
            (("--best", "--last"), ("give one of CHECKPOINT, --best or --last",)),
        ]:
            assert_bad_input(cli("rollback", finished, *args), *needles)
        assert dump(finished) == before

    @pytest.mark.timeout(60)
    @pytest.mark.parametrize("timeout", ["-1", "nan"])
    def test_bad_timeout(self, finished, timeout):
        before = dump(finished)
        assert_bad_input(cli("pause", finished, "--timeout", timeout), "--timeout")
        assert dump(finished) == before


    @pytest.mark.timeout(60)
    @pytest.mark.parametrize("args, needle", [
        (("show", "{run}", "--windows", "-1"), "--windows: expected a whole number >= 0"),
        (("events", "{run}", "--limit", "ten"), "--limit: expected a whole number >= 0"),
        (("show",), "required: run"),
        (("pause", "{run}", "--wait-forever"), "unrecognized arguments: --wait-forever"),
        (("frobnicate",), "invalid choice: 'frobnicate'"),
    ])
    def test_usage_mistakes_are_one_line(self, finished, args, needle):
        before = dump(finished)
        assert_bad_input(cli(*(a.format(run=finished) for a in args)), needle)
        assert dump(finished) == before


class TestBadStores:
    COMMANDS = [("show",), ("show", "--json"), ("checkpoints",), ("history", "--csv"), ("events",),
                ("pause",), ("stop", "--no-wait"), ("lr",), ("lr", "0.01"), ("rollback", "--best")]

    def check_all(self, run: Path, *needles: str) -> None:
        for verb, *rest in self.COMMANDS:
            assert_bad_input(cli(verb, run, *rest), *needles)

    @pytest.mark.timeout(60)
    def test_folder_without_a_store(self, tmp_path):
        empty = tmp_path / "emptydir"
        empty.mkdir()
        self.check_all(empty, "is not a trainwarden run folder")
        assert list(empty.iterdir()) == [], "no store was created"
        self.check_all(tmp_path / "missing", "no such run folder")
        assert not (tmp_path / "missing").exists()

    @pytest.mark.timeout(60)
    def test_database_file_that_is_not_sqlite(self, tmp_path):
        run = tmp_path / "garbage"
        run.mkdir()
        content = b"this is not a database, just some text that happens to have the name\n" * 20
        (run / DB_NAME).write_bytes(content)
        self.check_all(run, "is not a trainwarden store")
        assert (run / DB_NAME).read_bytes() == content
        assert sorted(p.name for p in run.iterdir()) == [DB_NAME]

    @pytest.mark.timeout(60)
    def test_store_from_a_newer_version(self, finished):
        with contextlib.closing(sqlite3.connect(finished / DB_NAME)) as conn:
            conn.execute("PRAGMA user_version=99")
        before = dump(finished)
        content = (finished / DB_NAME).read_bytes()
        self.check_all(finished, "schema version 99", "upgrade trainwarden")
        assert (finished / DB_NAME).read_bytes() == content
        assert dump(finished) == before


# ------------------------------------------------- exit 3: not acknowledged
class TestNotAcknowledged:
    @pytest.mark.timeout(60)
    def test_a_command_to_a_finished_run_is_queued_and_exits_3_at_once(self, finished):
        r = cli("pause", finished, "--timeout", "3600", timeout=30)  # waiting would overrun `timeout`
        assert r.returncode == 3, r.stdout + r.stderr
        assert "queued" in r.stderr and "finished" in r.stderr
        (cmd,) = command_rows(finished)
        assert cmd.kind == "pause" and cmd.status == "pending"
        assert r.stdout.startswith(f"command {cmd.id}: pause")

    @pytest.mark.timeout(60)
    def test_no_wait_returns_0_and_leaves_the_command_pending(self, finished):
        out = ok("lr", str(finished), "0.01", "--no-wait")
        (cmd,) = command_rows(finished)
        assert out.strip() == f'command {cmd.id}: set_lr {{"value": 0.01}}'
        assert cmd.status == "pending" and cmd.args == {"value": 0.01}
        info = show_json(finished)
        assert info["run"]["lr_multiplier"] == 1.0
        assert [c["id"] for c in info["pending_commands"]] == [cmd.id]

    @pytest.mark.timeout(90)
    def test_timeout_while_the_live_process_is_inside_a_long_step(self, run_dir, trainer):
        t = trainer(run_dir, "--steps", str(10**9), "--sleep", "5", "--poll", "0.2")
        assert t.next_event()["event"] == "resumed"

        def in_first_step():  # step 1 recorded (the heartbeat says so): now in a 5 s step
            with Store.open(run_dir) as s:
                return s.run().step >= 1
        wait_for(in_first_step, timeout=30)
        r = cli("pause", run_dir, "--timeout", "0.5")
        assert r.returncode == 3, r.stdout + r.stderr
        (cmd,) = command_rows(run_dir)
        assert f"not acknowledged within 0.5s; the command stays queued (id {cmd.id})" in r.stderr
        assert cmd.status == "pending"
        # More commands queue up behind it while the step goes on.
        for _ in range(2):
            ok("lr", str(run_dir), "--scale", "0.5", "--no-wait")
        # At the next step boundary each queued command is applied, once, in order.
        for c in command_rows(run_dir):
            assert wait_acked(run_dir, c.id).status == "applied"
        shown = show_json(run_dir)["run"]
        assert shown["status"] == "paused" and shown["lr_multiplier"] == pytest.approx(0.25)
        done = stop(t, run_dir)
        assert done["lr"] == pytest.approx(BASE_LR * 0.25)
        cmds = command_rows(run_dir)
        assert [(c.kind, c.status) for c in cmds] == [("pause", "applied"), ("scale_lr", "applied"),
                                                      ("scale_lr", "applied"), ("stop", "applied")]
        assert len({c.applied_step for c in cmds[:3]}) == 1, "applied together at one step boundary"


    def test_a_process_that_dies_while_the_cli_waits_is_reported_at_once(self, run_dir, trainer):
        t = trainer(run_dir, "--steps", str(10**9), "--sleep", "30", "--poll", "0.2")
        assert t.next_event()["event"] == "resumed"
        wait_for(lambda: show_json(run_dir)["run"]["step"] >= 1, timeout=30)  # inside a 30 s step
        waiting = subprocess.Popen(["trainwarden", "pause", str(run_dir), "--timeout", "60"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: command_rows(run_dir), timeout=30)  # the command is queued, the CLI waits
        t0 = time.monotonic()
        t.kill()  # SIGKILL: no chance to mark the run
        out, err = waiting.communicate(timeout=30)
        assert waiting.returncode == 3, out + err
        assert time.monotonic() - t0 < 10, "reported long before the 60 s timeout"
        (cmd,) = command_rows(run_dir)
        assert f"is crashed now; the command stays queued (id {cmd.id})" in err
        assert cmd.status == "pending"


class TestLockedStore:
    @pytest.mark.timeout(60)
    def test_a_store_locked_by_a_hung_writer_is_an_error_not_a_traceback(self, finished):
        """A writer that holds the database longer than the busy timeout (a hung or stopped process)."""
        with contextlib.closing(sqlite3.connect(finished / DB_NAME, isolation_level=None)) as conn:
            conn.execute("BEGIN IMMEDIATE")
            assert_bad_input(cli("pause", finished), "database is locked")
            conn.execute("ROLLBACK")
        assert command_rows(finished) == []


# ------------------------------------------------------- looking at runs
class TestInspect:
    @pytest.mark.timeout(90)
    def test_ls_show_checkpoints_and_a_crashed_run(self, finished, tmp_path, trainer):
        root = tmp_path / "runs"
        root.mkdir()
        shutil.move(finished, root / "done-run")
        done_run = root / "done-run"
        (root / "not-a-run").mkdir()
        (root / "broken-run").mkdir()
        (root / "broken-run" / DB_NAME).write_bytes(b"garbage" * 100)
        live = root / "group" / "live-run"
        t = start_live(trainer, live)
        env = {"TRAINWARDEN_ROOT": str(root)}

        r = cli("ls", root)
        assert r.returncode == 0, r.stderr
        assert f"trainwarden: warning: {root / 'broken-run'}: " in r.stderr and "is not a trainwarden store" in r.stderr
        rows = ls_rows(r.stdout)
        assert sorted(rows) == sorted([str(done_run), str(root / "broken-run"), str(live)])
        assert rows[str(done_run)][:3] == ["finished", "finished", "60"]
        assert rows[str(live)][:2] == ["live-run", "running"]
        assert rows[str(root / "broken-run")][1] == "unreadable"
        assert ls_rows(ok("ls", env=env)).keys() == rows.keys(), "ls defaults to $TRAINWARDEN_ROOT"

        t.proc.send_signal(signal.SIGKILL)
        t.proc.wait()
        assert ls_rows(ok("ls", str(root)))[str(live)][1] == "crashed"
        shown = json.loads(ok("show", "group/live-run", "--json", env=env))  # a name under the root
        assert shown["run"]["status"] == "running" and shown["run"]["liveness"] == "crashed"
        r = cli("pause", "group/live-run", env=env)
        assert r.returncode == 3 and "queued: live-run is crashed" in r.stderr, r.stdout + r.stderr

        # show, as text, by name under the root.
        with Store.open(done_run) as s:
            first = s.checkpoints(["ready"])[0]
            s.set_checkpoint_status(first.id, "deleted")
            ckpts = s.checkpoints()
            info = s.run()
        text = ok("show", "done-run", env=env)
        lines = text.splitlines()
        assert re.match(r"^status\s+finished\b", lines[1]), text
        assert re.match(r"^step\s+60\s+branch 0\s+loss ", lines[2]), text
        assert re.match(r"^lr\s+0\.05\s+multiplier 1$", lines[3]), text
        sections = {part.splitlines()[0]: part.splitlines()[1:] for part in text.split("\n\n")[1:]}
        shown_ids = [int(row.split()[0]) for row in sections["checkpoints"][1:]]
        assert shown_ids == [c.id for c in ckpts if c.status != "deleted"] and first.id not in shown_ids
        windows = sections["last windows"][1:]
        assert len(windows) == 5 and windows[-1].split()[:2] == ["0", "51-60"]

        shown = json.loads(ok("show", "done-run", "--json", env=env))
        assert shown["run"]["name"] == info.name and shown["run"]["step"] == 60
        assert [c["id"] for c in shown["checkpoints"]] == [c.id for c in ckpts]
        assert [(b["id"], b["parent"]) for b in shown["branches"]] == [(0, None)]

        table = ok("checkpoints", str(done_run)).splitlines()
        assert table[0].split()[:6] == ["ID", "STEP", "BRANCH", "LOSS", "KIND", "STATUS"]
        assert [int(r.split()[0]) for r in table[1:]] == [c.id for c in ckpts if c.status != "deleted"]
        table = ok("checkpoints", str(done_run), "--all").splitlines()
        assert [int(r.split()[0]) for r in table[1:]] == [c.id for c in ckpts]
        listed = json.loads(ok("checkpoints", str(done_run), "--json"))
        assert [(c["id"], c["step"], c["status"]) for c in listed] == [
            (c.id, c.step, c.status) for c in ckpts if c.status != "deleted"]

        history = history_csv(done_run)
        assert history == {0: list(range(1, 61))}
