"""What the three benchmarks share: the machine line and a plain-text table.

Figures from a shared, noisy machine mean little without the machine they came from, so every
script prints it first.
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (the platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    """One line naming the machine, the software and the date of a measurement."""
    return (f"{time.strftime('%Y-%m-%d %H:%M %Z')} | nproc {os.cpu_count()} | {cpu_model()} | "
            f"torch {torch.__version__} (threads {torch.get_num_threads()}) | Python {sys.version.split()[0]}")


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> str:
    """min..max of the repeats, so a reader sees how noisy the median is."""
    return f"{min(values):.4g}..{max(values):.4g}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A left-aligned text table, also valid Markdown so it can be pasted into the README."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"
