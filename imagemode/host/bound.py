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
from collections.abc import Callable
from pathlib import Path

from imagemode import confined
from imagemode.boot import replace
from imagemode.embed import sources
from imagemode.errors import ImagemodeError
from imagemode.host import ostree_api as api
from imagemode.host import sysroot as sr
from imagemode.oci import storage
from imagemode.run import RunError, run, which
from imagemode.store import fetch
from imagemode.store.ostree import CommitReader, Repo

BOUND_D = "usr/lib/bootc/bound-images.d"
RECORD = Path("/var/lib/imagemode/bound-images.json")


class BoundImageError(ImagemodeError):
    pass


def in_tree(tree: confined.Reader) -> list[sources.Wanted]:
    """The bound images of a tree: a deployment, an image's root, or a commit read in place. Links
    are followed inside the tree only."""
    d = confined.resolve(tree, BOUND_D)
    if d is None or tree.kind(d) is not confined.Kind.DIR:
        return []
    found: list[sources.Wanted] = []
    for name in tree.listdir(d):
        if not name.endswith((".image", ".container")):
            continue
        shown = f"/{BOUND_D}/{name}"
        path = confined.resolve(tree, f"{d}/{name}")
        if path is None or tree.kind(path) is not confined.Kind.FILE:
            target = tree.readlink(f"{d}/{name}") if tree.kind(f"{d}/{name}") is confined.Kind.LINK else name
            raise BoundImageError(f"{shown}: points to {target}, which the image lacks")
        unit_dir, _, unit = path.rpartition("/")

        def read(n: str, unit_dir: str = unit_dir) -> str:
            text = confined.read_text(tree, f"{unit_dir}/{n}")
            if text is None:
                raise sources.SourceError(f"/{unit_dir}/{n}: no such file in the image")
            return text

        try:
            wanted = sources.quadlet(read, unit, f"/{unit_dir}")
        except sources.SourceError as e:
            raise BoundImageError(f"{shown}: {e}") from None
        # Named by the link, as the image has it.
        found += [sources.Wanted(w.ref, shown) for w in wanted]
    return found


def in_commit(repo: Repo, commit: str) -> list[sources.Wanted]:
    """The bound images of an imported commit, read from it in place: nothing is checked out."""
    return in_tree(CommitReader(repo, commit))


def _record() -> list[str]:
    with contextlib.suppress(FileNotFoundError, ValueError):
        return list(json.loads(RECORD.read_text())["pulled"])
    return []


def _write_record(refs: list[str]) -> None:
    replace.replace(RECORD, (json.dumps({"pulled": sorted(set(refs))}, indent=2) + "\n").encode())


def pull(wanted: list[sources.Wanted], say: Callable[[str], None] = lambda s: None) -> list[str]:
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
