"""Registry credentials: the auth.json that skopeo is given, and a refusal when others can read it.

The order is bootc's: ostree's own locations first (a device's system credentials), then the ones
containers tools use (containers-auth.json(5)). The first file that exists is the one used.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator, Mapping
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
    """Credentials that another user can read or replace are refused, as ssh refuses such a private
    key: the file must be a regular file (not a link to one), owned by this user, mode 0600 or
    stricter."""
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        raise AuthFileError(f"{path} is a symlink; refusing it: put the credentials in the file itself")
    if not stat.S_ISREG(st.st_mode):
        raise AuthFileError(f"{path} is not a regular file; refusing it")
    if st.st_uid != os.geteuid():
        raise AuthFileError(
            f"{path} is owned by uid {st.st_uid}, not {os.geteuid()}; refusing it: run chown root: {path}"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise AuthFileError(
            f"{path} is open to other users (mode {mode:04o}); refusing it: run chmod 600 {path}"
        )


def find(env: Mapping[str, str] | None = None) -> Path | None:
    """The auth file to use, checked, or None when there is none."""
    for path in candidates(env):
        if os.path.lexists(path):
            check_private(path)
            return path
    return None


@contextlib.contextmanager
def temporary(registry: str, user: str, password: str) -> Iterator[Path]:
    """An auth.json for one registry, readable by this user only, removed after the block."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    with tempfile.TemporaryDirectory(prefix="imagemode-auth-") as d:  # mkdtemp: mode 0700
        path = Path(d) / "auth.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"auths": {registry: {"auth": token}}}, f)
        yield path
