"""`imagemode bundle IMAGE -o update.tar`: an OS image as one oci-archive, for devices with no network.

The archive holds the whole image: its layers, and so every workload image embedded in it
(`imagemode embed`). A device applies it with `imagemode switch --transport oci-archive PATH`, from a
USB disk for example. Bound images are not in it: they are by definition pulled from a registry, so
the bundle names them, and a device with no network and without them refuses the update (nothing is
staged). Embed what must work offline.
"""

from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from imagemode import confined
from imagemode.embed import store
from imagemode.errors import ImagemodeError
from imagemode.host import bound
from imagemode.oci import storage
from imagemode.oci.reference import ImageRef, Transport

BOOTC_LABEL = "containers.bootc"


@dataclass(frozen=True)
class Bundle:
    path: str
    image: str
    digest: str  # the manifest digest in the archive: what `imagemode status` shows after the switch
    size_bytes: int
    embedded: tuple[str, ...]  # workload images inside the OS image
    bound: tuple[str, ...]  # images the OS pulls at update time, not inside the archive


def _archive_digest(path: Path) -> str:
    with tarfile.open(path) as tar:
        member = tar.extractfile("index.json")
        assert member is not None
        index = json.load(member)
    manifests = index.get("manifests", [])
    if len(manifests) != 1:
        raise ImagemodeError(f"{path}: expected one image in the archive, found {len(manifests)}")
    return str(manifests[0]["digest"])


def bundle(image: ImageRef, out: Path) -> Bundle:
    if image.transport is not Transport.CONTAINERS_STORAGE:
        raise ImagemodeError(f"{image.skopeo}: bundle takes a local image (copy it in with skopeo first)")
    if storage.labels(image).get(BOOTC_LABEL) != "1":
        raise ImagemodeError(f"{image}: not a bootable image (no {BOOTC_LABEL}=1 label)")
    with storage.mounted(image) as root:
        embedded = tuple(e.ref for e in store.read_list(root))
        with confined.Tree(root) as tree:
            bound_refs = tuple(str(w.ref) for w in bound.in_tree(tree))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # the archive appears whole, or not at all
    try:
        storage.copy(image, f"oci-archive:{tmp}")
        digest = _archive_digest(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return Bundle(str(out), str(image), digest, out.stat().st_size, embedded, bound_refs)
