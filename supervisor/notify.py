"""systemd's notify protocol, spoken directly: one datagram per message to `$NOTIFY_SOCKET`.

`Type=notify` units learn that the daemon is ready (`READY=1`), alive (`WATCHDOG=1` within
`WatchdogSec=`), what it is doing (`STATUS=`), reloading (`RELOADING=1`) or stopping
(`STOPPING=1`). The socket is a file path, or an abstract name written `@name`. Without
`$NOTIFY_SOCKET` (not started by systemd) every call is a no-op. A failed send is logged once and
never raised: the daemon must not die because its supervisor's socket went away.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("trainwarden.supervisor")


class Notifier:
    """Sends notify messages to systemd (or to whatever listens on `$NOTIFY_SOCKET`)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET", "")
        # "@name" is an abstract socket: its address starts with a NUL byte.
        self.address: str | bytes | None = ("\0" + raw[1:]).encode() if raw.startswith("@") else (raw or None)
        self.watchdog_s: float | None = None
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6
        self._sock: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send WATCHDOG=1: half of WatchdogSec=, as sd_watchdog_enabled(3) advises."""
        return None if self.watchdog_s is None else self.watchdog_s / 2

    def send(self, *fields: str) -> bool:
        """One datagram of `KEY=value` lines; False when it could not be sent (or nobody listens)."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode(), self.address)
            self._failed = False
            return True
        except OSError as exc:
            if not self._failed:  # once per outage, not once a second
                log.warning("cannot notify systemd on %s: %s", os.environ.get("NOTIFY_SOCKET"), exc)
            self._failed = True
            return False

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd (Type=notify-reload) tell this reload from an older one.
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}",
                         "STATUS=reloading the policy")

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=stopping")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
