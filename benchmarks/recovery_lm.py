"""Recovery of a language model: a small GPT warmed up to a peak LR far too high, with and without trainwarden.

The hazard run is left alone and run under trainwarden (the daemon in auto mode, the job under
`trainwarden run`), beside the same training with a healthy peak.

    python benchmarks/recovery_lm.py [--quick] [--seeds N] [--steps N] [--dir PARENT] [--keep]

The job is examples/train_gpt.py (2 layers, d_model 64, batch 32, AdamW betas 0.9/0.95, no gradient
clipping, 3,000 steps: a linear warm-up over 2,500 then a cosine decay). With --peak-lr 0.25 the loss
bottoms out early in the warm-up (~2.7 nats, once an attention head has formed), creeps up as the LR
keeps rising, climbs over a few hundred steps, then falls to the level of a model that knows
nothing (~4.1 nats) and stays there to the end. The healthy run peaks at 3e-3. Every variant uses
the same seeds; each job runs on one CPU thread, one at a time.

Final loss is the last validation point (held-out stream) of the run's current history. The climb
is read from the unsupervised run (the supervised one follows the same curve, step for step, until
its first rollback): its bottom, the step from which it stays 5% above the bottom, and the step at
which it is 1.3x the bottom. The finding is the daemon's first rebound event (`trainwarden events
RUN`): its estimated onset and the step at which it was seen.
Targets: trainwarden's final loss <= 1.1x the healthy run's, the unsupervised run's >= 1.3x
(medians over the seeds).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import REPO, Children, machine, table, verdict

from trainwarden.agent.store import Store
from trainwarden.supervisor.detectors import REBOUND_KINDS

SCRIPT = REPO / "examples" / "train_gpt.py"
TRAINWARDEN = [sys.executable, "-m", "trainwarden.supervisor"]  # this interpreter's trainwarden, whatever PATH says
HAZARD_LR, HEALTHY_LR = 0.25, 3e-3
WARMUP = 2500
QUICK_SEED, QUICK_STEPS = 2, 2200  # of the three seeds, the one whose climb comes first (over by step ~1850)
JOB_TIMEOUT_S = 900


def job(peak_lr: float, seed: int, steps: int) -> list[str]:
    """The training command (it runs its warm-up to the end only when `steps` > WARMUP)."""
    return [sys.executable, str(SCRIPT), "--peak-lr", str(peak_lr), "--warmup", str(WARMUP), "--clip", "0",
            "--beta2", "0.95", "--batch", "32", "--steps", str(steps), "--seed", str(seed), "--val-every", "100",
            "--threads", "1"]


def final_val(run: Path) -> float:
    """The last validation loss of the run's current history."""
    with Store.open(run) as s:
        vals = s.lineage_metrics(s.run().branch, "val_loss")
    return vals[-1].value if vals and vals[-1].value is not None else math.nan


def climb(run: Path) -> dict[str, Any] | None:
    """Where the loss of a run's current history bottoms out and climbs (window medians), or None
    if it never reaches 1.3x its lowest level."""
    with Store.open(run) as s:
        levels = [(w.last_step, statistics.median(w.losses)) for w in s.lineage_windows(s.run().branch)]
    low, low_step = math.inf, 0
    for i, (step, level) in enumerate(levels):
        if level >= 1.3 * low:
            calm = [st for st, lv in levels[:i] if lv <= 1.05 * low]
            return {"bottom": low, "bottom_step": low_step, "start": calm[-1] + 1, "high_step": step}
        if level < low:
            low, low_step = level, step
    return None


def supervision(run: Path) -> dict[str, Any]:
    """What the daemon found and did in a supervised run."""
    with Store.open(run) as s:
        findings = [e for e in s.events() if e.source == "supervisor" and e.kind in REBOUND_KINDS]
        ivs = [iv for iv in s.interventions() if iv.status in ("applied", "issued", "rejected")]
        targets = []
        for iv in ivs:
            for cid in iv.commands:
                cmd = s.command(cid)
                if cmd is not None and cmd.kind == "rollback" and isinstance(cmd.args.get("target"), int):
                    ckpt = s.checkpoint(cmd.args["target"])
                    targets.append(ckpt.step if ckpt else None)
        first = findings[0].data.get("finding", {}) if findings else {}
        multiplier = s.run().lr_multiplier
    return {"interventions": len(ivs), "kinds": [iv.finding for iv in ivs], "targets": targets,
            "found": (first.get("kind"), first.get("onset"), first.get("step")) if first else None,
            "multiplier": multiplier}


def same_until_rollback(plain: Path, supervised: Path) -> bool:
    """Whether the supervised run's first branch repeats the unsupervised run's losses exactly."""
    with Store.open(supervised) as s:
        ours = {step: loss for step, branch, loss in s.history() if branch == 0}
    with Store.open(plain) as s:
        theirs = {step: loss for step, _, loss in s.history(s.run().branch)}
    return bool(ours) and all(theirs.get(step) == loss for step, loss in ours.items())


def end_leftover_job(run: Path) -> None:
    """SIGKILL the training `trainwarden run` started in `run`, should it outlive its launcher (the
    launcher ends it when told twice; this is for a launcher that could not be)."""
    try:
        with Store.open(run) as s:
            pid = s.run().pid
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except Exception:  # no store, no pid, no such process: nothing left to end
        return
    if str(SCRIPT) in cmdline:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def start_daemon(children: Children, root: Path, log: Path) -> None:
    """`trainwarden supervise --root ROOT` (auto mode for rebounds, the default), once it watches."""
    daemon = children.start([*TRAINWARDEN, "supervise", "--root", str(root)], log)
    deadline = time.monotonic() + 60
    while "watching" not in log.read_text():
        if daemon.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the daemon did not start: {log.read_text()}")
        time.sleep(0.1)


def one_seed(children: Children, tmp: Path, root: Path, seed: int, steps: int) -> dict[str, Any]:
    """The three runs of a seed, one after the other, and what they came to."""
    healthy, alone, supervised = tmp / f"healthy-{seed}", tmp / f"alone-{seed}", root / f"seed-{seed}"
    children.run([*job(HEALTHY_LR, seed, steps), "--run-dir", str(healthy)], tmp / f"healthy-{seed}.log", JOB_TIMEOUT_S)
    children.run([*job(HAZARD_LR, seed, steps), "--run-dir", str(alone)], tmp / f"alone-{seed}.log", JOB_TIMEOUT_S)
    launch = [*TRAINWARDEN, "run", "--root", str(root), "--name", supervised.name, "--"]
    children.run([*launch, *job(HAZARD_LR, seed, steps)], tmp / f"supervised-{seed}.log", JOB_TIMEOUT_S)
    time.sleep(3)  # the daemon's last reads (an acknowledgement, a cure) are written within a tick or two
    return {"seed": seed, "healthy": final_val(healthy), "alone": final_val(alone), "tw": final_val(supervised),
            "climb": climb(alone), "same": same_until_rollback(alone, supervised), **supervision(supervised)}


def row(r: dict[str, Any]) -> list[object]:
    """A seed's line of the table."""
    c, f = r["climb"], r["found"]
    shape = f"bottom {c['bottom']:.2f} at {c['bottom_step']}, +5% from {c['start']}, 1.3x at {c['high_step']}" if c else "none"
    found = "none"
    if f:
        found = f"{f[0]} onset {f[1]}, seen at {f[2]}" + (f" ({f[2] - c['start']:+d} steps from the climb's start)" if c else "")
    return [r["seed"], f"{r['healthy']:.3f}", f"{r['alone']:.3f} ({r['alone'] / r['healthy']:.2f}x)",
            f"{r['tw']:.3f} ({r['tw'] / r['healthy']:.2f}x)",
            f"{r['interventions']} ({'/'.join(r['kinds']) or '-'}; to steps {r['targets'] or '-'}; LR x{r['multiplier']:g})",
            shape, found]


def stop_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (a timeout's, a scheduler's) leaves through the `finally`s: every child is ended."""
    raise SystemExit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"seed {QUICK_SEED} only, {QUICK_STEPS} steps, still in the warm-up (a smoke test)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--steps", type=int, default=3000, help="steps per run (default 3000; the warm-up is 2,500)")
    parser.add_argument("--dir", type=Path, default=None, help="parent of the temporary folder (default: the system's)")
    parser.add_argument("--keep", action="store_true", help="keep the run folders and logs, and say where")
    args = parser.parse_args()
    if args.seeds < 1 or args.steps < 1:
        parser.error("--seeds and --steps must be at least 1")
    seeds = [QUICK_SEED] if args.quick else list(range(args.seeds))
    steps = QUICK_STEPS if args.quick else args.steps
    print(machine())
    print(f"job: {SCRIPT.relative_to(REPO)} {' '.join(job(HAZARD_LR, seeds[0], steps)[2:])} (healthy: --peak-lr "
          f"{HEALTHY_LR:g}); seeds {', '.join(map(str, seeds))}; the daemon with the default policy\n")
    tmp = Path(tempfile.mkdtemp(prefix="tw-recovery-lm-", dir=args.dir))
    t0 = time.perf_counter()
    try:
        with Children() as children:
            root = tmp / "supervised"
            root.mkdir()
            start_daemon(children, root, tmp / "daemon.log")
            results = []
            for seed in seeds:
                results.append(one_seed(children, tmp, root, seed, steps))
                print(f"seed {seed} done ({time.perf_counter() - t0:.0f}s)", flush=True)
        print()
        print(table(["seed", "healthy val", "unsupervised val", "trainwarden val", "interventions",
                     "climb (unsupervised, window medians)", "first finding"], [row(r) for r in results]))
        if not all(r["same"] for r in results):
            print("note: a supervised run did not repeat the unsupervised run's losses before its first rollback")
        alone = statistics.median(r["alone"] / r["healthy"] for r in results)
        tw = statistics.median(r["tw"] / r["healthy"] for r in results)
        print(f"\nmedians: healthy {statistics.median(r['healthy'] for r in results):.3f}; unsupervised {alone:.2f}x "
              f"healthy; trainwarden {tw:.2f}x healthy; "
              f"interventions {statistics.median(r['interventions'] for r in results):g}")
        print(f"{time.perf_counter() - t0:.0f}s")
        print(f"trainwarden final val loss vs healthy (target <= 1.1x): {verdict(tw <= 1.1)}")
        print(f"unsupervised final val loss vs healthy (target >= 1.3x): {verdict(alone >= 1.3)}")
    finally:
        for run in tmp.glob("supervised/seed-*"):
            end_leftover_job(run)
        if args.keep:
            print(f"kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
