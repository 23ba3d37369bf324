"""A training job for `trainwarden run` tests: the tiny model of tiny_train, attached with no folder
(so through $TRAINWARDEN_RUN_DIR), misbehaving at a chosen step of its first attempt only
($TRAINWARDEN_RESTART_COUNT is 0 there).

Prints one JSON object per line on stdout: {"event": "resumed", "step": S, "restart": R} after
resume(), {"event": "done", "step": S} at the end.
"""
from __future__ import annotations

import argparse
import os
import signal
import time

import trainwarden.agent as tw
from tiny_train import build, emit, train_step


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--crash-at", type=int, help="first attempt: exit with code 1 (no cleanup) after this step")
    p.add_argument("--freeze-at", type=int, help="first attempt: SIGSTOP itself after this step (a hang)")
    p.add_argument("--sleep", type=float, default=0.0, help="seconds to sleep per step")
    a = p.parse_args()
    first = os.environ.get("TRAINWARDEN_RESTART_COUNT") == "0"
    model, optimizer, sched, batch = build()
    config = tw.AgentConfig(window=5, save_every_steps=20, command_poll_interval_s=0.2, heartbeat_interval_s=0.2)
    run = tw.attach(model=model, optimizer=optimizer, scheduler=sched, config=config)
    emit(event="resumed", step=run.resume(), restart=int(os.environ["TRAINWARDEN_RESTART_COUNT"]))
    while run.step < a.steps:
        run.record(train_step(model, optimizer, sched, batch))
        if first and run.step == a.crash_at:
            run.flush()  # the newest checkpoint is on disk: the crash loses only the steps after it
            os._exit(1)
        if first and run.step == a.freeze_at:
            os.kill(os.getpid(), signal.SIGSTOP)
        if a.sleep:
            time.sleep(a.sleep)
        if run.should_stop:
            break
    run.close()
    emit(event="done", step=run.step)


if __name__ == "__main__":
    main()
