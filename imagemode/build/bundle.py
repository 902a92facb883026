"""`imagemode bundle IMAGE -o update.tar`: an OS image as one oci-archive, for devices with no network.

The archive holds the whole image: its layers, and so every workload image embedded in it
(`imagemode embed`). A device applies it with `imagemode switch --transport oci-archive PATH`, from a
USB disk for example. Bound images are not in it: they are by definition pulled from a registry, so
the bundle names them, and a device with no network and without them refuses the update (nothing is
staged). Embed what must work offline.

`--sign-by KEY` signs the archive's manifest digest, as the image the devices know
(`--sign-identity`, a registry reference), and puts the signature in the archive
(imagemode.oci.archive). A device checks it against its policy before it imports anything.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from imagemode import atomic, confined
from imagemode.embed import bound, store
from imagemode.errors import ImagemodeError
from imagemode.oci import archive, signature, storage
from imagemode.oci.reference import ImageRef, ImageRefError, Transport, parse
from imagemode.ui import human_size

BOOTC_LABEL = "containers.bootc"


@dataclass(frozen=True)
class Bundle:
    path: str
    image: str
    digest: str  # the manifest digest in the archive: what `imagemode status` shows after the switch
    size_bytes: int
    embedded: tuple[str, ...]  # workload images inside the OS image
    bound: tuple[str, ...]  # images the OS pulls at update time, not inside the archive
    signed_as: str | None = None  # the identity the signature names
    signed_by: str | None = None  # the key's fingerprint

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def human(self) -> str:
        lines = [f"{self.path}: {self.image} {self.digest}, {human_size(self.size_bytes)}"]
        if self.signed_as:
            lines.append(f"  signed as {self.signed_as} by {self.signed_by}")
        lines.append(f"  {len(self.embedded)} embedded workload images inside")
        lines += [f"  bound image not inside (pulled by the device at update time): {r}" for r in self.bound]
        lines.append(f"apply on a device: imagemode switch --transport oci-archive {self.path}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Signing:
    key: str  # a GPG fingerprint in the caller's keyring
    identity: str | None = None  # default: the image's own name
    passphrase_file: Path | None = None


def _identity(text: str) -> str:
    try:
        ref = parse(text)
    except ImageRefError as e:
        raise ImagemodeError(f"--sign-identity: {e}") from None
    if ref.transport is not Transport.REGISTRY:
        raise ImagemodeError(f"--sign-identity: {text} is not a registry reference")
    return str(ref)


def bundle(image: ImageRef, out: Path, signing: Signing | None = None) -> Bundle:
    if image.transport is not Transport.CONTAINERS_STORAGE:
        raise ImagemodeError(f"{image.skopeo}: bundle takes a local image (copy it in with skopeo first)")
    if storage.labels(image).get(BOOTC_LABEL) != "1":
        raise ImagemodeError(f"{image}: not a bootable image (no {BOOTC_LABEL}=1 label)")
    with storage.mounted(image) as root:
        embedded = tuple(e.ref for e in store.read_list(root))
        with confined.Tree(root) as tree:
            bound_refs = tuple(str(w.ref) for w in bound.in_tree(tree))
    identity = _identity(signing.identity or f"{image.name}:{image.tag or 'latest'}") if signing else None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # the archive appears whole, or not at all
    try:
        storage.copy(image, f"oci-archive:{tmp}")
        contents = archive.read(tmp)
        if signing is not None and identity is not None:
            sig = signature.sign(contents.manifest, identity, signing.key, signing.passphrase_file)
            archive.add_signatures(tmp, contents.manifest_digest, identity, [sig])
        atomic.publish(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return Bundle(
        str(out),
        str(image),
        contents.manifest_digest,
        out.stat().st_size,
        embedded,
        bound_refs,
        identity,
        signing.key if signing else None,
    )
