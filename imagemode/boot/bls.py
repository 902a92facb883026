"""Boot Loader Specification entries, as ostree writes them in /boot/loader/entries."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from imagemode.boot import cmdline

_INDEX_RE = re.compile(r"\(ostree:(\d+)\)")


@dataclass(frozen=True)
class Entry:
    path: Path
    title: str
    version: str
    options: str
    linux: str
    initrd: str

    @property
    def index(self) -> int:
        """ostree's deployment index (0 is the default): written as "(ostree:N)" in the title."""
        m = _INDEX_RE.search(self.title)
        return int(m.group(1)) if m else 1 << 30

    def karg(self, key: str) -> str | None:
        for arg in cmdline.split(self.options):
            k, sep, v = arg.partition("=")
            if k == key and sep:
                return v
        return None


def parse(path: Path) -> Entry:
    fields: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, _, value = line.strip().partition(" ")
        if key and not key.startswith("#"):
            fields[key] = value.strip()
    return Entry(
        path,
        fields.get("title", path.stem),
        fields.get("version", ""),
        fields.get("options", ""),
        fields.get("linux", ""),
        fields.get("initrd", ""),
    )


def read(boot: Path) -> list[Entry]:
    """The entries under boot/loader (ostree's atomically swapped link), default first."""
    d = boot / "loader" / "entries"
    if not d.is_dir():
        return []
    return sorted((parse(p) for p in d.glob("*.conf")), key=lambda e: (e.index, e.path.name))
