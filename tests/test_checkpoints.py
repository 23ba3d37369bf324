"""Checkpoints: contents, retention, adaptive cadence, and every way a file can go bad."""
from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import FAST, issue, train_until_acked
from tiny_train import build, params_digest, train_step

import trainwarden.agent as tw
from trainwarden.agent.cadence import save_due
from trainwarden.agent.checkpoint import file_checksum
from trainwarden.agent.store import DB_NAME, SCHEMA_VERSION, Store


def attach(run_dir, hidden: int = 32, **config):
    model, opt, sched, batch = build(hidden=hidden, scheduler="step", steps=400)
    settings = dict(window=10, save_every_steps=10, keep_best=20, keep_last=20) | FAST | config
    run = tw.attach(run_dir, model=model, optimizer=opt, scheduler=sched, config=tw.AgentConfig(**settings))
    step = lambda: train_step(model, opt, sched, batch)  # noqa: E731
    return run, model, step


def train(run, step, n: int) -> None:
    """Train n steps, letting each checkpoint finish so that fixed-interval saves are never
    deferred by a busy writer (which they are, by design, in real training)."""
    for _ in range(n):
        run.record(step())
        if run.step % run.config.window == 0:
            run.flush()


def ready(run_dir) -> list:
    with Store.open(run_dir) as s:
        return s.checkpoints(["ready"])


def events(run_dir, kind: str) -> list:
    with Store.open(run_dir) as s:
        return [e for e in s.events() if e.kind == kind]


class TestContents:
    def test_a_checkpoint_holds_everything_needed_to_continue(self, run_dir):
        import numpy  # noqa: F401  (so the numpy RNG state is captured too)

        run, model, step = attach(run_dir)
        train(run, step, 37)
        run.save()
        (newest,) = [c for c in ready(run_dir) if c.step == 37]
        assert newest.kind == "manual" and newest.bytes > 0 and newest.checksum.startswith("xxh3_128:")
        assert file_checksum(run_dir / newest.path) == newest.checksum
        state = torch.load(run_dir / newest.path, weights_only=True)
        assert {"model", "optimizer", "scheduler", "scaler", "rng", "step", "branch", "lr_multiplier",
                "loss_history"} <= set(state)
        assert state["step"] == 37 and state["branch"] == 0 and state["lr_multiplier"] == 1.0
        assert {"torch", "python", "numpy"} <= set(state["rng"])
        assert state["optimizer"]["state"], "momentum buffers are saved"
        assert state["scheduler"]["last_epoch"] == 37
        for name, tensor in model.state_dict().items():
            assert torch.equal(state["model"][name], tensor)
        run.close()
        with Store.open(run_dir) as s:
            history = [loss for _, _, loss in s.history(0)][:37]
        assert state["loss_history"].tolist() == pytest.approx(history)

    def test_resume_restores_weights_step_history_and_rng(self, run_dir):
        run, model, step = attach(run_dir)
        train(run, step, 30)
        run.close()  # saved at 30 (every 10 steps)
        expected_weights = params_digest(model)
        torch.manual_seed(999)  # scramble the RNG: resume must restore the saved one
        run, model, step = attach(run_dir)
        assert run.resume() == 30
        assert params_digest(model) == expected_weights
        after_resume = torch.rand(3)
        with Store.open(run_dir) as s:
            c = max(s.checkpoints(["ready"]), key=lambda c: c.step)
        state = torch.load(run_dir / c.path, weights_only=True)
        torch.set_rng_state(state["rng"]["torch"])
        assert torch.equal(torch.rand(3), after_resume)
        run.close()


    @pytest.mark.parametrize("torch_writer", ["crc-less", "other-private-api", "no-crc-flag"])
    def test_the_file_loads_with_plain_torch_load_whichever_writer_torch_offers(self, tmp_path, monkeypatch, torch_writer):
        # Where torch's private zip writer can skip its per-record CRC32 the agent uses it; other
        # torch versions get plain torch.save. Either way a user can torch.load the file.
        from trainwarden.agent.checkpoint import write_file
        if torch_writer == "crc-less":
            try:
                torch._C.PyTorchFileWriter(io.BytesIO(), False, 64)
            except TypeError:
                pytest.skip(f"torch {torch.__version__} has no CRC-less writer: plain torch.save is used")
        if torch_writer == "other-private-api":
            real_save = torch.serialization._save
            monkeypatch.setattr(torch.serialization, "_save", lambda *args, **kw: real_save(*args, **kw))
        elif torch_writer == "no-crc-flag":
            real = torch._C.PyTorchFileWriter

            def writer_without_the_flag(f, *rest):
                if rest and rest[0] is False:
                    raise TypeError("incompatible constructor arguments")
                return real(f, *rest)  # torch.save's own call
            monkeypatch.setattr(torch._C, "PyTorchFileWriter", writer_without_the_flag)
        plain_saves = []
        real_torch_save = torch.save
        monkeypatch.setattr(torch, "save", lambda *a, **kw: plain_saves.append(1) or real_torch_save(*a, **kw))
        state = {"w": torch.arange(1000, dtype=torch.float32).reshape(10, 100), "step": 7, "rng": {"python": (3, (1, 2), None)}}
        nbytes, checksum = write_file(state, tmp_path / "c.pt")
        assert len(plain_saves) == (0 if torch_writer == "crc-less" else 1)
        assert nbytes == (tmp_path / "c.pt").stat().st_size and file_checksum(tmp_path / "c.pt") == checksum
        loaded = torch.load(tmp_path / "c.pt", weights_only=True)
        assert torch.equal(loaded["w"], state["w"]) and loaded["step"] == 7
        assert loaded["rng"]["python"] == (3, (1, 2), None)


class TestGradScaler:
    def test_the_scalers_state_is_saved_and_restored(self, run_dir):
        if not hasattr(torch, "amp") or not hasattr(torch.amp, "GradScaler"):
            pytest.skip("torch.amp.GradScaler needs torch >= 2.3")
        model, opt, _, batch = build()
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=5)
        run = tw.attach(run_dir, model=model, optimizer=opt, scaler=scaler,
                        config=tw.AgentConfig(window=10, save_every_steps=10, **FAST))
        for _ in range(12):
            x, y = batch()
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            run.record(loss)
        run.close()  # final checkpoint at step 12
        grown = scaler.get_scale()
        assert grown > 1024.0  # it grew every 5 finite steps

        model, opt, _, _ = build()
        fresh = torch.amp.GradScaler("cpu", init_scale=1.0)
        run = tw.attach(run_dir, model=model, optimizer=opt, scaler=fresh, config=tw.AgentConfig(**FAST))
        assert run.resume() == 12
        assert fresh.get_scale() == grown
        run.close()


class TestCorruptFiles:
    @pytest.mark.parametrize("damage", ["truncate", "bitflip", "delete"])
    def test_resume_skips_a_damaged_checkpoint_and_uses_the_previous_one(self, run_dir, damage):
        run, model, step = attach(run_dir)
        train(run, step, 50)
        run.close()
        previous, newest = sorted(ready(run_dir), key=lambda c: c.step)[-2:]
        path = run_dir / newest.path
        data = bytearray(path.read_bytes())
        if damage == "truncate":
            path.write_bytes(data[: len(data) // 2])
        elif damage == "bitflip":
            data[len(data) // 2] ^= 0x10
            path.write_bytes(bytes(data))
        else:
            path.unlink()
        expected = torch.load(run_dir / previous.path, weights_only=True)["model"]

        run, model, step = attach(run_dir)
        assert run.resume() == previous.step
        for name, tensor in model.state_dict().items():
            assert torch.equal(tensor, expected[name])
        train(run, step, 5)  # training goes on
        run.close()
        with Store.open(run_dir) as s:
            assert s.checkpoint(newest.id).status == "corrupt"
            assert s.checkpoint(previous.id).status == "ready"
            (warning,) = [e for e in s.events() if e.kind == "checkpoint_corrupt"]
            assert warning.severity == "warning" and f"checkpoint {newest.id}" in warning.message
            # steps 41..50 of the first attempt are kept, under the old branch
            assert [st for st, b, _ in s.history() if b == 0][-1] == 50
            assert [st for st, _, _ in s.history(s.run().branch)] == list(range(1, previous.step + 6))

    def test_rollback_to_a_damaged_checkpoint(self, run_dir):
        run, model, step = attach(run_dir)
        train(run, step, 40)
        best = min(ready(run_dir), key=lambda c: c.loss)
        path = run_dir / best.path
        path.write_bytes(path.read_bytes()[:100])
        cmd = train_until_acked(run, step, issue(run_dir, "rollback", {"target": best.id}))
        assert cmd.status == "rejected" and "does not match its checksum" in cmd.result
        cmd = train_until_acked(run, step, issue(run_dir, "rollback", {"target": "best"}))
        assert cmd.status == "applied", cmd.result  # "best" falls back to the next good one
        assert f"checkpoint {best.id} " not in cmd.result
        run.close()
        assert events(run_dir, "checkpoint_corrupt")

    def test_a_malicious_pickle_is_refused_and_nothing_runs(self, run_dir, tmp_path):
        marker = tmp_path / "pwned"

        class Evil:
            def __reduce__(self):
                return (open, (str(marker), "w"))

        run, model, step = attach(run_dir)
        train(run, step, 30)
        run.close()
        newest = max(ready(run_dir), key=lambda c: c.step)
        path = run_dir / newest.path
        torch.save({"format": "trainwarden-checkpoint", "payload": Evil()}, path)
        # An attacker who can write the folder can also fix the checksum: the loader must still refuse.
        db = sqlite3.connect(run_dir / DB_NAME)
        db.execute("UPDATE checkpoints SET checksum = ? WHERE id = ?", (file_checksum(path), newest.id))
        db.commit()
        db.close()

        expected = sorted(c.step for c in ready(run_dir))[-2]
        run, model, step = attach(run_dir)
        assert run.resume() == expected
        run.close()
        assert not marker.exists()
        (warning,) = events(run_dir, "checkpoint_corrupt")
        assert "refused by the safe loader" in warning.message and "open" in warning.message


class TestOlderStores:
    def test_a_schema_1_store_with_sha256_checksums_is_migrated_and_still_verified(self, run_dir):
        """Schema 1 kept bare sha256 digests in a `sha256` column; opening it with this version
        renames the column and resume still checks each file against its old digest."""
        run, model, step = attach(run_dir)
        train(run, step, 30)
        run.close()
        db = sqlite3.connect(run_dir / DB_NAME)  # turn it into what the schema-1 version wrote
        db.execute("ALTER TABLE checkpoints RENAME COLUMN checksum TO sha256")
        db.execute("DROP TABLE interventions")  # added by schema 3
        db.execute("PRAGMA user_version=1")
        rows = db.execute("SELECT id, step, path FROM checkpoints WHERE status = 'ready' ORDER BY step").fetchall()
        for ckpt_id, _, path in rows:
            db.execute("UPDATE checkpoints SET sha256 = ? WHERE id = ?", (file_checksum(run_dir / path, "sha256"), ckpt_id))
        db.commit()
        db.close()
        newest_id, _, newest_path = rows[-1]
        with open(run_dir / newest_path, "r+b") as f:  # one flipped bit in the newest file
            f.seek(200)
            byte = f.read(1)
            f.seek(200)
            f.write(bytes([byte[0] ^ 1]))

        run, model, step = attach(run_dir)
        assert run.resume() == rows[-2][1]  # the flipped file fails its sha256; the one before is used
        run.close()
        with Store.open(run_dir) as s:
            assert s.checkpoint(newest_id).status == "corrupt"
            assert len(s.checkpoint(rows[-2][0]).checksum) == 64  # the old digest, kept as it was
        db = sqlite3.connect(run_dir / DB_NAME)
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        db.close()

    def test_a_schema_2_store_gains_the_interventions_table(self, run_dir):
        """A store from before the supervisor (schema 2) opens with this version, keeps its
        history and can hold the supervisor's interventions."""
        run, model, step = attach(run_dir)
        train(run, step, 30)
        run.close()
        db = sqlite3.connect(run_dir / DB_NAME)
        db.execute("DROP TABLE interventions")
        db.execute("PRAGMA user_version=2")
        db.commit()
        windows_before = db.execute("SELECT count(*) FROM windows").fetchone()[0]
        db.close()
        with Store.open(run_dir) as s:
            assert len(s.lineage_windows(0)) == windows_before > 0
            assert s.interventions() == []
        db = sqlite3.connect(run_dir / DB_NAME)
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        db.close()


class TestDiskFull:
    def test_a_full_disk_fails_the_save_not_the_training(self, tmp_path):
        mount = tmp_path / "small-disk"
        mount.mkdir()
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                                               capture_output=True).returncode != 0:
            pytest.skip("needs root and mount to make a small real filesystem")
        try:
            run_dir = mount / "run"
            run, model, step = attach(run_dir, hidden=4096, save_every_steps=None, save_every_seconds=3600.0)
            train(run, step, 20)
            run.save()
            (good,) = ready(run_dir)
            vfs = os.statvfs(mount)
            filler = mount / "filler"
            with open(filler, "wb") as f:
                f.write(b"\0" * (vfs.f_bavail * vfs.f_frsize - 160 * 1024))
            train(run, step, 20)
            run.save()  # does not raise
            train(run, step, 20)  # training continues
            with Store.open(run_dir) as s:
                failed = [c for c in s.checkpoints() if c.status == "failed"]
                (error,) = [e for e in s.events() if e.kind == "checkpoint_failed"]
            assert len(failed) == 1 and "No space left on device" in failed[0].error
            assert error.severity == "error" and "training continues" in error.message
            assert not (run_dir / failed[0].path).exists() and not list((run_dir / "checkpoints").glob("*.tmp"))
            assert file_checksum(run_dir / good.path) == good.checksum  # the older checkpoint is intact
            filler.unlink()
            run.save()
            assert max(c.step for c in ready(run_dir)) == 60
            run.close()
            with Store.open(run_dir) as s:
                assert [st for st, _, _ in s.history(0)] == list(range(1, 61))
        finally:
            subprocess.run(["umount", str(mount)], check=True)


class TestRetention:
    def test_keeps_the_best_k_and_the_last_n(self, run_dir):
        run, model, step = attach(run_dir, keep_best=2, keep_last=2)
        train(run, step, 200)
        run.close()
        with Store.open(run_dir) as s:
            every = s.checkpoints()
        kept = [c for c in every if c.status == "ready"]
        gone = [c for c in every if c.status == "deleted"]
        assert len(every) >= 20 and gone
        assert len(kept) <= 2 + 2 + 1
        best_two = sorted((c for c in every if c.loss is not None), key=lambda c: c.loss)[:2]
        assert {c.id for c in best_two} <= {c.id for c in kept}
        newest_two = sorted(every, key=lambda c: c.step)[-2:]
        assert {c.id for c in newest_two} <= {c.id for c in kept}
        for c in gone:
            assert not (run_dir / c.path).exists()
        for c in kept:
            assert file_checksum(run_dir / c.path) == c.checksum
        leftovers = {p.name for p in (run_dir / "checkpoints").iterdir()}
        assert leftovers == {os.path.basename(c.path) for c in kept}


class TestNonFinite:
    def test_a_nan_window_is_never_saved_as_best(self, run_dir):
        run, model, step = attach(run_dir, window=5, save_every_steps=5)
        for loss in [1.0] * 5 + [0.5] * 5 + [0.1, float("nan"), 0.1, 0.1, 0.1] + [float("inf")] * 5:
            run.record(loss)
            run.flush()  # so each due save finds the writer idle
        run.save()  # an operator's save still happens; its loss is unknown
        saved = ready(run_dir)
        assert sorted(c.step for c in saved) == [5, 10, 20]
        manual = [c for c in saved if c.step == 20][0]
        assert manual.kind == "manual" and manual.loss is None
        best = min((c for c in saved if c.loss is not None), key=lambda c: c.loss)
        assert best.step == 10
        cmd = train_until_acked(run, lambda: 5.0, issue(run_dir, "rollback", {"target": "best"}))
        assert f"checkpoint {best.id} at step 10" in cmd.result
        run.close()


class TestCadence:
    """The adaptive save interval (pure decisions)."""

    def test_adaptive_interval_follows_the_measured_cost(self):
        cfg = tw.AgentConfig(checkpoint_budget=0.02)
        assert save_due(cfg, 0.0, 0, None)  # no measurement yet: save to measure
        assert not save_due(cfg, 0.99, 1000, 0.01)  # 10 ms per save -> every 1 s: 1 % of a 2 % budget
        assert save_due(cfg, 1.0, 1000, 0.01)
        assert not save_due(cfg, 199.0, 1000, 2.0)  # a 2 s save -> every 200 s
        assert save_due(cfg, 200.0, 1000, 2.0)

    def test_fixed_intervals_and_the_floor(self):
        assert save_due(tw.AgentConfig(save_every_steps=100), 0.0, 100, 50.0)
        assert not save_due(tw.AgentConfig(save_every_steps=100), 1e6, 99, 0.0)
        assert save_due(tw.AgentConfig(save_every_seconds=60), 60.0, 1, 50.0)
        assert not save_due(tw.AgentConfig(save_every_steps=1, min_save_interval_s=5), 4.9, 10, 0.0)

    def test_a_small_model_is_saved_every_few_windows_by_default(self, run_dir):
        run, model, step = attach(run_dir, save_every_steps=None, keep_best=1000, keep_last=1000)
        windows = 200
        for _ in range(10 * windows):
            run.record(step())
        run.close()
        with Store.open(run_dir) as s:
            saves = [c for c in s.checkpoints() if c.kind in ("best", "last")]
        # Saving costs milliseconds and the budget is 2 %: not every window, but not never.
        assert 1 < len(saves) < windows / 2

    def test_snapshot_buffers_are_reserved_before_the_first_automatic_save(self, run_dir):
        run, model, step = attach(run_dir, save_every_steps=None)
        for _ in range(10):  # the first full window hands the reservation to the checkpoint thread
            run.record(step())
        assert run._saver.reserved.wait(10)
        reserved = {path: buf.data_ptr() for path, buf in run._saver.snapshots._buffers.items()}
        assert {f"/model/{name}" for name in model.state_dict()} <= set(reserved)
        assert any(path.startswith("/optimizer/state/") for path in reserved)  # SGD momentum buffers
        for _ in range(10):  # the adaptive cadence's first save comes at the next window
            run.record(step())
        run.flush()
        (first,) = ready(run_dir)
        assert first.step == 20
        # The save copied into the reserved memory instead of allocating its own.
        assert {path: buf.data_ptr() for path, buf in run._saver.snapshots._buffers.items()} == reserved
        saved = torch.load(run_dir / first.path, weights_only=True)["model"]
        assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
        run.close()

    def test_the_checkpoint_thread_starts_no_torch_thread_team(self, run_dir):
        # A torch op on a second thread starts a second OpenMP team, and with 2 torch threads that
        # slowed a CPU training loop 3x for the rest of the run. Reserving buffers and writing
        # checkpoints must leave the process with only the agent's own two threads added.
        script = textwrap.dedent(f"""
            import os, torch
            from torch import nn
            import trainwarden.agent as tw
            torch.set_num_threads(2)
            threads = lambda: len(os.listdir("/proc/self/task"))
            model = nn.Linear(512, 512)
            opt = torch.optim.Adam(model.parameters())
            def step():
                loss = model(torch.randn(64, 512)).square().mean()
                opt.zero_grad(); loss.backward(); opt.step()
                return loss
            step()
            before = threads()
            run = tw.attach({str(run_dir)!r}, model=model, optimizer=opt,
                            config=tw.AgentConfig(window=5, save_every_steps=5, handle_signals=False))
            for _ in range(20):
                run.record(step())
            assert run._saver.reserved.wait(30)
            run.save()
            print(threads() - before)
            run.close()
        """)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert int(out.stdout.split()[-1]) == 2  # the store writer and the checkpoint writer
