"""Kernel arguments an image asks for (bootc's /usr/lib/bootc/kargs.d), and how an update swaps them.

A deployment's arguments are the machine's own (root=, those from a disk config or typed by an admin)
plus the image's. An update replaces the old image's arguments by the new image's, in place, and
keeps the machine's.
"""

from __future__ import annotations

import platform
import tomllib

from imagemode import confined
from imagemode.boot import cmdline
from imagemode.errors import ImagemodeError
from imagemode.store.ostree import CommitReader, Repo

KARGS_D = "usr/lib/bootc/kargs.d"


class KargsError(ImagemodeError):
    pass


def image_kargs(tree: confined.Reader) -> list[str]:
    """Kernel arguments from an image's kargs.d/*.toml, in name order, for this architecture. The
    files are the image's: a wrong type is refused by name, as bootc refuses it."""
    out: list[str] = []
    arch = platform.machine()
    d = confined.resolve(tree, KARGS_D)
    if d is None or tree.kind(d) is not confined.Kind.DIR:
        return out
    for name in tree.listdir(d):
        if not name.endswith(".toml"):
            continue
        where = f"/{KARGS_D}/{name}"
        text = confined.read_text(tree, f"{d}/{name}")
        if text is None:
            continue
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise KargsError(f"{where}: not TOML ({e})") from None
        arches = data.get("match-architectures")
        if arches is not None and not _strings(arches):
            raise KargsError(f"{where}: match-architectures must be a list of strings")
        if arches and arch not in arches:
            continue
        kargs = data.get("kargs", [])
        if not _strings(kargs):
            raise KargsError(f'{where}: kargs must be a list of strings, like kargs = ["quiet"]')
        try:
            out.extend(cmdline.check(kargs, where))
        except cmdline.CmdlineError as e:
            raise KargsError(str(e)) from None
    return out


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def commit_kargs(repo: Repo, commit: str) -> list[str]:
    """An image's kargs.d, read from its commit without checking anything out."""
    return image_kargs(CommitReader(repo, commit))


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
