"""One OCI layer tar into a directory, exactly: owners, modes, setuid bits, xattrs, hard links.

Whiteouts are not written as files. They are returned, and the composition applies them
(imagemode.store.compose):
- `.wh.NAME` deletes NAME from the layers below;
- `.wh..wh..opq` in a directory hides everything the layers below put there.

ostree 2022.7 (Debian 12) cannot import tars itself (`--tree=tar=` commits an empty tree), hence this
module.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from imagemode.errors import ImagemodeError

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
XATTR_PREFIX = "SCHILY.xattr."


class LayerError(ImagemodeError):
    pass


@dataclass
class Whiteouts:
    deleted: list[str] = field(default_factory=list)  # paths removed from lower layers
    opaque: list[str] = field(default_factory=list)  # directories whose lower content is hidden


def _safe_name(name: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise LayerError(f"layer entry {name!r} escapes the root")
    return "/".join(parts)


def _set_xattrs(path: str, headers: Mapping[str, str]) -> None:
    for key, value in headers.items():
        if key.startswith(XATTR_PREFIX):
            try:
                os.setxattr(
                    path,
                    key[len(XATTR_PREFIX) :],
                    value.encode("utf-8", "surrogateescape"),
                    follow_symlinks=False,
                )
            except OSError:
                # Some filesystems refuse some namespaces (security.* under a sandbox); the file stays.
                pass


def extract(tar_path: Path, dest: Path) -> Whiteouts:
    """Extract a (possibly gzip-compressed) layer tar into the empty directory `dest`."""
    wh = Whiteouts()
    dir_modes: list[tuple[str, int, int]] = []
    root = os.fspath(dest)
    with tarfile.open(tar_path, mode="r|*") as tar:
        for m in tar:
            name = _safe_name(m.name)
            if not name:
                continue
            parent, _, base = name.rpartition("/")
            if base == OPAQUE:
                wh.opaque.append(parent)
                continue
            if base.startswith(WHITEOUT):
                wh.deleted.append(f"{parent}/{base[len(WHITEOUT) :]}" if parent else base[len(WHITEOUT) :])
                continue
            path = os.path.join(root, name)
            if parent:
                os.makedirs(os.path.join(root, parent), exist_ok=True)
            if m.isdir():
                os.makedirs(path, exist_ok=True)
                os.chown(path, m.uid, m.gid)
                _set_xattrs(path, m.pax_headers)
                dir_modes.append((path, m.mode, int(m.mtime)))
                continue
            if os.path.lexists(path) and not os.path.isdir(path):
                os.unlink(path)  # a later entry of the same layer wins, as tar would
            if m.isreg():
                f = tar.extractfile(m)
                assert f is not None
                with open(path, "wb") as out:
                    shutil.copyfileobj(f, out, 1 << 20)
            elif m.issym():
                os.symlink(m.linkname, path)
            elif m.islnk():
                os.link(os.path.join(root, _safe_name(m.linkname)), path)
                continue  # a hard link shares owner, mode and xattrs with its target
            else:
                # Device nodes and fifos cannot be committed to ostree; images keep /dev empty anyway.
                continue
            os.chown(path, m.uid, m.gid, follow_symlinks=False)
            if not m.issym():
                # chmod after chown: chown clears setuid and setgid bits.
                os.chmod(path, stat.S_IMODE(m.mode))
            _set_xattrs(path, m.pax_headers)
            os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)
    # Directory modes last, so that a 0555 directory did not block the files written into it.
    for path, mode, mtime in reversed(dir_modes):
        os.chmod(path, stat.S_IMODE(mode))
        os.utime(path, (mtime, mtime))
    return wh
