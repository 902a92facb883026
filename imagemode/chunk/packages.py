"""Package lists: read from a dpkg status file, and compared between two images with Debian's version
order. Standard library only: `upgrade --check` runs it on the device, before any layer is fetched.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from imagemode.chunk.label import PACKAGE, VERSION_TEXT

# Where a bootable image keeps its dpkg status, by the layout it follows (docs/base-image.md): under /usr
# in imagemode's, in the factory copy of /var in another Debian image's commit.
STATUS_PATHS = ("usr/lib/sysimage/dpkg/status", "usr/share/factory/var/lib/dpkg/status")


def paragraphs(text: str) -> Iterator[dict[str, str]]:
    """The stanzas of a Debian control file, first line of each field only."""
    for para in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in para.splitlines():
            if line[:1] not in (" ", "\t", "") and ":" in line:
                k, _, v = line.partition(":")
                fields[k] = v.strip()
        if fields:
            yield fields


def installed(status: str) -> dict[str, str]:
    """Installed package -> version, from a dpkg status file; a stanza with an odd name is left out."""
    out = {}
    for p in paragraphs(status):
        name, version = p.get("Package", ""), p.get("Version", "")
        if (
            p.get("Status", "").endswith(" installed")
            and PACKAGE.match(name)
            and VERSION_TEXT.match(version)
        ):
            out[name] = version
    return out


# ---- Debian's version order (deb-version(7)) ------------------------------------------------------


def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isdigit():
        return 0
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _compare_part(a: str, b: str) -> int:
    while a or b:
        na = re.match(r"[^0-9]*", a)
        nb = re.match(r"[^0-9]*", b)
        assert na is not None and nb is not None
        sa, sb = na.group(), nb.group()
        a, b = a[len(sa) :], b[len(sb) :]
        for i in range(max(len(sa), len(sb))):
            ca = _order(sa[i]) if i < len(sa) else 0
            cb = _order(sb[i]) if i < len(sb) else 0
            if ca != cb:
                return -1 if ca < cb else 1
        da = re.match(r"[0-9]*", a)
        db = re.match(r"[0-9]*", b)
        assert da is not None and db is not None
        xa, xb = int(da.group() or 0), int(db.group() or 0)
        a, b = a[len(da.group()) :], b[len(db.group()) :]
        if xa != xb:
            return -1 if xa < xb else 1
    return 0


def _split(v: str) -> tuple[int, str, str]:
    """(epoch, upstream, revision): the epoch before the first colon, the revision after the last
    hyphen."""
    epoch, _, rest = v.partition(":") if ":" in v else ("0", "", v)
    upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "")
    return int(epoch) if epoch.isdigit() else 0, upstream, revision


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1, as `dpkg --compare-versions` orders a and b."""
    ea, ua, ra = _split(a)
    eb, ub, rb = _split(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _compare_part(ua, ub) or _compare_part(ra, rb)


# ---- two package lists ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Changes:
    upgraded: tuple[tuple[str, str, str], ...] = ()  # (name, booted version, new version)
    downgraded: tuple[tuple[str, str, str], ...] = ()
    added: tuple[tuple[str, str], ...] = ()
    removed: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        def moved(rows: tuple[tuple[str, str, str], ...]) -> list[dict[str, str]]:
            return [{"name": n, "from": a, "to": b} for n, a, b in rows]

        return {
            "upgraded": moved(self.upgraded),
            "downgraded": moved(self.downgraded),
            "added": [{"name": n, "version": v} for n, v in self.added],
            "removed": [{"name": n, "version": v} for n, v in self.removed],
        }

    def summary(self) -> str:
        kinds = (("upgraded", self.upgraded), ("downgraded", self.downgraded), ("added", self.added),
                 ("removed", self.removed))  # fmt: skip
        parts = [f"{len(rows)} {what}" for what, rows in kinds if rows]
        return ", ".join(parts) or "no package changes"

    def lines(self) -> list[str]:
        out = [f"{n} {a} -> {b}" for n, a, b in self.upgraded]
        out += [f"{n} {a} -> {b} (downgraded)" for n, a, b in self.downgraded]
        out += [f"{n} {v} (added)" for n, v in self.added]
        out += [f"{n} {v} (removed)" for n, v in self.removed]
        return out


def compare(old: Mapping[str, str], new: Mapping[str, str]) -> Changes:
    up, down = [], []
    for name in sorted(set(old) & set(new)):
        c = compare_versions(old[name], new[name])
        if c < 0:
            up.append((name, old[name], new[name]))
        elif c > 0:
            down.append((name, old[name], new[name]))
    return Changes(
        tuple(up),
        tuple(down),
        tuple((n, new[n]) for n in sorted(set(new) - set(old))),
        tuple((n, old[n]) for n in sorted(set(old) - set(new))),
    )
