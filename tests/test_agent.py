"""The agent in a training loop: recording, windows, pause, stop, branches, attach rules."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
import torch
from conftest import FAST, issue, train_until_acked, wait_for
from tiny_train import build, train_step

import trainwarden.agent as tw
from trainwarden.agent.store import Store


def attach(run_dir, **config):
    model, opt, sched, batch = build()
    run = tw.attach(run_dir, model=model, optimizer=opt, scheduler=sched,
                    config=tw.AgentConfig(**(dict(window=10) | FAST | config)))
    return run, lambda: train_step(model, opt, sched, batch)


class TestRecording:
    def test_windows_hold_every_step_with_their_statistics(self, run_dir):
        run, step = attach(run_dir)
        recorded = []
        for i in range(35):
            loss = step() if i % 2 else float(i)  # tensors and floats mix freely
            recorded.append(float(loss.detach()) if isinstance(loss, torch.Tensor) else loss)
            run.record(loss)
        assert run.step == 35
        run.record_val(torch.tensor(0.25))
        run.close()  # flushes the partial window 31..35
        with Store.open(run_dir) as s:
            windows = s.windows()
            assert [(w.first_step, w.last_step) for w in windows] == [(1, 10), (11, 20), (21, 30), (31, 35)]
            assert [v for w in windows for v in w.losses] == pytest.approx(recorded, rel=1e-6)
            first = windows[0]
            assert first.mean == pytest.approx(sum(recorded[:10]) / 10, rel=1e-6)
            assert first.min == pytest.approx(min(recorded[:10])) and first.max == pytest.approx(max(recorded[:10]))
            assert first.lr == pytest.approx(0.05) and first.steps_per_s > 0
            (val,) = s.metrics("val_loss")
            assert val.step == 35 and val.value == 0.25
            info = s.run()
            assert info.status == "finished" and info.step == 35 and info.ended_at is not None
            assert [c.kind for c in s.checkpoints(["ready"])][-1] in ("final", "best", "last")

    def test_nan_losses_are_recorded_not_hidden(self, run_dir):
        run, step = attach(run_dir, window=4)
        for loss in [1.0, float("nan"), float("inf"), 2.0]:
            run.record(torch.tensor(loss))
        run.close()
        with Store.open(run_dir) as s:
            (w,) = s.windows()
        assert w.nonfinite == 2 and w.mean == pytest.approx(1.5)

    def test_any_scalar_loss_is_accepted_and_anything_else_refused_at_once(self, run_dir):
        import numpy as np
        run, step = attach(run_dir, window=4)
        graph_loss = step()  # still attached to its autograd graph
        given = [graph_loss, 3, np.float32(0.5), torch.tensor([0.25]), torch.tensor(2.0, dtype=torch.bfloat16)]
        for loss in given:
            run.record(loss)
        for bad in ["0.1x", torch.tensor([1.0, 2.0]), None]:
            with pytest.raises((TypeError, ValueError, RuntimeError)):
                run.record(bad)
        assert run.step == len(given)  # a refused value is not a step
        run.close()
        with Store.open(run_dir) as s:
            losses = [v for w in s.windows() for v in w.losses]
        assert losses == pytest.approx([float(graph_loss.detach()), 3.0, 0.5, 0.25, 2.0], rel=1e-6)

    def test_device_buffers_are_converted_in_one_go(self):
        # On a GPU, record() keeps detached tensors and _to_floats moves a window at once; the
        # conversion itself is device-independent, so CPU tensors exercise its paths here.
        from trainwarden.agent.run import _to_floats
        assert _to_floats([torch.tensor(1.5), torch.tensor(2.5)]) == [1.5, 2.5]
        assert _to_floats([torch.tensor([1.5]), torch.tensor(2.5)]) == [1.5, 2.5]  # mixed shapes
        assert _to_floats([1.5, torch.tensor(2.5)]) == [1.5, 2.5]  # a float among tensors
        assert _to_floats([]) == []

    def test_context_manager_marks_a_crash(self, run_dir):
        with pytest.raises(RuntimeError):
            with attach(run_dir)[0] as run:
                run.record(1.0)
                raise RuntimeError("out of memory")
        with Store.open(run_dir) as s:
            assert s.run().status == "crashed"
            (event,) = [e for e in s.events() if e.kind == "crashed"]
            assert "out of memory" in event.message
            assert [st for st, _, _ in s.history(0)] == [1]  # the partial window was kept


class TestAttach:
    def test_run_dir_from_the_environment(self, run_dir, monkeypatch):
        model, opt, _, _ = build()
        monkeypatch.delenv(tw.ENV_RUN_DIR, raising=False)
        with pytest.raises(tw.AttachError, match="TRAINWARDEN_RUN_DIR"):
            tw.attach(model=model, optimizer=opt)
        monkeypatch.setenv(tw.ENV_RUN_DIR, str(run_dir))
        run = tw.attach(model=model, optimizer=opt)
        assert run.run_dir == run_dir
        run.close()

    def test_a_second_live_writer_is_refused(self, run_dir, trainer):
        t = trainer(run_dir, "--steps", "100000", "--sleep", "0.01")
        t.next_event()
        model, opt, _, _ = build()
        with pytest.raises(tw.AttachError, match="already being written by process"):
            tw.attach(run_dir, model=model, optimizer=opt)

    def test_importing_the_agent_stays_light(self):
        code = (
            "import sys, torch, trainwarden.agent as tw\n"
            "m = torch.nn.Linear(2, 1)\n"
            "import tempfile; d = tempfile.mkdtemp()\n"
            "run = tw.attach(d + '/r', model=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1))\n"
            "run.record(1.0); run.close()\n"
            "print(sorted({n.split('.')[0] for n in sys.modules} & {'textual', 'apscheduler', 'watchdog', 'sqlite_utils'}))\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "[]"


class TestBranches:
    def test_restart_without_resume_starts_a_new_branch(self, run_dir):
        run, step = attach(run_dir)
        for _ in range(25):
            run.record(step())
        run.close()
        run, step = attach(run_dir)
        for _ in range(7):
            run.record(step())
        run.close()
        with Store.open(run_dir) as s:
            branch = s.run().branch
            assert branch == 1
            assert [st for st, _, _ in s.history(branch)] == list(range(1, 8))
            assert [st for st, b, _ in s.history() if b == 0] == list(range(1, 26))

    def test_heartbeats_before_resume_leave_the_stored_step_alone(self, run_dir):
        run, step = attach(run_dir)
        for _ in range(30):
            run.record(step())
        run.close()
        attached_at = time.time()
        run, step = attach(run_dir)  # a restart that has not called resume() yet
        with Store.open(run_dir) as s:
            wait_for(lambda: s.run().heartbeat_at > attached_at + 0.3, timeout=10)  # a heartbeat or two
            assert s.run().step == 30, "ls and show must not say the restarted run is at step 0"
        assert run.resume() == 30
        run.close()

    def test_rollback_keeps_the_abandoned_steps(self, run_dir):
        run, step = attach(run_dir, save_every_steps=10)
        for i in range(30):
            run.record(step())
            if run.step % 10 == 0:
                run.flush()  # each due save finds the writer idle, so there is one at step 20
        target = [c for c in Store.open(run_dir).checkpoints(["ready"]) if c.step == 20][0]
        cmd = train_until_acked(run, step, issue(run_dir, "rollback", {"target": target.id}))
        assert cmd.status == "applied", cmd.result
        assert run.step >= 20 and run.branch == 1
        for _ in range(15):
            run.record(step())
        run.close()
        with Store.open(run_dir) as s:
            (child,) = [b for b in s.branches() if b.id == 1]
            assert (child.parent, child.fork_step, child.checkpoint_id) == (0, 20, target.id)
            old = [st for st, b, _ in s.history() if b == 0]
            assert old[0] == 1 and old[-1] > 30 and old == list(range(1, old[-1] + 1))
            lineage = [st for st, _, _ in s.history(1)]
            assert lineage == list(range(1, lineage[-1] + 1))  # one value per step, no gap
            rollback_events = [e for e in s.events() if e.kind == "rollback"]
            assert len(rollback_events) == 1 and "new branch 1" in rollback_events[0].message


class TestPause:
    def test_pause_blocks_at_a_step_boundary_until_resume(self, run_dir):
        run, step = attach(run_dir)
        for _ in range(13):
            run.record(step())
        pause = issue(run_dir, "pause")
        steps_at = []

        def operator() -> None:
            with Store.open(run_dir) as s:
                wait_for(lambda: s.run().status == "paused", timeout=30)
                steps_at.append(s.run().step)
                time.sleep(0.5)
                steps_at.append(s.run().step)
                # while paused the LR can be changed, and the heartbeat goes on
                beat = s.run().heartbeat_at
                s.add_command("scale_lr", {"factor": 0.5}, "op")
                wait_for(lambda: s.run().heartbeat_at > beat, timeout=10)
                s.add_command("resume", {}, "op")

        helper = threading.Thread(target=operator)
        helper.start()
        cmd = train_until_acked(run, step, pause)
        paused_at = run.step
        run.record(step())  # blocks here until the operator resumes
        helper.join(timeout=30)
        assert cmd.status == "applied"
        assert steps_at[0] == steps_at[1] == paused_at  # nothing advanced, and the partial window was flushed
        assert run.lr == pytest.approx(float(run.optimizer.param_groups[0]["lr"]) * 0.5)
        run.close()
        with Store.open(run_dir) as s:
            assert [c.status for c in s.commands()] == ["applied"] * 3
            assert s.run().status == "finished"

    def test_stop_while_paused(self, run_dir):
        run, step = attach(run_dir)
        run.record(step())
        issue(run_dir, "pause")
        stop = issue(run_dir, "stop")
        cmd = train_until_acked(run, step, stop)
        assert cmd.status == "applied" and run.should_stop
        run.close()
        with Store.open(run_dir) as s:
            assert s.run().status == "stopped"

    @pytest.mark.parametrize("kind", ["resume", "launch", "pause_twice"])
    def test_nonsense_commands_are_rejected_and_training_goes_on(self, run_dir, kind):
        run, step = attach(run_dir)
        run.record(step())
        if kind == "pause_twice":
            first, second = issue(run_dir, "pause"), issue(run_dir, "pause")
            threading.Timer(1.0, lambda: issue(run_dir, "resume")).start()
            train_until_acked(run, step, first)
            cmd = train_until_acked(run, step, second)
            assert cmd.status == "rejected" and cmd.result == "already paused"
        else:
            cmd = train_until_acked(run, step, issue(run_dir, kind))
            assert cmd.status == "rejected"
            assert cmd.result == ("not paused" if kind == "resume" else "unknown command 'launch' (known: pause, resume, set_lr, scale_lr, rollback, save, stop)")
        before = run.step
        for _ in range(5):
            run.record(step())
        assert run.step == before + 5
        run.close()


class TestConfig:
    @pytest.mark.parametrize("field,value", [("window", 0), ("checkpoint_budget", float("nan")),
                                             ("keep_best", -1), ("save_every_seconds", float("inf")),
                                             ("best_margin", "a lot"), ("windw", 10)])
    def test_nonsense_is_rejected_naming_the_field(self, field, value):
        with pytest.raises(ValueError) as info:
            tw.AgentConfig(**{field: value})
        assert field in str(info.value)

    def test_record_after_close_fails_loudly(self, run_dir):
        run, step = attach(run_dir)
        run.record(step())
        run.close()
        with pytest.raises(RuntimeError, match="closed"):
            run.record(step())
