"""The `imagemode` command (/usr/bin/imagemode and `python3 -m imagemode`).

`imagemode status` is what agents, health checks and people call most, so its plain forms are
answered from imagemode.host.status_cache when that holds them, before the CLI and libostree's
bindings are imported (a second under emulation). Everything else goes to imagemode.cli.
"""

from __future__ import annotations

import sys


def run() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["status"]:
        from imagemode.host import status_cache

        out = status_cache.answer(argv[1:], sys.stdout.isatty())
        if out is not None:
            sys.stdout.write(out)
            return 0
    from imagemode.cli import main

    return main(argv)
