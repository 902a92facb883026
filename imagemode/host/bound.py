"""Logically bound images: workload images an OS version names but does not carry.

An image names them with symlinks in /usr/lib/bootc/bound-images.d/ to quadlet `.image` or
`.container` files, as bootc does (imagemode.embed.bound reads them). `upgrade` and `switch` pull
every one of them into the device's containers-storage before they stage anything, so the new OS
never boots without its workloads; one that cannot be pulled stops the update with nothing staged.
An image already in storage is not pulled again, so an offline update whose bound images are
present still works (pin them by digest to change them). imagemode records what it pulled, and
`prune` removes a recorded image once no deployment names it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path

from imagemode import atomic, confined
from imagemode.embed import sources
from imagemode.embed.bound import BoundImageError, in_tree
from imagemode.host import ostree_api as api
from imagemode.host import sysroot as sr
from imagemode.oci import storage
from imagemode.run import RunError, run, which
from imagemode.store import fetch

RECORD = Path("/var/lib/imagemode/bound-images.json")


def _record() -> list[str]:
    with contextlib.suppress(FileNotFoundError, ValueError):
        return list(json.loads(RECORD.read_text())["pulled"])
    return []


def _write_record(refs: list[str]) -> None:
    atomic.write(RECORD, (json.dumps({"pulled": sorted(set(refs))}, indent=2) + "\n").encode())


def pull(
    wanted: list[sources.Wanted], say: Callable[[str], None] = lambda s: None, authfile: Path | None = None
) -> list[str]:
    """Pull every bound image not in storage yet, with the OS image's credentials (`authfile`: where a
    fleet agent writes its pull secret, /etc/ostree/auth.json). Returns the references pulled."""
    if not wanted:
        return []
    if which("podman") is None:
        raise BoundImageError(
            f"the image binds {len(wanted)} images but has no podman to pull them; nothing was staged"
        )
    pulled: list[str] = []
    for w in wanted:
        if storage.exists(w.ref):
            continue
        say(f"pulling bound image {w.ref}")
        try:
            creds = ["--authfile", str(authfile)] if authfile is not None else []
            run(["podman", "pull", "--quiet", *creds, str(w.ref)])
        except RunError as e:
            raise BoundImageError(
                f"bound image {w.ref} ({w.source}) cannot be pulled: {fetch.cause(e)}; nothing was staged"
            ) from None
        pulled.append(str(w.ref))
        _write_record([*_record(), str(w.ref)])
    return pulled


def _deployment(sysroot: api.Sysroot, dep: api.Deployment) -> confined.Tree:
    return confined.Tree(sr.deployment_dir(sysroot, dep))


def gc(sysroot: api.Sysroot) -> list[str]:
    """Remove the bound images imagemode pulled that no deployment names any more."""
    recorded = _record()
    if not recorded:
        return []
    named: set[str] = set()
    for dep in sysroot.get_deployments():
        with _deployment(sysroot, dep) as tree:
            named |= {str(w.ref) for w in in_tree(tree)}
    removed = [r for r in recorded if r not in named]
    for ref in removed:
        # An image a container still uses stays in storage (podman refuses); the record forgets it.
        run(["podman", "rmi", ref], check=False)
    _write_record([r for r in recorded if r in named])
    return removed
