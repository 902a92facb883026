"""Read an image's manifest and config without its layers, then copy only the layers the store lacks.

skopeo does the transport work (registry, oci, containers-storage, with auth.json and
registries.conf). Layers the store already has become sparse placeholder files in the OCI layout that
skopeo writes into: its oci destination sees that a blob exists and does not fetch it, and the importer
never reads a layer whose commit it has. So an update that changes one layer downloads one layer.

A bundle (oci-archive) is read by imagemode.oci.archive instead, which takes only the blobs that are
missing out of the tar, where skopeo would unpack all of it for each inspect and copy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagemode.errors import ImagemodeError
from imagemode.oci import archive, storage
from imagemode.oci import manifest as oci_manifest
from imagemode.oci.image import Image
from imagemode.oci.layout import blob_name, blob_path
from imagemode.oci.policy import PolicyError, Trust
from imagemode.oci.reference import ImageRef, Transport
from imagemode.run import RunError, disk_watchdog

# (bytes so far, bytes in all, seconds since the start), about once a second.
OnBytes = Callable[[int, int, float], None]
OnLayers = Callable[[dict[str, int], int], None]  # (layer digest -> bytes of it whole, bytes in flight)

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


class SignatureError(FetchError):
    """The trust policy refused the image: not signed, or not by a key it trusts."""


# What containers/image says when the policy refuses a source, and what it means.
_POLICY_CAUSES = (
    ("A signature was required, but no signature exists", "signature missing"),
    ("Invalid GPG signature", "signed by a key it does not trust"),
    ("is not accepted", "signed by a key it does not trust, or as another image"),
    ("Signature for identity", "signed as another image"),
    ("no valid signatures", "no signature verifies"),
)


def policy_refusal(remote_ref: ImageRef, e: RunError, trust: Trust) -> SignatureError | None:
    """A one-line SignatureError when skopeo's failure is the policy's refusal, else None."""
    detail = str(e)
    name = remote_ref.name or str(remote_ref)
    if "is rejected by policy" in detail:
        return SignatureError(f"{trust.policy} rejects every image from {name}")
    for needle, reason in _POLICY_CAUSES:
        if needle in detail:
            return SignatureError(f"not signed by a key that {trust.policy} trusts for {name} ({reason})")
    return None


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


@dataclass(frozen=True, kw_only=True)
class Remote(Image):
    """An image as its source describes it, read without a layer."""

    ref: ImageRef
    source: ImageRef  # what to copy: the platform's manifest by digest when `ref` names a list
    tls_verify: bool = True  # False only for a plain-HTTP registry given by the caller (tests)
    signed_bundle: bool = False  # an archive whose signatures imagemode checked (imagemode.oci.archive)

    @property
    def repacked(self) -> bool:
        """An image that podman pulled: containers-storage keeps the registry's manifest, which names
        compressed layers, over layers it stores uncompressed. skopeo cannot copy it with the same
        digests; it compresses every layer afresh, into a manifest of the copy's own. (An image podman
        built names its layers uncompressed, and copies as it is.)"""
        return self.ref.transport is Transport.CONTAINERS_STORAGE and any(
            str(d.get("mediaType", "")).endswith(("gzip", "zstd")) for d in self.manifest["layers"]
        )


def inspect(
    ref: ImageRef, authfile: Path | None = None, tls_verify: bool = True, trust: Trust | None = None
) -> Remote:
    """The manifest and config of `ref`, each checked before any field is used. A manifest list
    resolves to this machine's platform. A registry image is then named by its digest (`source`): the
    copy that applies the policy copies that manifest, not whatever the tag names by then.

    A bundle's signatures are checked here, against `trust`, before skopeo unpacks it.

    A device says which registries speak plain HTTP in registries.conf; `tls_verify=False` is for
    callers that cannot write it (tests on a build host)."""
    if ref.transport is Transport.OCI_ARCHIVE:
        return _inspect_archive(ref, trust or Trust())
    where = ref.skopeo
    try:
        raw = storage.inspect_raw(ref, authfile=authfile, tls_verify=tls_verify)
        source = ref
        if oci_manifest.is_index(oci_manifest.load(raw, f"{where}: manifest")):
            found = oci_manifest.for_platform(oci_manifest.index(raw, f"{where}: manifest list"))
            if found is None or ref.transport is not Transport.REGISTRY:
                raise FetchError(
                    f"{where}: a manifest list without a linux/{oci_manifest.machine_arch()} image"
                )
            source = ImageRef(ref.transport, name=ref.name, digest=found)
            raw = storage.inspect_raw(source, authfile=authfile, tls_verify=tls_verify)
            if oci_manifest.digest_of(raw) != found:
                raise FetchError(f"{where}: the registry sent a manifest that is not {found}")
        if ref.transport is Transport.REGISTRY:
            source = ImageRef(ref.transport, name=ref.name, digest=oci_manifest.digest_of(raw))
        manifest = oci_manifest.manifest(raw, f"{where}: manifest")
        cfg_raw = storage.inspect_raw(source, config=True, authfile=authfile, tls_verify=tls_verify)
        if oci_manifest.digest_of(cfg_raw) != manifest["config"]["digest"]:
            raise FetchError(f"{where}: the config sent is not {manifest['config']['digest']}")
        config = oci_manifest.config(cfg_raw, len(manifest["layers"]), f"{where}: config")
    except RunError as e:
        raise explain(ref, e) from None
    except oci_manifest.ManifestError as e:
        raise FetchError(str(e)) from None
    digest = oci_manifest.digest_of(raw)
    return Remote(
        ref=ref, source=source, digest=digest, manifest=manifest, config=config, tls_verify=tls_verify
    )


def _inspect_archive(ref: ImageRef, trust: Trust) -> Remote:
    """A bundle's manifest and config, read from the tar; its signatures checked first."""
    path = Path(ref.path)
    try:
        signed = archive.verify(path, trust, ref.tag)
    except archive.ArchiveError as e:
        raise SignatureError(str(e)) from None
    try:
        contents = archive.read(path, ref.tag)
        if signed is not None and contents.manifest_digest != signed:
            raise SignatureError(f"{ref.skopeo}: the archive changed after its signature was checked")
        if oci_manifest.is_index(oci_manifest.load(contents.manifest, f"{ref.skopeo}: manifest")):
            raise FetchError(f"{ref.skopeo}: a manifest list; bundle one platform's image")
        manifest = oci_manifest.manifest(contents.manifest, f"{ref.skopeo}: manifest")
        cfg_raw = archive.config(path, manifest["config"]["digest"])
        config = oci_manifest.config(cfg_raw, len(manifest["layers"]), f"{ref.skopeo}: config")
    except archive.ArchiveError as e:
        raise FetchError(str(e)) from None
    except oci_manifest.ManifestError as e:
        raise FetchError(str(e)) from None
    return Remote(ref=ref, source=ref, digest=contents.manifest_digest, manifest=manifest, config=config,
                  signed_bundle=signed is not None)  # fmt: skip


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


def _blob_bytes(layout: Path, digests: list[str]) -> tuple[dict[str, int], int]:
    """Bytes written so far into each blob that skopeo has named (it names a blob when it is whole),
    and into the blobs it is still writing. Those are temporary files in the layout's top directory,
    with no digest yet: which layer each one is, nobody can tell until it is named."""
    out = {}
    for d in digests:
        try:
            out[d] = blob_path(layout, d).lstat().st_blocks * 512
        except (FileNotFoundError, ValueError):
            out[d] = 0
    in_flight = 0
    with os.scandir(layout) as entries:
        for e in entries:
            if e.name not in ("oci-layout", "index.json", "blobs"):
                try:
                    in_flight += e.stat(follow_symlinks=False).st_blocks * 512
                except FileNotFoundError:  # named meanwhile: counted at the next look
                    pass
    return out, in_flight


@dataclass(frozen=True)
class Fetched:
    layout: Path  # an OCI layout whose image is tagged "image"
    layers_fetched: int
    bytes_fetched: int


class NoSpaceError(FetchError):
    pass


# Unpacked, a layer takes about this many times its compressed size in the store (OS layers: 2.5 to 3),
# and the compressed blob is held beside it until it is committed.
UNPACK_FACTOR = 3


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def preflight(need_download: int, work: Path, store: Path | None) -> None:
    """Refuse, before any byte is downloaded, an update that cannot fit: the blobs go to `work`, and
    what they unpack to goes to `store` (often the same filesystem)."""
    need = need_download * UNPACK_FACTOR
    free = (
        _free(work)
        if store is None or os.stat(work).st_dev == os.stat(store).st_dev
        else min(_free(work), _free(store))
    )
    if need > free:
        raise NoSpaceError(
            f"the update needs about {_mb(need)} ({_mb(need_download)} to download, unpacked"
            f" {UNPACK_FACTOR}x) and {store or work} has {_mb(free)} free; nothing was downloaded"
        )


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _from_archive(
    remote: Remote,
    missing: list[dict[str, Any]],
    layout: Path,
    total: int,
    on_bytes: OnBytes | None,
    trust: Trust,
) -> None:
    """The layout of a bundle's image: its manifest, config and missing layers, out of the tar. The
    policy decides an unsigned bundle here, where skopeo's copy would have."""
    path = Path(remote.ref.path)
    try:
        if not remote.signed_bundle:
            archive.admit_unsigned(remote.ref, trust)
    except archive.ArchiveError as e:
        raise SignatureError(str(e)) from None
    except PolicyError as e:
        raise SignatureError(str(e)) from None
    done = 0
    last = time.monotonic()
    t0 = last

    def heard(n: int) -> None:
        nonlocal done, last
        done += n
        if on_bytes is not None and time.monotonic() - last >= 1:
            last = time.monotonic()
            on_bytes(done, total, last - t0)

    cfg = remote.manifest["config"]["digest"]
    try:
        archive.extract(path, [(d["digest"], int(d["size"])) for d in missing], layout, heard)
        contents = archive.read(path, remote.ref.tag)
        if contents.manifest_digest != remote.digest:
            raise FetchError(
                f"{remote.ref.skopeo}: the archive changed while it was read (its manifest is now"
                f" {contents.manifest_digest}, not {remote.digest}); nothing was imported"
            )
        manifest = contents.manifest
        (layout / blob_name(remote.digest)).write_bytes(manifest)
        (layout / blob_name(cfg)).write_bytes(archive.config(path, cfg))
    except archive.ArchiveError as e:
        raise FetchError(str(e)) from None
    except OSError as e:
        raise FetchError(f"cannot write into {layout} ({e.strerror})") from None
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": remote.manifest.get("mediaType", oci_manifest.MEDIA_OCI_MANIFEST),
                "digest": remote.digest,
                "size": len(manifest),
                "annotations": {archive.REF_NAME: "image"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    if on_bytes is not None:
        on_bytes(total, total, time.monotonic() - t0)


def fetch(
    remote: Remote,
    have_layer: Callable[[str], bool],
    work: Path,
    authfile: Path | None = None,
    on_bytes: OnBytes | None = None,
    store: Path | None = None,
    trust: Trust | None = None,
    on_layers: OnLayers | None = None,
) -> Fetched:
    """Copy `remote` into a new OCI layout under `work`, skipping the layers `have_layer` names, and
    applying the trust policy to it. When every layer is cached the copy is the manifest and config
    alone: the policy is never skipped. `store`: the repository the layers go to, whose free space
    counts in the preflight. `on_layers`: bytes per missing layer digest, as they arrive."""
    if trust is not None and not trust.policy.exists():
        # skopeo would say "no such file", which reads like a missing image.
        raise SignatureError(f"{trust.policy} is missing: skopeo refuses every image without a policy")
    descs = remote.manifest["layers"]
    missing = [(d, i) for d, i in zip(descs, remote.diff_ids, strict=True) if not have_layer(i)]
    total = sum(int(d["size"]) for d, _ in missing)
    preflight(total, work, store)
    layout = Path(tempfile.mkdtemp(prefix="oci-", dir=work))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text('{"schemaVersion": 2, "manifests": []}')
    # A placeholder stands for each cached layer, and skopeo reuses a blob by its name. A repacked
    # image (Remote.repacked) is copied as containers-storage holds it, uncompressed, so there a
    # layer's name is its diff_id: without these, every layer of the OS is read and compressed again.
    for desc, diff_id in zip(descs, remote.diff_ids, strict=True):
        if have_layer(diff_id):
            blob = blob_path(layout, diff_id if remote.repacked else desc["digest"])
            blob.parent.mkdir(parents=True, exist_ok=True)
            with open(blob, "wb") as f:
                f.truncate(int(desc["size"]))
    t0 = time.monotonic()
    sizes = {str(d["digest"]): int(d["size"]) for d, _ in missing}

    def whole() -> Fetched:
        if on_layers is not None:
            on_layers(sizes, 0)
        return Fetched(layout, len(missing), total + int(remote.manifest["config"]["size"]))

    if remote.ref.transport is Transport.OCI_ARCHIVE:
        try:
            _from_archive(remote, [d for d, _ in missing], layout, total, on_bytes, trust or Trust())
        except FetchError:
            shutil.rmtree(layout, ignore_errors=True)
            raise
        return whole()
    full = disk_watchdog(work)

    def watch() -> str | None:
        if on_bytes is not None:
            on_bytes(min(_allocated(layout), total), total, time.monotonic() - t0)
        if on_layers is not None:
            on_layers(*_blob_bytes(layout, list(sizes)))
        return full()

    try:
        storage.copy(
            remote.source,
            ImageRef(Transport.OCI, path=os.fspath(layout), tag="image"),
            preserve_digests=not remote.repacked,
            # A repacked copy is compressed only to be unpacked by the importer next: the fastest gzip.
            compress_level=1 if remote.repacked else None,
            src_tls_verify=remote.tls_verify,
            src_authfile=authfile,
            watchdog=watch,
            trust=trust,
            checked=remote.signed_bundle,
        )
    except RunError as e:
        shutil.rmtree(layout, ignore_errors=True)
        refused = policy_refusal(remote.ref, e, trust or Trust())
        raise refused or explain(remote.ref, e) from None
    if on_bytes is not None:
        on_bytes(total, total, time.monotonic() - t0)
    return whole()
