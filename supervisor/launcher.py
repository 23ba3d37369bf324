"""`trainwarden run`: launch a training job under supervision, and restart it when it crashes or hangs.

    trainwarden run [--name N] [--root DIR] [--max-restarts K] [--policy FILE] [--nproc-per-node N] -- python train.py ...

The job finds its run folder in $TRAINWARDEN_RUN_DIR (what `attach()` reads when given no folder)
and calls `run.resume()`, so every restart continues from the newest good checkpoint. It also finds
how many times it has been restarted in $TRAINWARDEN_RESTART_COUNT (0 at the first start). Its
standard input is /dev/null: an unattended job that waited for input would look hung.

Run folder. ROOT/NAME (ROOT: --root, else $TRAINWARDEN_ROOT, else ./runs; NAME: --name, else the
script's name and the start time, e.g. train-20261125-101500). Its store and run row are created at
once, so `trainwarden ls` shows the run while the job is still importing torch. An existing run
folder is reused: launching again with the same --name resumes the run (refused while a live
process is writing it).

Restarts. After a crash (a non-zero exit code, or death by a signal the launcher did not send) or
a hang, the job is started again after a delay of --backoff seconds, doubled at each further
restart and capped at 60 s, up to --max-restarts times; then the launcher gives up. A job that had
run for 10 minutes or more before failing is taken to have been healthy: the delay starts again
from --backoff, but the restart count is never reset. A clean exit (code 0) ends it all.

Hangs. While the job runs, its store is read once a second and the same liveness detector as the
daemon's decides whether it is hung (no heartbeat for `detect.hung_after_s`, or a step that does
not move for `detect.stuck_after_s`, from --policy with the run's warden.toml on top). Only a
process that attached during this attempt is judged, so a job still importing torch is never hung.

Stopping. The job runs in a process group of its own, so a terminal's Ctrl-C reaches the launcher
only; it then stops the job the way a scheduler does, and does not restart it. Whether asked by
SIGINT or SIGTERM, the job's main process gets SIGTERM (the agent saves a checkpoint at the next
step boundary and exits) and its group SIGCONT (a stopped process must run to see it); whatever
is left of the group after --kill-grace seconds gets SIGKILL. A second stop signal (SIGINT,
SIGTERM, SIGUSR1) sends SIGKILL at once. A hung job is stopped the same way, then restarted. Once
the main process has ended, what remains of its group (orphaned workers, say) gets SIGTERM, so
that it holds no memory or GPU into the next attempt.

Process groups. With --nproc-per-node N the job runs under PyTorch's own launcher, `python -m
torch.distributed.run --standalone --nproc-per-node N --max-restarts 0` with trainwarden's own
interpreter: `python [-u] SCRIPT ARGS`, `python -m MODULE ARGS`, `SCRIPT.py ARGS`, or any other
program (run with torchrun's --no-python). When one rank fails, torchrun ends the others and exits
non-zero, and the launcher restarts the whole group as above (every rank resumes from the same
checkpoint). torchrun starts each rank in a session of its own, so what the launcher sends to the
group (SIGCONT, SIGKILL) also goes to every process below the job's main process. Its shutdown
timeout (TORCH_ELASTIC_SHUTDOWN_TIMEOUT, unless set) is --kill-grace, rounded up.

Preemption. SIGUSR1 (Slurm's `#SBATCH --signal=B:USR1@120` warning, sent to the batch shell,
which `exec trainwarden run ...` makes the launcher) stops the job as SIGTERM does, but the job
gets SIGUSR1: the main process of a plain job, every rank of a --nproc-per-node job (torchrun is
told to pass SIGUSR1 on, with --signals-to-handle; a torch too old for that option gets SIGTERM,
which torchrun passes on, and the agent treats both alike). torchrun is started with SIGUSR1
ignored, so a stray one cannot kill it before it installs its handlers. Once the job has exited
(or at once, while waiting to restart), if $SLURM_JOB_ID is set, the launcher runs `scontrol
requeue $SLURM_JOB_ID` once, so that Slurm starts the job again later and it resumes from its
checkpoint; then it exits, without restarting the job itself.

Exit status: the last job's exit code, 128+N when signal N ended it (as shells report it: torchrun
itself exits with 1 after passing a stop signal N on to its ranks, which is reported as 128+N); 2
for a usage error; 127 when the program is not found and 126 when it cannot be executed.

Each start, restart, hang, kill, exit, giving up and requeue is an event in the run's store (source
"launcher") and one line on stderr. The daemon is not needed; nothing is opened but the store.
"""
from __future__ import annotations
from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from trainwarden.agent import __version__ as VERSION
from trainwarden.agent.store import DB_NAME, Store

from .errors import UserError
from .launch_job import torchrun_forwards_usr1
from .launch_loop import Launcher, detector_settings
from .launch_rules import LaunchOptions, default_name, group_problem, program_problem, torchrun_argv, torchrun_target
from .operator import liveness


class LaunchError(UserError):
    """The job cannot be launched; the message says why in one line."""

    def __init__(self, message: str, exit_status: int | None = None) -> None:
        super().__init__(message)
        self.exit_status = exit_status
        """The exit status a shell would give for this (127: not found, 126: cannot execute);
        None: a usage error."""


def launch(options: LaunchOptions) -> int:
    """Launch the job under supervision, as the module docstring says; returns the launcher's exit
    status. Raises LaunchError (and PolicyError for
    a bad policy file, StoreError for an unusable store) before anything is started."""
    command = list(options.command)
    argv, forwards_usr1 = command, False
    if options.nproc_per_node is None:
        problem = program_problem(command[0])
    else:
        try:
            target = torchrun_target(command)
        except ValueError as exc:
            raise LaunchError(str(exc)) from None
        problem = group_problem(target)
        forwards_usr1 = torchrun_forwards_usr1()
        argv = torchrun_argv(options.nproc_per_node, command, python=sys.executable, forwards_usr1=forwards_usr1)
    if problem is not None:
        raise LaunchError(problem[1], exit_status=problem[0])
    run_dir = run_folder(options.root, options.name, command)
    settings = detector_settings(options.policy, run_dir)  # a bad file is refused before any folder is made
    with open_run(run_dir) as store:
        return Launcher(options, run_dir, store, settings, argv=argv, forwards_usr1=forwards_usr1).run()


def run_folder(root: Path, name: str | None, command: Sequence[str]) -> Path:
    """ROOT/NAME as an absolute path. A default name never reuses a folder: it gets a suffix."""
    if name is not None:
        if not name or name in (".", "..") or "/" in name or os.sep in name:
            raise LaunchError(f"--name must be a plain folder name, got {name!r} (use --root for where it goes)")
        return (root / name).absolute()
    base = default_name(command, time.time())
    path, n = root / base, 1
    while path.exists():
        n += 1
        path = root / f"{base}-{n}"
    return path.absolute()


def open_run(run_dir: Path) -> Store:
    """Create (or reopen) the run's store and row, so the folder is a run before the job starts.
    The agent's attach() finds the row and takes it over (status, pid, config)."""
    if run_dir.exists() and not (run_dir / DB_NAME).is_file() and any(run_dir.iterdir()):
        raise LaunchError(f"{run_dir} exists and is not a trainwarden run folder; choose another --name or --root")
    store = Store.open(run_dir, create=True)
    try:
        store.init_run(run_dir.name, {}, VERSION)
        info = store.run()
        if liveness(info) in ("running", "paused"):
            where = f" on {info.host}" if info.host else ""
            raise LaunchError(f"{run_dir} is being written by process {info.pid}{where}; stop it before launching again")
    except BaseException:
        store.close()
        raise
    return store
