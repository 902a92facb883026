"""GRUB's environment block (`/boot/grub/grubenv`): where boot counting lives, so that GRUB itself can
fall back when a new deployment never comes up (docs/health.md).

The block is 1024 bytes: a header line, `name=value` lines, and `#` padding. GRUB's `save_env` writes
the file's blocks in place, so it must exist, be exactly one block long and not be sparse. Linux-side
writes replace it by rename (imagemode.boot.replace), so a power cut leaves the old block or the new
one: GRUB reads the file's block list afresh at every boot.
"""

from __future__ import annotations

from pathlib import Path

from imagemode.boot import replace

# Where /boot/grub/grubenv is on a device: the physical root, as for `boot update`.
PHYSICAL = Path("/sysroot")

PATH = "boot/grub/grubenv"  # under the sysroot; grub.cfg loads it as /boot/grub/grubenv
SIZE = 1024
HEADER = "# GRUB Environment Block\n"

# The variables imagemode keeps there. GRUB reads and writes only these (load_env's whitelist).
TRY = "imagemode_try"  # checksum.serial of the deployment being tried
TRIES = "imagemode_tries"  # boots it has left; GRUB decrements at each boot, 0 means fall back
FALLBACK = "imagemode_fallback"  # set by GRUB when it fell back from TRY
VARIABLES = (TRY, TRIES, FALLBACK)
MAX_TRIES = 9  # GRUB 2.06 has no arithmetic: grub.cfg counts down with one branch per value


class GrubenvError(ValueError):
    pass


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            nxt = value[i + 1]
            out.append("\n" if nxt == "n" else nxt)
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse(data: bytes) -> dict[str, str]:
    text = data.decode("utf-8", "replace")
    if not text.startswith(HEADER):
        raise GrubenvError("not a GRUB environment block (no header)")
    env: dict[str, str] = {}
    for line in text[len(HEADER) :].split("\n"):
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if sep:
            env[name] = _unescape(value)
    return env


def render(env: dict[str, str]) -> bytes:
    body = HEADER + "".join(f"{k}={_escape(v)}\n" for k, v in env.items())
    data = body.encode()
    if len(data) > SIZE:
        raise GrubenvError(f"the environment needs {len(data)} bytes; GRUB's block holds {SIZE}")
    return data + b"#" * (SIZE - len(data))


def read(sysroot: Path) -> dict[str, str]:
    """The variables; a missing or damaged block reads as empty (GRUB then counts nothing)."""
    try:
        return parse((sysroot / PATH).read_bytes())
    except (FileNotFoundError, GrubenvError):
        return {}


def write(sysroot: Path, env: dict[str, str]) -> None:
    replace.replace(sysroot / PATH, render(env), replace.live(sysroot))


def update(sysroot: Path, **changes: str | None) -> dict[str, str]:
    """Set (a string) or remove (None) variables, keeping the others. Returns the new environment."""
    env = read(sysroot)
    new = dict(env)
    for k, v in changes.items():
        if v is None:
            new.pop(k, None)
        else:
            new[k] = v
    if new != env or not (sysroot / PATH).exists():
        write(sysroot, new)
    return new


def arm(sysroot: Path, deployment: str, tries: int) -> None:
    """Give `deployment` (checksum.serial) `tries` boots to become healthy once it is the default."""
    if not 1 <= tries <= MAX_TRIES:
        raise GrubenvError(f"tries must be 1 to {MAX_TRIES}, not {tries}")
    update(sysroot, **{TRY: deployment, TRIES: str(tries), FALLBACK: None})


def disarm(sysroot: Path) -> None:
    update(sysroot, **dict.fromkeys(VARIABLES))
