"""A bundle (an oci-archive): its image, the signature it carries, and the blobs an import needs.

An oci-archive is a tar of an OCI layout. `imagemode bundle --sign-by` adds one entry, SIGNATURES,
that no OCI tool reads: the manifest digest, the identity it is signed as (a docker reference, as
for a registry) and GPG signatures over both (imagemode.oci.signature). The device checks them
against the keys its policy gives that identity, then imports the archive only if its manifest is
the signed one.

imagemode reads the archive itself rather than through skopeo, which unpacks the whole tar (700 MB
for an OS) to a temporary directory on every inspect and copy: an update that changes one layer
reads one layer's bytes from the USB stick. The policy's oci-archive scope is applied here, as
containers/image applies it to a transport with no signatures of its own.

Everything here comes from whoever handed over the file: entries are looked up by exact name and
only regular files are read, each within a size limit (a layer: exactly the size its descriptor
gives, and the importer checks both of its digests).
"""

from __future__ import annotations

import base64
import io
import json
import tarfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagemode.errors import ImagemodeError
from imagemode.oci import manifest as oci_manifest
from imagemode.oci import policy as policies
from imagemode.oci import signature
from imagemode.oci.layout import blob_name
from imagemode.oci.reference import ImageRef, ImageRefError, Transport, parse

SIGNATURES = "imagemode-signatures.json"
MAX_SIGNATURES = 16


class ArchiveError(ImagemodeError):
    pass


@dataclass(frozen=True)
class Signed:
    digest: str  # the manifest digest the signatures cover
    identity: str  # the docker reference they sign it as, as written (standalone-verify matches it)
    ref: ImageRef  # the same, parsed: its scope in the policy decides
    signatures: tuple[bytes, ...]


@dataclass(frozen=True)
class Contents:
    manifest_digest: str
    manifest: bytes
    signed: Signed | None


REF_NAME = "org.opencontainers.image.ref.name"
CHUNK = 1 << 20


def _entry(tar: tarfile.TarFile, name: str, where: str) -> tarfile.TarInfo | None:
    try:
        info = tar.getmember(name)  # the last of that name, as an unpacking tar would leave it
    except KeyError:
        return None
    if not info.isreg():
        raise ArchiveError(f"{where}: {name} is not a regular file")
    return info


def _member(tar: tarfile.TarFile, name: str, limit: int, where: str) -> bytes | None:
    info = _entry(tar, name, where)
    if info is None:
        return None
    if info.size > limit:
        raise ArchiveError(f"{where}: {name} has more than the {limit} bytes it may have")
    f = tar.extractfile(info)
    assert f is not None  # a regular member always has a file
    return f.read(limit + 1)


def _open(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:")
    except (tarfile.TarError, OSError) as e:
        raise ArchiveError(f"{path}: not a readable tar archive ({e})") from None


def _signed(raw: bytes, where: str) -> Signed:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ArchiveError(f"{where}: {SIGNATURES} is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("identity"), str):
        raise ArchiveError(f"{where}: {SIGNATURES} names no identity")
    sigs = data.get("signatures")
    if not isinstance(sigs, list) or not 0 < len(sigs) <= MAX_SIGNATURES:
        raise ArchiveError(f"{where}: {SIGNATURES} holds no signatures, or more than {MAX_SIGNATURES}")
    try:
        digest = oci_manifest.digest(data.get("digest"), f"{where}: {SIGNATURES} digest")
        ident = parse(data["identity"])
        decoded = tuple(signature.decode(s, f"{where}: {SIGNATURES}") for s in sigs)
    except (oci_manifest.ManifestError, signature.SignatureError) as e:
        raise ArchiveError(str(e)) from None
    except ImageRefError:
        raise ArchiveError(f"{where}: {SIGNATURES}: the identity is not an image reference") from None
    if ident.transport is not Transport.REGISTRY:
        raise ArchiveError(f"{where}: {SIGNATURES}: the identity must be a registry reference")
    return Signed(digest, data["identity"], ident, decoded)


def _small_blob(tar: tarfile.TarFile, digest: str, what: str, where: str) -> bytes:
    raw = _member(tar, blob_name(digest), oci_manifest.MAX_JSON, where)
    if raw is None or oci_manifest.digest_of(raw) != digest:
        raise ArchiveError(f"{where}: the {what} {digest} is missing or does not match its digest")
    return raw


def read(path: Path, tag: str | None = None) -> Contents:
    """The archive's one image (or the one tagged `tag`): its manifest, checked against its digest,
    and its signatures, if any."""
    where = str(path)
    try:
        with _open(path) as tar:
            index = _member(tar, "index.json", oci_manifest.MAX_JSON, where)
            if index is None:
                raise ArchiveError(f"{where}: not an oci-archive (no index.json)")
            entries = oci_manifest.index(index, f"{where}: index.json")
            if tag is not None:
                entries = [m for m in entries if (m.get("annotations") or {}).get(REF_NAME) == tag]
            if len(entries) != 1:
                tagged = f" tagged {tag}" if tag is not None else ""
                found = len(entries)
                raise ArchiveError(f"{where}: expected one image{tagged} in the archive, found {found}")
            digest = entries[0]["digest"]
            raw = _small_blob(tar, digest, "manifest", where)
            sig = _member(tar, SIGNATURES, 1 << 20, where)
    except (tarfile.TarError, OSError) as e:
        raise ArchiveError(f"{where}: not a readable tar archive ({e})") from None
    except oci_manifest.ManifestError as e:
        raise ArchiveError(str(e)) from None
    return Contents(digest, raw, _signed(sig, where) if sig is not None else None)


def config(path: Path, digest: str) -> bytes:
    """The config blob `digest`, checked against it."""
    try:
        with _open(path) as tar:
            return _small_blob(tar, digest, "config", str(path))
    except (tarfile.TarError, OSError) as e:
        raise ArchiveError(f"{path}: not a readable tar archive ({e})") from None


def extract(
    path: Path, blobs: Iterable[tuple[str, int]], layout: Path, on_chunk: Callable[[int], None] | None = None
) -> None:
    """Copy each blob (digest, size) from the archive into the OCI layout at `layout`, by its exact
    name; each must be a regular file of exactly its size. `on_chunk` hears the bytes as they go."""
    where = str(path)
    try:
        with _open(path) as tar:
            for digest, size in blobs:
                name = blob_name(digest)
                info = _entry(tar, name, where)
                if info is None:
                    raise ArchiveError(f"{where}: the blob {digest} is missing")
                if info.size != size:
                    raise ArchiveError(
                        f"{where}: the blob {digest} has {info.size} bytes, not the {size} of its descriptor"
                    )
                src = tar.extractfile(info)
                assert src is not None  # a regular member always has a file
                dest = layout / name  # the name is a checked digest: no path of the archive's
                dest.parent.mkdir(parents=True, exist_ok=True)
                with open(dest, "wb") as out:
                    while chunk := src.read(CHUNK):
                        try:
                            out.write(chunk)
                        except OSError as e:
                            raise ArchiveError(f"cannot write into {layout} ({e.strerror})") from None
                        if on_chunk is not None:
                            on_chunk(len(chunk))
    except (tarfile.TarError, OSError) as e:
        raise ArchiveError(f"{where}: cannot read the blobs ({e})") from None


def admit_unsigned(ref: ImageRef, trust: policies.Trust) -> None:
    """Apply the policy to an archive that carries no signatures, as skopeo would: its oci-archive
    scope (by path) must accept any image."""
    pol = policies.load(trust.policy)
    scope, reqs = pol.requirements(ref)
    types = {str(r["type"]) for r in reqs}
    if policies.REJECT in types:
        raise ArchiveError(f"{trust.policy} rejects every image from {ref.path} ({scope!r})")
    if types != {policies.ACCEPT}:
        raise ArchiveError(
            f"not signed by a key that {trust.policy} trusts for {ref.path} (signature missing;"
            " sign it with imagemode bundle --sign-by)"
        )


def _keys(pol: policies.Policy, reqs: list[dict[str, Any]]) -> list[bytes]:
    keys: list[bytes] = []
    for r in reqs:
        if "keyData" in r:
            try:
                keys.append(base64.b64decode(r["keyData"], validate=True))
            except ValueError:
                raise ArchiveError(f"{pol.path}: a keyData is not base64") from None
    for p in policies.key_paths(reqs):
        try:
            keys.append(Path(p).read_bytes())
        except OSError as e:
            raise ArchiveError(f"{pol.path}: key {p} cannot be read ({e.strerror})") from None
    return keys


def verify(path: Path, trust: policies.Trust, tag: str | None = None) -> str | None:
    """Check a bundle against the device's policy before anything is imported. Returns the manifest
    digest its signatures cover (the import must then be that manifest), or None for an unsigned
    bundle, which the policy's oci-archive scope then decides (admit_unsigned)."""
    contents = read(path, tag)
    signed = contents.signed
    if signed is None:
        if trust.enforce:
            raise ArchiveError(
                f"{path}: the bundle is not signed, and this device only takes signed images"
                " (make it with imagemode bundle --sign-by); nothing was staged"
            )
        return None
    if signed.digest != contents.manifest_digest:
        raise ArchiveError(
            f"{path}: the bundle's signatures are for {signed.digest}, not for its image"
            f" {contents.manifest_digest} (another image under the same signature?); nothing was staged"
        )
    pol = policies.load(trust.policy)
    ident = signed.ref
    scope, reqs = pol.requirements(ident)
    if trust.enforce:
        try:
            policies.require_signatures(pol, ident)
        except policies.PolicyError as e:
            raise ArchiveError(str(e)) from None
    types = {str(r["type"]) for r in reqs}
    if types == {policies.ACCEPT}:
        return contents.manifest_digest
    if policies.REJECT in types:
        raise ArchiveError(f"{path}: {trust.policy} rejects {ident.name} ({scope!r}); nothing was staged")
    if policies.SIGSTORE in types:
        raise ArchiveError(
            f"{path}: {trust.policy} asks sigstore signatures for {ident.name}; a bundle carries GPG"
            " signatures (docs/signing.md); nothing was staged"
        )
    keys = _keys(pol, [r for r in reqs if r["type"] == policies.SIGNED_BY])
    try:
        signature.verify(contents.manifest, signed.identity, signed.signatures, keys)
    except signature.SignatureError as e:
        raise ArchiveError(
            f"{path}: not signed by a key that {trust.policy} trusts for {ident.name} ({e});"
            " nothing was staged"
        ) from None
    return contents.manifest_digest


def add_signatures(path: Path, digest: str, identity: str, sigs: list[bytes]) -> None:
    """Append SIGNATURES to an archive skopeo wrote (tar's own append: nothing else is rewritten)."""
    data = json.dumps(
        {"digest": digest, "identity": identity, "signatures": [signature.encode(s) for s in sigs]},
        indent=1,
    ).encode()
    info = tarfile.TarInfo(SIGNATURES)
    info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
    with tarfile.open(path, "a") as tar:
        tar.addfile(info, io.BytesIO(data))
