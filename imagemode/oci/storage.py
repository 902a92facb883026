"""Local containers-storage (through podman) and copies between transports (through skopeo)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from imagemode.errors import ImagemodeError
from imagemode.oci import auth
from imagemode.oci.policy import Trust
from imagemode.oci.reference import ImageRef, Transport, local_tag
from imagemode.run import RunError, run


class ImageNotFoundError(ImagemodeError):
    pass


def _skopeo(trust: Trust | None = None) -> list[str]:
    """skopeo, told about CONTAINERS_REGISTRIES_CONF: podman honours that variable, but Debian 12's
    skopeo reads only its (hidden) --registries-conf flag. A mirror set up for podman then works for
    imagemode too (docs/embed.md). `trust`: the policy and signature settings to apply."""
    conf = os.environ.get("CONTAINERS_REGISTRIES_CONF")
    cmd = ["skopeo", f"--registries-conf={conf}"] if conf else ["skopeo"]
    return cmd + (trust.skopeo_flags() if trust is not None else [])


def copy(
    src: ImageRef | str,
    dest: ImageRef | str,
    *,
    preserve_digests: bool = False,
    src_tls_verify: bool = True,
    dest_tls_verify: bool = True,
    src_authfile: Path | None = None,
    dest_creds: tuple[str, str] | None = None,  # (user, password): written to a 0600 auth file
    digest_file: Path | None = None,  # where skopeo writes the manifest digest it stored
    watchdog: Callable[[], str | None] | None = None,
    trust: Trust | None = None,  # the policy the source must pass (None: skopeo's default file)
    checked: bool = False,  # imagemode checked the source's signatures itself (a signed bundle)
    sign_by: str | None = None,  # a GPG fingerprint: sign at the destination (its lookaside)
    sign_identity: str | None = None,  # the reference signed (default: the destination's)
    compress_level: int | None = None,  # gzip level of the layers it compresses (skopeo's default: 6)
) -> None:
    s = src.skopeo if isinstance(src, ImageRef) else src
    d = dest.skopeo if isinstance(dest, ImageRef) else dest
    cmd = [*_skopeo(trust), *(["--insecure-policy"] if checked else []), "copy", "--quiet"]
    if d.startswith(("oci:", "oci-archive:")):
        # An OCI layout cannot hold signatures: without this skopeo refuses to copy a signed image.
        # The source's signatures are still checked against the policy.
        cmd.append("--remove-signatures")
    if sign_by is not None:
        cmd.append(f"--sign-by={sign_by}")
    if sign_identity is not None:
        cmd.append(f"--sign-identity={sign_identity}")
    if preserve_digests:
        cmd.append("--preserve-digests")
    if compress_level is not None:
        cmd.append(f"--dest-compress-level={compress_level}")
    if not src_tls_verify:
        cmd.append("--src-tls-verify=false")
    if not dest_tls_verify:
        cmd.append("--dest-tls-verify=false")
    if src_authfile is not None:
        cmd.append(f"--src-authfile={src_authfile}")
    if digest_file is not None:
        cmd.append(f"--digestfile={digest_file}")
    if dest_creds is None:
        run([*cmd, s, d], watchdog=watchdog)
        return
    # Credentials never go on a command line, where -v, an error and /proc/PID/cmdline show them.
    registry = d.removeprefix("docker://").split("/", 1)[0]
    with auth.temporary(registry, *dest_creds) as authfile:
        run([*cmd, f"--dest-authfile={authfile}", s, d], watchdog=watchdog)


def inspect_raw(
    ref: ImageRef, *, config: bool = False, authfile: Path | None = None, tls_verify: bool = True
) -> str:
    """The raw manifest (or config) bytes of `ref`, as text; no layer is read."""
    cmd = [*_skopeo(), "inspect", "--raw", *(["--config"] if config else [])]
    if not tls_verify:
        cmd.append("--tls-verify=false")
    if authfile is not None:
        cmd.append(f"--authfile={authfile}")
    return run([*cmd, ref.skopeo]).stdout


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


def labels(ref: ImageRef) -> dict[str, str]:
    """A local image's labels (podman puts them at the top, or under Config, by version)."""
    info = inspect(ref)
    found: dict[str, str] = info.get("Labels") or info.get("Config", {}).get("Labels") or {}
    return found


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


@contextlib.contextmanager
def as_local(ref: ImageRef, purpose: str) -> Iterator[ImageRef]:
    """`ref` in local containers-storage for the time of the block: itself, or a temporary copy of an
    image from any other transport, untagged at the end."""
    if ref.transport is Transport.CONTAINERS_STORAGE:
        yield ref
        return
    temp = local_tag(f"localhost/imagemode-{purpose}-tmp:{secrets.token_hex(6)}")
    copy(ref, temp)
    try:
        yield temp
    finally:
        untag(temp)
