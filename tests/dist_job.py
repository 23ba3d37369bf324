"""A rank of a `trainwarden run --nproc-per-node` test job: plain torch.distributed over gloo, no
agent. Each rank joins the group, takes part in one all_reduce and writes what it saw to
OUT/rank{RANK}-restart{RESTART}.json (RANK, WORLD_SIZE, $TRAINWARDEN_RESTART_COUNT, the sum).

--crash-rank R: on the first attempt, rank R exits with code 3 after writing its file.
--wait-signal: after writing its file, each rank waits for SIGUSR1 or SIGTERM (up to 120 s), then
writes OUT/rank{RANK}.signal with the signal's number and exits with 128+signum, as the agent does.
--stubborn: with --wait-signal, write the file but go on waiting (a rank that does not stop).
Runs as a script or as a module (`python -m dist_job`).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

received: list[int] = []


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--crash-rank", type=int)
    p.add_argument("--wait-signal", action="store_true")
    p.add_argument("--stubborn", action="store_true")
    a = p.parse_args()
    if a.wait_signal:  # before torch's import, which takes seconds: a signal then must not be lost
        for signum in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(signum, lambda signum, frame: received.append(signum))

    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    restart = int(os.environ["TRAINWARDEN_RESTART_COUNT"])
    total = torch.tensor([rank + 1.0])
    dist.all_reduce(total)
    seen = {"rank": rank, "world_size": world, "env_rank": int(os.environ["RANK"]), "restart": restart,
            "sum": total.item(), "run_dir": os.environ["TRAINWARDEN_RUN_DIR"], "pid": os.getpid()}
    tmp = a.out / f".rank{rank}.tmp"
    tmp.write_text(json.dumps(seen))
    tmp.rename(a.out / f"rank{rank}-restart{restart}.json")  # whole, for a test polling the folder
    if restart == 0 and rank == a.crash_rank:
        os._exit(3)
    dist.destroy_process_group()
    if a.wait_signal:
        deadline = time.monotonic() + 120
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
        if received:
            (a.out / f"rank{rank}.signal").write_text(str(received[0]))
            while a.stubborn and time.monotonic() < deadline:
                time.sleep(0.05)
            sys.exit(128 + received[0])
        sys.exit(1)


if __name__ == "__main__":
    main()
