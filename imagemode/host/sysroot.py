"""The booted sysroot through libostree (python3-gi, gir1.2-ostree-1.0): device side only."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from imagemode.boot import cmdline
from imagemode.errors import ImagemodeError
from imagemode.host import origin as origins
from imagemode.host import ostree_api as api
from imagemode.host.status import Deployment
from imagemode.store import meta
from imagemode.store.libostree import BindingsMissingError, commit_string, gi, string_metadata

REPO = Path("/sysroot/ostree/repo")
# Work files live beside the repo, on the same mount: checkouts hard-link from it (/var is another
# mount of the same filesystem, and link() refuses to cross mounts).
WORK = Path("/sysroot/ostree/imagemode")
CACHED_UPDATE = Path("/var/lib/imagemode/cached-update.json")
# A staged deployment that ostree-finalize-staged.service must leave alone at shutdown (its drop-in
# checks this file): `upgrade --download-only`. It lives in /run, as the staged deployment does.
DOWNLOAD_ONLY = Path("/run/imagemode/download-only")
# The commit of the last --download-only import. A reboot drops the held deployment (it lives in /run),
# but not what was downloaded: prune keeps this commit's image and layers, so the next --download-only
# or upgrade fetches nothing again (docs/upgrade.md).
DOWNLOADED = Path("/var/lib/imagemode/downloaded")
# An update removed refs: imagemode-prune.service frees their objects at the next boot.
PRUNE_PENDING = WORK / "prune-pending"
# How long a device verb waits for another holder of the sysroot lock (docs/upgrade.md).
LOCK_WAIT = 60.0

log = logging.getLogger("imagemode.host")


class NotADeviceError(ImagemodeError):
    pass


def _ostree() -> Any:
    try:
        return gi().OSTree
    except BindingsMissingError as e:
        raise NotADeviceError(f"{e}; this runs on a device") from None


def booted_path() -> bool:
    return Path("/run/ostree-booted").exists()


def require_booted() -> None:
    if not booted_path():
        raise NotADeviceError("this system was not booted from an ostree deployment (no /run/ostree-booted)")


def load(path: str = "/") -> api.Sysroot:
    ostree = _ostree()
    sysroot = cast(api.Sysroot, ostree.Sysroot.new(gi().Gio.File.new_for_path(path)))
    sysroot.load(None)
    return sysroot


def booted(sysroot: api.Sysroot) -> api.Deployment:
    dep = sysroot.get_booted_deployment()
    if dep is None:
        raise NotADeviceError("ostree finds no booted deployment in this sysroot")
    return dep


@contextlib.contextmanager
def locked(path: str = "/", wait: float = LOCK_WAIT) -> Iterator[api.Sysroot]:
    """The loaded sysroot, with ostree's sysroot lock held: one update at a time, timer or not.

    A holder that is busy for seconds (the boot's verdict, a prune) is waited for; one that is busy for
    longer (a download) is reported after `wait` seconds rather than queued behind without end."""
    sysroot = load(path)
    deadline = time.monotonic() + wait
    _, acquired = sysroot.try_lock()
    if not acquired:
        log.warning("waiting for the sysroot lock: another update holds it (up to %.0fs)", wait)
    while not acquired and time.monotonic() < deadline:
        time.sleep(0.5)
        _, acquired = sysroot.try_lock()
    if not acquired:
        held = "another update holds the sysroot lock (/sysroot/ostree/lock)"
        raise ImagemodeError(f"{held} after {wait:.0f}s; try again later")
    try:
        sysroot.load(None)  # what another holder of the lock changed before we got it
        yield sysroot
    finally:
        sysroot.unlock()


def commit_meta(sysroot: api.Sysroot, csum: str, key: str) -> str | None:
    return commit_string(sysroot.repo(), csum, key)


def _origin_text(dep: api.Deployment | None) -> str | None:
    kf = dep.get_origin() if dep is not None else None
    if kf is None:
        return None
    text, _ = kf.to_data()
    return str(text)


def origin_of(dep: api.Deployment | None) -> origins.Origin:
    """What a deployment follows, from its origin file (an empty Origin for none)."""
    return origins.read(_origin_text(dep))


def deployment_dir(sysroot: api.Sysroot, dep: api.Deployment) -> Path:
    return Path(sysroot.get_path().get_path()) / str(sysroot.get_deployment_dirpath(dep))


def kargs_of(dep: api.Deployment) -> list[str]:
    bootconfig = dep.get_bootconfig()
    options = bootconfig.get("options") if bootconfig is not None else None
    return cmdline.split(options) if options else []


def same(a: api.Deployment | None, b: api.Deployment | None) -> bool:
    return (
        a is not None
        and b is not None
        and a.get_csum() == b.get_csum()
        and (a.get_deployserial() == b.get_deployserial())
    )


def downloaded() -> set[str]:
    """The commit that a --download-only update fetched, if its record is there."""
    try:
        commit = DOWNLOADED.read_text().strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return set()
    return {commit} if len(commit) == 64 and all(c in "0123456789abcdef" for c in commit) else set()


def download_only(dep: api.Deployment) -> bool:
    try:
        return DOWNLOAD_ONLY.read_text().strip() == api.dep_id(dep)
    except FileNotFoundError:
        return False


def describe(sysroot: api.Sysroot, dep: api.Deployment, staged: bool = False) -> Deployment:
    ostree = _ostree()
    csum = dep.get_csum()
    _, commit, _ = sysroot.repo().load_commit(csum)
    keys = string_metadata(commit)
    config = json.loads(keys.get(meta.CONFIG) or "{}")
    origin = origin_of(dep)
    return Deployment(
        stateroot=dep.get_osname(),
        checksum=csum,
        serial=dep.get_deployserial(),
        image=origin.image or keys.get(meta.IMAGE) or "",
        digest=keys.get(meta.DIGEST) or "",
        version=keys.get(meta.VERSION),
        timestamp=ostree.commit_get_timestamp(commit),
        architecture=config.get("architecture", ""),
        pinned=dep.is_pinned(),
        download_only=staged and download_only(dep),
        signed=origin.signed,
    )


def rollback_of(sysroot: api.Sysroot) -> api.Deployment | None:
    """The deployment a rollback would boot: the first one after the booted one, else the first."""
    booted = sysroot.get_booted_deployment()
    staged = sysroot.get_staged_deployment()
    rest = [d for d in sysroot.get_deployments() if not same(d, staged) and not same(d, booted)]
    return rest[0] if rest else None


def rollback_queued(sysroot: api.Sysroot) -> bool:
    """The next boot takes the first deployment: when it is neither booted nor staged, a rollback waits."""
    booted = sysroot.get_booted_deployment()
    staged = sysroot.get_staged_deployment()
    deps = [d for d in sysroot.get_deployments() if not same(d, staged)]
    return staged is None and bool(deps) and not same(deps[0], booted)


def read_cached_update(booted_digest: str) -> dict[str, Any] | None:
    """What `upgrade --check` found, while it still differs from what is booted."""
    try:
        cached: dict[str, Any] = json.loads(CACHED_UPDATE.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return cached if cached.get("imageDigest") != booted_digest else None


def read_status(path: str = "/") -> dict[str, Any]:
    from imagemode.health.state import statuses
    from imagemode.host.status import USR_OVERLAY, host_status

    if not booted_path():
        return host_status(None, None, None)
    sysroot = load(path)
    booted = sysroot.get_booted_deployment()
    staged = sysroot.get_staged_deployment()
    rollback = rollback_of(sysroot)
    known = [d for d in (booted, staged, rollback) if d is not None]
    others = [d for d in sysroot.get_deployments() if not any(same(d, k) for k in known)]
    b = describe(sysroot, booted) if booted else None
    s = describe(sysroot, staged, staged=True) if staged else None
    r = describe(sysroot, rollback) if rollback else None
    o = [describe(sysroot, d) for d in others]
    every = [d for d in (b, s, r, *o) if d is not None]
    return host_status(
        b,
        s,
        r,
        rollback_queued=rollback_queued(sysroot),
        cached_update=read_cached_update(b.digest) if b else None,
        other=o,
        health=statuses([d.id for d in every]),
        usr_overlay=USR_OVERLAY.get(int(booted.get_unlocked())) if booted else None,
    )
