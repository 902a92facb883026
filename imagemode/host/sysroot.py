"""The booted sysroot through libostree (python3-gi, gir1.2-ostree-1.0): device side only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from imagemode.errors import ImagemodeError
from imagemode.host.status import Deployment
from imagemode.store import importer


class NotADeviceError(ImagemodeError):
    pass


def _ostree() -> Any:
    try:
        import gi

        gi.require_version("OSTree", "1.0")
        from gi.repository import OSTree
    except (ImportError, ValueError) as e:
        raise NotADeviceError(
            "libostree's Python bindings are missing (python3-gi, gir1.2-ostree-1.0); this runs on a device"
        ) from e
    return OSTree


def load(path: str = "/") -> Any:
    ostree = _ostree()
    from gi.repository import Gio

    sysroot = ostree.Sysroot.new(Gio.File.new_for_path(path))
    sysroot.load(None)
    return sysroot


def _meta(commit: Any, key: str) -> str | None:
    from gi.repository import GLib

    v = commit.get_child_value(0).lookup_value(key, GLib.VariantType.new("s"))
    return v.get_string() if v is not None else None


def describe(sysroot: Any, dep: Any) -> Deployment:
    ostree = _ostree()
    repo = sysroot.repo()
    csum = dep.get_csum()
    _, commit, _ = repo.load_commit(csum)
    image = _meta(commit, importer.META_IMAGE) or ""
    config = json.loads(_meta(commit, importer.META_CONFIG) or "{}")
    origin = dep.get_origin()
    download_only = False
    if origin is not None:
        from gi.repository import GLib

        try:
            download_only = bool(origin.get_boolean("imagemode", "download-only"))
        except GLib.Error:  # no such group or key: not download-only
            pass
    return Deployment(
        stateroot=dep.get_osname(),
        checksum=csum,
        serial=dep.get_deployserial(),
        image=image,
        digest=_meta(commit, importer.META_DIGEST) or "",
        version=_meta(commit, importer.META_VERSION),
        timestamp=ostree.commit_get_timestamp(commit),
        architecture=config.get("architecture", ""),
        pinned=dep.is_pinned(),
        download_only=download_only,
    )


def booted_path() -> bool:
    return Path("/run/ostree-booted").exists()


CACHED_UPDATE = Path("/var/lib/imagemode/cached-update.json")


def _same(a: Any, b: Any) -> bool:
    return (
        a is not None
        and b is not None
        and a.get_csum() == b.get_csum()
        and (a.get_deployserial() == b.get_deployserial())
    )


def read_status(path: str = "/") -> dict[str, Any]:
    from imagemode.host.status import host_status

    if not booted_path():
        return host_status(None, None, None)
    sysroot = load(path)
    booted = sysroot.get_booted_deployment()
    staged = sysroot.get_staged_deployment()
    deployments = list(sysroot.get_deployments())
    _, rollback = sysroot.query_deployments_for(None)
    # The next boot takes the first deployment: when it is neither booted nor staged, a rollback waits.
    queued = bool(deployments) and staged is None and not _same(deployments[0], booted)
    known = [d for d in (booted, staged, rollback) if d is not None]
    others = [d for d in deployments if not any(_same(d, k) for k in known)]
    cached = json.loads(CACHED_UPDATE.read_text()) if CACHED_UPDATE.exists() else None
    return host_status(
        describe(sysroot, booted) if booted else None,
        describe(sysroot, staged) if staged else None,
        describe(sysroot, rollback) if rollback else None,
        rollback_queued=queued,
        cached_update=cached,
        other=[describe(sysroot, d) for d in others],
    )
