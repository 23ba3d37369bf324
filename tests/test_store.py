"""The store: schema, migrations, versions, permissions, and refusing what is not a store."""
from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import uuid

import pytest

from trainwarden.agent import store as store_mod
from trainwarden.agent.store import DB_NAME, SCHEMA_VERSION, NotAStoreError, Store, StoreError, StoreVersionError


class TestCreate:
    def test_new_store_is_wal_owner_only_and_at_the_current_version(self, run_dir):
        with Store.open(run_dir, create=True) as s:
            s.init_run("r", {}, "test")
            s.add_window(0, 1, [1.0, 2.0], {"mean": 1.5, "min": 1.0, "max": 2.0, "std": 0.5, "nonfinite": 0}, 0.1, 10.0)
        db = sqlite3.connect(run_dir / DB_NAME)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        db.close()
        for name in (DB_NAME, DB_NAME + "-wal"):
            path = run_dir / name
            if path.exists():
                assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{name} is readable by others"
        assert stat.S_IMODE((run_dir / "checkpoints").stat().st_mode) & 0o077 == 0

    def test_values_round_trip_and_non_finite_losses_are_kept_raw(self, run_dir):
        with Store.open(run_dir, create=True) as s:
            s.init_run("r", {"window": 3}, "test")
            s.add_window(0, 1, [1.0, float("nan"), float("inf")],
                         {"mean": 1.0, "min": 1.0, "max": 1.0, "std": 0.0, "nonfinite": 2}, float("nan"), 3.0)
            (w,) = s.windows()
            assert w.first_step == 1 and w.last_step == 3 and w.nonfinite == 2
            assert w.losses[0] == 1.0 and w.losses[1] != w.losses[1] and w.losses[2] == float("inf")
            assert w.lr is None  # a NaN LR is stored as unknown, not as a number
            assert s.run().config == {"window": 3}


class TestMigrations:
    def test_an_older_store_is_migrated_and_keeps_its_data(self, run_dir, monkeypatch):
        with Store.open(run_dir, create=True) as s:
            s.init_run("old", {}, "test")
            s.add_event("note", "info", "written by the old version")
        # A newer trainwarden adds a migration; opening the old store applies it in place.
        monkeypatch.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS + ["ALTER TABLE run ADD COLUMN owner TEXT"])
        monkeypatch.setattr(store_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
        with Store.open(run_dir) as s:
            assert s.run().name == "old"
            assert [e.message for e in s.events()] == ["written by the old version"]
        db = sqlite3.connect(run_dir / DB_NAME)
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        assert "owner" in [r[1] for r in db.execute("PRAGMA table_info(run)")]
        db.close()

    def test_a_store_from_a_newer_version_is_refused_and_left_untouched(self, run_dir):
        with Store.open(run_dir, create=True) as s:
            s.init_run("new", {}, "test")
        db = sqlite3.connect(run_dir / DB_NAME)
        db.execute("PRAGMA user_version=99")
        db.commit()
        db.close()
        before = (run_dir / DB_NAME).read_bytes()
        with pytest.raises(StoreVersionError, match="schema version 99, newer than this trainwarden"):
            Store.open(run_dir)
        with pytest.raises(StoreVersionError):
            Store.open(run_dir, create=True)  # attach() path: no "upgrade" of someone else's store
        assert (run_dir / DB_NAME).read_bytes() == before


class TestNotAStore:
    def test_missing_folder(self, tmp_path):
        with pytest.raises(NotAStoreError, match="no such run folder"):
            Store.open(tmp_path / "nope")

    def test_folder_without_a_store(self, tmp_path):
        with pytest.raises(NotAStoreError, match="is not a trainwarden run folder"):
            Store.open(tmp_path)

    def test_database_file_that_is_not_sqlite(self, run_dir):
        run_dir.mkdir()
        (run_dir / DB_NAME).write_bytes(b"this is not a database, just text " * 100)
        with pytest.raises(NotAStoreError, match="is not a trainwarden store"):
            Store.open(run_dir)
        assert (run_dir / DB_NAME).read_bytes().startswith(b"this is not a database")


def _read_only_folder(path):
    """A folder even root cannot write: a read-only bind mount (root), or mode 0500 (others)."""
    path.mkdir(parents=True)
    if os.geteuid() != 0:
        path.chmod(0o500)
        return lambda: path.chmod(0o700)
    if subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True).returncode != 0 or \
            subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", str(path)], capture_output=True)
        pytest.skip("running as root without permission to mount: cannot make a folder unwritable")
    return lambda: subprocess.run(["umount", str(path)], check=True)


class TestUnwritable:
    def test_attach_to_an_unwritable_folder_fails_with_one_clear_line(self, tmp_path):
        folder = tmp_path / "locked"
        undo = _read_only_folder(folder)
        try:
            code = (
                "import torch, trainwarden.agent as tw\n"
                "m = torch.nn.Linear(2, 1)\n"
                f"tw.attach({str(folder / 'run')!r}, model=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1))\n"
            )
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
            assert proc.returncode != 0
            last = proc.stderr.strip().splitlines()[-1]
            assert "cannot write to run folder" in last and "run" in last, proc.stderr
            code_existing = code.replace(str(folder / "run"), str(folder))
            proc = subprocess.run([sys.executable, "-c", code_existing], capture_output=True, text=True, timeout=60)
            assert "cannot write to run folder" in proc.stderr.strip().splitlines()[-1], proc.stderr
        finally:
            undo()
        assert list(folder.iterdir()) == []

    def test_store_error_is_a_single_line(self, tmp_path):
        target = tmp_path / f"x{uuid.uuid4().hex}"
        target.write_text("a file where a folder should be")
        with pytest.raises(StoreError) as info:
            Store.open(target / "run", create=True)
        assert "\n" not in str(info.value) and "cannot write to run folder" in str(info.value)
