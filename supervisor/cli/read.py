"""The verbs that read runs: ls, show, checkpoints, history, events, replay, export. They open
stores (or a curve), print, and exit 0; nothing is written to a run."""
from __future__ import annotations

import argparse
import csv
import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from trainwarden.agent.records import CheckpointInfo
from trainwarden.agent.store import Store, StoreError

from .. import export
from ..discovery import find_runs
from ..display import age, fmt, size, table
from ..operator import liveness
from .common import EXIT_OK, CliError, default_root, open_store, resolve_run

_CKPT_HEADER = ["ID", "STEP", "BRANCH", "LOSS", "KIND", "STATUS", "SIZE", "AGE", "NOTE"]


def _newest_ready(ckpts: list[CheckpointInfo]) -> CheckpointInfo | None:
    ready = [c for c in ckpts if c.status == "ready"]
    return max(ready, key=lambda c: c.ready_at or 0.0) if ready else None


def _checkpoint_rows(ckpts: list[CheckpointInfo], now: float) -> list[list[Any]]:
    return [[c.id, c.step, c.branch, fmt(c.loss), c.kind, c.status, size(c.bytes),
             age(now - c.created_at), c.error or ""] for c in ckpts]


def cmd_ls(args: argparse.Namespace) -> int:
    root = Path(args.root) if args.root else default_root()
    if not root.is_dir():
        raise CliError(f"{root}: no such folder")
    rows = []
    now = time.time()
    for path in find_runs(root):
        try:
            with Store.open(path) as s:
                info = s.run()
                latest = _newest_ready(s.checkpoints(["ready"]))
        except (StoreError, sqlite3.Error) as exc:  # one unreadable run must not hide the others
            rows.append([path.name, "unreadable", "-", "-", "-", "-", "-", str(path)])
            print(f"trainwarden: warning: {path}: {exc}", file=sys.stderr)
            continue
        rows.append([
            info.name, liveness(info, now), info.step, fmt(info.last_loss), fmt(info.lr, ".3g"),
            age(now - latest.ready_at) if latest and latest.ready_at else "-",
            age(now - info.heartbeat_at) if info.heartbeat_at else "-", str(path),
        ])
    if not rows:
        print(f"no runs under {root}")
        return EXIT_OK
    print(table(rows, ["NAME", "STATUS", "STEP", "LOSS", "LR", "CKPT AGE", "HEARTBEAT", "PATH"]))
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    with open_store(args.run) as s:
        info = s.run()
        windows = s.windows(newest=True, limit=args.windows)
        ckpts = s.checkpoints()
        branches = s.branches()
        pending = s.commands(status="pending")
        recent = s.commands()[-5:]
    if args.json:
        print(json.dumps({
            "run": info.model_dump() | {"liveness": liveness(info)},
            "windows": [w.model_dump(exclude={"losses"}) for w in windows],
            "checkpoints": [c.model_dump() for c in ckpts],
            "branches": [b.model_dump() for b in branches],
            "pending_commands": [c.model_dump() for c in pending],
        }, indent=2))
        return EXIT_OK
    now = time.time()
    print(f"run      {info.name}  ({resolve_run(args.run)})")
    print(f"status   {liveness(info, now)}   pid {info.pid} on {info.host}   heartbeat {age(now - info.heartbeat_at) if info.heartbeat_at else '-'} ago")
    print(f"step     {info.step}   branch {info.branch}   loss {fmt(info.last_loss)}")
    print(f"lr       {fmt(info.lr, '.4g')}   multiplier {info.lr_multiplier:.4g}")
    print("\nlast windows")
    print(table([[w.branch, f"{w.first_step}-{w.last_step}", fmt(w.mean), fmt(w.min), fmt(w.max), w.nonfinite,
                  fmt(w.lr, '.3g'), fmt(w.steps_per_s, '.1f')] for w in windows],
                ["BRANCH", "STEPS", "MEAN", "MIN", "MAX", "NON-FINITE", "LR", "STEPS/S"]))
    print("\ncheckpoints")
    shown = [c for c in ckpts if c.status != "deleted"]
    print(table(_checkpoint_rows(shown, now), _CKPT_HEADER) if shown else "(none)")
    print("\nbranches")
    print(table([[b.id, "-" if b.parent is None else b.parent, b.fork_step, b.reason] for b in branches],
                ["ID", "PARENT", "FORK STEP", "REASON"]))
    print("\ncommands (pending first, then the latest)")
    cmds = pending + [c for c in recent if c.status != "pending"]
    print(table([[c.id, c.kind, json.dumps(c.args) if c.args else "", c.status, c.result or "", c.issuer] for c in cmds],
                ["ID", "KIND", "ARGS", "STATUS", "RESULT", "ISSUER"]) if cmds else "(none)")
    return EXIT_OK


def cmd_checkpoints(args: argparse.Namespace) -> int:
    with open_store(args.run) as s:
        ckpts = s.checkpoints()
    if not args.all:
        ckpts = [c for c in ckpts if c.status != "deleted"]
    if args.json:
        print(json.dumps([c.model_dump() for c in ckpts], indent=2))
    else:
        print(table(_checkpoint_rows(ckpts, time.time()), _CKPT_HEADER) if ckpts else "no checkpoints")
    return EXIT_OK


def cmd_history(args: argparse.Namespace) -> int:
    with open_store(args.run) as s:
        if args.csv:
            out = csv.writer(sys.stdout, lineterminator="\n")
            out.writerow(["step", "branch", "train_loss"])
            for step, branch, loss in s.history():
                out.writerow([step, branch, repr(loss)])
            return EXIT_OK
        branches = s.branches()
        spans = {b.id: (b.fork_step, s.max_step(b.id)) for b in branches}
        current = s.run().branch
    print(table([[b.id, "-" if b.parent is None else b.parent, f"{spans[b.id][0] + 1}-{spans[b.id][1]}",
                  "current" if b.id == current else "", b.reason] for b in branches],
                ["BRANCH", "PARENT", "STEPS", "", "REASON"]))
    print("\n(use --csv for every recorded step: step,branch,train_loss)")
    return EXIT_OK


def cmd_events(args: argparse.Namespace) -> int:
    with open_store(args.run) as s:
        events = s.events(limit=args.limit)
    if args.json:
        for e in events:
            print(json.dumps(e.model_dump()))
        return EXIT_OK
    for e in events:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.time))
        print(f"{stamp}  {e.severity:7s} {e.kind:18s} step {e.step if e.step is not None else '-':>7}  {e.message}")
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    from ..policy import load_policy
    from ..replay import replay

    policy = load_policy(args.policy)
    findings = replay(Path(args.path), policy.detect)
    for f in findings:
        print(json.dumps({"step": f.step, "onset": f.onset, "kind": f.kind, "severity": f.severity,
                          "message": f.message, "action": policy.mode(f.kind)}))
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    run_dir = resolve_run(args.run)
    with open_store(args.run) as store:
        info = export.choose(store, args.checkpoint)
    out = Path(args.output) if args.output else export.default_output(run_dir, info)
    if out.exists() and not args.force:
        raise CliError(f"{out} exists: choose another --output or pass --force")
    tensors, nbytes = export.export_model(run_dir, info, out)
    kind = "sharded" if info.path.endswith(".dcp") else "single-file"
    print(f"wrote {out}: {tensors} tensors, {size(nbytes)}: the model of {kind} checkpoint {info.id} "
          f"(step {info.step}, branch {info.branch}); load with model.load_state_dict(torch.load(PATH, weights_only=True))")
    return EXIT_OK
