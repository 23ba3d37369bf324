"""Where runs are: the run folders at or below a root, and whether a root's file system needs
polling to see other hosts' writes. Used by the daemon, the command line and the TUI."""
from __future__ import annotations

from pathlib import Path

from trainwarden.agent.store import DB_NAME, is_store

# File systems where inotify misses other hosts' writes: watch them by polling.
NETWORK_FS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "9p", "afs", "ceph", "glusterfs", "fuse.glusterfs",
    "lustre", "gpfs", "beegfs", "fuse.s3fs", "fuse.rclone", "davfs", "fuse.davfs2",
})
SCAN_DEPTH = 3
"""How many folder levels below a root are searched for runs."""


def fs_type(path: Path) -> str:
    """The type of the file system holding `path` (from /proc/self/mounts; "" if unknown)."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return ""
    target = str(path.resolve())
    best, kind = "", ""
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, kind = point, parts[2]
    return kind


def find_runs(root: Path, depth: int = SCAN_DEPTH) -> list[Path]:
    """Run folders at or below `root` (a few levels deep)."""
    if is_store(root):
        return [root]
    found: list[Path] = []
    frontier = [root]
    for _ in range(depth):
        nxt = []
        for folder in frontier:
            try:
                children = [p for p in folder.iterdir() if p.is_dir() and p.name != "checkpoints"]
            except OSError:
                continue
            for child in children:
                (found if (child / DB_NAME).is_file() else nxt).append(child)
        frontier = nxt
    return sorted(found)
