"""Writing OCI image layouts by hand, byte for byte reproducibly.

A layer is a tar written in name order with every timestamp clamped, numeric owners only and xattrs as
PAX records. The config carries a fixed `created`. The same tree and the same epoch therefore give the
same layer digest, the same config digest and the same manifest digest on any machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from imagemode.oci import manifest as oci_manifest
from imagemode.oci.manifest import digest_of

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"


class _HashingWriter:
    """A file wrapper that hashes and counts what passes through."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, b: bytes) -> int:
        self.sha.update(b)
        self.size += len(b)
        return self.f.write(b)

    def flush(self) -> None:
        self.f.flush()


def blob_name(digest: str) -> str:
    """Where a blob is in an OCI layout (or in the tar of one); the digest is checked first, so
    that it is never a path."""
    return "blobs/sha256/" + oci_manifest.digest(digest, "blob").removeprefix("sha256:")


def blob_path(layout: Path, digest: str) -> Path:
    return layout / blob_name(digest)


@dataclass(frozen=True)
class Blob:
    digest: str  # "sha256:..."
    size: int
    media_type: str

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


def _xattrs(path: str) -> dict[str, str]:
    out = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    for name in sorted(names):
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
        # tarfile writes str values; surrogateescape keeps binary values (file capabilities) intact.
        out[f"SCHILY.xattr.{name}"] = value.decode("utf-8", "surrogateescape")
    return out


def _walk(path: str, arc: str) -> Iterator[tuple[str, str]]:
    """(path, archive name) depth first in name order, like `tar --sort=name`; links are not followed."""
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        rel = f"{arc}/{name}" if arc else name
        yield full, rel
        if os.path.isdir(full) and not os.path.islink(full):
            yield from _walk(full, rel)


class LayerWriter:
    """One uncompressed layer tar being written, hashed as it goes: entries are added in the order they
    must appear (parents first), and `close()` gives the blob (its digest is also its diff_id). The one
    place that writes layer tars: write_layer() and the chunked layers (imagemode.chunk.write) use it."""

    def __init__(self, dest: Path) -> None:
        # Open across many add() calls, closed by close() or abort(): no `with` can span them.
        self._raw = open(dest, "wb")  # noqa: SIM115
        self._hw = _HashingWriter(self._raw)
        self._tar = tarfile.open(fileobj=self._hw, mode="w|", format=tarfile.PAX_FORMAT)  # type: ignore[call-overload]  # noqa: SIM115

    def tarinfo(self, path: str, arcname: str) -> tarfile.TarInfo | None:
        """The entry for a file on disk; a second name of an inode already written is a hard link."""
        info: tarfile.TarInfo | None = self._tar.gettarinfo(path, arcname=arcname)
        return info

    def add(self, ti: tarfile.TarInfo, data: IO[bytes] | None = None) -> None:
        self._tar.addfile(ti, data)

    def close(self) -> Blob:
        self._tar.close()
        self._raw.close()
        return Blob(f"sha256:{self._hw.sha.hexdigest()}", self._hw.size, MEDIA_LAYER_TAR)

    def abort(self) -> None:
        with contextlib.suppress(OSError, tarfile.TarError):
            self._tar.close()
        self._raw.close()


def write_layer(
    root: Path, dest: Path, epoch: int, *, prefix: Iterable[str] = (), component: str | None = None
) -> Blob:
    """Write every file under `root` as an uncompressed, reproducible layer tar at `dest`.

    prefix: directories (relative, e.g. "usr/lib") written first as plain root-owned 0755 entries, for a
    layer that adds files deep in a tree it does not own.
    component: marks each regular file with this `user.component` xattr (docs/chunking.md). Only
    regular files: Linux refuses user xattrs on symlinks.
    """
    root_s = os.fspath(root)
    w = LayerWriter(dest)
    try:
        for d in prefix:
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, epoch
            w.add(ti)
        for full, arc in _walk(root_s, ""):
            info = w.tarinfo(full, arc)
            if info is None:  # sockets and other types a layer cannot carry
                continue
            info.mtime = min(int(info.mtime), epoch)
            info.uname = info.gname = ""
            info.pax_headers = _xattrs(full)
            if component is not None and info.isreg():
                info.pax_headers["SCHILY.xattr.user.component"] = component
            if info.isreg():
                with open(full, "rb") as f:
                    w.add(info, f)
            else:
                w.add(info)
    except BaseException:
        w.abort()
        raise
    return w.close()


def iso_time(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch_of(created: object) -> int | None:
    """An image config's `created` as seconds since the epoch (iso_time's inverse); None when it is
    absent or no time."""
    if not isinstance(created, str) or not created:
        return None
    try:
        return int(datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


class Layout:
    """An OCI image layout directory being written: blobs first, index.json last."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.blobs = path / "blobs/sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def add_file(self, src: Path, blob: Blob) -> None:
        """Put a blob file in place, by hard link when it can (layers are hundreds of MB)."""
        dest = self.blobs / blob.hex
        if dest.exists():
            return
        try:
            os.link(src, dest)
        except OSError:
            import shutil

            shutil.copyfile(src, dest)

    def add_json(self, obj: dict[str, Any], media_type: str) -> Blob:
        data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
        blob = Blob(digest_of(data), len(data), media_type)
        (self.blobs / blob.hex).write_bytes(data)
        return blob

    def write_image(self, layers: list[tuple[Blob, str]], config: dict[str, Any], tag: str) -> Blob:
        """layers: (blob, diff_id) pairs, bottom first. Returns the manifest blob."""
        config = dict(config)
        config["rootfs"] = {"type": "layers", "diff_ids": [diff for _, diff in layers]}
        cfg = self.add_json(config, MEDIA_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": cfg.descriptor(),
            "layers": [b.descriptor() for b, _ in layers],
        }
        mblob = self.add_json(manifest, MEDIA_MANIFEST)
        index = {
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [mblob.descriptor(annotations={"org.opencontainers.image.ref.name": tag})],
        }
        (self.path / "index.json").write_text(json.dumps(index, sort_keys=True))
        return mblob
