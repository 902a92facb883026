"""Remote JSON checked once, at the boundary: manifests, indexes and configs.

A manifest comes from whoever controls the registry, a mirror, the path to it, or a bundle. Nothing
reads a field of it before `manifest()`, `index()` or `config()` has checked the whole shape: digests
are `sha256:` and 64 hex characters (they become file names), sizes are whole numbers within bounds
(they become sparse files and download totals), the config names one diff_id per layer, the media
types are ones imagemode can unpack, and the platform is this machine's. A failure is one line.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
from typing import Any

from imagemode.errors import ImagemodeError

DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")
# containers/image refuses manifests and configs above 4 MiB; so do we, before parsing them.
MAX_JSON = 4 << 20
MAX_LAYER_SIZE = 1 << 40  # 1 TiB: larger is a lie, whatever the registry says
MAX_LAYERS = 500

MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
CONFIG_TYPES = ("application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json")
# What store/tarstream.py can decompress. zstd is not in Python 3.11's standard library.
LAYER_TYPES = (
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
)

GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


class ManifestError(ImagemodeError):
    pass


def machine_arch() -> str:
    return GOARCH.get(platform.machine(), platform.machine())


def digest_of(data: bytes | str) -> str:
    """The OCI digest of a blob, a manifest or a config, as its bytes hash (text is UTF-8)."""
    return "sha256:" + hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def digest(value: object, what: str) -> str:
    """`value` if it is a sha256 digest in canonical form; anything else is refused, never a path."""
    if not isinstance(value, str) or not DIGEST.match(value):
        raise ManifestError(f"{what}: {_show(value)} is not a sha256 digest")
    return value


def size(value: object, what: str, limit: int = MAX_LAYER_SIZE) -> int:
    # bool is an int in Python; JSON's true is no size.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise ManifestError(f"{what}: size {_show(value)} is not a whole number from 0 to {limit}")
    return value


def _show(value: object) -> str:
    text = json.dumps(value, ensure_ascii=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def load(raw: str | bytes, what: str) -> dict[str, Any]:
    """A JSON object of bounded size; a list, a number or broken JSON is refused in one line."""
    if len(raw) > MAX_JSON:
        raise ManifestError(f"{what}: {len(raw)} bytes, more than the {MAX_JSON} a {what} may have")
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as e:  # RecursionError: [[[[...]]]] nested past the stack
        raise ManifestError(f"{what}: not JSON ({str(e)[:120]})") from None
    if not isinstance(obj, dict):
        raise ManifestError(f"{what}: not a JSON object")
    return obj


def _descriptor(d: object, what: str, types: tuple[str, ...] | None) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise ManifestError(f"{what}: not a descriptor object")
    digest(d.get("digest"), what)
    size(d.get("size"), what)
    media = d.get("mediaType")
    if types is not None and media not in types:
        raise ManifestError(f"{what}: media type {_show(media)} is not one imagemode can unpack")
    return d


def is_index(obj: dict[str, Any]) -> bool:
    return "manifests" in obj or obj.get("mediaType") in (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST)


def manifest(raw: str | bytes, what: str = "manifest") -> dict[str, Any]:
    """An image manifest (OCI or Docker schema 2), checked whole."""
    obj = load(raw, what)
    if is_index(obj):
        raise ManifestError(f"{what}: a manifest list where an image manifest was expected")
    if obj.get("schemaVersion") != 2:
        raise ManifestError(f"{what}: schemaVersion {_show(obj.get('schemaVersion'))}, expected 2")
    media = obj.get("mediaType", MEDIA_OCI_MANIFEST)
    if media not in (MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST):
        raise ManifestError(f"{what}: media type {_show(media)} is not an image manifest")
    _descriptor(obj.get("config"), f"{what} config", CONFIG_TYPES)
    layers = obj.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ManifestError(f"{what}: no layers")
    if len(layers) > MAX_LAYERS:
        raise ManifestError(f"{what}: {len(layers)} layers, more than {MAX_LAYERS}")
    for i, d in enumerate(layers):
        _descriptor(d, f"{what} layer {i + 1}", LAYER_TYPES)
    return obj


def index(raw: str | bytes, what: str = "manifest list") -> list[dict[str, Any]]:
    """The entries of a manifest list, each a checked descriptor."""
    obj = load(raw, what)
    entries = obj.get("manifests")
    if not isinstance(entries, list) or len(entries) > MAX_LAYERS:
        raise ManifestError(f"{what}: no list of manifests")
    for i, d in enumerate(entries):
        _descriptor(d, f"{what} entry {i + 1}", None)
        if not isinstance(d.get("platform", {}), dict):
            raise ManifestError(f"{what} entry {i + 1}: platform is not an object")
    return entries


def for_platform(entries: list[dict[str, Any]]) -> str | None:
    """The digest of this machine's linux image in a checked manifest list."""
    arch = machine_arch()
    for d in entries:
        plat = d.get("platform", {})
        if plat.get("architecture") == arch and plat.get("os", "linux") == "linux":
            return str(d["digest"])
    return None


def config(raw: str | bytes, layers: int, what: str = "config") -> dict[str, Any]:
    """An image config: as many diff_ids as the manifest has layers, each a digest; this platform."""
    obj = load(raw, what)
    rootfs = obj.get("rootfs")
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list):
        raise ManifestError(f"{what}: no rootfs.diff_ids")
    if len(ids) != layers:
        raise ManifestError(f"{what}: {len(ids)} diff_ids for {layers} layers")
    for i, d in enumerate(ids):
        digest(d, f"{what} diff_id {i + 1}")
    arch, os_ = obj.get("architecture"), obj.get("os")
    if arch != machine_arch() or os_ != "linux":
        raise ManifestError(
            f"{what}: the image is for {_show(os_)}/{_show(arch)}, not linux/{machine_arch()}"
        )
    inner = obj.get("config", {})
    if inner is None:
        obj["config"] = inner = {}
    if not isinstance(inner, dict):
        raise ManifestError(f"{what}: config is not an object")
    labels = inner.get("Labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise ManifestError(f"{what}: labels are not strings")
    created = obj.get("created")
    if created is not None and not isinstance(created, str):
        raise ManifestError(f"{what}: created is not a string")
    return obj


def labels(cfg: dict[str, Any]) -> dict[str, str]:
    """The labels of a checked config."""
    found: dict[str, str] = cfg.get("config", {}).get("Labels") or {}
    return found
