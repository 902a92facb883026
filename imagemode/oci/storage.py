"""Local containers-storage (through podman) and copies between transports (through skopeo)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from imagemode.errors import ImagemodeError
from imagemode.oci.reference import ImageRef, Transport
from imagemode.run import RunError, run


class ImageNotFoundError(ImagemodeError):
    pass


def copy(
    src: ImageRef | str,
    dest: ImageRef | str,
    *,
    preserve_digests: bool = False,
    src_tls_verify: bool = True,
    dest_tls_verify: bool = True,
) -> None:
    s = src.skopeo if isinstance(src, ImageRef) else src
    d = dest.skopeo if isinstance(dest, ImageRef) else dest
    cmd = ["skopeo", "copy", "--quiet"]
    if preserve_digests:
        cmd.append("--preserve-digests")
    if not src_tls_verify:
        cmd.append("--src-tls-verify=false")
    if not dest_tls_verify:
        cmd.append("--dest-tls-verify=false")
    run([*cmd, s, d])


def manifest_and_config(ref: ImageRef) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
    """(manifest digest, manifest, config) without copying any layer, or None for a manifest list.

    The digest is the sha256 of the manifest's raw bytes, which is how podman and registries name it.
    """
    import hashlib

    raw = run(["skopeo", "inspect", "--raw", ref.skopeo]).stdout
    manifest: dict[str, Any] = json.loads(raw)
    if "layers" not in manifest:
        return None  # a list: the full copy picks this machine's platform
    config: dict[str, Any] = json.loads(run(["skopeo", "inspect", "--config", "--raw", ref.skopeo]).stdout)
    return f"sha256:{hashlib.sha256(raw.encode()).hexdigest()}", manifest, config


def exists(ref: ImageRef) -> bool:
    return run(["podman", "image", "exists", str(ref)], check=False).returncode == 0


def inspect(ref: ImageRef) -> dict[str, Any]:
    """podman's inspect record of a local image: Id, Digest, Labels, Size, RootFS.Layers, ..."""
    try:
        out = run(["podman", "image", "inspect", str(ref)])
    except RunError as e:
        raise ImageNotFoundError(f"image {ref} is not in local containers-storage") from e
    data: list[dict[str, Any]] = json.loads(out.stdout)
    return data[0]


def tag(source: str, ref: ImageRef) -> None:
    run(["podman", "tag", source, str(ref)])


def untag(ref: ImageRef | str) -> None:
    """Remove this one name. (`podman untag IMAGE` alone would remove every name of the image.)"""
    run(["podman", "untag", str(ref), str(ref)], check=False)


@contextlib.contextmanager
def mounted(ref: ImageRef) -> Iterator[Path]:
    """The merged root filesystem of a local image, read-only in spirit, for the time of the block."""
    if ref.transport is not Transport.CONTAINERS_STORAGE:
        raise ImagemodeError(f"{ref.skopeo}: only containers-storage images can be mounted")
    if not exists(ref):
        raise ImageNotFoundError(f"image {ref} is not in local containers-storage")
    path = Path(run(["podman", "image", "mount", str(ref)]).stdout.strip())
    try:
        yield path
    finally:
        run(["podman", "image", "unmount", str(ref)], check=False)
