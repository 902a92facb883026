"""A booted device's status, kept until a file it was read from changes.

`imagemode status` reads ostree's deployments and their commits through libostree, grubenv and the
health records. Under emulation most of its two seconds are the imports of libostree's bindings and of
the CLI, not the reading. Every input of the answer changes a file that `stat` sees:

- ostree swaps /boot/loader on every change of the deployments or their order, and writes origins
  (the image followed, pinning, signature enforcement) by rename into the deploy directory;
- a staged deployment is /run/ostree/staged-deployment;
- imagemode replaces its own state files by rename (health records, cached update, download-only);
- a new boot has a new boot_id;
- `usr-overlay` mounts an overlay on /usr, which /proc/self/mountinfo shows.

So the status that reads libostree also writes /run/imagemode/status.json, with the fingerprint of
those files taken *before* it read them. A later status whose fingerprint matches prints that answer
and imports nothing else. A change during the read leaves a fingerprint that no longer matches, and
the next status reads again. The file keeps the fingerprint on its first line and then the status
exactly as `--json` prints it, so that the commonest call, `status --json`, imports nothing but os;
the other forms parse it with json. This module runs before the CLI is loaded (imagemode.entry).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing's import costs a tenth of a second under emulation; mypy reads the name
if TYPE_CHECKING:
    from typing import Any

CACHE = "/run/imagemode/status.json"
MAGIC = "imagemode status cache 1"
FORMATS = ("humanreadable", "yaml", "json")
VERSIONS = ("0", "1")  # bootc status --format-version: one schema, named by both
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
# Each stateroot's deploy directory (a deployment added or removed) and each origin in it, by inode:
# ostree replaces an origin by rename, and a directory's mtime alone could miss two changes within one
# clock tick. (os.listdir rather than glob, whose imports cost more than the rest of this module.)
STATEROOTS = "/sysroot/ostree/deploy"


def _stat(path: str) -> str:
    try:
        st = os.lstat(path)
    except OSError:
        return f"{path!r} -"
    link = os.readlink(path) if os.path.islink(path) else ""
    return f"{path!r} {st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} {link!r}"


def _names(directory: str) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except OSError:
        return []


def fingerprint() -> str:
    """One line: the boot, this code's location (another imagemode, on PYTHONPATH, answers for
    itself) and the stat of every watched file."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    paths = [*WATCHED]
    for stateroot in _names(STATEROOTS):
        deploy = os.path.join(STATEROOTS, stateroot, "deploy")
        paths += [deploy, *(os.path.join(deploy, n) for n in _names(deploy) if n.endswith(".origin"))]
    parts = [
        boot,
        repr(os.path.dirname(os.path.abspath(__file__))),
        *(_stat(p) for p in paths),
        _usr_mounts(),
    ]
    return " | ".join(parts)


def _usr_mounts() -> str:
    """What is mounted on /usr: `usr-overlay` changes status (usrOverlay) by a mount, not a file."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            return repr([ln for ln in f if ln.split(" ", 5)[4:5] == ["/usr"]])
    except OSError:
        return ""


def load_text(fp: str) -> str | None:
    """The cached status as `--json` prints it, if it was read in the state `fp` describes."""
    try:
        with open(CACHE, encoding="utf-8") as f:
            magic, kept, text = f.readline(), f.readline(), f.read()
    except (OSError, UnicodeDecodeError):
        return None
    if magic != MAGIC + "\n" or kept != fp + "\n" or not text.startswith("{"):
        return None
    return text


def load(fp: str) -> dict[str, Any] | None:
    import json

    text = load_text(fp)
    try:
        status = json.loads(text) if text is not None else None
    except ValueError:
        return None
    return status if isinstance(status, dict) else None


def save(fp: str, status: dict[str, Any]) -> None:
    """Best effort: a status that cannot be kept (not root, /run full) is read again next time."""
    import contextlib
    from pathlib import Path

    from imagemode import atomic

    text = f"{MAGIC}\n{fp}\n{render(status, 'json', False, tty=False)}"
    with contextlib.suppress(OSError):
        atomic.write(Path(CACHE), text.encode(), mode=0o600, durable=False)


def parse(argv: list[str]) -> tuple[str | None, bool] | None:
    """(format, --booted) for the plain forms of `status`; None for anything else, which the CLI parses."""
    fmts: list[str] = []
    booted = False
    args = list(argv)
    while args:
        a = args.pop(0)
        if a == "--json":
            fmts.append("json")
        elif a == "--booted":
            booted = True
        elif a == "--format" and args and args[0] in FORMATS:
            fmts.append(args.pop(0))
        elif a.startswith("--format=") and a.split("=", 1)[1] in FORMATS:
            fmts.append(a.split("=", 1)[1])
        elif a == "--format-version" and args and args[0] in VERSIONS:
            args.pop(0)  # bootc's API guide asks agents for it; both versions are the one schema
        elif a.startswith("--format-version=") and a.split("=", 1)[1] in VERSIONS:
            pass
        else:
            return None
    if len(fmts) > 1:
        return None  # --json with --format: the CLI says they contradict
    return (fmts[0] if fmts else None), booted


def render(status: dict[str, Any], fmt: str | None, booted: bool, tty: bool) -> str:
    if booted:
        # As bootc filters to the booted slot: the other slots stay, empty, so every reader of the full
        # form reads this one too (the human form among them).
        st = status["status"]
        status = {**status, "status": {**st, "staged": None, "rollback": None, "otherDeployments": []}}
    fmt = fmt or ("humanreadable" if tty else "yaml")
    if fmt == "json":
        import json

        return json.dumps(status, indent=2) + "\n"
    from imagemode.host import status as hs

    return hs.to_yaml(status) if fmt == "yaml" else hs.human(status)


def answer(argv: list[str], tty: bool) -> str | None:
    """What `imagemode status ARGV` prints, when the cache holds it; None to take the long way."""
    parsed = parse(argv)
    if parsed is None or not os.path.exists("/run/ostree-booted"):
        return None
    if parsed == ("json", False):
        return load_text(fingerprint())  # as kept: no parsing, and no json module
    status = load(fingerprint())
    return None if status is None else render(status, *parsed, tty)
