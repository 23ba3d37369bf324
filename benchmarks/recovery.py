"""Recovery: the same training whose LR schedule jumps far too high, left alone, under PyTorch's
ReduceLROnPlateau, and under trainwarden (the daemon in auto mode, the job under `trainwarden run`),
beside the healthy run without the jump.

    python benchmarks/recovery.py [--quick] [--seeds N] [--steps N] [--jump F] [--jump-at STEP]
    python benchmarks/recovery.py --steps 3000 --jump 80 --jump-at 1200 --repeats 10

The job is examples/train_mlp.py with `--lr-jump STEP:30` (the LR is multiplied by 30 from STEP
on, 30% of the steps unless --jump-at says: a real rebound). Every variant uses the same seeds.
Final training loss is the median of the last 10 windows (500 steps) of the run's current history;
validation loss the last validation point. Targets: trainwarden's final loss within 1.5x of the
healthy run's; the unsupervised run several (>= 3) times worse.

With --repeats N it is the held-out recovery check instead: per seed (one unless --seeds says),
the healthy run once and the same supervised run N times (the daemon's timing differs from one
repeat to the next, the run does not). Per repeat: the final validation loss over the healthy
run's, and the interventions; target: within 1.1x in every repeat. A run the daemon paused for a
person (its intervention budget spent) is stopped and counted as it stands.
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
WITHIN = 1.1  # the held-out check's target: final validation loss within this multiple of healthy


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
        cmd += ["--lr-jump", f"{args.jump_at}:{args.jump:g}"]
    return cmd


def run_plain(cmd: list[str], run: Path) -> None:
    subprocess.run([*cmd, "--run-dir", str(run)], check=True, capture_output=True, timeout=900)


def run_supervised(cmd: list[str], root: Path, name: str) -> None:
    env = {**os.environ, "TRAINWARDEN_ROOT": str(root)}
    subprocess.run(["trainwarden", "run", "--root", str(root), "--name", name, "--", *cmd],
                   check=True, capture_output=True, timeout=900, env=env)


def run_until_done(cmd: list[str], root: Path, name: str) -> bool:
    """`run_supervised`, except that a run paused for a person (the daemon's budget spent) is stopped,
    so that the repeats go on; True when that happened."""
    env = {**os.environ, "TRAINWARDEN_ROOT": str(root)}
    proc = subprocess.Popen(["trainwarden", "run", "--root", str(root), "--name", name, "--", *cmd],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    paused = False
    try:
        deadline = time.monotonic() + 900
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not finish within 900 s")
            if not paused and (root / name / "trainwarden.db").exists():
                with Store.open(root / name) as s:
                    paused = s.run().status == "paused"
                if paused:
                    subprocess.run(["trainwarden", "stop", str(root / name)], check=True, capture_output=True, timeout=60)
            time.sleep(1.0)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(60)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, proc.args)
    return paused


def repeats(args: argparse.Namespace, tmp: Path, root: Path) -> None:
    """The held-out check: per seed, the healthy run once and the same supervised run N times."""
    ratios: list[float] = []
    cuts: list[int] = []
    t0 = time.perf_counter()
    for seed in range(args.seeds):
        run_plain(job(args, seed, False), tmp / f"healthy-{seed}")
        healthy = final_losses(tmp / f"healthy-{seed}")[1]
        print(f"seed {seed}: healthy final validation loss {healthy:.4g}")
        for r in range(args.repeats):
            name = f"seed-{seed}-{r}"
            paused = run_until_done(job(args, seed, True), root, name)
            _, val, n = final_losses(root / name)
            ratios.append(val / healthy)
            cuts.append(n)
            note = ", paused for a person and stopped" if paused else ""
            print(f"  repeat {r}: final validation loss {val:.4g} = {val / healthy:.2f}x healthy, "
                  f"{n} interventions{note}", flush=True)
    k = sum(1 for x in ratios if x <= WITHIN)
    print(f"\n{time.perf_counter() - t0:.0f}s; median {statistics.median(ratios):.2f}x healthy "
          f"(range {min(ratios):.2f}..{max(ratios):.2f}x), median {statistics.median(cuts):g} interventions")
    print(f"within {WITHIN:g}x: {k} of {len(ratios)} ({verdict(k == len(ratios))})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short seed (a smoke test)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds (default 3; 1 with --repeats)")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--jump", type=float, default=30.0, help="LR factor of the jump (default 30)")
    parser.add_argument("--jump-at", type=int, default=None, help="step of the jump (default 30%% of --steps)")
    parser.add_argument("--repeats", type=int, default=0,
                        help="the held-out check: the same supervised run N times per seed beside one healthy run")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.steps = 1, 2000
    if args.seeds is None:
        args.seeds = 1 if args.repeats else 3
    if args.jump_at is None:
        args.jump_at = args.steps * 3 // 10
    print(machine())
    print(f"job: {SCRIPT.relative_to(REPO)} --steps {args.steps} --hidden 128, LR x{args.jump:g} from step {args.jump_at}; "
          f"seeds 0..{args.seeds - 1}" + (f", {args.repeats} supervised repeats each" if args.repeats else "") + "\n")
    tmp = Path(tempfile.mkdtemp(prefix="tw-recovery-"))
    daemon = None
    try:
        root = tmp / "supervised"
        root.mkdir()
        (tmp / "policy.toml").write_text(POLICY)
        daemon = subprocess.Popen(["trainwarden", "supervise", "--root", str(root), "--policy", str(tmp / "policy.toml")],
                                  stdout=subprocess.DEVNULL, stderr=open(tmp / "daemon.log", "w"))
        if args.repeats:
            repeats(args, tmp, root)
            return
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
