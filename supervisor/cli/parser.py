"""The command line's arguments: every verb, its options and help, and the function that runs it."""
from __future__ import annotations

import argparse
import re
from typing import NoReturn

from .. import export, launcher
from . import launch, read, steer
from .common import ENV_ROOT, EXIT_BAD_INPUT


# ------------------------------------------------------------- argument types
def count(text: str) -> int:
    """argparse type: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def ranks(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _seconds(text: str, zero_ok: bool) -> float:
    """A finite number of seconds, > 0 (or >= 0 with `zero_ok`), for argparse."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not ((0 <= value if zero_ok else 0 < value) and value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a number of seconds {'>=' if zero_ok else '>'} 0, got {text!r}")
    return value


def positive_seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    return _seconds(text, zero_ok=False)


def seconds(text: str) -> float:
    """argparse type: a finite number of seconds >= 0."""
    return _seconds(text, zero_ok=True)


class _Parser(argparse.ArgumentParser):
    """Usage mistakes as one line, like every other error of the command line."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"trainwarden: error: {message} (see `{self.prog} --help`)\n")


# ---------------------------------------------------------------- the parser
def build_parser() -> argparse.ArgumentParser:
    """The `trainwarden` parser; each verb sets `func`, which takes the parsed arguments and returns
    the exit code."""
    parser = _Parser(
        prog="trainwarden",
        description="Watch and steer PyTorch training runs through their trainwarden stores.",
        epilog="Exit codes: 0 ok, 1 rejected by the run, 2 bad input, 3 not acknowledged. "
               f"RUN is a run folder, or a name under ${ENV_ROOT} (default ./runs).",
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")
    _read_verbs(sub)
    _steering_verbs(sub)
    _replay_verb(sub)  # the order here is the order of `trainwarden --help`
    _launch_verbs(sub)
    _export_verb(sub)
    return parser


def _read_verbs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ls", help="list runs under a root folder")
    p.add_argument("root", nargs="?", help=f"folder to search (default ${ENV_ROOT} or ./runs)")
    p.set_defaults(func=read.cmd_ls)

    p = sub.add_parser("show", help="status, step, LR, loss, windows, checkpoints, branches, commands")
    p.add_argument("run")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--windows", type=count, default=5, help="how many recent windows to show")
    p.set_defaults(func=read.cmd_show)

    p = sub.add_parser("checkpoints", help="list a run's checkpoints")
    p.add_argument("run")
    p.add_argument("--all", action="store_true", help="include deleted ones")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=read.cmd_checkpoints)

    p = sub.add_parser("history", help="the loss history: branches, or every step with --csv")
    p.add_argument("run")
    p.add_argument("--csv", action="store_true", help="print step,branch,train_loss for every recorded step")
    p.set_defaults(func=read.cmd_history)

    p = sub.add_parser("events", help="what the agent, the supervisor and operators reported")
    p.add_argument("run")
    p.add_argument("--limit", type=count, default=50, help="how many of the newest events")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=read.cmd_events)


def _waiting(p: argparse.ArgumentParser) -> None:
    """The arguments of a verb that writes commands and waits for their acknowledgement."""
    p.add_argument("run")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the acknowledgement")
    p.add_argument("--no-wait", action="store_true", help="queue the command and return at once")


def _steering_verbs(sub: argparse._SubParsersAction) -> None:
    for verb, text in (("pause", "hold the run at its next step boundary"), ("resume", "continue a paused run"),
                       ("save", "checkpoint now (acknowledged once the file is ready)"),
                       ("stop", "ask the run to stop at its next step boundary")):
        p = sub.add_parser(verb, help=text)
        _waiting(p)
        p.set_defaults(func=steer.cmd_simple)

    p = sub.add_parser("lr", help="set the learning rate (or scale it); without a value, show it")
    _waiting(p)
    p.add_argument("value", nargs="?", help="new learning rate of parameter group 0 (others follow)")
    p.add_argument("--scale", metavar="F", help="multiply the learning rate by F instead")
    # argparse takes "-1e-3" or "-inf" for an option and says "unrecognized arguments"; read
    # them as values, so the LR check can say what is wrong with them.
    p._negative_number_matcher = re.compile(r"^-(\d|\.\d|inf|nan)", re.IGNORECASE)
    p.set_defaults(func=steer.cmd_lr)

    p = sub.add_parser("rollback", help="reload a checkpoint and its loss history in the live run")
    _waiting(p)
    p.add_argument("checkpoint", nargs="?", help="checkpoint id (see `trainwarden checkpoints`)")
    p.add_argument("--best", action="store_true", help="the ready checkpoint with the lowest loss (default)")
    p.add_argument("--last", action="store_true", help="the newest ready checkpoint of the current history")
    p.set_defaults(func=steer.cmd_rollback)

    for verb, text, func in (("approve", "approve a proposed intervention (writes its commands)", steer.cmd_approve),
                             ("deny", "deny a proposed intervention", steer.cmd_deny)):
        p = sub.add_parser(verb, help=text)
        _waiting(p)
        p.add_argument("id", type=int, help="intervention id (from `trainwarden events RUN`)")
        p.set_defaults(func=func)



def _replay_verb(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="run the detectors over a recorded curve (CSV or run folder): JSON lines")
    p.add_argument("path", help="CSV with step,train_loss[,val_loss], or a run folder")
    p.add_argument("--policy", help="policy TOML whose detector settings and modes to use")
    p.set_defaults(func=read.cmd_replay)


def _launch_verbs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("supervise", help="the daemon: watch runs under the roots and act on findings")
    p.add_argument("--root", action="append", help=f"folder holding runs (repeatable; default ${ENV_ROOT} or ./runs)")
    p.add_argument("--policy", help="policy TOML (reloaded on SIGHUP)")
    p.add_argument("--poll", action="store_true", help="poll the roots instead of inotify (automatic on NFS/CIFS)")
    p.set_defaults(func=launch.cmd_supervise)

    p = sub.add_parser("install-systemd", help="install the daemon as a systemd service (user unit, or a system template)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--user", action="store_true", help="a user unit in ~/.config/systemd/user (the default)")
    which.add_argument("--system", action="store_true", help="the system template unit trainwarden@.service (User=%%i)")
    p.add_argument("--root", action="append", help="folder holding runs (repeatable; default ~/runs, or /home/USER/runs)")
    p.add_argument("--policy", help="policy TOML for the daemon")
    p.add_argument("--print", action="store_true", help="print the unit instead of writing it")
    p.add_argument("--unit-dir", help="write the unit here instead of the standard folder")
    p.set_defaults(func=launch.cmd_install_systemd)

    p = sub.add_parser("demo", help="the whole loop in about a minute: a rebound caught, rolled back, cured")
    p.add_argument("--root", help="folder for the demo's runs (default: a new temporary folder)")
    p.add_argument("--out", help="PNG of the loss histories (default ROOT/demo.png; needs matplotlib)")
    p.add_argument("--tui", action="store_true", help="watch it happen in the TUI (the trainings run slower)")
    p.add_argument("--steps", type=count, default=5000, help="training steps (default 5000)")
    p.add_argument("--seed", type=count, default=0, help="seed of the data and the weights")
    p.set_defaults(func=launch.cmd_demo)

    p = sub.add_parser("tui", help="the operator's screen: every run live, keys to steer them")
    p.add_argument("--root", action="append", help=f"folder holding runs (repeatable; default ${ENV_ROOT} or ./runs)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a command's acknowledgement")
    p.set_defaults(func=launch.cmd_tui)

    doc = (launcher.__doc__ or "").split("\n\n", 2)  # the launcher's docstring is the verb's description
    p = sub.add_parser(
        "run", help="launch a training job: restart it after a crash or hang, resuming from its checkpoint",
        description=doc[0] + "\n\n" + doc[2], formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s [options] -- COMMAND [ARG ...]",
    )
    p.add_argument("--name", help="run folder name under the root (default: script name and start time); "
                                  "an existing run is resumed")
    p.add_argument("--root", help="folder holding runs (default $TRAINWARDEN_ROOT or ./runs)")
    p.add_argument("--max-restarts", type=count, default=3, metavar="K",
                   help="restarts after crashes or hangs before giving up (default 3)")
    p.add_argument("--policy", metavar="FILE", help="policy TOML whose detect.hung_after_s / stuck_after_s "
                                                    "say when the job is hung (the run's warden.toml applies on top)")
    p.add_argument("--backoff", type=positive_seconds, default=1.0, metavar="S",
                   help="delay before the first restart; doubles at each restart in a row, up to 60 (default 1)")
    p.add_argument("--kill-grace", type=seconds, default=30.0, metavar="S",
                   help="seconds between SIGTERM (or SIGUSR1) and SIGKILL when stopping the job (default 30)")
    p.add_argument("--nproc-per-node", type=ranks, metavar="N",
                   help="run the job in N ranks under torchrun (--standalone); a failed rank restarts them all")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the training command, after --")
    p.set_defaults(func=launch.cmd_run)


def _export_verb(sub: argparse._SubParsersAction) -> None:
    paragraphs = (export.__doc__ or "").split("\n\n")  # the export module's docstring is the verb's description
    p = sub.add_parser("export", help="write a checkpoint's model (sharded or not) as one file for inference",
                       description=paragraphs[0] + "\n\n" + paragraphs[1],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder, or a name under the root")
    p.add_argument("checkpoint", help="checkpoint id, 'best' or 'last'")
    p.add_argument("-o", "--output", help="file to write (default: RUN-ckptID-stepSTEP.pt here)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.set_defaults(func=read.cmd_export)
