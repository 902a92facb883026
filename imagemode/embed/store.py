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
import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from imagemode.embed.sources import Wanted
from imagemode.errors import ImagemodeError
from imagemode.oci import storage
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
    now = "sha256:" + hashlib.sha256(raw.encode()).hexdigest()
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
    the list and the storage.conf that makes the store visible."""
    store = root / STORE
    fresh = not store.exists()
    store.mkdir(parents=True, exist_ok=True)
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
            _remove_made(store, root)
        raise
    normalize(store)
    old = read_list(root)
    merged = {e.ref: e for e in old} | {e.ref: e for e in done}
    write_json(root / LIST, {"images": [asdict(e) for e in merged.values()]})
    conf = root / STORAGE_CONF
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(STORAGE_CONF_TEXT)
    return done


def _remove_made(path: Path, root: Path) -> None:
    """Remove `path` and the parents it left empty, up to (not including) `root`."""
    shutil.rmtree(path)
    parent = path.parent
    while parent != root and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


def read_list(root: Path) -> list[Embedded]:
    path = root / LIST
    if not path.exists():
        return []
    try:
        return [Embedded(**e) for e in json.loads(path.read_text())["images"]]
    except (ValueError, KeyError, TypeError) as e:
        raise EmbedError(f"{path}: not an embedded-image list: {e}") from None


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


# --- the store rewrite --------------------------------------------------------------------------


def link_name(layer_id: str) -> str:
    return base64.b32encode(hashlib.sha256(layer_id.encode()).digest()).decode()[:LINK_LENGTH]


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _overlay_xattrs(path: str) -> list[str]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []
    return [n for n in names if n.encode().startswith(OVERLAY_XATTRS)]


def has_markers(diff: Path) -> bool:
    """Whether a layer's diff holds a whiteout device or an opaque-directory xattr."""
    for dirpath, dirnames, filenames in os.walk(diff):
        if _overlay_xattrs(dirpath):
            return True
        for name in filenames + dirnames:
            st = os.lstat(os.path.join(dirpath, name))
            if _is_whiteout(st):
                return True
    return False


def _opaque(path: str) -> bool:
    names = [n for n in _overlay_xattrs(path) if n.endswith("overlay.opaque")]
    return any(os.getxattr(path, n, follow_symlinks=False) == b"y" for n in names)


def _copy_meta(src: str, dst: str, st: os.stat_result) -> None:
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
        for name in os.listxattr(src, follow_symlinks=False):
            if not name.encode().startswith(OVERLAY_XATTRS):
                os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False), follow_symlinks=False)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _apply(diff: Path, tree: Path) -> None:
    """Lay one overlay diff over `tree` the way the kernel's overlay would show it."""
    dir_meta: list[tuple[str, str, os.stat_result]] = []
    for dirpath, dirnames, filenames in os.walk(diff):
        rel = os.path.relpath(dirpath, diff)
        out_dir = os.path.normpath(os.path.join(tree, rel))
        st = os.lstat(dirpath)
        if rel != "." and os.path.lexists(out_dir) and not os.path.isdir(out_dir):
            os.unlink(out_dir)
        if _opaque(dirpath) and os.path.isdir(out_dir):
            shutil.rmtree(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        dir_meta.append((dirpath, out_dir, st))
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            src = os.path.join(dirpath, name)
            dst = os.path.join(out_dir, name)
            sst = os.lstat(src)
            if os.path.isdir(dst) and not os.path.islink(dst):
                shutil.rmtree(dst)
            elif os.path.lexists(dst):
                os.unlink(dst)
            if _is_whiteout(sst):
                continue
            if stat.S_ISREG(sst.st_mode):
                os.link(src, dst)  # the store is read-only: sharing the inode costs nothing
            elif stat.S_ISLNK(sst.st_mode):
                os.symlink(os.readlink(src), dst)
                _copy_meta(src, dst, sst)
            # Other devices and fifos cannot be committed to ostree (see store/layers.py).
        for d in list(dirnames):
            if os.path.islink(os.path.join(dirpath, d)):
                dirnames.remove(d)
            else:
                sub = os.path.join(out_dir, d)
                if os.path.lexists(sub) and not os.path.isdir(sub):
                    os.unlink(sub)
    for src, dst, st in reversed(dir_meta):
        _copy_meta(src, dst, st)


def _chain(layers: dict[str, dict[str, object]], layer_id: str) -> list[str]:
    """The layer and its parents, the base first."""
    out = []
    cur: str | None = layer_id
    while cur:
        out.append(cur)
        parent = layers[cur].get("parent")
        cur = str(parent) if parent else None
    return out[::-1]


def normalize(store: Path) -> None:
    layers_json = store / "overlay-layers/layers.json"
    records: list[dict[str, object]] = json.loads(layers_json.read_text())
    layers = {str(r["id"]): r for r in records}
    overlay = store / "overlay"
    # Parents before children, so that a flattened parent is already a base when its child is read.
    for layer_id in sorted(layers, key=lambda i: len(_chain(layers, i))):
        diff = overlay / layer_id / "diff"
        if not has_markers(diff):
            continue
        flat = overlay / layer_id / "diff.flat"
        if flat.exists():
            shutil.rmtree(flat)
        flat.mkdir()
        for lid in _chain(layers, layer_id):
            _apply(overlay / lid / "diff", flat)
        shutil.rmtree(diff)
        flat.rename(diff)
        layers[layer_id].pop("parent", None)
        (overlay / layer_id / "empty").mkdir(exist_ok=True)
    _relink(overlay, layers)
    layers_json.write_text(json.dumps(records))


def _relink(overlay: Path, layers: dict[str, dict[str, object]]) -> None:
    links = overlay / "l"
    for entry in links.iterdir():
        entry.unlink()
    for layer_id in layers:
        name = link_name(layer_id)
        (links / name).symlink_to(f"../{layer_id}/diff")
        (overlay / layer_id / "link").write_text(name)
    for layer_id in layers:
        lower = overlay / layer_id / "lower"
        parents = _chain(layers, layer_id)[:-1][::-1]
        if parents:
            lower.write_text(":".join(f"l/{link_name(p)}" for p in parents))
        else:
            with contextlib.suppress(FileNotFoundError):
                lower.unlink()
