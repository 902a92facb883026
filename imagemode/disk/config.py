"""Disk customizations from config.toml, in bootc-image-builder's format.

One table, `KEYS`, declares every accepted key: its path, its type and what it means. Parsing walks the
file against that table, so an unknown key is an error that names it, and `docs/disk.md` lists the same
table.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagemode.boot import cmdline
from imagemode.errors import ImagemodeError
from imagemode.run import RunError, run


class ConfigError(ImagemodeError):
    pass


@dataclass(frozen=True)
class Key:
    path: str  # dotted; "[]" marks an array of tables
    kind: type
    help: str


KEYS: tuple[Key, ...] = (
    Key("customizations.user[].name", str, "user name (required); 'root' sets root's password and key"),
    Key("customizations.user[].password", str, "password as a crypt(3) hash, e.g. from `openssl passwd -6`"),
    Key("customizations.user[].key", str, "an SSH public key, installed in the user's authorized_keys"),
    Key("customizations.user[].groups", list, "supplementary groups, which must exist in the image"),
    Key("customizations.kernel.append", str, "kernel arguments appended to those of the image"),
    Key("customizations.filesystem[].mountpoint", str, "only '/' is supported: the root filesystem"),
    Key("customizations.filesystem[].minsize", object, "minimum size: bytes, or a string like '10 GiB'"),
    Key(
        "install.enforce-container-sigpolicy",
        bool,
        "true: the device takes only updates its policy.json finds signed (docs/signing.md)",
    ),
)
_KNOWN = {k.path: k for k in KEYS}
_CRYPT_RE = re.compile(r"^\$(1|5|6|y|gy|2[abxy]?|7)\$[^\s:]+$")
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
          "KI": 1024, "MI": 1024**2, "GI": 1024**3, "TI": 1024**4}  # fmt: skip


@dataclass(frozen=True)
class User:
    name: str
    password: str | None = None
    key: str | None = None
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class DiskConfig:
    users: tuple[User, ...] = ()
    kernel_append: tuple[str, ...] = ()
    root_minsize: int | None = None
    enforce: bool | None = None  # install.enforce-container-sigpolicy; None: not set


def parse_size(value: object, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            unit = (m.group(2) or "").upper().rstrip("B")
            return int(m.group(1)) * _UNITS[unit]
    raise ConfigError(f"{where}: {value!r} is not a size (use bytes, or e.g. '10 GiB', '5G')")


def _walk(data: dict[str, Any], prefix: str, out: list[tuple[str, str, Any]]) -> None:
    """Flatten to (schema path, display path, value); arrays of tables become 'x[]' / 'x[0]'."""
    for k, v in data.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and not v:
            out.append((path, path, v))  # an empty table: known only as the prefix of a key
        elif isinstance(v, dict):
            _walk(v, path + ".", out)
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for i, item in enumerate(v):
                sub: list[tuple[str, str, Any]] = []
                _walk(item, "", sub)
                out.extend((f"{path}[].{s}", f"{path}[{i}].{d}", val) for s, d, val in sub)
        else:
            out.append((path, path, v))


def _check_key(text: str, where: str) -> None:
    p = Path("/dev/stdin")
    try:
        run(["ssh-keygen", "-l", "-f", p], input=text + "\n")
    except RunError:
        raise ConfigError(f"{where}: the SSH public key does not parse") from None


def load(path: Path) -> DiskConfig:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    flat: list[tuple[str, str, Any]] = []
    _walk(data, "", flat)
    for schema, shown, value in flat:
        key = _KNOWN.get(schema)
        if key is None and value == {} and any(k.startswith((schema + ".", schema + "[]")) for k in _KNOWN):
            continue
        if key is None:
            raise ConfigError(f"{path}: unknown key {shown}")
        if key.kind is not object and not isinstance(value, key.kind):
            raise ConfigError(f"{path}: {shown} must be a {key.kind.__name__}")
    cz = data.get("customizations", {})
    users = []
    for i, u in enumerate(cz.get("user", [])):
        where = f"{path}: customizations.user[{i}]"
        name = u.get("name")
        if not name or not re.match(r"^[a-z_][a-z0-9_-]*$", name):
            raise ConfigError(f"{where}: 'name' is required and must be a valid user name")
        pw = u.get("password")
        if pw is not None and not _CRYPT_RE.match(pw):
            raise ConfigError(f"{where}: 'password' must be a crypt(3) hash (e.g. from `openssl passwd -6`)")
        key = u.get("key")
        if key is not None:
            _check_key(key, where)
        groups = u.get("groups", [])
        if not all(isinstance(g, str) for g in groups):
            raise ConfigError(f"{where}: 'groups' must be a list of strings")
        users.append(User(name, pw, key, tuple(groups)))
    minsize = None
    for i, fs in enumerate(cz.get("filesystem", [])):
        where = f"{path}: customizations.filesystem[{i}]"
        if fs.get("mountpoint") != "/":
            raise ConfigError(f'{where}: only mountpoint = "/" is supported')
        if "minsize" in fs:
            minsize = parse_size(fs["minsize"], where + ".minsize")
    append_text = cz.get("kernel", {}).get("append", "")
    try:
        append = tuple(cmdline.check(cmdline.split(append_text), f"{path}: customizations.kernel.append"))
    except cmdline.CmdlineError as e:
        raise ConfigError(str(e)) from None
    enforce = data.get("install", {}).get("enforce-container-sigpolicy")
    return DiskConfig(tuple(users), append, minsize, enforce)
