"""Sharded checkpoints: one folder per checkpoint, written by every rank with
torch.distributed.checkpoint (DCP), for FSDP2 models or whenever `distributed_checkpoint=True`.

    checkpoints/step-000001200-7.dcp/
        __0_0.distcp  __1_0.distcp   each rank's shards (DCP)
        .metadata                    DCP's index, written by rank 0 once every rank has written
        trainwarden.json             our completion marker: every file's size and XXH3-128

Model and optimizer state come from `get_state_dict` and go back with `set_state_dict`, so a
checkpoint written by N ranks loads on M ranks where DCP can reshard it. The agent's own state
(step, branch, LR multiplier, loss history, scheduler, scaler) is one replicated entry; each
rank's RNG states are an entry of their own. Both are torch.save'd bytes read back with
`weights_only=True`, and DCP's byte entries are read the same way (`SafeLoadPlanner`): DCP itself
would unpickle them with `weights_only=False`. DCP's `.metadata` is a pickle as well; it is only
read after its checksum matched the marker, whose own checksum is in the store.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
import xxhash
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from .checkpoint import FORMAT, FORMAT_VERSION, CheckpointCorrupt, _fsync_dir

# DCP warns at every save and load in a lone process that it assumes one process: that is the
# intent here (`distributed_checkpoint=True` without torchrun, `trainwarden export`), not news.
warnings.filterwarnings("ignore", message=r"torch\.distributed is .*assuming the intent is to", category=UserWarning)

MARKER = "trainwarden.json"
SUFFIX = ".dcp"
COMMON_KEY = "trainwarden"
_CHUNK = 8 << 20


def rng_key(rank: int) -> str:
    return f"trainwarden_rng_rank{rank}"


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner, except that byte entries are unpickled with weights_only=True
    (tensors and plain containers only), so a checkpoint can never run code."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        obj = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._traverse import set_element  # where DCP's default planner takes it
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def _pack(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _unpack(blob: Any, what: str) -> Any:
    if not isinstance(blob, (bytes, bytearray)):
        raise CheckpointCorrupt(f"sharded checkpoint entry {what} is not what trainwarden wrote")
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------- saving
def save_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, common: dict[str, Any] | None,
               rng: dict[str, Any], rank: int) -> dict[str, Any]:
    """The state dict a rank hands to DCP (its shards are views of the live tensors). Only rank 0
    gives the agent's common state (`common`); every rank reads it back when loading."""
    msd, osd = get_state_dict(model, optimizer)
    state = {"model": msd, "optim": osd, rng_key(rank): _pack(rng)}
    if common is not None:
        state[COMMON_KEY] = _pack({"format": FORMAT, "version": FORMAT_VERSION, **common})
    return state


def make_stager() -> Any:
    """A stager kept from one save to the next, so staging reuses its CPU buffers. DCP's default
    is made afresh for every save: allocating and first-touching new memory each time made the
    training thread wait 3-4x longer than the copy itself (48 MiB: 17 ms against ~5). Synchronous
    staging: the copy is done when `async_save` returns, so training may change the weights."""
    import inspect

    if "async_stager" not in inspect.signature(dcp.async_save).parameters:
        return None
    try:
        from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
    except ImportError:
        return None
    gpu = torch.cuda.is_available()
    return DefaultStager(StagingOptions(use_pinned_memory=gpu, use_shared_memory=False, use_async_staging=False,
                                        use_non_blocking_copy=gpu))


def start_save(state: dict[str, Any], folder: Path, group: Any, stager: Any = None) -> Any:
    """Stage `state` to CPU memory on this thread and write it in DCP's background thread.
    Returns a future that completes when this rank's part is written and, on rank 0, when the
    metadata is (rank 0 finishes only after every rank reported its writes). Falls back to a
    synchronous save on a torch without `async_save`. One save at a time per `stager`."""
    folder.mkdir(parents=True, exist_ok=True)
    save_async = getattr(dcp, "async_save", None)
    alone = {"no_dist": True} if group is None and not torch.distributed.is_initialized() else {}
    if save_async is None:
        dcp.save(state, checkpoint_id=str(folder), process_group=group, **alone)
        return _Done()
    if stager is not None:
        alone["async_stager"] = stager
    try:
        response = save_async(state, checkpoint_id=str(folder), process_group=group, **alone)
    except RuntimeError as exc:
        if "interpreter shutdown" not in str(exc):
            raise
        # The final save of a run closed at exit: no new threads then, so write it here.
        alone.pop("async_stager", None)
        dcp.save(state, checkpoint_id=str(folder), process_group=group, **alone)
        return _Done()
    staged = getattr(response, "staging_completion", None)
    if staged is not None:  # a torch that stages in the background: the copy must be done before training goes on
        staged.result()
        return response.upload_completion
    return response


def why(exc: BaseException) -> str:
    """One line saying what went wrong in DCP: the first rank's own error, not the wrapper's."""
    if isinstance(exc, CheckpointException) and exc.failures:
        rank, inner = next(iter(exc.failures.items()))
        if isinstance(inner, tuple):  # DCP keeps (exception, stack) per rank
            inner = inner[0]
        return f"rank {rank}: {why(inner)}"
    if isinstance(exc, pickle.UnpicklingError):
        return "an entry holds code or objects other than tensors and plain containers (refused by the safe loader)"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


class _Done:
    def result(self, timeout: float | None = None) -> None:
        return None


def finish(folder: Path) -> tuple[int, str]:
    """After every rank finished: hash every file, write the completion marker; returns
    (total bytes, the marker's checksum as the store keeps it)."""
    files: dict[str, list[Any]] = {}
    total = 0
    for f in sorted(folder.iterdir()):
        if f.name == MARKER or f.name.endswith(".tmp") or not f.is_file():
            continue
        size, digest = _hash_file(f)
        files[f.name] = [size, digest]
        total += size
    if ".metadata" not in files:
        raise OSError(f"{folder.name} has no .metadata: DCP did not finish")
    text = json.dumps({"format": FORMAT, "kind": "dcp", "files": files}, sort_keys=True).encode()
    tmp = folder / (MARKER + ".tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, folder / MARKER)
    _fsync_dir(folder)
    return total + len(text), "xxh3_128:" + xxhash.xxh3_128_hexdigest(text)


def _hash_file(path: Path) -> tuple[int, str]:
    h = xxhash.xxh3_128()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def verify(folder: Path, checksum: str | None) -> None:
    """CheckpointCorrupt unless the marker matches the store's checksum and every file matches
    the marker (missing, truncated or altered files are named)."""
    if not folder.is_dir():
        raise CheckpointCorrupt(f"folder {folder.name} is missing")
    marker = folder / MARKER
    if not marker.is_file():
        raise CheckpointCorrupt(f"folder {folder.name} has no completion marker ({MARKER}): the save did not finish")
    text = marker.read_bytes()
    if checksum is not None and "xxh3_128:" + xxhash.xxh3_128_hexdigest(text) != checksum:
        raise CheckpointCorrupt(f"{folder.name}/{MARKER} does not match its checksum (altered)")
    try:
        files = json.loads(text)["files"]
    except (ValueError, KeyError, TypeError):
        raise CheckpointCorrupt(f"{folder.name}/{MARKER} cannot be read") from None
    for name, (size, digest) in files.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointCorrupt(f"file {folder.name}/{name} is missing")
        if path.stat().st_size != size or _hash_file(path)[1] != digest:
            raise CheckpointCorrupt(f"file {folder.name}/{name} does not match its checksum (truncated or altered)")


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------- loading
def stored_keys(folder: Path) -> set[str]:
    """The top-level entries a checkpoint holds (to know which ranks' RNG states it has)."""
    metadata = dcp.FileSystemReader(str(folder)).read_metadata()
    return {key.split(".", 1)[0] for key in metadata.state_dict_metadata}


def load(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, rank: int,
         group: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Load a verified checkpoint into the model and optimizer (resharding as DCP allows);
    returns the agent's common state and this rank's RNG states (None when the checkpoint was
    written by fewer ranks). Raises CheckpointCorrupt when DCP cannot read it."""
    try:
        keys = stored_keys(folder)
        msd, osd = get_state_dict(model, optimizer)
        state: dict[str, Any] = {"model": msd, "optim": osd, COMMON_KEY: b""}
        if rng_key(rank) in keys:
            state[rng_key(rank)] = b""
        alone = {"no_dist": True} if group is None and not torch.distributed.is_initialized() else {}
        dcp.load(state, checkpoint_id=str(folder), planner=SafeLoadPlanner(), process_group=group, **alone)
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    except CheckpointCorrupt:
        raise
    except (Exception, CheckpointException) as exc:  # DCP's own is a BaseException
        raise CheckpointCorrupt(f"folder {folder.name} cannot be loaded: {why(exc)}") from None
    common = _unpack(state[COMMON_KEY], COMMON_KEY)
    if not isinstance(common, dict) or common.get("format") != FORMAT:
        raise CheckpointCorrupt(f"folder {folder.name} is not a trainwarden checkpoint")
    rng = _unpack(state[rng_key(rank)], rng_key(rank)) if rng_key(rank) in state else None
    return common, rng


def model_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The full (unsharded) model state dict of a verified checkpoint, read in this process
    alone: what `trainwarden export` writes for inference."""
    from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    class _Planner(_EmptyStateDictLoadPlanner):
        load_bytes = SafeLoadPlanner.load_bytes

    state: dict[str, Any] = {}
    try:
        _load_state_dict(state, storage_reader=dcp.FileSystemReader(str(folder)),
                         planner=_Planner(keys={"model"}), no_dist=True)
    except (Exception, CheckpointException) as exc:
        raise CheckpointCorrupt(f"folder {folder.name} cannot be read: {why(exc)}") from None
    model = state.get("model")
    if not isinstance(model, dict) or not model:
        raise CheckpointCorrupt(f"folder {folder.name} holds no model state")
    return model
