"""Read an image's manifest and config without its layers, then copy only the layers the store lacks.

skopeo does the transport work (registry, oci, oci-archive, containers-storage, with auth.json and
registries.conf). Layers the store already has become sparse placeholder files in the OCI layout that
skopeo writes into: its oci destination sees that a blob exists and does not fetch it, and the importer
never reads a layer whose commit it has. So an update that changes one layer downloads one layer.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagemode.errors import ImagemodeError
from imagemode.oci import storage
from imagemode.oci.reference import ImageRef, Transport
from imagemode.run import RunError, disk_watchdog

# (bytes so far, bytes in all, seconds since the start), about once a second.
OnBytes = Callable[[int, int, float], None]

GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}

# What skopeo prints, and what it means to someone at a device.
_CAUSES = (
    (("manifest unknown", "name unknown", "not found", "no such file", "does not resolve"),
     "image not found"),
    (("unauthorized", "authentication required", "denied", "401"), "access refused (401 unauthorized); "
     "give credentials in /etc/ostree/auth.json (docs/upgrade.md)"),
    (("server gave HTTP response to HTTPS client",), "the registry speaks plain HTTP; "
     "mark it insecure in /etc/containers/registries.conf.d (docs/upgrade.md)"),
    (("connection refused", "no such host", "i/o timeout", "network is unreachable", "no route to host",
      "EOF", "connection reset", "TLS handshake timeout", "malformed HTTP response", "server closed",
      "timed out", "timeout"),
     "registry unreachable"),
)  # fmt: skip


class FetchError(ImagemodeError):
    pass


def cause(e: RunError) -> str:
    """What a failed skopeo (or podman pull) means, in a few words, with its own message after."""
    detail = str(e).split(": ", 1)[-1]
    # skopeo logs as `time="…" level=fatal msg="…"`: keep the message.
    detail = re.sub(r'^time="[^"]*" level=\w+ msg="', "", detail).rstrip('"').replace('\\"', '"')
    detail = re.sub(r'^Error parsing image name "[^"]*": ', "", detail)  # the reference, said again
    for needles, meaning in _CAUSES:
        if any(n.lower() in detail.lower() for n in needles):
            return f"{meaning} ({detail[:160]})"
    return detail[:200]


def explain(ref: ImageRef, e: RunError) -> FetchError:
    return FetchError(f"cannot read {ref.skopeo}: {cause(e)}")


@dataclass(frozen=True)
class Remote:
    """An image as its source describes it, read without a layer: manifest digest, manifest, config."""

    ref: ImageRef
    source: ImageRef  # what to copy: the platform's manifest by digest when `ref` names a list
    digest: str
    manifest: dict[str, Any]
    config: dict[str, Any]
    tls_verify: bool = True  # False only for a plain-HTTP registry given by the caller (tests)

    @property
    def config_digest(self) -> str:
        d: str = self.manifest["config"]["digest"]
        return d

    @property
    def diff_ids(self) -> list[str]:
        ids: list[str] = self.config["rootfs"]["diff_ids"]
        return ids

    @property
    def version(self) -> str | None:
        labels = self.config.get("config", {}).get("Labels") or {}
        v: str | None = labels.get("org.opencontainers.image.version")
        return v


def _sha256(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def inspect(ref: ImageRef, authfile: Path | None = None, tls_verify: bool = True) -> Remote:
    """The manifest and config of `ref`. A manifest list resolves to this machine's platform.

    A device says which registries speak plain HTTP in registries.conf; `tls_verify=False` is for
    callers that cannot write it (tests on a build host)."""
    try:
        raw = storage.inspect_raw(ref, authfile=authfile, tls_verify=tls_verify)
        manifest: dict[str, Any] = json.loads(raw)
        source = ref
        if "manifests" in manifest:
            arch = GOARCH.get(platform.machine(), platform.machine())
            found = [
                m for m in manifest["manifests"]
                if m.get("platform", {}).get("architecture") == arch
                and m.get("platform", {}).get("os", "linux") == "linux"
            ]  # fmt: skip
            if not found or ref.transport is not Transport.REGISTRY:
                raise FetchError(f"{ref.skopeo}: a manifest list without a linux/{arch} image")
            source = ImageRef(ref.transport, name=ref.name, digest=found[0]["digest"])
            raw = storage.inspect_raw(source, authfile=authfile, tls_verify=tls_verify)
            manifest = json.loads(raw)
        if "layers" not in manifest:
            raise FetchError(f"{ref.skopeo}: not an image manifest ({manifest.get('mediaType', 'no type')})")
        config: dict[str, Any] = json.loads(
            storage.inspect_raw(source, config=True, authfile=authfile, tls_verify=tls_verify)
        )
    except RunError as e:
        raise explain(ref, e) from None
    except json.JSONDecodeError as e:
        raise FetchError(f"{ref.skopeo}: the manifest or config is not JSON ({e})") from None
    return Remote(ref, source, _sha256(raw), manifest, config, tls_verify)


def _blob_path(layout: Path, digest: str) -> Path:
    algo, hexd = digest.split(":", 1)
    return layout / "blobs" / algo / hexd


def _allocated(layout: Path) -> int:
    """Bytes written into the layout so far: placeholders are sparse, so they count nothing."""
    total = 0
    for dirpath, _, files in os.walk(layout):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except FileNotFoundError:  # skopeo renamed its temporary file meanwhile
                pass
    return total


@dataclass(frozen=True)
class Fetched:
    layout: Path  # an OCI layout whose image is tagged "image"
    layers_fetched: int
    bytes_fetched: int


def fetch(
    remote: Remote,
    have_layer: Callable[[str], bool],
    work: Path,
    authfile: Path | None = None,
    on_bytes: OnBytes | None = None,
) -> Fetched:
    """Copy `remote` into a new OCI layout under `work`, skipping the layers `have_layer` names."""
    layout = Path(tempfile.mkdtemp(prefix="oci-", dir=work))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text('{"schemaVersion": 2, "manifests": []}')
    missing = 0
    total = 0
    descs = remote.manifest["layers"]
    for desc, diff_id in zip(descs, remote.diff_ids, strict=True):
        if have_layer(diff_id):
            blob = _blob_path(layout, desc["digest"])
            blob.parent.mkdir(parents=True, exist_ok=True)
            with open(blob, "wb") as f:
                f.truncate(int(desc["size"]))
        else:
            missing += 1
            total += int(desc["size"])
    full = disk_watchdog(work)
    t0 = time.monotonic()

    def watch() -> str | None:
        if on_bytes is not None:
            on_bytes(min(_allocated(layout), total), total, time.monotonic() - t0)
        return full()

    try:
        storage.copy(
            remote.source,
            ImageRef(Transport.OCI, path=os.fspath(layout), tag="image"),
            preserve_digests=True,
            src_tls_verify=remote.tls_verify,
            src_authfile=authfile,
            watchdog=watch,
        )
    except RunError as e:
        raise explain(remote.ref, e) from None
    if on_bytes is not None:
        on_bytes(total, total, time.monotonic() - t0)
    return Fetched(layout, missing, total + int(remote.manifest["config"]["size"]))
