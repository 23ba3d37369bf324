"""Checkpoint files: snapshot to reusable CPU buffers, crash-safe write, verified load, retention.

A checkpoint is self-contained: model, optimizer, scheduler, grad scaler, RNG states, step,
branch, LR multiplier and the loss history up to its step. Files are written to a temporary
name, fsynced and atomically renamed, so a crash leaves either the old set of files or the new
one; the checksum in the store (XXH3-128 of the whole file) catches truncation and bit flips.
Files are loaded with `weights_only=True`, so a checkpoint can never run code.
"""
from __future__ import annotations

import ctypes
import hashlib
import inspect
import math
import os
import pickle
import random
import re
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import xxhash

from .records import CheckpointInfo
from .store import Segments, in_lineage  # noqa: F401  (re-exported)

FORMAT = "trainwarden-checkpoint"
FORMAT_VERSION = 1
_CHUNK = 8 << 20


class CheckpointCorrupt(Exception):
    """A checkpoint file is missing, truncated, altered or unsafe; the message says which."""


class SnapshotBuffers:
    """Copies a state tree into CPU tensors that are kept and reused from one save to the next.

    Allocating fresh memory for every snapshot costs about three times the copy itself, and the
    copy is the part of a save the training thread waits for.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}
        self._cuda_used = False

    def copy(self, tree: Any) -> Any:
        self._cuda_used = False
        out = _map_tensors(tree, "", self._copy_tensor)
        if self._cuda_used:
            torch.cuda.current_stream().synchronize()  # the copies were queued non-blocking
        return out

    def reserve(self, tree: Any) -> None:
        """Allocate and touch now the buffers that copying `tree` will need, so that the first
        snapshot costs only the copy: first-touching fresh memory costs far more than copying into
        it (about 1.6 s against 0.08 s for 1 GB on our test VM). Reads only shapes and dtypes, so
        it may run on another thread while training goes on, but not during a `copy()`."""
        _map_tensors(tree, "", self._reserve_tensor)

    def _buffer(self, t: torch.Tensor, path: str) -> torch.Tensor:
        buf = self._buffers.get(path)
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
            pin = t.is_cuda and torch.cuda.is_available()
            buf = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=pin)
            self._buffers[path] = buf
        return buf

    def _reserve_tensor(self, t: torch.Tensor, path: str) -> None:
        if t.layout == torch.strided and path not in self._buffers:
            buf = self._buffer(t, path)
            # Writing makes the OS map every page now. A plain memset, not buf.zero_(): a torch op
            # on this thread would start a second OpenMP team, which slowed a 2-thread CPU training
            # loop 3x for the rest of the run (measured); ctypes also releases the GIL meanwhile.
            nbytes = buf.untyped_storage().nbytes()
            if nbytes:
                ctypes.memset(buf.data_ptr(), 0, nbytes)

    def _copy_tensor(self, t: torch.Tensor, path: str) -> torch.Tensor:
        t = t.detach()
        if t.is_sparse or t.layout != torch.strided:
            return t.to("cpu", copy=True)
        buf = self._buffer(t, path)
        if t.is_cuda:
            self._cuda_used = True
            buf.copy_(t, non_blocking=True)
        else:
            buf.copy_(t)
        return buf


def _map_tensors(obj: Any, path: str, fn: Callable[[torch.Tensor, str], Any]) -> Any:
    """`obj` with every tensor replaced by `fn(tensor, path)`, where the path names its place in
    the tree (so buffers can be matched to tensors from one save to the next)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj, path)
    if isinstance(obj, dict):
        cls = OrderedDict if isinstance(obj, OrderedDict) else dict
        return cls((k, _map_tensors(v, f"{path}/{k}", fn)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_map_tensors(v, f"{path}/{i}", fn) for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return tuple(_map_tensors(v, f"{path}/{i}", fn) for i, v in enumerate(obj))
    return obj  # numbers, strings, None: immutable


CHECKSUM_ALGORITHM = "xxh3_128"
"""How new checkpoints are checksummed. XXH3 runs at memory speed (~20 GB/s), where sha256 ran at
~1.4 GB/s and made the background write CPU-bound; the file needs a check against truncation and
bit flips, not against forgery (the safe loader is the defence against crafted files)."""


def _hasher(algorithm: str) -> Any:
    if algorithm == "xxh3_128":
        return xxhash.xxh3_128()
    if algorithm == "sha256":  # stores from before schema 2 hold bare sha256 digests
        return hashlib.sha256()
    raise CheckpointCorrupt(f"unknown checksum algorithm {algorithm!r}")


def _split(checksum: str) -> tuple[str, str]:
    """("algorithm", "hex digest") of a stored checksum; a bare digest is a sha256 one."""
    algorithm, sep, digest = checksum.partition(":")
    return (algorithm, digest) if sep else ("sha256", checksum)


def _join(algorithm: str, digest: str) -> str:
    """The stored form of a checksum, the inverse of `_split`."""
    return digest if algorithm == "sha256" else f"{algorithm}:{digest}"


class _HashingWriter:
    """File wrapper that hashes what passes through, so the checksum costs no second read."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.hash = _hasher(CHECKSUM_ALGORITHM)
        self.nbytes = 0

    def write(self, data: Any) -> int:
        self.hash.update(data)
        self.nbytes += len(memoryview(data).cast("B"))
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()

    @property
    def checksum(self) -> str:
        return _join(CHECKSUM_ALGORITHM, self.hash.hexdigest())


def _torch_save(state: dict[str, Any], f: _HashingWriter) -> None:
    """`torch.save(state, f)` without torch's CRC32 of every record where this torch allows it.

    That CRC is redundant with our checksum of the whole file and was the largest cost of a
    background write (~0.6 s per GB, about as long as the disk itself takes). torch's only switch
    for it is process-global (`torch.serialization.set_crc32_options`), which would change the
    user's own `torch.save` calls, so the writer is made here with the flag off. torch.load does
    not check these CRCs. Where the private parts differ (other torch versions), plain torch.save.
    """
    ser = torch.serialization
    make = getattr(torch._C, "PyTorchFileWriter", None)
    save = getattr(ser, "_save", None)
    alignment = getattr(ser, "_get_storage_alignment", None)
    if make is None or save is None or alignment is None or len(inspect.signature(save).parameters) != 5:
        torch.save(state, f)
        return
    try:
        zf = make(f, False, alignment())
    except TypeError:  # a torch whose writer takes no CRC flag
        torch.save(state, f)
        return
    save(state, zf, pickle, ser.DEFAULT_PROTOCOL, False)
    zf.write_end_of_file()
    f.flush()


def write_file(state: dict[str, Any], path: Path) -> tuple[int, str]:
    """Write `state` to `path` crash-safely; returns (bytes, checksum). Raises OSError on failure,
    leaving no partial file behind."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb", buffering=_CHUNK) as f:
            writer = _HashingWriter(f)
            _torch_save(state, writer)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    return writer.nbytes, writer.checksum


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_file(path: Path) -> None:
    """Delete a checkpoint: a file, or a sharded checkpoint's folder."""
    if path.is_dir():
        import shutil
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def file_checksum(path: Path, algorithm: str = CHECKSUM_ALGORITHM) -> str:
    """The checksum of a file as the store keeps it ("algorithm:hex"; bare hex for sha256)."""
    h = _hasher(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return _join(algorithm, h.hexdigest())


def checksum_matches(path: Path, checksum: str) -> bool:
    return file_checksum(path, _split(checksum)[0]) == checksum


def load_file(path: Path, checksum: str | None) -> dict[str, Any]:
    """Load and check a checkpoint file; CheckpointCorrupt says why it cannot be used."""
    if not path.is_file():
        raise CheckpointCorrupt(f"file {path.name} is missing")
    if checksum is not None and not checksum_matches(path, checksum):
        raise CheckpointCorrupt(f"file {path.name} does not match its checksum (truncated or altered)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # Newer torch says "Unsupported global: GLOBAL x.y"; 2.1 said "Unsupported class x.y".
        found = re.search(r"Unsupported (?:global: GLOBAL|class) ([\w.]+)", str(exc))
        what = f" (it references {found.group(1)})" if found else ""
        raise CheckpointCorrupt(
            f"file {path.name} was refused by the safe loader: it holds code or objects other than "
            f"tensors and plain containers{what}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointCorrupt(f"file {path.name} cannot be read: {first}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointCorrupt(f"file {path.name} is not a trainwarden checkpoint")
    if state.get("version", 0) > FORMAT_VERSION:
        raise CheckpointCorrupt(f"file {path.name} has format version {state.get('version')}, newer than this trainwarden")
    history = state.get("loss_history")
    if not isinstance(history, torch.Tensor) or history.numel() != state.get("step"):
        raise CheckpointCorrupt(f"file {path.name} has a loss history that does not match its step")
    return state


# ---------------------------------------------------------------------------- RNG
def capture_rng() -> dict[str, Any]:
    """RNG states as plain tensors and tuples, which the safe loader accepts."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    np = sys.modules.get("numpy")
    if np is not None:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = (kind, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached))
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np = sys.modules.get("numpy")
    if np is not None and "numpy" in state:
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))


# ----------------------------------------------------------------------- selection
# in_lineage lives with the store (the daemon uses it without importing torch); re-exported here.
def newest_first(ckpts: Iterable[CheckpointInfo]) -> list[CheckpointInfo]:
    return sorted(ckpts, key=lambda c: (c.step, c.id), reverse=True)


def best_first(ckpts: Iterable[CheckpointInfo]) -> list[CheckpointInfo]:
    """Checkpoints with a finite loss, lowest first (a NaN/Inf window is never "best")."""
    finite = [c for c in ckpts if c.loss is not None and math.isfinite(c.loss)]
    return sorted(finite, key=lambda c: (c.loss, -c.step, -c.id))


def retention(ready: Sequence[CheckpointInfo], segments: Segments, keep_best: int, keep_last: int) -> list[CheckpointInfo]:
    """Which ready checkpoints to delete: all but the pinned, the best k by loss, the last n of
    the current history, and the newest one written."""
    if not ready:
        return []
    keep = {c.id for c in ready if c.pinned}
    keep |= {c.id for c in best_first(ready)[:keep_best]}
    keep |= {c.id for c in newest_first(c for c in ready if in_lineage(c, segments))[:keep_last]}
    keep.add(max(c.id for c in ready))
    return [c for c in ready if c.id not in keep]
