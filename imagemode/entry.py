"""The `imagemode` command (/usr/bin/imagemode and `python3 -m imagemode`), and `bootc` beside it.

`imagemode status` and `imagemode health --show --json` are what agents, health checks and people
call most, so they are answered before the CLI and libostree's bindings are imported (a second under
emulation): status from imagemode.host.status_cache when that holds it, the last health run from its
record. Everything else, and every error, goes to imagemode.cli.
"""

from __future__ import annotations

import sys


def run() -> int:
    return _run(sys.argv[1:], "imagemode")


def bootc() -> int:
    """/usr/bin/bootc: bootc's command line (imagemode.bootc), with the same quick answers."""
    return _run(sys.argv[1:], "bootc")


def _run(argv: list[str], prog: str) -> int:
    if argv[:1] == ["status"]:
        from imagemode.host import status_cache

        out = status_cache.answer(argv[1:], sys.stdout.isatty())
        if out is not None:
            sys.stdout.write(out)
            return 0
    if prog == "bootc":
        from imagemode.bootc import main as bootc_main

        return bootc_main(argv)
    if argv[:1] == ["health"] and sorted(argv[1:]) == ["--json", "--show"]:
        rc = _last_health()
        if rc is not None:
            return rc
    from imagemode.cli import main

    return main(argv)


def _last_health() -> int | None:
    """`health --show --json`: the last run's record as the CLI prints it; None when there is none."""
    import os
    from types import SimpleNamespace

    if not os.path.exists("/run/ostree-booted"):
        return None
    from imagemode.health import state

    rep = state.last()
    if not rep:
        return None  # the CLI says that no check has run yet
    from imagemode.output import emit

    shown = state.Run(rep)
    emit(shown, SimpleNamespace(json=True))
    return shown.exit_code
