"""The example a newcomer runs first: trains, resumes when run again, rejects a bad LR."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from trainwarden.agent.store import Store

EXAMPLE = Path(__file__).parent.parent / "examples" / "train_mlp.py"


def run_example(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, timeout=300)


def test_trains_then_resumes_where_it_left_off(run_dir):
    first = run_example("--run-dir", str(run_dir), "--steps", "300", "--hidden", "64", "--val-every", "100")
    assert first.returncode == 0, first.stderr
    assert "starting" in first.stdout and "done at step 300" in first.stdout
    second = run_example("--run-dir", str(run_dir), "--steps", "500", "--hidden", "64", "--val-every", "100")
    assert second.returncode == 0, second.stderr
    assert "resuming at step 300" in second.stdout and "done at step 500" in second.stdout
    with Store.open(run_dir) as s:
        assert s.run().status == "finished"
        assert [step for step, _, _ in s.history(s.run().branch)] == list(range(1, 501))
        assert [m.step for m in s.metrics("val_loss")] == [100, 200, 300, 400, 500]
        assert s.run().branch == 0  # a clean resume continues the same history


def test_a_bad_learning_rate_is_a_usage_error(run_dir):
    for bad in ("-1", "0", "nan", "inf"):
        out = run_example("--run-dir", str(run_dir), "--lr", bad)
        assert out.returncode == 2
        assert "--lr must be a positive finite number" in out.stderr
    assert not run_dir.exists()
