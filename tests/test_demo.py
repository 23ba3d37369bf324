"""`trainwarden demo` as a user runs it: the installed command, real trainings, the real daemon."""
from __future__ import annotations

import re
import shutil
import subprocess
import time

import pytest

from conftest import cli
from trainwarden.agent.store import Store


def test_the_demo_catches_the_rebound_and_ends_far_better_than_unsupervised(tmp_path):
    root, png = tmp_path / "demo", tmp_path / "history.png"
    r = cli("demo", "--root", root, "--out", png, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "intervention 1: roll back to checkpoint" in out and "cured the run" in out
    sup = re.search(r"supervised\s+(\d+) steps, (\d+) findings, (\d+) interventions, (\d+) rolled-back branches kept, "
                    r"final loss ([\d.e-]+)", out)
    uns = re.search(r"unsupervised\s+(\d+) steps, .* final loss ([\d.e-]+)", out)
    assert sup and uns, out
    assert sup.group(1) == uns.group(1) == "5000"
    assert int(sup.group(3)) >= 1 and int(sup.group(4)) == int(sup.group(3))
    assert float(uns.group(2)) > 3 * float(sup.group(5))  # the supervised run ends several times better
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"loss history: {png}" in out
    with Store.open(root / "supervised") as s:  # the old branches are kept, the run is on the newest
        branches = s.branches()
        assert len(branches) == int(sup.group(4)) + 1 and s.run().branch == branches[-1].id
    with Store.open(root / "unsupervised") as s:
        assert s.interventions() == [] and len(s.branches()) == 1


def test_without_matplotlib_the_png_is_skipped_with_a_reason(tmp_path, monkeypatch):
    import sys

    from trainwarden.supervisor.demo import plot_png

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    assert plot_png(tmp_path, tmp_path / "x.png") == \
        "PNG not written: matplotlib is not installed (pip install 'trainwarden[demo]')"
    assert not (tmp_path / "x.png").exists()


def test_bad_input_is_one_line_and_touches_nothing(tmp_path):
    root = tmp_path / "demo"
    (root / "supervised").mkdir(parents=True)
    r = cli("demo", "--root", root)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "exists already" in r.stderr
    assert sorted(p.name for p in root.iterdir()) == ["supervised"]
    r = cli("demo", "--steps", "10")
    assert r.returncode == 2 and "--steps must be at least 1000" in r.stderr
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    r = cli("demo", "--root", blocked / "demo")
    assert r.returncode == 2 and "cannot write to" in r.stderr


def test_the_demo_in_the_tui(tmp_path):
    """`--tui` opens the TUI on the demo's root; quitting it lets the demo finish and summarise."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    root = tmp_path / "demo"
    sock = f"tw-demo-{tmp_path.name}"
    tmux = ["tmux", "-L", sock]

    def screen() -> str:
        return subprocess.run([*tmux, "capture-pane", "-p", "-t", "d", "-S", "-50"], capture_output=True, text=True).stdout

    def wait_screen(text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while text not in (s := screen()):
            assert time.monotonic() < deadline, f"{text!r} not on screen:\n{s}"
            time.sleep(0.3)
        return s

    command = f"{shutil.which('trainwarden')} demo --tui --steps 1000 --root {root}; echo EXITED $?; sleep 60"
    subprocess.run([*tmux, "new-session", "-d", "-s", "d", "-x", "150", "-y", "40", command], check=True)
    try:
        wait_screen("Pause/Resume", 60)  # the TUI is up
        deadline = time.monotonic() + 60
        while not re.search(r"^ supervised .*running", s := screen(), re.M) or " unsupervised " not in s:
            assert time.monotonic() < deadline, f"the demo's runs are not on screen:\n{s}"
            time.sleep(0.3)
        subprocess.run([*tmux, "send-keys", "-t", "d", "q"], check=True)
        done = wait_screen("EXITED 0", 180)
        assert "final loss" in done and "look closer" in done
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
