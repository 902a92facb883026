"""Replacing the files GRUB reads (grub.cfg, grubenv) so that GRUB sees them after any power cut.

Two steps, both needed:
- temp file, fsync, rename, fsync of the directory (imagemode.atomic): a cut leaves the old file or
  the new one;
- on a mounted filesystem, a freeze and thaw (FIFREEZE, FITHAW), which makes ext4 write its journal
  back to the filesystem. GRUB reads ext4 without replaying the journal, so until then it can see a
  directory that still names the replaced file, whose blocks may already hold something else. ostree
  does the same to /boot after each deployment change. A GRUB shell after a power cut, caught by the
  health VM test, is what happens without it.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from imagemode import atomic

FIFREEZE = 0xC0045877  # _IOWR('X', 119, int)
FITHAW = 0xC0045878  # _IOWR('X', 120, int)


def checkpoint(path: Path) -> None:
    """Write the journal of the filesystem holding `path` back, so that GRUB reads what Linux wrote."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.ioctl(fd, FIFREEZE, 0)
        except OSError as e:
            # Not supported here, or frozen by someone else: a sync is the best left to do.
            if e.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EPERM, errno.EBUSY, errno.EINVAL):
                os.sync()
                return
            raise
        fcntl.ioctl(fd, FITHAW, 0)
    finally:
        os.close(fd)


def replace(path: Path, data: bytes, mounted: Path | None = None) -> None:
    """Atomically replace `path` with `data`. `mounted`: the mount point of a live filesystem (the
    device's /sysroot) to checkpoint afterwards; None for a directory being built into a disk."""
    atomic.write(path, data)
    if mounted is not None:
        checkpoint(mounted)


def live(sysroot: Path) -> Path | None:
    """`sysroot` when it is a mount point (a device's /sysroot), None when it is a plain directory.

    From /proc/self/mountinfo: os.path.ismount compares device numbers, and on a device / and /sysroot
    are the same filesystem (/ is a bind mount of the deployment)."""
    want = os.path.realpath(sysroot)
    try:
        with open("/proc/self/mountinfo") as f:
            points = {line.split()[4].replace("\\040", " ") for line in f}
    except OSError:
        return None
    return sysroot if want in points else None
