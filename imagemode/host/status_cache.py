"""A booted device's status, kept until a file it was read from changes.

`imagemode status` reads ostree's deployments and their commits through libostree, grubenv and the
health records. Under emulation most of its two seconds are the imports of libostree's bindings and of
the CLI, not the reading. Every input of the answer changes a file that `stat` sees:

- ostree swaps /boot/loader on every change of the deployments or their order, and writes origins
  (the image followed, pinning, signature enforcement) by rename into the deploy directory;
- a staged deployment is /run/ostree/staged-deployment;
- imagemode replaces its own state files by rename (health records, cached update, download-only);
- a new boot has a new boot_id.

So the status that reads libostree also writes /run/imagemode/status.json, with the fingerprint of
those files taken *before* it read them. A later status whose fingerprint matches prints that answer
and imports nothing else. A change during the read leaves a fingerprint that no longer matches, and
the next status reads again. Only the standard library's os and json are imported here: this module
runs before the CLI is loaded (imagemode.entry).
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any

CACHE = "/run/imagemode/status.json"
FORMATS = ("humanreadable", "yaml", "json")
# What status reads, or the files whose replacement marks a change of it (see above).
WATCHED = (
    "/run/ostree-booted",
    "/sysroot/boot/loader",
    "/sysroot/boot/grub/grubenv",
    "/run/ostree/staged-deployment",
    "/run/imagemode/download-only",
    "/var/lib/imagemode/cached-update.json",
    "/var/lib/imagemode/health/deployments.json",
)
# The deploy directories (a deployment added or removed) and each origin, by inode: ostree replaces an
# origin by rename, and a directory's mtime alone could miss two changes within one clock tick.
DEPLOY_DIRS = "/sysroot/ostree/deploy/*/deploy"
ORIGINS = "*.origin"


def _stat(path: str) -> list[Any]:
    try:
        st = os.lstat(path)
    except OSError:
        return [path, None]
    link = os.readlink(path) if os.path.islink(path) else None
    return [path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, link]


def fingerprint() -> list[Any]:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    here = os.path.dirname(os.path.abspath(__file__))  # another imagemode (PYTHONPATH) answers for itself
    dirs = sorted(glob.glob(DEPLOY_DIRS))
    paths = [*WATCHED, *dirs, *(o for d in dirs for o in sorted(glob.glob(os.path.join(d, ORIGINS))))]
    return [boot, here, *(_stat(p) for p in paths)]


def load(fp: list[Any]) -> dict[str, Any] | None:
    """The cached status, if it was read in the state `fp` describes."""
    try:
        with open(CACHE) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if (
        not isinstance(data, dict)
        or data.get("fingerprint") != fp
        or not isinstance(data.get("status"), dict)
    ):
        return None
    status: dict[str, Any] = data["status"]
    return status


def save(fp: list[Any], status: dict[str, Any]) -> None:
    """Best effort: a status that cannot be kept (not root, /run full) is read again next time."""
    tmp = f"{CACHE}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(CACHE), mode=0o755, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"fingerprint": fp, "status": status}, f)
        os.replace(tmp, CACHE)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def parse(argv: list[str]) -> tuple[str | None, bool] | None:
    """(format, --booted) for the plain forms of `status`; None for anything else, which the CLI parses."""
    fmt: str | None = None
    booted = False
    args = list(argv)
    while args:
        a = args.pop(0)
        if a == "--json":
            fmt = "json"
        elif a == "--booted":
            booted = True
        elif a == "--format" and args and args[0] in FORMATS:
            fmt = args.pop(0)
        elif a.startswith("--format=") and a.split("=", 1)[1] in FORMATS:
            fmt = a.split("=", 1)[1]
        else:
            return None
    return fmt, booted


def render(status: dict[str, Any], fmt: str | None, booted: bool, tty: bool) -> str:
    if booted:
        status = {**status, "status": {k: v for k, v in status["status"].items() if k in ("booted", "type")}}
    fmt = fmt or ("humanreadable" if tty else "yaml")
    if fmt == "json":
        return json.dumps(status, indent=2) + "\n"
    from imagemode.host import status as hs

    return hs.to_yaml(status) if fmt == "yaml" else hs.human(status)


def answer(argv: list[str], tty: bool) -> str | None:
    """What `imagemode status ARGV` prints, when the cache holds it; None to take the long way."""
    parsed = parse(argv)
    if parsed is None or not os.path.exists("/run/ostree-booted"):
        return None
    status = load(fingerprint())
    return None if status is None else render(status, *parsed, tty)
