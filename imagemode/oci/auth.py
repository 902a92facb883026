"""Registry credentials: the auth.json that skopeo is given, and a refusal when others can read it.

The order is bootc's: ostree's own locations first (a device's system credentials), then the ones
containers tools use (containers-auth.json(5)). The first file that exists is the one used.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from imagemode.errors import ImagemodeError

OSTREE_AUTH_FILES = (
    Path("/run/ostree/auth.json"),
    Path("/etc/ostree/auth.json"),
    Path("/usr/lib/ostree/auth.json"),
)


class AuthFileError(ImagemodeError):
    pass


def candidates(env: Mapping[str, str] | None = None) -> list[Path]:
    env = os.environ if env is None else env
    out = list(OSTREE_AUTH_FILES)
    if env.get("REGISTRY_AUTH_FILE"):
        out.append(Path(env["REGISTRY_AUTH_FILE"]))
    runtime = env.get("XDG_RUNTIME_DIR") or f"/run/containers/{os.getuid()}"
    out.append(Path(runtime) / "containers/auth.json")
    home = Path(env.get("HOME") or "/root")
    config = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    out += [config / "containers/auth.json", home / ".docker/config.json"]
    return out


def check_private(path: Path) -> None:
    """Credentials that another user can read are refused, as ssh refuses such a private key."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise AuthFileError(
            f"{path} is open to other users (mode {mode:04o}); refusing it: run chmod 600 {path}"
        )


def find(env: Mapping[str, str] | None = None) -> Path | None:
    """The auth file to use, checked, or None when there is none."""
    for path in candidates(env):
        if path.is_file():
            check_private(path)
            return path
    return None
