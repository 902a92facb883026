"""The /etc that an update would merge, checked before anything is staged.

ostree carries every locally added or modified path of /etc into the new deployment (a three-way
merge against the old image's /usr/etc). Where the new image has a directory and the device a file,
or the other way round, that merge fails at shutdown and the update is lost. So the three trees are
compared first, and such an update is refused with the path named.
"""

from __future__ import annotations

import filecmp
import os
import stat
from pathlib import Path


def _kind(path: Path) -> str | None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    return "directory" if stat.S_ISDIR(mode) else "file"


def _changed(local: Path, old: Path) -> bool:
    """True when `local` differs from the old image's copy: ostree would carry it forward."""
    try:
        a, b = os.lstat(local), os.lstat(old)
    except FileNotFoundError:
        return True
    if (a.st_mode, a.st_uid, a.st_gid) != (b.st_mode, b.st_uid, b.st_gid):
        return True
    if stat.S_ISLNK(a.st_mode):
        return os.readlink(local) != os.readlink(old)
    if stat.S_ISREG(a.st_mode):
        return not filecmp.cmp(local, old, shallow=False)
    return False


def _any_changed(local_dir: Path, old_dir: Path) -> bool:
    for dirpath, dirs, files in os.walk(local_dir):
        rel = Path(dirpath).relative_to(local_dir)
        for name in [*dirs, *files]:
            if _changed(Path(dirpath, name), old_dir / rel / name):
                return True
    return False


def conflicts(local: Path, old: Path, new: Path) -> list[str]:
    """Paths (relative to /etc) that are a file on one side and a directory on the other.

    local: the device's /etc; old: the booted image's /usr/etc; new: the new image's /usr/etc.
    """
    found: list[str] = []
    for dirpath, dirs, files in os.walk(local):
        rel_dir = Path(dirpath).relative_to(local)
        keep = []
        for name in sorted([*dirs, *files]):
            rel = rel_dir / name
            mine, theirs = _kind(local / rel), _kind(new / rel)
            if theirs is None:
                continue  # the new image has nothing here: nothing below can clash either
            if mine == theirs:
                if name in dirs:
                    keep.append(name)
                continue
            # A clash only matters when ostree would carry the local side forward.
            carried = (
                _any_changed(local / rel, old / rel) or _kind(old / rel) != "directory"
                if mine == "directory"
                else _changed(local / rel, old / rel)
            )
            if carried:
                found.append(f"{rel} ({mine} here, {theirs} in the new image)")
        dirs[:] = keep
    return found
