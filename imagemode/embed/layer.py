"""`imagemode build --embed SOURCE`: the embedded store as one more layer on a built image.

The store is made on the build host, where containers-storage works whatever the build's RUN
sandbox allows, and added with `ADD embed.tar /`: an archive keeps owners, modes, hard links and
xattrs, which a COPY of a directory would not. The archive is written as every layer is
(imagemode.oci.layout): in name order, numeric owners, timestamps clamped. A store the image
already has (from the image it is built FROM) is copied first, so the new layer holds every
embedded image, old and new.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from imagemode import confined
from imagemode.embed import sources, store
from imagemode.oci import storage
from imagemode.oci.layout import write_layer
from imagemode.oci.reference import ImageRef
from imagemode.run import run

WORK_DIR = "/var/tmp"  # not /tmp: a store of real images is larger than a tmpfs may be


def epoch_of(image: ImageRef) -> int:
    """The clamp for the embed layer's timestamps: SOURCE_DATE_EPOCH, else the FROM image's own
    creation time, so that the same images embedded into the same base give the same layer."""
    if os.environ.get("SOURCE_DATE_EPOCH", "").isdigit():
        return int(os.environ["SOURCE_DATE_EPOCH"])
    created = str(storage.inspect(image).get("Created", ""))
    try:
        return int(datetime.fromisoformat(created[:19]).replace(tzinfo=UTC).timestamp())
    except ValueError:
        return 0


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
        write_layer(root, ctx / "embed.tar", epoch_of(image))
        (ctx / "Containerfile").write_text(f"FROM {image}\nADD embed.tar /\n")
        run(
            ["podman", "build", f"--isolation={isolation}", "--force-rm", "-t", str(out), ctx],
            on_line=on_line,
        )
    return done
