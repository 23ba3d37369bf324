"""Pure helpers shared by the queries and by readers that never open SQLite: history segments,
the loss blob format, and non-finite numbers stored as NULL."""
from __future__ import annotations

import math
from array import array
from collections.abc import Sequence

from ..records import CheckpointInfo

Segments = Sequence[tuple[int, int, "int | None"]]
"""A branch's history as (branch, after_step, up_to_step) segments, oldest first."""


def in_lineage(ckpt: CheckpointInfo, segments: Segments) -> bool:
    """True when the checkpoint's state is a point of the history described by `segments`."""
    return any(
        ckpt.branch == branch and after <= ckpt.step and (upto is None or ckpt.step <= upto)
        for branch, after, upto in segments
    )


def in_segments(step: int, branch: int, segments: Segments) -> bool:
    """True when (step, branch) is a step of the history described by `segments`."""
    return any(b == branch and after < step and (upto is None or step <= upto) for b, after, upto in segments)


def finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def encode_losses(values: Sequence[float]) -> bytes:
    """Raw losses as a float32 blob (NaN and inf kept as they are)."""
    return array("f", values).tobytes()


def decode_losses(blob: bytes) -> list[float]:
    out = array("f")
    out.frombytes(blob)
    return out.tolist()
