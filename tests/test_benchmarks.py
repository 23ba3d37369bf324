"""The benchmark scripts still run (their figures are for benchmarks/README.md, not asserted here)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("script, extra", [
    ("record_overhead.py", []),
    ("checkpoint_stall.py", ["--dir", "{tmp}"]),
    ("training_overhead.py", []),
    ("detection.py", []),
    ("recovery.py", []),
    ("supervisor_scale.py", ["--dir", "{tmp}"]),
    ("tui_scale.py", ["--dir", "{tmp}"]),
    ("distributed_overhead.py", ["--dir", "{tmp}"]),
])
@pytest.mark.timeout(900)  # a loaded machine can take twice the usual minute or two
def test_each_benchmark_runs_and_prints_its_verdicts(script, extra, tmp_path):
    if script == "record_overhead.py" and importlib.util.find_spec("tensorboard") is None:
        pytest.skip("needs the bench extra (TensorBoard): pip install -e .[bench]")
    args = [a.format(tmp=tmp_path) for a in extra]
    out = subprocess.run([sys.executable, str(BENCH / script), "--quick", *args],
                         capture_output=True, text=True, timeout=800, cwd=BENCH.parent)
    assert out.returncode == 0, out.stderr
    verdicts = [line for line in out.stdout.splitlines() if "(target" in line]
    assert verdicts and all(line.endswith((": met", ": MISSED")) for line in verdicts)
    assert not list(tmp_path.iterdir())  # temporary files removed
