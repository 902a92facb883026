"""A corpus of hostile images, made by code: layer tars, OCI layouts and oci-archives that try to write
outside the store, lie about their digests, expand without bound, or break the JSON they carry.

Nothing here is a binary blob: every case is built from a few lines, so a reader sees what it does.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EPOCH = 1_700_000_000
Entry = tuple[Any, ...]  # ("file", name, data[, mode]) | ("dir", name[, mode]) | ("sym", name, target)
# | ("link", name, target) | ("raw", TarInfo, data)


def tar_bytes(entries: list[Entry], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for e in entries:
            kind, name = e[0], e[1]
            ti = tarfile.TarInfo(name) if kind != "raw" else e[1]
            ti.mtime = EPOCH
            data = b""
            if kind == "file":
                data = e[2]
                ti.size, ti.mode = len(data), (e[3] if len(e) > 3 else 0o644)
            elif kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, (e[2] if len(e) > 2 else 0o755)
            elif kind == "sym":
                ti.type, ti.linkname = tarfile.SYMTYPE, e[2]
            elif kind == "link":
                ti.type, ti.linkname = tarfile.LNKTYPE, e[2]
            elif kind == "raw":
                data = e[2]
            tar.addfile(ti, io.BytesIO(data) if data else None)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Layer:
    blob: bytes  # as stored (maybe gzip)
    diff_id: str  # what the config claims
    media_type: str = "application/vnd.oci.image.layer.v1.tar"

    @property
    def digest(self) -> str:
        return sha(self.blob)

    @classmethod
    def of(cls, tar: bytes, gz: bool = False) -> Layer:
        if gz:
            return cls(gzip.compress(tar, mtime=0), sha(tar), "application/vnd.oci.image.layer.v1.tar+gzip")
        return cls(tar, sha(tar))


def config(diff_ids: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "created": "2023-11-14T22:13:20Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {"containers.bootc": "1"}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        **extra,
    }


@dataclass
class Image:
    """An OCI image to write as a layout: its layers, and hooks that break its manifest or config."""

    layers: list[Layer]
    cfg: dict[str, Any] | None = None
    break_manifest: Callable[[dict[str, Any]], Any] | None = None
    raw_config: bytes | None = None
    raw_manifest: bytes | None = None
    blobs: dict[str, bytes] = field(default_factory=dict)

    def write(self, path: Path, tag: str = "latest") -> str:
        """Write an OCI layout at `path`; returns the manifest digest as the index names it."""
        (path / "blobs/sha256").mkdir(parents=True, exist_ok=True)
        (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

        def put(data: bytes) -> str:
            d = sha(data)
            (path / "blobs/sha256" / d[7:]).write_bytes(data)
            return d

        descs = [
            {"mediaType": la.media_type, "digest": put(la.blob), "size": len(la.blob)} for la in self.layers
        ]
        cfg_bytes = self.raw_config
        if cfg_bytes is None:
            cfg_bytes = json.dumps(self.cfg or config([la.diff_id for la in self.layers])).encode()
        manifest: Any = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": put(cfg_bytes),
                "size": len(cfg_bytes),
            },
            "layers": descs,
        }
        if self.break_manifest is not None:
            manifest = self.break_manifest(copy.deepcopy(manifest))
        mbytes = self.raw_manifest if self.raw_manifest is not None else json.dumps(manifest).encode()
        mdigest = put(mbytes)
        index = {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": mdigest,
                    "size": len(mbytes),
                    "annotations": {"org.opencontainers.image.ref.name": tag},
                }
            ],
        }
        (path / "index.json").write_text(json.dumps(index))
        return mdigest

    def archive(self, out: Path, tag: str = "latest") -> Path:
        """The image as an oci-archive (a tar of its layout), as a USB bundle carries it."""
        layout = out.with_suffix(".layout")
        self.write(layout, tag)
        with tarfile.open(out, "w") as tar:
            for p in sorted(layout.rglob("*")):
                tar.add(p, arcname=str(p.relative_to(layout)), recursive=False)
        return out


# --- the sentinel: a tree outside every root, hashed before and after each case ----------------------


def make_sentinel(path: Path) -> Path:
    (path / "dir").mkdir(parents=True)
    (path / "secret").write_text("root's secret\n")
    (path / "secret").chmod(0o600)
    (path / "dir/keep").write_text("keep\n")
    (path / "ssh").mkdir()
    (path / "ssh/authorized_keys").write_text("ssh-ed25519 AAAA the-owner\n")
    return path


def tree_hash(path: Path) -> str:
    """Names, types, owners, modes, link targets and contents of everything under `path`."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in [*sorted([*dirnames, *filenames]), "."]:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            h.update(f"{os.path.relpath(p, path)}\0{st.st_mode}\0{st.st_uid}\0{st.st_gid}\0".encode())
            if stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(p).encode())
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()


# --- layers that try to leave the tree -----------------------------------------------------------------


def escape_layers(target: str) -> dict[str, bytes]:
    """Symlink-then-X layers aimed at `target` (a directory outside the root), by name."""
    return {
        "symlink-then-file": tar_bytes(
            [("sym", "evil", target), ("file", "evil/pwned", b"#!/bin/sh\n", 0o4755)]
        ),
        "symlink-then-dir": tar_bytes([("sym", "evil", target), ("dir", "evil", 0o777)]),
        "symlink-then-hardlink": tar_bytes([("sym", "evil", target), ("link", "stolen", "evil/secret")]),
        "hardlink-outside": tar_bytes([("link", "stolen", "../../../../../../etc/shadow")]),
        "dotdot-file": tar_bytes([("file", "../../../../../../tmp/pwned", b"x")]),
        "whiteout-escapes": tar_bytes([("file", "../../.wh.secret", b"")]),
        "whiteout-dotdot": tar_bytes([("dir", "usr"), ("file", "usr/.wh...", b"")]),
        "nul-in-name": tar_bytes([("raw", _pax_named("usr/a\0b"), b"x")]),
    }


def _pax_named(name: str) -> tarfile.TarInfo:
    """A regular file whose PAX path record says `name` (a ustar field cannot hold a NUL)."""
    ti = tarfile.TarInfo("placeholder")
    ti.size = 1
    ti.pax_headers = {"path": name}
    return ti


def gzip_bomb(expanded: int = 512 << 20) -> bytes:
    """A gzip layer of a few hundred KB that expands to `expanded` bytes of zeros, in 1 MiB files."""
    buf = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=9) as gz,
        tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):  # type: ignore[call-overload]
        zeros = b"\0" * (1 << 20)
        for i in range(expanded >> 20):
            ti = tarfile.TarInfo(f"z/{i:05d}")
            ti.size = len(zeros)
            tar.addfile(ti, io.BytesIO(zeros))
    return buf.getvalue()


def _checksum(header: bytearray) -> None:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)


def sparse_bomb(size: int = 0o77777777777) -> bytes:
    """A GNU sparse entry: 512 bytes of data that claim to be a file of `size` bytes (8 GiB, the most
    its 11 octal digits hold), all holes."""
    ti = tarfile.TarInfo("holes")
    ti.size = 512
    block = bytearray(ti.tobuf(format=tarfile.GNU_FORMAT))
    block[156:157] = b"S"  # GNUTYPE_SPARSE
    block[386:398] = b"%011o\0" % 0  # one region: offset 0
    block[398:410] = b"%011o\0" % 512  # of 512 bytes
    block[482:483] = b"\0"  # no extended sparse headers
    block[483:495] = b"%011o\0" % size  # the size it claims
    _checksum(block)
    return bytes(block) + b"x" * 512 + b"\0" * 1024


def lying_size_tar(size: int = 1 << 40) -> bytes:
    """A PAX size record that says 1 TiB, over a few bytes of data."""
    ti = tarfile.TarInfo("big")
    ti.size = 3
    ti.pax_headers = {"size": str(size)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(ti, io.BytesIO(b"abc"))
    return buf.getvalue()


# --- manifests and configs that break the rules -------------------------------------------------------


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], Any]:
    def f(m: dict[str, Any]) -> Any:
        node: Any = m
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
        return m

    return f


def malformed_manifests() -> Iterator[tuple[str, Callable[[dict[str, Any]], Any], str]]:
    """(case, how the manifest is broken, the words the one-line error must say)."""
    yield "size-negative", _set(["layers", 0, "size"], -1), "is not a whole number"
    yield "size-2^63", _set(["layers", 0, "size"], 2**63), "is not a whole number"
    yield "size-string", _set(["layers", 0, "size"], "12"), "is not a whole number"
    yield "digest-no-colon", _set(["layers", 0, "digest"], "sha256" + "a" * 64), "is not a sha256 digest"
    yield (
        "digest-traversal",
        _set(["layers", 0, "digest"], "sha256:../../../../tmp/x"),
        "is not a sha256 digest",
    )
    yield "digest-upper-hex", _set(["layers", 0, "digest"], "sha256:" + "A" * 64), "is not a sha256 digest"
    yield "digest-sha512", _set(["layers", 0, "digest"], "sha512:" + "a" * 128), "is not a sha256 digest"
    yield (
        "config-digest-traversal",
        _set(["config", "digest"], "sha256:../index.json"),
        "is not a sha256 digest",
    )
    yield (
        "zstd-layer",
        _set(["layers", 0, "mediaType"], "application/vnd.oci.image.layer.v1.tar+zstd"),
        "not one imagemode can unpack",
    )
    yield "no-layers", _set(["layers"], []), "no layers"
    yield "layers-not-list", _set(["layers"], {"a": 1}), "no layers"
    yield "schema-1", _set(["schemaVersion"], 1), "schemaVersion"
    yield "not-an-object", lambda m: [m], "not a JSON object"


def malformed_configs(diff_id: str) -> Iterator[tuple[str, bytes, str]]:
    """(case, config bytes, the words the error must say), for a one-layer image."""

    def cfg(**kw: Any) -> bytes:
        return json.dumps({**config([diff_id]), **kw}).encode()

    yield "fewer-diff-ids", cfg(rootfs={"type": "layers", "diff_ids": []}), "0 diff_ids for 1 layers"
    yield (
        "diff-id-not-digest",
        cfg(rootfs={"type": "layers", "diff_ids": ["../x"]}),
        "is not a sha256 digest",
    )
    yield "no-rootfs", cfg(rootfs=None), "no rootfs.diff_ids"
    yield "other-arch", cfg(architecture="s390x"), "not linux/amd64"
    yield "labels-not-strings", cfg(config={"Labels": {"a": 1}}), "labels are not strings"
    yield "not-json", b"{not json", "not JSON"
    yield "deep-nesting", b"[" * 100000 + b"]" * 100000, "config"
    yield "too-large", b'{"a": "' + b"x" * (5 << 20) + b'"}', "more than"


YAML_BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
spec: {containers: [{image: *g}]}
"""
