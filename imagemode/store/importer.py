"""OCI image → ostree commit, layer by layer, each layer cached by its digest.

1. skopeo copies the image (any transport) into an OCI layout, keeping its manifest digest. Layers
   the store has are not copied (imagemode.store.fetch).
2. Each layer not yet in the repo is extracted (imagemode.store.layers) and committed under
   `imagemode/layer/<diff_id>`; its whiteouts travel in that commit's metadata.
3. The layer commits are composed into one tree inside libostree, each after its whiteouts are
   applied, and given the ostree layout (imagemode.store.compose).
4. The tree is committed with the manifest digest, config and reference as metadata. `status` reads
   them from there.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from imagemode.errors import ImagemodeError
from imagemode.oci.reference import ImageRef
from imagemode.store import compose, fetch, layers
from imagemode.store.ostree import Repo

REF_NAME = "org.opencontainers.image.ref.name"
LAYER_REF = "imagemode/layer/"
IMAGE_REF = "imagemode/image/"

# Commit metadata keys: the contract between the importer and `status`.
META_IMAGE = "imagemode.image"
META_DIGEST = "imagemode.manifest-digest"
META_MANIFEST = "imagemode.manifest"
META_CONFIG = "imagemode.config"
META_VERSION = "version"  # ostree's own key: `ostree admin status` prints it
META_WHITEOUTS = "imagemode.whiteouts"


class ImportError_(ImagemodeError):
    pass


@dataclass(frozen=True)
class OciImage:
    """An image in an OCI layout directory: its manifest (and digest) and config."""

    layout: Path
    manifest_digest: str
    manifest: dict[str, Any]
    config: dict[str, Any]

    def blob(self, digest: str) -> Path:
        algo, hexd = digest.split(":", 1)
        return self.layout / "blobs" / algo / hexd

    @property
    def labels(self) -> dict[str, str]:
        labels: dict[str, str] = self.config.get("config", {}).get("Labels") or {}
        return labels

    @property
    def diff_ids(self) -> list[str]:
        ids: list[str] = self.config["rootfs"]["diff_ids"]
        return ids


def read_layout(path: Path, tag: str | None = None) -> OciImage:
    """The image tagged `tag` in an OCI layout (or its only image)."""
    index = json.loads((path / "index.json").read_text())
    manifests = index["manifests"]
    if tag is not None:
        manifests = [m for m in manifests if m.get("annotations", {}).get(REF_NAME) == tag]
    if len(manifests) != 1:
        raise ImportError_(
            f"{path}: expected one image{f' tagged {tag}' if tag else ''}, found {len(manifests)}"
        )
    desc = manifests[0]
    mpath = path / "blobs" / desc["digest"].replace(":", "/", 1)
    manifest = json.loads(mpath.read_text())
    if "layers" not in manifest:
        raise ImportError_("the image is a manifest list; copy one platform's image")
    cfg = json.loads((path / "blobs" / manifest["config"]["digest"].replace(":", "/", 1)).read_text())
    return OciImage(path, desc["digest"], manifest, cfg)


def ref_for(image: ImageRef | str) -> str:
    """An ostree ref for an image reference: every character outside [A-Za-z0-9._-/] becomes '_'."""
    text = image.skopeo if isinstance(image, ImageRef) else image
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "._-/") else "_" for c in text)
    parts = [p.lstrip("._-") or "_" for p in safe.split("/") if p]
    return IMAGE_REF + "/".join(parts)


@dataclass(frozen=True)
class ImportResult:
    commit: str
    ref: str
    image: str
    manifest_digest: str
    version: str
    layers_total: int
    layers_imported: int
    bytes_fetched: int = 0
    diff_ids: tuple[str, ...] = ()

    @property
    def layer_refs(self) -> list[str]:
        return [layer_ref(d) for d in self.diff_ids]


def layer_ref(diff_id: str) -> str:
    return LAYER_REF + diff_id.replace(":", "/")


def _layer_commit(repo: Repo, img: OciImage, desc: dict[str, Any], diff_id: str, work: Path) -> bool:
    """Commit one layer unless the repo has it. Returns True when it was imported now."""
    ref = layer_ref(diff_id)
    if repo.resolve(ref):
        return False
    tree = _tempdir(work, "layer-")
    try:
        wh = layers.extract(img.blob(desc["digest"]), tree)
        meta = {META_WHITEOUTS: json.dumps({"deleted": wh.deleted, "opaque": wh.opaque})}
        repo.commit(tree, ref, subject=f"layer {diff_id}", metadata=meta, timestamp=0)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    return True


def _tempdir(work: Path, prefix: str) -> Path:
    # mkdtemp makes 0700 directories; this one becomes the root of a commit, which is 0755.
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=work))
    d.chmod(0o755)
    return d


def import_oci(
    repo: Repo,
    img: OciImage,
    image: str,
    work: Path,
    on_layer: Callable[[int, int, bool], None] | None = None,
    *,
    check_bootable: bool = False,
) -> ImportResult:
    """Import an image already in an OCI layout. `image` is the reference recorded in the commit.

    check_bootable: refuse a tree without exactly one kernel before it is committed (the device's
    check; `imagemode build` and `disk` run the whole lint on the image itself).
    """
    descs = img.manifest["layers"]
    if len(descs) != len(img.diff_ids):
        raise ImportError_("the image config's diff_ids do not match its manifest's layers")
    imported = 0
    for i, (desc, diff_id) in enumerate(zip(descs, img.diff_ids, strict=True)):
        new = _layer_commit(repo, img, desc, diff_id, work)
        imported += new
        if on_layer:
            on_layer(i + 1, len(descs), new)
    version = img.labels.get("org.opencontainers.image.version", "")
    meta = {
        META_IMAGE: image,
        META_DIGEST: img.manifest_digest,
        META_MANIFEST: json.dumps(img.manifest, sort_keys=True),
        META_CONFIG: json.dumps(img.config, sort_keys=True),
    }
    if version:
        meta[META_VERSION] = version
    ref = ref_for(image)
    with compose.transaction(repo) as tree:
        for diff_id in img.diff_ids:
            wh = json.loads(repo.metadata(layer_ref(diff_id), META_WHITEOUTS) or "{}")
            tree.add_layer(layer_ref(diff_id), layers.Whiteouts(wh.get("deleted", []), wh.get("opaque", [])))
        if check_bootable:
            kernels = tree.kernels()
            if len(kernels) != 1:
                found = "no kernel in /usr/lib/modules" if not kernels else f"{len(kernels)} kernels"
                raise ImportError_(f"{image} is not bootable: {found}; a bootable image carries exactly one")
        tree.ostree_layout()
        subject = f"{image}@{img.manifest_digest}"
        commit = tree.commit(ref, subject, meta, _epoch(img.config.get("created", "")))
    return ImportResult(
        commit, ref, image, img.manifest_digest, version, len(descs), imported, diff_ids=tuple(img.diff_ids)
    )


def _epoch(created: str) -> int | None:
    from datetime import datetime

    if not created:
        return None
    try:
        return int(datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


def import_image(
    repo: Repo,
    src: ImageRef,
    work: Path,
    on_layer: Callable[[int, int, bool], None] | None = None,
    *,
    remote: fetch.Remote | None = None,
    authfile: Path | None = None,
    on_bytes: fetch.OnBytes | None = None,
    check_bootable: bool = False,
) -> ImportResult:
    """Import `src`: only the layers the store lacks are copied, and an image already imported under
    the same digest is not merged again. `remote` is `src` already inspected."""
    remote = remote or fetch.inspect(src, authfile)
    ref = ref_for(src)
    commit = repo.resolve(ref)
    if commit and repo.metadata(commit, META_DIGEST) == remote.digest:
        version = repo.metadata(commit, META_VERSION) or ""
        n = len(remote.diff_ids)
        return ImportResult(
            commit, ref, src.skopeo, remote.digest, version, n, 0, diff_ids=tuple(remote.diff_ids)
        )

    def have(diff_id: str) -> bool:
        return repo.resolve(layer_ref(diff_id)) is not None

    if all(have(d) for d in remote.diff_ids):  # every layer is in the store: nothing to copy
        img = OciImage(Path("/nonexistent"), remote.digest, remote.manifest, remote.config)
        return import_oci(repo, img, src.skopeo, work, on_layer, check_bootable=check_bootable)
    got = fetch.fetch(remote, have, work, authfile, on_bytes)
    try:
        img = read_layout(got.layout, "image")
        result = import_oci(repo, img, src.skopeo, work, on_layer, check_bootable=check_bootable)
        return replace(result, bytes_fetched=got.bytes_fetched)
    finally:
        shutil.rmtree(got.layout, ignore_errors=True)
