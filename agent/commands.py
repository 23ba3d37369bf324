"""Validation of commands: the same rules for the CLI (before writing) and the agent (before applying)."""
from __future__ import annotations

import math
from typing import Any

KINDS = ("pause", "resume", "set_lr", "scale_lr", "rollback", "save", "stop")


class CommandError(ValueError):
    """A command or its arguments are invalid; the message says why in one line."""


def positive_finite(value: Any, what: str) -> float:
    """`value` as a float that is finite and > 0, or CommandError naming `what`."""
    if isinstance(value, bool):
        raise CommandError(f"{what} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CommandError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise CommandError(f"{what} must be finite, got {value!r}")
    if number <= 0:
        raise CommandError(f"{what} must be greater than 0, got {value!r}")
    return number


def rollback_target(value: Any) -> int | str:
    """A checkpoint id, or "best" / "last"."""
    if isinstance(value, str) and value.strip().lower() in ("best", "last"):
        return value.strip().lower()
    if isinstance(value, bool):
        raise CommandError(f"rollback target must be a checkpoint id, 'best' or 'last', got {value!r}")
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        raise CommandError(f"rollback target must be a checkpoint id, 'best' or 'last', got {value!r}") from None
    if number < 1:
        raise CommandError(f"checkpoint ids start at 1, got {number}")
    return number


def validate(kind: str, args: dict[str, Any]) -> dict[str, Any]:
    """Normalised arguments for a command, or CommandError."""
    if kind not in KINDS:
        raise CommandError(f"unknown command {kind!r} (known: {', '.join(KINDS)})")
    if "_malformed" in args:
        raise CommandError(f"arguments are not a JSON object: {args['_malformed']!r}")
    if kind == "set_lr":
        return {"value": positive_finite(args.get("value"), "learning rate")}
    if kind == "scale_lr":
        return {"factor": positive_finite(args.get("factor"), "LR scale factor")}
    if kind == "rollback":
        return {"target": rollback_target(args.get("target", "best"))}
    return {}
