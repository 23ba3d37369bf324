"""Plain-text display of run data, shared by the command line, the TUI and the demo: numbers,
ages, sizes and aligned tables. Pure functions, no I/O."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def age(seconds_ago: float | None) -> str:
    """A duration in the largest unit that keeps it short: 45s, 12m, 3.5h, 2.0d ("-" for None)."""
    if seconds_ago is None:
        return "-"
    s = max(0.0, seconds_ago)
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    if s < 172800:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"


def fmt(value: float | None, spec: str = ".4g") -> str:
    """A number in `spec` format ("-" for None: not finite or not known)."""
    return "-" if value is None else format(value, spec)


def size(nbytes: int | None) -> str:
    """A byte count in B, KB, MB or GB ("-" for None)."""
    if nbytes is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1024 or unit == "GB":
            return f"{nbytes:.0f}{unit}" if unit == "B" else f"{nbytes:.1f}{unit}"
        nbytes /= 1024
    return "-"


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """Rows under a header, columns left-aligned to their widest cell, two spaces apart."""
    cells = [list(map(str, header))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)
