"""`trainwarden demo`: the whole loop on a laptop in about a minute.

A fresh root (a temporary folder, or `--root`), the supervisor daemon as its own process, and the
same small training twice, side by side: its LR schedule multiplies the LR by 30 partway through
(a real rebound). One copy runs under `trainwarden run` and the daemon acts on it (roll back to
the best checkpoint before the rebound, halve the LR, carry on, cut again if needed); the other
copy has a `warden.toml` that makes the daemon only watch it. At the end: a summary of both, and a
PNG of the loss histories with the rolled-back branches and the interventions marked (needs
matplotlib: `pip install trainwarden[demo]`). `--tui` shows it all live in the TUI.
"""
from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from trainwarden.agent.store import Store

from .detectors import LOSS_KINDS
from .display import fmt
from .errors import UserError

SUPERVISED, UNSUPERVISED = "supervised", "unsupervised"
POLICY = """\
# The daemon's policy for `trainwarden demo`: the defaults, with a cooldown that suits a short run.
cooldown_steps = 250
"""
WATCH_ONLY = """\
# The demo's baseline: the supervisor records what it finds in this run but does nothing about it.
[modes]
spike = "observe"
nan = "observe"
divergence = "observe"
"""


@dataclass
class Outcome:
    """How one of the demo's runs ended."""

    steps: int
    findings: int
    interventions: int  # applied ones
    unapplied: int  # issued but never applied (e.g. the run ended first)
    rolled_back: int  # branches left behind by rollbacks (kept in the store)
    final_loss: float | None


class DemoError(UserError):
    """The demo cannot run; the message says why in one line."""


def final_loss(run_dir: Path) -> float | None:
    """The run's final training loss: the median of the last 10 window medians of its current
    history (robust to the noise of single steps)."""
    with Store.open(run_dir) as s:
        windows = s.lineage_windows(s.run().branch)[-10:]
    medians = [statistics.median(w.losses) for w in windows if w.losses]
    return statistics.median(medians) if medians else None


def job_command(steps: int, seed: int, delay: float) -> list[str]:
    """The example training with its LR jump at 30% of the run."""
    cmd = [sys.executable, "-m", "trainwarden.examples.train_mlp", "--steps", str(steps), "--hidden", "128",
           "--seed", str(seed), "--val-every", "250", "--lr-jump", f"{steps * 3 // 10}:30"]
    return cmd + (["--step-delay", str(delay)] if delay else [])


class Demo:
    """Runs the demo's processes and reports on them."""

    def __init__(self, root: Path, steps: int, seed: int, delay: float, say: IO[str], echo: bool = True) -> None:
        self.root, self.steps, self.seed, self.delay, self.say, self.echo = root, steps, seed, delay, say, echo
        self.procs: list[subprocess.Popen[bytes]] = []

    def prepare(self) -> None:
        for name in (SUPERVISED, UNSUPERVISED):
            if (self.root / name).exists():
                raise DemoError(f"{self.root / name} exists already: give --root an empty or new folder")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "policy.toml").write_text(POLICY)
            (self.root / UNSUPERVISED).mkdir()
            (self.root / UNSUPERVISED / "warden.toml").write_text(WATCH_ONLY)
        except OSError as exc:
            raise DemoError(f"cannot write to {self.root}: {exc.strerror or exc}") from None

    def _start(self, cmd: list[str], log: str) -> subprocess.Popen[bytes]:
        # One torch thread each: the two trainings and the daemon share the machine's cores.
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        with open(self.root / log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        self.procs.append(proc)
        return proc

    def run(self) -> None:
        """Start everything, wait for both trainings, stop the daemon."""
        daemon = self._start([sys.executable, "-m", "trainwarden.supervisor", "supervise", "--root", str(self.root),
                              "--policy", str(self.root / "policy.toml")], "supervisor.log")
        job = job_command(self.steps, self.seed, self.delay)
        supervised = self._start([sys.executable, "-m", "trainwarden.supervisor", "run", "--root", str(self.root),
                                  "--name", SUPERVISED, "--", *job], "supervised.log")
        unsupervised = self._start([*job, "--run-dir", str(self.root / UNSUPERVISED)], "unsupervised.log")
        if self.echo:  # not under the TUI: a print would scribble over its screen
            threading.Thread(target=self._follow_log, args=(daemon,), daemon=True).start()
        try:
            for proc, name in ((supervised, SUPERVISED), (unsupervised, UNSUPERVISED)):
                if proc.wait() != 0:
                    raise DemoError(f"the {name} training failed (exit {proc.returncode}); see {self.root / (name + '.log')}")
            time.sleep(1.5)  # the daemon's last tick sees the final windows
        finally:
            self.stop()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _follow_log(self, daemon: subprocess.Popen[bytes]) -> None:
        """Echo what the supervisor does to the supervised run, as it happens."""
        path = self.root / "supervisor.log"
        shown = 0
        # The acts, not every finding: "<name> step N <kind>: <message>" lines of these kinds.
        acts = re.compile(rf"\b{SUPERVISED} step (\d+) (intervention|intervention_applied|cured|needs_person): (.*)$")
        while daemon.poll() is None:
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError:
                lines = []
            for line in lines[shown:]:
                if m := acts.search(line):
                    print(f"  step {m.group(1):>5}  {m.group(2)}: {m.group(3)}", file=self.say, flush=True)
            shown = len(lines)
            time.sleep(0.5)

    def outcome(self, name: str) -> Outcome:
        with Store.open(self.root / name) as s:
            info = s.run()
            findings = [e for e in s.events() if e.source == "supervisor" and e.kind in LOSS_KINDS]
            statuses = [iv.status for iv in s.interventions()]
            branches = len(s.branches())
        return Outcome(steps=info.step, findings=len(findings), interventions=statuses.count("applied"),
                       unapplied=len(statuses) - statuses.count("applied") - statuses.count("proposed") - statuses.count("denied"),
                       rolled_back=branches - 1, final_loss=final_loss(self.root / name))


def plot_png(root: Path, out: Path) -> str:
    """Draw both runs' loss histories (window medians, log scale) to `out`; returns what was done."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "PNG not written: matplotlib is not installed (pip install 'trainwarden[demo]')"
    fig, ax = plt.subplots(figsize=(10, 5.5), dpi=110)
    with Store.open(root / UNSUPERVISED) as s:
        base = s.lineage_windows(s.run().branch)
    ax.plot([w.last_step for w in base], [statistics.median(w.losses) for w in base], color="#9e9e9e", lw=1.2,
            label="unsupervised (same seed, same LR jump)")
    from trainwarden.tui.plot import split

    with Store.open(root / SUPERVISED) as s:
        segments = s.lineage(s.run().branch)
        pieces = [p for w in s.windows() for p in split(w, segments) if p.losses]
        interventions = [iv for iv in s.interventions() if iv.status == "applied"]
    # Each rolled-back stretch its own red line; the current history one blue line over them.
    off_branches = sorted({p.branch for p in pieces if not p.current})
    for i, b in enumerate(off_branches):
        off = sorted((p for p in pieces if not p.current and p.branch == b), key=lambda p: p.last)
        ax.plot([p.last for p in off], [statistics.median(p.losses) for p in off], color="#e57373", lw=1.0,
                label="rolled back (kept as branches)" if i == 0 else None)
    on = sorted((p for p in pieces if p.current), key=lambda p: p.last)
    ax.plot([p.last for p in on], [statistics.median(p.losses) for p in on], color="#1e88e5", lw=1.8,
            label="supervised (current history)")
    for i, iv in enumerate(interventions):
        ax.axvline(iv.step, color="#ab47bc", ls="--", lw=1, label="intervention: rollback + LR x0.5" if i == 0 else None)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (window median)")
    ax.set_title("trainwarden demo: the LR jumps x30 at 30% of the run")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    try:
        fig.savefig(out)
    except OSError as exc:
        return f"PNG not written: {out}: {exc.strerror or exc}"
    finally:
        plt.close(fig)
    return f"loss history: {out}"


def run_demo(root: Path | None, out: Path | None, tui: bool, steps: int, seed: int, say: IO[str] = sys.stdout) -> int:
    root = root or Path(tempfile.mkdtemp(prefix="trainwarden-demo-"))
    demo = Demo(root, steps, seed, delay=0.01 if tui else 0.0, say=say, echo=not tui)
    demo.prepare()
    print(f"trainwarden demo in {root}\n"
          f"  the same training twice ({steps} steps; its LR jumps x30 at step {steps * 3 // 10}):\n"
          f"  '{SUPERVISED}' under the supervisor, '{UNSUPERVISED}' only watched", file=say, flush=True)
    if tui:
        from trainwarden.tui.app import TrainwardenApp

        errors: list[BaseException] = []

        def background() -> None:
            try:
                demo.run()
            except BaseException as exc:  # shown after the TUI closes
                errors.append(exc)

        worker = threading.Thread(target=background, daemon=True)
        worker.start()
        TrainwardenApp([root]).run()
        if worker.is_alive():
            print("  the TUI closed; waiting for the trainings to finish…", file=say, flush=True)
        worker.join()
        if errors:
            raise errors[0]
    else:
        demo.run()
    sup, uns = demo.outcome(SUPERVISED), demo.outcome(UNSUPERVISED)
    ratio = uns.final_loss / sup.final_loss if sup.final_loss and uns.final_loss else None
    print(f"\n  {SUPERVISED:12s}  {sup.steps} steps, {sup.findings} findings, {sup.interventions} interventions, "
          f"{sup.rolled_back} rolled-back branches kept, final loss {fmt(sup.final_loss)}"
          + (f" ({sup.unapplied} more issued, not applied)" if sup.unapplied else ""), file=say)
    print(f"  {UNSUPERVISED:12s}  {uns.steps} steps, {uns.findings} findings (only watched), "
          f"final loss {fmt(uns.final_loss)}" + (f"  ({ratio:.0f}x worse)" if ratio and ratio >= 2 else ""), file=say)
    print(f"  {plot_png(root, out or root / 'demo.png')}", file=say)
    print(f"\n  look closer:  trainwarden tui --root {root}\n"
          f"                trainwarden events {root / SUPERVISED}", file=say, flush=True)
    return 0
