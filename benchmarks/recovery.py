"""Recovery: the same training whose LR schedule jumps far too high, left alone, under PyTorch's
ReduceLROnPlateau, and under trainwarden (the daemon in auto mode, the job under `trainwarden run`),
beside the healthy run without the jump.

    python benchmarks/recovery.py [--quick] [--seeds N] [--steps N]

The job is examples/train_mlp.py with `--lr-jump STEP:30` (the LR is multiplied by 30 from STEP
on: a real rebound). Every variant uses the same seeds. Final training loss is the median of the
last 10 windows (500 steps) of the run's current history; validation loss the last validation
point. Targets: trainwarden's final loss within 1.5x of the healthy run's; the unsupervised run
several (>= 3) times worse.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, machine, table, verdict

from trainwarden.agent.store import Store

SCRIPT = REPO / "examples" / "train_mlp.py"
POLICY = "cooldown_steps = 250\n"


def final_losses(run: Path) -> tuple[float, float, int]:
    """(final training loss, final validation loss, interventions) of a run's current history."""
    with Store.open(run) as s:
        branch = s.run().branch
        windows = s.lineage_windows(branch)[-10:]
        vals = s.lineage_metrics(branch, "val_loss")
        ivs = [iv for iv in s.interventions() if iv.status in ("applied", "issued", "rejected")]
    train = statistics.median(statistics.median(w.losses) for w in windows)
    return train, vals[-1].value if vals else float("nan"), len(ivs)


def job(args: argparse.Namespace, seed: int, jump: bool, extra: list[str] = ()) -> list[str]:
    cmd = [sys.executable, str(SCRIPT), "--steps", str(args.steps), "--hidden", "128", "--seed", str(seed),
           "--val-every", "250", *extra]
    if jump:
        cmd += ["--lr-jump", f"{args.steps * 3 // 10}:30"]
    return cmd


def run_plain(cmd: list[str], run: Path) -> None:
    subprocess.run([*cmd, "--run-dir", str(run)], check=True, capture_output=True, timeout=900)


def run_supervised(cmd: list[str], root: Path, name: str) -> None:
    env = {**os.environ, "TRAINWARDEN_ROOT": str(root)}
    subprocess.run(["trainwarden", "run", "--root", str(root), "--name", name, "--", *cmd],
                   check=True, capture_output=True, timeout=900, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short seed (a smoke test)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5000)
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.steps = 1, 2000
    print(machine())
    print(f"job: {SCRIPT.relative_to(REPO)} --steps {args.steps} --hidden 128, LR x30 from step {args.steps * 3 // 10}; "
          f"seeds 0..{args.seeds - 1}\n")
    tmp = Path(tempfile.mkdtemp(prefix="tw-recovery-"))
    daemon = None
    try:
        root = tmp / "supervised"
        root.mkdir()
        (tmp / "policy.toml").write_text(POLICY)
        daemon = subprocess.Popen(["trainwarden", "supervise", "--root", str(root), "--policy", str(tmp / "policy.toml")],
                                  stdout=subprocess.DEVNULL, stderr=open(tmp / "daemon.log", "w"))
        results: dict[str, list[tuple[float, float, int]]] = {k: [] for k in
                                                              ("healthy (no jump)", "no supervision", "ReduceLROnPlateau", "trainwarden")}
        t0 = time.perf_counter()
        for seed in range(args.seeds):
            run_plain(job(args, seed, False), tmp / f"healthy-{seed}")
            results["healthy (no jump)"].append(final_losses(tmp / f"healthy-{seed}"))
            run_plain(job(args, seed, True), tmp / f"alone-{seed}")
            results["no supervision"].append(final_losses(tmp / f"alone-{seed}"))
            run_plain(job(args, seed, True, ["--reduce-on-plateau"]), tmp / f"plateau-{seed}")
            results["ReduceLROnPlateau"].append(final_losses(tmp / f"plateau-{seed}"))
            run_supervised(job(args, seed, True), root, f"seed-{seed}")
            results["trainwarden"].append(final_losses(root / f"seed-{seed}"))
        healthy = statistics.median(r[0] for r in results["healthy (no jump)"])
        rows = []
        for who, rs in results.items():
            train = statistics.median(r[0] for r in rs)
            rows.append([who, f"{train:.4g}", f"{statistics.median(r[1] for r in rs):.4g}", f"{train / healthy:.2f}x",
                         "/".join(str(r[2]) for r in rs)])
        print(table(["variant", "final train loss (median)", "final val loss (median)", "vs healthy", "interventions per seed"], rows))
        print(f"\n{time.perf_counter() - t0:.0f}s")
        tw = statistics.median(r[0] for r in results["trainwarden"]) / healthy
        alone = statistics.median(r[0] for r in results["no supervision"]) / healthy
        print(f"trainwarden final loss vs healthy (target <= 1.5x): {verdict(tw <= 1.5)}")
        print(f"unsupervised final loss vs healthy (target >= 3x worse): {verdict(alone >= 3)}")
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
