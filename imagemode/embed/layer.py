"""`imagemode build --embed SOURCE`: the embedded store as one more layer on a built image.

The store is made on the build host, where containers-storage works whatever the build's RUN
sandbox allows, and added with `ADD embed.tar /`: an archive keeps owners, modes, hard links and
xattrs, which a COPY of a directory would not. A store the image already has (from the image it is
built FROM) is copied first, so the new layer holds every embedded image, old and new.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from imagemode import confined
from imagemode.embed import sources, store
from imagemode.oci import storage
from imagemode.oci.reference import ImageRef
from imagemode.run import run

XATTR_PREFIX = "SCHILY.xattr."
WORK_DIR = "/var/tmp"  # not /tmp: a store of real images is larger than a tmpfs may be


def _tarinfo(tar: tarfile.TarFile, path: Path, arcname: str) -> tarfile.TarInfo:
    info = tar.gettarinfo(os.fspath(path), arcname)
    if not path.is_symlink():
        headers = dict(info.pax_headers)
        for name in os.listxattr(path, follow_symlinks=False):
            value = os.getxattr(path, name, follow_symlinks=False)
            headers[XATTR_PREFIX + name] = value.decode("utf-8", "surrogateescape")
        info.pax_headers = headers
    return info


def write_tar(root: Path, out: Path) -> None:
    """Everything under `root`, as paths relative to it, in a PAX tar."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in [*dirnames, *sorted(filenames)]:
                path = Path(dirpath, name)
                info = _tarinfo(tar, path, os.path.relpath(path, root))
                if info.isreg():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)


def _existing_store(image: ImageRef, root: Path) -> None:
    """Carry the FROM image's store forward: only a real directory and a real file at their own paths
    (a link on the way is the image's content, and is not followed to copy what it names)."""
    with storage.mounted(image) as mnt, confined.Tree(mnt) as tree:
        if tree.kind(str(store.STORE)) is confined.Kind.DIR:
            (root / store.STORE).parent.mkdir(parents=True, exist_ok=True)
            run(["cp", "-a", mnt / store.STORE, root / store.STORE])
        if tree.kind(str(store.LIST)) is confined.Kind.FILE:
            run(["cp", "-a", mnt / store.LIST, root / store.LIST])


def add_layer(
    image: ImageRef,
    out: ImageRef,
    wanted: list[sources.Wanted],
    *,
    isolation: str,
    tls_verify: bool = True,
    on_line: Callable[[str], None] | None = None,
) -> list[store.Embedded]:
    """Build `out`: `image` plus a layer holding the embedded store with every `wanted` image."""
    with tempfile.TemporaryDirectory(prefix="imagemode-embed-", dir=WORK_DIR) as tmp:
        root = Path(tmp, "root")
        root.mkdir()
        _existing_store(image, root)
        done = store.embed(
            wanted,
            root,
            tls_verify=tls_verify,
            on_image=(lambda e: on_line(f"embedded {e.ref} {e.digest}")) if on_line else None,
        )
        ctx = Path(tmp, "context")
        ctx.mkdir()
        write_tar(root, ctx / "embed.tar")
        (ctx / "Containerfile").write_text(f"FROM {image}\nADD embed.tar /\n")
        run(
            ["podman", "build", f"--isolation={isolation}", "--force-rm", "-t", str(out), ctx],
            on_line=on_line,
        )
    return done
