"""Logically bound images: workload images an OS version names but does not carry.

An image names them with symlinks in /usr/lib/bootc/bound-images.d/ to quadlet `.image` or
`.container` files, as bootc does. `upgrade` and `switch` pull every one of them into the device's
containers-storage before they stage anything, so the new OS never boots without its workloads; one
that cannot be pulled stops the update with nothing staged. An image already in storage is not pulled
again, so an offline update whose bound images are present still works (pin them by digest to change
them). imagemode records what it pulled, and `prune` removes a recorded image once no deployment
names it.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from imagemode.boot import replace
from imagemode.embed import sources
from imagemode.errors import ImagemodeError
from imagemode.host import sysroot as sr
from imagemode.oci import storage
from imagemode.run import RunError, run, which
from imagemode.store import fetch
from imagemode.store.ostree import Repo

BOUND_D = "usr/lib/bootc/bound-images.d"
RECORD = Path("/var/lib/imagemode/bound-images.json")


class BoundImageError(ImagemodeError):
    pass


def in_tree(root: Path) -> list[sources.Wanted]:
    """The bound images of a checked-out tree (a deployment, or a commit's relevant paths)."""
    d = root / BOUND_D
    if not d.is_dir():
        return []
    found: list[sources.Wanted] = []
    for link in sorted(d.iterdir()):
        if link.suffix not in (".image", ".container"):
            continue
        target = os.readlink(link) if link.is_symlink() else link.name
        path = root / target.lstrip("/") if target.startswith("/") else d / target
        if not path.is_file():
            raise BoundImageError(f"/{BOUND_D}/{link.name}: points to {target}, which the image lacks")
        # Named by the link, as the image has it: the checkout's temporary path means nothing.
        found += [sources.Wanted(w.ref, f"/{BOUND_D}/{link.name}") for w in sources.from_quadlet(path)]
    return found


def in_commit(repo: Repo, commit: str, work: Path) -> list[sources.Wanted]:
    """The bound images of an imported commit, read from the few paths they live in."""
    root = work / "bound-root"
    (root / BOUND_D).parent.mkdir(parents=True, exist_ok=True)  # ostree makes the last level only
    if not repo.checkout_subpath(commit, BOUND_D, root / BOUND_D):
        return []
    for link in (root / BOUND_D).iterdir():
        if link.is_symlink():
            target = os.readlink(link)
            parent = Path(target).parent if target.startswith("/") else Path(BOUND_D, target).parent
            rel = os.path.normpath(str(parent).lstrip("/"))
            if not (root / rel).is_dir():
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                repo.checkout_subpath(commit, rel, root / rel)
    return in_tree(root)


def _record() -> list[str]:
    with contextlib.suppress(FileNotFoundError, ValueError):
        return list(json.loads(RECORD.read_text())["pulled"])
    return []


def _write_record(refs: list[str]) -> None:
    replace.replace(RECORD, (json.dumps({"pulled": sorted(set(refs))}, indent=2) + "\n").encode())


def pull(wanted: list[sources.Wanted], say: Any = lambda s: None) -> list[str]:
    """Pull every bound image not in storage yet. Returns the references pulled."""
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
            run(["podman", "pull", "--quiet", str(w.ref)])
        except RunError as e:
            raise BoundImageError(
                f"bound image {w.ref} ({w.source}) cannot be pulled: {fetch.cause(e)}; nothing was staged"
            ) from None
        pulled.append(str(w.ref))
        _write_record([*_record(), str(w.ref)])
    return pulled


def gc(sysroot: Any) -> list[str]:
    """Remove the bound images imagemode pulled that no deployment names any more."""
    recorded = _record()
    if not recorded:
        return []
    named = {
        str(w.ref) for dep in sysroot.get_deployments() for w in in_tree(sr.deployment_dir(sysroot, dep))
    }
    removed = [r for r in recorded if r not in named]
    for ref in removed:
        # An image a container still uses stays in storage (podman refuses); the record forgets it.
        run(["podman", "rmi", ref], check=False)
    _write_record([r for r in recorded if r in named])
    return removed
