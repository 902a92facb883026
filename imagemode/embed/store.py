"""Workload images embedded in the OS image: a read-only containers-storage under /usr.

`imagemode embed` copies each image with `skopeo --preserve-digests` into an overlay-driver store at
`usr/lib/imagemode/containers/storage`, which podman and CRI-O read as an additional image store
(`usr/share/containers/storage.conf`, the file containers/storage reads when /etc has none). Layers
that images share are stored once, and ostree stores identical files once across layers, images and
OS versions. Nothing is copied when a container starts: its overlay mount takes the layers in /usr
as they are.

Two rewrites make the store fit an ostree commit and survive upgrades (docs/embed.md):

- **No whiteouts.** The overlay driver marks a deleted file with a 0:0 character device and a hidden
  directory with a `trusted.overlay.opaque` xattr. ostree 2022.7 cannot commit the first, and an image
  export turns the second into a tar whiteout, so neither would reach a device. A layer that holds
  either is rewritten as a base layer holding the whole tree up to it, whiteouts applied. Its ID,
  digests and size records stay, so podman shows the same image; the files it repeats from lower
  layers cost nothing in ostree, which stores a file's content once.
- **Stable short links.** The overlay driver names each layer's `l/` link at random, and a
  container's own layer records its image's links by those names. A store rebuilt for the next OS
  version would name the same layer differently, and every container made from it would stop
  mounting (the failure of MicroShift's additional store, RHEL-75827). Here a link's name is derived
  from the layer ID, so an image present in two OS versions has the same paths in both.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from imagemode import confined
from imagemode.embed.sources import Wanted
from imagemode.errors import ImagemodeError
from imagemode.oci import storage
from imagemode.oci.manifest import digest_of
from imagemode.oci.reference import ImageRef
from imagemode.run import RunError
from imagemode.store import fetch

STORE = Path("usr/lib/imagemode/containers/storage")
LIST = Path("usr/lib/imagemode/embedded.json")
STORAGE_CONF = Path("usr/share/containers/storage.conf")
DEVICE_STORE = "/" + str(STORE)
LINK_LENGTH = 26  # the overlay driver's own length for l/ names
OVERLAY_XATTRS = (b"trusted.overlay.", b"user.overlay.")

# The device's containers/storage config. Only the additional store is ours; the rest are the
# defaults that Debian's podman uses when no storage.conf exists at all.
STORAGE_CONF_TEXT = f"""\
# Written by imagemode embed. A /etc/containers/storage.conf replaces this file whole: copy the
# additionalimagestores line into it to keep the embedded images (docs/embed.md).
[storage]
driver = "overlay"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"

[storage.options]
additionalimagestores = ["{DEVICE_STORE}"]
"""


class EmbedError(ImagemodeError):
    pass


@dataclass(frozen=True)
class Embedded:
    ref: str  # as the source names it, host-qualified
    digest: str  # the manifest digest in the store: `podman image inspect --format {{.Digest}}`
    image_id: str
    source: str


@dataclass(frozen=True)
class Stored:
    """What `imagemode embed` did: the images now in the store under `root`."""

    root: Path
    images: tuple[Embedded, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"store": str(self.root / STORE), "images": [asdict(e) for e in self.images]}

    def human(self) -> str:
        return f"{len(self.images)} images in {self.root / STORE}; list in {self.root / LIST}"


def store_spec(store: Path, runroot: Path) -> str:
    """skopeo's containers-storage prefix for a store of our own. skip_mount_home: the driver would
    otherwise leave a private bind mount on the store's overlay directory after skopeo exits."""
    return f"containers-storage:[overlay@{store}+{runroot}:overlay.skip_mount_home=true]"


def _check_tag(want: Wanted, tls_verify: bool) -> None:
    """`name:tag@digest` pins the digest; a tag that has moved since is a mismatch, refused."""
    ref = want.ref
    if not (ref.tag and ref.digest):
        return
    tagged = ImageRef(ref.transport, ref.name, ref.tag)
    raw = storage.inspect_raw(tagged, tls_verify=tls_verify)
    now = digest_of(raw)
    if now != ref.digest:
        raise EmbedError(f"{ref} ({want.source}): digest mismatch: tag {ref.tag} is now {now}")


def copy_one(want: Wanted, store: Path, runroot: Path, *, tls_verify: bool = True) -> Embedded:
    ref = want.ref
    try:
        _check_tag(want, tls_verify)
        with tempfile.TemporaryDirectory(prefix="imagemode-embed-") as tmp:
            digest_file = Path(tmp) / "digest"
            # containers/image takes a tag or a digest, not both: fetch by the digest (checked
            # against the tag above) and keep the tag as the name podman finds it by.
            src = ImageRef(ref.transport, ref.name, digest=ref.digest) if ref.digest else ref
            name = ImageRef(ref.transport, ref.name, ref.tag) if ref.tag else ref
            storage.copy(
                src,
                store_spec(store, runroot) + str(name),
                preserve_digests=True,
                src_tls_verify=tls_verify,
                digest_file=digest_file,
            )
            digest = digest_file.read_text().strip()
    except RunError as e:
        raise EmbedError(f"{ref} ({want.source}): cannot embed: {fetch.cause(e)}") from None
    # skopeo has checked the bytes against a pinned digest already; this catches an index pinned
    # where one platform's manifest was stored, which podman would then not find by that digest.
    if ref.digest and digest != ref.digest:
        raise EmbedError(f"{ref} ({want.source}): digest mismatch: stored {digest}")
    image_id = _image_id(store, digest)
    return Embedded(str(ref), digest, image_id, want.source)


def _image_id(store: Path, digest: str) -> str:
    for image in json.loads((store / "overlay-images/images.json").read_text()):
        if image.get("digest") == digest or digest in image.get("digests", []):
            return str(image["id"])
    raise EmbedError(f"{store}: no image with digest {digest} after the copy")


def embed(
    wanted: list[Wanted],
    root: Path,
    *,
    tls_verify: bool = True,
    on_image: Callable[[Embedded], None] | None = None,
) -> list[Embedded]:
    """Copy every wanted image into the store under `root`, rewrite the store for ostree, and write
    the list and the storage.conf that makes the store visible. `root` is an image's tree: every
    write into it is confined (imagemode.confined), so a link in it cannot send one elsewhere."""
    root.mkdir(parents=True, exist_ok=True)  # the root itself is the caller's, not the image's
    with confined.Tree(root) as tree:
        try:
            fresh = tree.kind(str(STORE)) is None
            tree.makedirs(str(STORE))  # refused when a link is on the way: skopeo would follow it
        except confined.ConfinedError as e:
            raise EmbedError(str(e)) from None
        store = root / STORE
        done: list[Embedded] = []
        try:
            with tempfile.TemporaryDirectory(prefix="imagemode-embed-run-") as runroot:
                for want in wanted:
                    item = copy_one(want, store, Path(runroot), tls_verify=tls_verify)
                    done.append(item)
                    if on_image:
                        on_image(item)
        except BaseException:
            if fresh:  # a failed first embed leaves the tree as it found it, not an unlisted store
                _remove_made(tree, str(STORE))
            raise
        try:
            normalize(store)
            old = read_list(root)
            merged = {e.ref: e for e in old} | {e.ref: e for e in done}
            write_json(tree, str(LIST), {"images": [asdict(e) for e in merged.values()]})
            tree.write_bytes(str(STORAGE_CONF), STORAGE_CONF_TEXT.encode(), create_parents=True)
        except confined.ConfinedError as e:
            raise EmbedError(str(e)) from None
    return done


def _remove_made(tree: confined.Tree, rel: str) -> None:
    """Remove `rel` and the parents it left empty, up to (not including) the tree's root."""
    tree.remove(rel)
    parent = Path(rel).parent
    while str(parent) != "." and not tree.listdir(str(parent)):
        tree.remove(str(parent))
        parent = parent.parent


def read_list(root: Path) -> list[Embedded]:
    with confined.Tree(root) as tree:
        path = confined.resolve(tree, str(LIST))
        if path is None or tree.kind(path) is not confined.Kind.FILE:
            return []
        try:
            data = json.loads(tree.read_bytes(path))
            return [Embedded(**e) for e in data["images"]]
        except (ValueError, KeyError, TypeError) as e:
            raise EmbedError(f"/{LIST}: not an embedded-image list: {e}") from None


def write_json(tree: confined.Tree, rel: str, data: object) -> None:
    tree.write_bytes(rel, (json.dumps(data, indent=2) + "\n").encode(), create_parents=True)


# --- the store rewrite --------------------------------------------------------------------------


def link_name(layer_id: str) -> str:
    return base64.b32encode(hashlib.sha256(layer_id.encode()).digest()).decode()[:LINK_LENGTH]


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def has_markers(diff: confined.Tree, rel: str = "") -> bool:
    """Whether a layer's diff holds a whiteout device or an opaque-directory xattr."""
    if any(n.encode().startswith(OVERLAY_XATTRS) for n, _ in diff.xattrs(rel)):
        return True
    for name in diff.listdir(rel):
        sub = f"{rel}/{name}" if rel else name
        st = diff.lstat(sub)
        if st is not None and (_is_whiteout(st) or (stat.S_ISDIR(st.st_mode) and has_markers(diff, sub))):
            return True
    return False


def _opaque(diff: confined.Tree, rel: str) -> bool:
    return any(n.endswith("overlay.opaque") and v == b"y" for n, v in diff.xattrs(rel))


def _copy_meta(src: confined.Tree, dst: confined.Tree, rel: str, st: os.stat_result) -> None:
    dst.chown(rel, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(st.st_mode):
        dst.chmod(rel, stat.S_IMODE(st.st_mode))
        for name, value in src.xattrs(rel):
            if not name.encode().startswith(OVERLAY_XATTRS):
                dst.setxattr(rel, name, value)
    dst.utime(rel, (st.st_atime_ns, st.st_mtime_ns))


def _apply(diff: confined.Tree, tree: confined.Tree, rel: str = "") -> None:
    """Lay one overlay diff over `tree` the way the kernel's overlay would show it. Both sides are
    walked without following a link: a lower layer's symlink where this layer has a directory is
    replaced by the directory, as overlayfs shows it, never written through."""
    here = diff.lstat(rel)
    assert here is not None
    if rel:
        kind = tree.kind(rel)
        opaque = _opaque(diff, rel)
        if kind is not None and (kind is not confined.Kind.DIR or opaque):
            tree.remove(rel)
        tree.mkdir(rel, exist_ok=True)
    for name in diff.listdir(rel):
        sub = f"{rel}/{name}" if rel else name
        sst = diff.lstat(sub)
        if sst is None:
            continue
        if stat.S_ISDIR(sst.st_mode):
            _apply(diff, tree, sub)
            continue
        tree.remove(sub)
        if _is_whiteout(sst):
            continue
        if stat.S_ISREG(sst.st_mode):
            tree.link_from(diff, sub, sub)  # the store is read-only: sharing the inode costs nothing
        elif stat.S_ISLNK(sst.st_mode):
            tree.symlink(sub, diff.readlink(sub))
            _copy_meta(diff, tree, sub, sst)
        # Other devices and fifos cannot be committed to ostree (see store/layers.py).
    _copy_meta(diff, tree, rel, here)


def _chain(layers: dict[str, dict[str, object]], layer_id: str) -> list[str]:
    """The layer and its parents, the base first."""
    out: list[str] = []
    cur: str | None = layer_id
    while cur:
        if cur in out:
            raise EmbedError(f"layer {layer_id}: its parents form a loop")
        out.append(cur)
        parent = layers[cur].get("parent")
        cur = str(parent) if parent else None
    return out[::-1]


LAYER_ID = re.compile(r"[0-9a-f]{64}\Z")


def _layers(store: Path) -> tuple[list[dict[str, object]], dict[str, dict[str, object]]]:
    """The store's layer records, checked: a store carried from an image is that image's content."""
    path = store / "overlay-layers/layers.json"
    try:
        records = json.loads(path.read_text())
        if not isinstance(records, list) or not all(
            isinstance(r, dict) and LAYER_ID.match(str(r.get("id", ""))) for r in records
        ):
            raise ValueError("a layer record without a layer ID")
        layers = {str(r["id"]): r for r in records}
        for r in records:
            if r.get("parent") is not None and str(r["parent"]) not in layers:
                raise ValueError(f"layer {r['id']} has an unknown parent")
    except (OSError, ValueError) as e:
        raise EmbedError(f"{path}: not a layer list: {e}") from None
    return records, layers


def normalize(store: Path) -> None:
    records, layers = _layers(store)
    with confined.Tree(store / "overlay") as overlay:
        # Parents before children, so that a flattened parent is already a base when its child is read.
        for layer_id in sorted(layers, key=lambda i: len(_chain(layers, i))):
            with confined.Tree(store / "overlay" / layer_id / "diff") as diff:
                if not has_markers(diff):
                    continue
            flat = f"{layer_id}/diff.flat"
            overlay.remove(flat)
            overlay.mkdir(flat)
            with confined.Tree(store / "overlay" / flat) as out:
                for lid in _chain(layers, layer_id):
                    with confined.Tree(store / "overlay" / lid / "diff") as src:
                        _apply(src, out)
            overlay.remove(f"{layer_id}/diff")
            os.rename(flat, f"{layer_id}/diff", src_dir_fd=overlay.fd, dst_dir_fd=overlay.fd)
            layers[layer_id].pop("parent", None)
            overlay.mkdir(f"{layer_id}/empty", exist_ok=True)
        _relink(overlay, layers)
    (store / "overlay-layers/layers.json").write_text(json.dumps(records))


def _relink(overlay: confined.Tree, layers: dict[str, dict[str, object]]) -> None:
    for entry in overlay.listdir("l"):
        overlay.remove(f"l/{entry}")
    for layer_id in layers:
        name = link_name(layer_id)
        overlay.symlink(f"l/{name}", f"../{layer_id}/diff")
        overlay.write_bytes(f"{layer_id}/link", name.encode())
    for layer_id in layers:
        parents = _chain(layers, layer_id)[:-1][::-1]
        if parents:
            overlay.write_bytes(f"{layer_id}/lower", ":".join(f"l/{link_name(p)}" for p in parents).encode())
        else:
            overlay.remove(f"{layer_id}/lower")
