"""tmpfiles.d lines as the importer and the linter both read them: which paths of /var an image has
systemd-tmpfiles create, and with which line type. (The device's upgrade path reads them too, so they
live here and not in the build-side linter.)"""

from __future__ import annotations

import os
from collections.abc import Iterable

DIRS = ("usr/lib/tmpfiles.d", "etc/tmpfiles.d")


def parse(texts: Iterable[str]) -> dict[str, str]:
    """Path -> tmpfiles.d line type, from the texts of tmpfiles.d files in order (later ones win)."""
    entries: dict[str, str] = {}
    for text in texts:
        for line in text.splitlines():
            fields = line.split()
            if len(fields) >= 2 and not fields[0].startswith("#"):
                entries[os.path.normpath(fields[1])] = fields[0].rstrip("!+-=~^")
    return entries
