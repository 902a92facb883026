"""Kernel arguments an image asks for (bootc's /usr/lib/bootc/kargs.d), and how an update swaps them.

A deployment's arguments are the machine's own (root=, those from a disk config or typed by an admin)
plus the image's. An update replaces the old image's arguments by the new image's, in place, and
keeps the machine's.
"""

from __future__ import annotations

import platform
import tempfile
import tomllib
from pathlib import Path

from imagemode.store.ostree import Repo

KARGS_D = "usr/lib/bootc/kargs.d"


def image_kargs(kargs_d: Path) -> list[str]:
    """Kernel arguments from an image's kargs.d/*.toml, in name order, for this architecture."""
    out: list[str] = []
    arch = platform.machine()
    for f in sorted(kargs_d.glob("*.toml")) if kargs_d.is_dir() else []:
        data = tomllib.loads(f.read_text())
        arches = data.get("match-architectures")
        if arches and arch not in arches:
            continue
        out.extend(data.get("kargs", []))
    return out


def commit_kargs(repo: Repo, commit: str, work: Path) -> list[str]:
    """An image's kargs.d, read from its commit without checking the whole tree out."""
    with tempfile.TemporaryDirectory(prefix="kargs-", dir=work) as tmp:
        d = Path(tmp) / "kargs.d"
        repo.checkout_subpath(commit, KARGS_D, d)  # no kargs.d: no kernel arguments
        return image_kargs(d)


def replace_image_kargs(current: list[str], old: list[str], new: list[str]) -> list[str]:
    """`current` with `old` (the previous image's arguments) replaced by `new`, where `old` stood.

    Each of `old` removes one occurrence, so an argument the machine also set itself survives. The
    new arguments go where the first old one was, or at the end; `ostree=` is ostree's to write.
    """
    out = [a for a in current if not a.startswith("ostree=")]
    at = None
    for arg in old:
        if arg in out:
            i = out.index(arg)
            at = i if at is None else min(at, i)
            del out[i]
    at = len(out) if at is None else at
    return out[:at] + list(new) + out[at:]
