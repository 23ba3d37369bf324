"""The process-wide hooks a run installs at attach and removes at close: SIGTERM/SIGUSR1
handlers (main thread only), a chained `sys.excepthook` and an `atexit` hook."""
from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

SIGNALS = ("SIGTERM", "SIGUSR1")


class ProcessHooks:
    """A signal only raises a flag (acted on at the next step boundary); an uncaught exception is
    remembered, so the exit hook marks the run crashed instead of finished."""

    def __init__(self, handle_signals: bool, on_signal: Callable[[int], bool],
                 at_exit: Callable[[str | None], None]) -> None:
        """`on_signal(signum)` returns False when a signal was already waiting; `at_exit` gets
        the uncaught exception as one line, or None."""
        self.crash_reason: str | None = None
        """`Kind: message` of an exception that reached sys.excepthook."""
        self._handle_signals = handle_signals
        self._on_signal = on_signal
        self._at_exit = at_exit
        self._previous: dict[int, Any] = {}
        self._previous_excepthook = sys.excepthook

    def install(self) -> None:
        if self._handle_signals and threading.current_thread() is threading.main_thread():
            for name in SIGNALS:
                signum = getattr(signal, name, None)
                if signum is not None:
                    self._previous[signum] = signal.signal(signum, self._handler)
        self._previous_excepthook = sys.excepthook
        sys.excepthook = self._excepthook
        atexit.register(self._exit_hook)

    def remove(self) -> None:
        for signum, handler in self._previous.items():
            try:
                signal.signal(signum, handler)
            except (ValueError, TypeError):
                pass
        if sys.excepthook == self._excepthook:
            sys.excepthook = self._previous_excepthook
        atexit.unregister(self._exit_hook)

    def _handler(self, signum: int, frame: Any) -> None:
        if not self._on_signal(signum):  # a second signal: the loop is not reaching a step boundary
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def _excepthook(self, kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        self.crash_reason = f"{kind.__name__}: {exc}"
        self._previous_excepthook(kind, exc, tb)

    def _exit_hook(self) -> None:
        self._at_exit(self.crash_reason)
