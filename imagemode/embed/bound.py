"""The logically bound images a tree names (imagemode.host.bound pulls them on a device).

An image names them with symlinks in /usr/lib/bootc/bound-images.d/ to quadlet `.image` or
`.container` files, as bootc does. Read here, beside the other readers of workload images, for the
device's update (from an imported commit) and for `bundle` (from an image's root) alike.
"""

from __future__ import annotations

from imagemode import confined
from imagemode.embed import sources
from imagemode.errors import ImagemodeError
from imagemode.store.ostree import CommitReader, Repo

BOUND_D = "usr/lib/bootc/bound-images.d"


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
