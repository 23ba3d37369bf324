"""The daemon as a systemd service: the unit files, and `trainwarden install-systemd`.

Two units, one text each, made by `unit_text()` (the files in systemd/ are its output with
`/usr/bin/env trainwarden`, so they never drift from what the command installs):
  trainwarden.service    a user unit (`systemctl --user`), roots under the user's home;
  trainwarden@.service   a system template unit, one instance per user (`User=%i`).
Both are `Type=notify` with a watchdog (the daemon sends READY/WATCHDOG/STATUS itself, see
notify.py), restart on failure, and a sandbox: the file system read-only but for the roots, no
new privileges, private /tmp, kernel and cgroup settings protected, Unix sockets for systemd and
IP only for webhook alerts.
"""
from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from .errors import UserError

USER_UNIT, SYSTEM_UNIT = "trainwarden.service", "trainwarden@.service"
GENERIC_EXE = "/usr/bin/env trainwarden"  # in the files shipped in systemd/

HARDENING = """\
# Sandbox: everything read-only except the roots (the daemon writes only into run stores).
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=read-only
ReadWritePaths={rw}
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
# AF_UNIX for systemd's notify socket; AF_INET/AF_INET6 only for webhook alerts.
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
UMask=0077
"""


def unit_text(kind: str, exe: str, roots: list[str], policy: str | None = None) -> str:
    """The unit file for `kind` ("user" or "system") running `exe supervise` over `roots`."""
    args = " ".join(f"--root {shlex.quote(r)}" for r in roots)
    if policy:
        args += f" --policy {shlex.quote(policy)}"
    # "-" before a path: a root that does not exist yet does not stop the service from starting.
    rw = " ".join(f'"-{r}"' if " " in r else f"-{r}" for r in roots)  # systemd splits this list on spaces
    if kind == "user":
        head = """\
[Unit]
Description=trainwarden supervisor: watches your training runs and recovers them

[Service]
"""
        extra, install = "", "[Install]\nWantedBy=default.target\n"
    elif kind == "system":
        head = """\
[Unit]
Description=trainwarden supervisor for user %i: watches their training runs and recovers them
After=network-online.target
Wants=network-online.target

[Service]
User=%i
"""
        extra = "PrivateDevices=yes\nProtectProc=invisible\n"
        install = "[Install]\nWantedBy=multi-user.target\n"
    else:
        raise ValueError(f"unit kind must be 'user' or 'system', got {kind!r}")
    service = f"""\
Type=notify
NotifyAccess=main
ExecStart={exe} supervise {args}
# SIGHUP reloads the policy (a bad file is logged and the previous policy kept).
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=5
# The daemon pings every WatchdogSec/2 while its ticks finish; a stuck daemon is restarted.
WatchdogSec=30
TimeoutStopSec=30
Environment=PYTHONUNBUFFERED=1
"""
    return head + service + HARDENING.format(rw=rw) + extra + "\n" + install


def default_roots(kind: str) -> list[str]:
    return ["%h/runs"] if kind == "user" else ["/home/%i/runs"]


def current_exe() -> str:
    """This environment's `trainwarden` (the console script beside the running Python)."""
    here = Path(sys.executable).parent / "trainwarden"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here.absolute())
    found = shutil.which("trainwarden")
    return str(Path(found).absolute()) if found else GENERIC_EXE


class ServiceError(UserError):
    """The unit cannot be installed; the message says why in one line."""


def install(kind: str, roots: list[str] | None, policy: str | None, print_only: bool, exe: str | None = None,
            target_dir: Path | None = None) -> tuple[str, Path | None, list[str]]:
    """Render the unit; unless `print_only`, write it. Returns (text, path written, next commands)."""
    paths = [str(Path(r).expanduser().absolute()) for r in roots] if roots else []
    if policy:
        policy = str(Path(policy).expanduser().absolute())
        if not Path(policy).is_file():
            raise ServiceError(f"{policy}: no such policy file")
    # "%" starts a specifier in unit files (%h, %i): a literal one in a path is written "%%".
    literal = [p.replace("%", "%%") for p in paths]
    text = unit_text(kind, (exe or current_exe()).replace("%", "%%"), literal or default_roots(kind),
                     policy.replace("%", "%%") if policy else None)
    if kind == "user":
        folder = target_dir or Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "systemd" / "user"
        path = folder / USER_UNIT
        user = os.environ.get("USER") or Path.home().name
        steps = ["systemctl --user daemon-reload", "systemctl --user enable --now trainwarden",
                 f"loginctl enable-linger {user}   # keep it running when you log out",
                 "journalctl --user -u trainwarden -f   # its log"]
    else:
        folder = target_dir or Path("/etc/systemd/system")
        path = folder / SYSTEM_UNIT
        user = os.environ.get("SUDO_USER") or os.environ.get("USER") or "USER"
        steps = ["systemctl daemon-reload", f"systemctl enable --now trainwarden@{user}",
                 f"journalctl -u trainwarden@{user} -f   # its log"]
    if print_only:
        return text, None, steps
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        for root in paths:  # make the roots now: the sandbox lets the daemon write only inside them
            Path(root).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        hint = " (run it with sudo, or use --print and write the file yourself)" if kind == "system" else ""
        raise ServiceError(f"cannot write {path}: {exc.strerror or exc}{hint}") from None
    return text, path, steps
