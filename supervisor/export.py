"""`trainwarden export RUN CKPT`: a checkpoint's model weights as one plain file for inference.

A sharded checkpoint (a folder written by every rank with torch.distributed.checkpoint) is read
whole in this one process, so no GPU, torchrun or model code is needed; a single-file checkpoint
is reduced to its model. The output is a plain state dict, the same keys as the unwrapped model:

    model.load_state_dict(torch.load("model.pt", weights_only=True))

Both kinds are verified against their checksums in the store before anything is read.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from trainwarden.agent.commands import CommandError, rollback_target
from trainwarden.agent.records import CheckpointInfo
from trainwarden.agent.store import Store

from .errors import UserError

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / DataParallel, torch.compile


class ExportError(UserError):
    """The checkpoint cannot be exported; the message says why in one line."""


def choose(store: Store, text: str) -> CheckpointInfo:
    """The checkpoint named by an id, "best" or "last" (the newest ready one of the run)."""
    from trainwarden.agent.checkpoint import best_first, newest_first

    try:
        target = rollback_target(text)
    except CommandError as exc:
        raise ExportError(str(exc)) from None
    ready = store.checkpoints(["ready"])
    if isinstance(target, int):
        info = store.checkpoint(target)
        if info is None:
            raise ExportError(f"checkpoint {target} does not exist")
        if info.status != "ready":
            raise ExportError(f"checkpoint {target} is {info.status}, not ready")
        return info
    ordered = best_first(ready) if target == "best" else newest_first(ready)
    if not ordered:
        raise ExportError(f"no ready checkpoint ({target})")
    return ordered[0]


def unwrap(weights: dict[str, Any]) -> dict[str, Any]:
    """Drop a wrapper's prefix shared by every key, so the weights load into the bare model."""
    for prefix in WRAPPER_PREFIXES:
        while weights and all(k.startswith(prefix) for k in weights):
            weights = {k[len(prefix):]: v for k, v in weights.items()}
    return weights


def model_weights(run_dir: Path, info: CheckpointInfo) -> dict[str, Any]:
    """The verified checkpoint's full model state dict (CheckpointCorrupt says why it cannot be)."""
    from trainwarden.agent import checkpoint as ck

    path = run_dir / info.path
    if info.path.endswith(".dcp"):
        from trainwarden.agent import sharded
        sharded.verify(path, info.checksum)
        weights = sharded.model_weights(path)
    else:
        weights = ck.load_file(path, info.checksum)["model"]
    return unwrap(dict(weights))


def write(weights: dict[str, Any], out: Path) -> int:
    """Write crash-safely (temporary name, fsync, rename); returns the size in bytes."""
    import torch

    tmp = out.with_name(out.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(weights, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out.stat().st_size


def default_output(run_dir: Path, info: CheckpointInfo) -> Path:
    """The file written when none is named: RUN-ckptID-stepSTEP.pt in the current folder."""
    return Path(f"{run_dir.name}-ckpt{info.id}-step{info.step}.pt")


def export_model(run_dir: Path, info: CheckpointInfo, out: Path) -> tuple[int, int]:
    """Write the verified checkpoint's model to `out` as a plain state dict; returns (tensors, bytes)."""
    from trainwarden.agent.checkpoint import CheckpointCorrupt

    try:
        weights = model_weights(run_dir, info)
    except CheckpointCorrupt as exc:
        raise ExportError(f"checkpoint {info.id} cannot be exported: {exc}") from None
    try:
        nbytes = write(weights, out)
    except OSError as exc:
        raise ExportError(f"cannot write {out}: {exc.strerror or exc}") from None
    return len(weights), nbytes
