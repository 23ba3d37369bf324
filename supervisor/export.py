"""`trainwarden export RUN CKPT`: a checkpoint's model weights as one plain file for inference.

A sharded checkpoint (a folder written by every rank with torch.distributed.checkpoint) is read
whole in this one process, so no GPU, torchrun or model code is needed; a single-file checkpoint
is reduced to its model. The output is a plain state dict, the same keys as the unwrapped model:

    model.load_state_dict(torch.load("model.pt", weights_only=True))

Both kinds are verified against their checksums in the store before anything is read.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from trainwarden.agent.commands import CommandError, rollback_target
from trainwarden.agent.records import CheckpointInfo
from trainwarden.agent.store import Store

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / DataParallel, torch.compile


def choose(store: Store, text: str) -> CheckpointInfo:
    """The checkpoint named by an id, "best" or "last" (the newest ready one of the run)."""
    from trainwarden.agent.checkpoint import best_first, newest_first

    from .cli import CliError

    try:
        target = rollback_target(text)
    except CommandError as exc:
        raise CliError(str(exc)) from None
    ready = store.checkpoints(["ready"])
    if isinstance(target, int):
        info = store.checkpoint(target)
        if info is None:
            raise CliError(f"checkpoint {target} does not exist")
        if info.status != "ready":
            raise CliError(f"checkpoint {target} is {info.status}, not ready")
        return info
    ordered = best_first(ready) if target == "best" else newest_first(ready)
    if not ordered:
        raise CliError(f"no ready checkpoint ({target})")
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


def cmd_export(args: argparse.Namespace) -> int:
    from trainwarden.agent.checkpoint import CheckpointCorrupt

    from .cli import CliError, open_store, resolve_run, size

    run_dir = resolve_run(args.run)
    with open_store(args.run) as store:
        info = choose(store, args.checkpoint)
    out = Path(args.output) if args.output else Path(f"{run_dir.name}-ckpt{info.id}-step{info.step}.pt")
    if out.exists() and not args.force:
        raise CliError(f"{out} exists: choose another --output or pass --force")
    try:
        weights = model_weights(run_dir, info)
    except CheckpointCorrupt as exc:
        raise CliError(f"checkpoint {info.id} cannot be exported: {exc}") from None
    try:
        nbytes = write(weights, out)
    except OSError as exc:
        raise CliError(f"cannot write {out}: {exc.strerror or exc}") from None
    kind = "sharded" if info.path.endswith(".dcp") else "single-file"
    print(f"wrote {out}: {len(weights)} tensors, {size(nbytes)}: the model of {kind} checkpoint {info.id} "
          f"(step {info.step}, branch {info.branch}); load with model.load_state_dict(torch.load(PATH, weights_only=True))")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a checkpoint's model (sharded or not) as one file for inference",
                       description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder, or a name under the root")
    p.add_argument("checkpoint", help="checkpoint id, 'best' or 'last'")
    p.add_argument("-o", "--output", help="file to write (default: RUN-ckptID-stepSTEP.pt here)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.set_defaults(func=cmd_export)
