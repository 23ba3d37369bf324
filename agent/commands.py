"""Commands to the training process: one pydantic definition for whoever builds them (the CLI,
the TUI, the supervisor) and for the agent that applies them.

A command is stored as a row of the `commands` table: its `kind` and its arguments as a JSON
object. `Command` is the discriminated union of the seven kinds; `parse()` turns a row's kind and
arguments into one (or a `CommandError` saying why not), and `Command.args()` gives the arguments
to store. Validation is the same before writing (the CLI) and before applying (the agent).

    cmd = SetLR(value=1e-4)
    store.add_command(cmd.kind, cmd.args(), issuer)
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator


class CommandError(ValueError):
    """A command or its arguments are invalid; the message says why in one line."""


class Rejected(Exception):
    """A valid command that cannot be applied to this run now (e.g. a checkpoint that does not
    load); the message is the reason given to the issuer."""


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


class BaseCommand(BaseModel):
    """What every command model shares."""

    # Arguments the kind does not take are ignored, as they always were (rows are JSON objects).
    model_config = ConfigDict(frozen=True, extra="ignore", use_attribute_docstrings=True)

    def args(self) -> dict[str, Any]:
        """The arguments as the store's `args` JSON object holds them."""
        return self.model_dump(exclude={"kind"})


class Pause(BaseCommand):
    """Flush the partial window and hold the loop at the step boundary until resume or stop."""

    kind: Literal["pause"] = "pause"
    """Command kind (the union's discriminator)."""


class Resume(BaseCommand):
    """Leave a pause."""

    kind: Literal["resume"] = "resume"
    """Command kind (the union's discriminator)."""


class SetLR(BaseCommand):
    """Set the effective learning rate of parameter group 0 (the multiplier becomes value / schedule)."""

    kind: Literal["set_lr"] = "set_lr"
    """Command kind (the union's discriminator)."""
    value: float = Field(None, validate_default=True)  # type: ignore[assignment]  # missing: the validator says so
    """The new learning rate: positive and finite."""

    @field_validator("value", mode="before")
    @classmethod
    def _value(cls, value: Any) -> float:
        return positive_finite(value, "learning rate")


class ScaleLR(BaseCommand):
    """Multiply the LR multiplier by a factor."""

    kind: Literal["scale_lr"] = "scale_lr"
    """Command kind (the union's discriminator)."""
    factor: float = Field(None, validate_default=True)  # type: ignore[assignment]
    """The factor: positive and finite."""

    @field_validator("factor", mode="before")
    @classmethod
    def _factor(cls, value: Any) -> float:
        return positive_finite(value, "LR scale factor")


class Rollback(BaseCommand):
    """Restore a checkpoint and continue on a new branch from its step."""

    kind: Literal["rollback"] = "rollback"
    """Command kind (the union's discriminator)."""
    target: int | Literal["best", "last"] = Field("best", validate_default=True)
    """A checkpoint id, "best" (lowest finite loss, any branch) or "last" (newest of the current history)."""

    @field_validator("target", mode="before")
    @classmethod
    def _target(cls, value: Any) -> int | str:
        return rollback_target(value)


class Save(BaseCommand):
    """Checkpoint now (kind "command"); acknowledged once the file is ready."""

    kind: Literal["save"] = "save"
    """Command kind (the union's discriminator)."""


class Stop(BaseCommand):
    """Ask the loop to stop: `run.should_stop` becomes true."""

    kind: Literal["stop"] = "stop"
    """Command kind (the union's discriminator)."""


Command = Annotated[Pause | Resume | SetLR | ScaleLR | Rollback | Save | Stop, Field(discriminator="kind")]
"""Any command, told apart by its `kind`."""

_MODELS: tuple[type[BaseCommand], ...] = (Pause, Resume, SetLR, ScaleLR, Rollback, Save, Stop)
KINDS: tuple[str, ...] = tuple(m.model_fields["kind"].default for m in _MODELS)
_ADAPTER: TypeAdapter[Command] = TypeAdapter(Command)


def parse(kind: str, args: dict[str, Any]) -> Command:
    """The command a row's kind and arguments stand for, or CommandError."""
    if kind not in KINDS:
        raise CommandError(f"unknown command {kind!r} (known: {', '.join(KINDS)})")
    if "_malformed" in args:  # the store's mark for arguments that were not a JSON object
        raise CommandError(f"arguments are not a JSON object: {args['_malformed']!r}")
    try:
        return _ADAPTER.validate_python({**args, "kind": kind})
    except ValidationError as exc:
        raise CommandError(_reason(exc)) from None


def _reason(exc: ValidationError) -> str:
    """The one-line reason of a validation failure: our own validators' message as they wrote it."""
    error = exc.errors()[0]
    cause = error.get("ctx", {}).get("error")
    return str(cause) if isinstance(cause, CommandError) else str(error["msg"])


def validate(kind: str, args: dict[str, Any]) -> dict[str, Any]:
    """Normalised arguments for a command, or CommandError."""
    return parse(kind, args).args()
