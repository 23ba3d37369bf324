"""`trainwarden replay`: the daemon's detectors and policy over a recorded curve, to tune a policy
on past runs. A curve is a CSV (`step,train_loss[,val_loss]`, empty cells allowed) or a run
folder (its current history, window by window as the daemon saw it)."""
from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from trainwarden.agent.store import Store, is_store

from .detectors import DetectorSettings, Finding, LossDetectors, WindowLike, feed
from .errors import UserError


class CurveError(UserError, ValueError):
    """A curve file is unreadable or malformed; the message names the file and line."""


class Curve(BaseModel):
    """A loss curve: per-step training losses in order, and validation points."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    steps: list[int] = Field(default_factory=list)
    """Step of each training loss, increasing."""
    losses: list[float] = Field(default_factory=list)
    """Training loss at each step (NaN/inf kept: they are findings)."""
    vals: list[tuple[int, float]] = Field(default_factory=list)
    """(step, validation loss) points, increasing in step."""


def _number(text: str, column: str, where: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise CurveError(f"{where}: {column} {text!r} is not a number") from None


def read_csv(path: Path) -> Curve:
    """A curve from a CSV with a header naming at least `step` and `train_loss`."""
    try:
        fh = open(path, newline="", encoding="utf-8")
    except OSError as exc:
        raise CurveError(f"{path}: cannot read: {exc.strerror or exc}") from None
    curve = Curve()
    with fh:
        try:
            reader = csv.reader(fh)
            header = [h.strip().lower() for h in next(reader, [])]
            if "step" not in header or "train_loss" not in header:
                raise CurveError(f"{path}:1: the header must name the columns step,train_loss[,val_loss], got {','.join(header) or 'nothing'}")
            i_step, i_loss = header.index("step"), header.index("train_loss")
            i_val = header.index("val_loss") if "val_loss" in header else None
            last = None
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    raise CurveError(f"{where}: expected {len(header)} cells, got {len(row)}")
                step = _number(row[i_step], "step", where)
                if step is None or not math.isfinite(step) or step != int(step) or step < 0:
                    raise CurveError(f"{where}: step must be a whole number >= 0, got {row[i_step].strip()!r}")
                step = int(step)
                if last is not None and step <= last:
                    raise CurveError(f"{where}: step {step} is not after step {last} on the line before "
                                     "(one history per file; replay the run folder to follow its current branch)")
                last = step
                loss = _number(row[i_loss], "train_loss", where)
                if loss is not None:
                    curve.steps.append(step)
                    curve.losses.append(loss)
                if i_val is not None:
                    val = _number(row[i_val], "val_loss", where)
                    if val is not None:
                        curve.vals.append((step, val))
        except UnicodeDecodeError:
            raise CurveError(f"{path}: not a text CSV file") from None
        except csv.Error as exc:
            raise CurveError(f"{path}:{reader.line_num}: {exc}") from None
    if not curve.losses:
        raise CurveError(f"{path}: no training losses (the train_loss column is empty)")
    return curve


class _Window:
    __slots__ = ("first_step", "last_step", "losses")

    def __init__(self, first_step: int, last_step: int, losses: list[float]) -> None:
        self.first_step, self.last_step, self.losses = first_step, last_step, losses


def curve_windows(curve: Curve, size: int) -> Iterator[WindowLike]:
    for i in range(0, len(curve.losses), size):
        steps = curve.steps[i: i + size]
        yield _Window(steps[0], steps[-1], curve.losses[i: i + size])


def run_inputs(run_dir: Path) -> tuple[list[WindowLike], list[tuple[int, float]]]:
    """The windows and validation points of a run's current history, from its store."""
    with Store.open(run_dir) as s:
        branch = s.run().branch
        windows: list[WindowLike] = list(s.lineage_windows(branch))
        vals = [(m.step, m.value) for m in s.lineage_metrics(branch, "val_loss") if m.value is not None]
    return windows, vals


def replay(path: Path, settings: DetectorSettings) -> list[Finding]:
    """Findings over a CSV curve or a run folder; CurveError / StoreError when it cannot be read."""
    if path.is_dir():
        if not is_store(path):
            raise CurveError(f"{path}: not a run folder (no trainwarden.db) and not a CSV file")
        windows, vals = run_inputs(path)
        return feed(LossDetectors(settings), windows, vals)
    curve = read_csv(path)
    return feed(LossDetectors(settings), curve_windows(curve, settings.window), curve.vals)
