"""The benchmark scripts still run (their figures are for benchmarks/README.md, not asserted here)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import end_session, session_processes, wait_for

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
    proc = subprocess.Popen([sys.executable, str(BENCH / script), "--quick", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=BENCH.parent, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=800)
    finally:
        left = end_session(proc)  # on a timeout or an error too: nothing it started outlives the test
    assert left == [], f"{script} left processes running: {left}"
    assert proc.returncode == 0, stderr
    verdicts = [line for line in stdout.splitlines() if "(target" in line]
    assert verdicts and all(line.endswith((": met", ": MISSED")) for line in verdicts)
    assert not list(tmp_path.iterdir())  # temporary files removed


def test_a_benchmark_stopped_midway_ends_every_process_it_started(tmp_path):
    proc = subprocess.Popen([sys.executable, str(BENCH / "recovery.py"), "--quick"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=BENCH.parent,
                            start_new_session=True)
    try:
        # Stopped once its daemon and a training run (as a test's timeout would stop it).
        wait_for(lambda: len(session_processes(proc.pid)) >= 3 or proc.poll() is not None, 120, 0.2)
        started = session_processes(proc.pid)
        assert proc.poll() is None and len(started) >= 3
        proc.terminate()
        proc.wait(60)
        wait_for(lambda: not session_processes(proc.pid), 30, 0.2)
    finally:
        end_session(proc)
