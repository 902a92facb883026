"""libostree through GObject introspection (python3-gi, gir1.2-ostree-1.0): in-process calls where a
CLI call per question would cost a process start each (half a second on a slow device)."""

from __future__ import annotations

import functools
import socket
import stat
from types import SimpleNamespace
from typing import Any

from imagemode.errors import ImagemodeError


class BindingsMissingError(ImagemodeError):
    pass


@functools.cache
def gi() -> Any:
    """OSTree, Gio and GLib, or a clear error naming the packages."""
    try:
        import gi as gi_

        gi_.require_version("OSTree", "1.0")
        from gi.repository import Gio, GLib, OSTree
    except (ImportError, ValueError) as e:
        raise BindingsMissingError(
            "libostree's Python bindings are missing; install them with: apt-get install python3-gi"
            " gir1.2-ostree-1.0"
        ) from e
    return SimpleNamespace(OSTree=OSTree, Gio=Gio, GLib=GLib)


def string_metadata(commit: Any) -> dict[str, str]:
    """The string values of a loaded commit's metadata (its a{sv})."""
    meta = commit.get_child_value(0)
    out = {}
    for i in range(meta.n_children()):
        entry = meta.get_child_value(i)
        value = entry.get_child_value(1).get_variant()
        if value.get_type_string() == "s":
            out[entry.get_child_value(0).get_string()] = value.get_string()
    return out


def commit_string(repo: Any, checksum: str, key: str) -> str | None:
    """A string in a commit's metadata (an OSTree.Repo and a commit checksum), or None."""
    _, commit, _ = repo.load_commit(checksum)
    return string_metadata(commit).get(key)


def child(node: Any, name: str) -> tuple[str | None, Any]:
    """(file checksum, subdirectory) of `name` in a MutableTree; (None, None) when it is absent."""
    try:
        _, csum, sub = node.lookup(name)
    except gi().GLib.Error:
        return None, None
    return csum, sub


def dirmeta(repo: Any, uid: int, gid: int, mode: int, xattrs: list[tuple[bytes, bytes]]) -> str:
    """Write a directory's metadata object (an OSTree.Repo in a transaction); returns its checksum."""
    g = gi()
    # ostree stores uid, gid and mode big-endian.
    v = g.GLib.Variant(
        "(uuua(ayay))", (socket.htonl(uid), socket.htonl(gid), socket.htonl(stat.S_IFDIR | mode), xattrs)
    )
    _, csum = repo.write_metadata(g.OSTree.ObjectType.DIR_META, None, v, None)
    return str(g.OSTree.checksum_from_bytes(csum))
