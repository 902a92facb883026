"""Replace-by-rename, the one way imagemode makes a file appear whole or not at all.

`write` puts the bytes in a temporary file beside the target, fsyncs it, renames it over the target
and fsyncs the directory, so that a power cut leaves the old file or the new one, never a mix or an
empty file. `publish` does the last two steps for a file or directory made elsewhere (a bundle
skopeo wrote, a cache entry, a disk image). Files GRUB reads need one step more
(imagemode.boot.replace). Writes into a tree from an image go through imagemode.confined instead.
"""

from __future__ import annotations

import os
from pathlib import Path


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(path: Path, data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    """Replace `path` with `data`. `durable=False` for files in /run, which no power cut outlives."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _sync_dir(path.parent)


def publish(made: Path, path: Path) -> None:
    """Rename a finished file or directory `made` (beside `path`) to `path`, durably."""
    os.replace(made, path)
    _sync_dir(path.parent)
