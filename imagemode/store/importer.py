"""OCI image → ostree commit, layer by layer, each layer cached by its digest.

1. skopeo copies the image (any transport) into an OCI layout, keeping its manifest digest.
2. Each layer not yet in the repo is extracted (imagemode.store.layers) and committed under
   `imagemode/layer/<diff_id>`; its whiteouts travel in that commit's metadata.
3. The layers are checked out one over the other by hard links, each after its whiteouts are applied.
4. The merged tree gets the ostree layout (/etc → /usr/etc; /var → a factory copy that tmpfiles.d
   puts in place on first boot) and is committed with the manifest digest, config and reference as
   metadata. `status` reads them from there.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagemode.build.lint import tmpfiles_paths
from imagemode.errors import ImagemodeError
from imagemode.oci import storage
from imagemode.oci.reference import ImageRef, Transport
from imagemode.store import layers
from imagemode.store.ostree import Repo

REF_NAME = "org.opencontainers.image.ref.name"
LAYER_REF = "imagemode/layer/"
IMAGE_REF = "imagemode/image/"
FACTORY_VAR = "usr/share/factory/var"
VAR_TMPFILES = "usr/lib/tmpfiles.d/imagemode-factory-var.conf"

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


def fetch(src: ImageRef, work: Path) -> OciImage:
    """Copy `src` into a new OCI layout under `work`, digests preserved."""
    layout = Path(tempfile.mkdtemp(prefix="oci-", dir=work))
    storage.copy(src, ImageRef(Transport.OCI, path=os.fspath(layout), tag="image"), preserve_digests=True)
    return read_layout(layout, "image")


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


def ostree_layout(tree: Path) -> None:
    """The layout ostree deploys: /etc under /usr, /var as a factory copy recreated by tmpfiles.d."""
    if (tree / "usr/etc").exists():
        raise ImportError_("the image has /usr/etc; config belongs in /etc (see imagemode lint)")
    if (tree / "etc").is_dir():
        os.rename(tree / "etc", tree / "usr/etc")
    var = tree / "var"
    covered = tmpfiles_paths(tree)
    lines = []
    if var.is_dir():
        factory = tree / FACTORY_VAR
        factory.parent.mkdir(parents=True, exist_ok=True)
        os.rename(var, factory)
        var.mkdir()
        os.chmod(var, 0o755)
        # Entries two levels deep (var/lib/foo): a device gets each one it lacks at every boot, so a
        # service added by an update finds its state directory, and nothing of the device's is overwritten.
        for first in sorted(factory.iterdir()):
            children = sorted(first.iterdir()) if first.is_dir() and not first.is_symlink() else []
            for entry in children or [first]:
                rel = "/var/" + str(entry.relative_to(factory))
                if rel not in covered:
                    lines.append(f"C {rel} - - - - /{FACTORY_VAR}/{entry.relative_to(factory)}")
            if children and f"/var/{first.name}" not in covered:
                st = first.stat()
                lines.append(f"d /var/{first.name} {st.st_mode & 0o7777:04o} {st.st_uid} {st.st_gid} -")
    if lines:
        conf = tree / VAR_TMPFILES
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(
            "# Written by imagemode's importer: the image's /var, put in place on first boot.\n"
            + "\n".join(sorted(set(lines), key=lambda ln: (ln[0] != "d", ln)))
            + "\n"
        )
    for d in ("dev", "proc", "sys", "run", "tmp", "sysroot"):
        (tree / d).mkdir(exist_ok=True)


def import_oci(
    repo: Repo,
    img: OciImage,
    image: str,
    work: Path,
    on_layer: Callable[[int, int, bool], None] | None = None,
) -> ImportResult:
    """Import an image already in an OCI layout. `image` is the reference recorded in the commit."""
    descs = img.manifest["layers"]
    if len(descs) != len(img.diff_ids):
        raise ImportError_("the image config's diff_ids do not match its manifest's layers")
    imported = 0
    for i, (desc, diff_id) in enumerate(zip(descs, img.diff_ids, strict=True)):
        new = _layer_commit(repo, img, desc, diff_id, work)
        imported += new
        if on_layer:
            on_layer(i + 1, len(descs), new)
    merged = _tempdir(work, "merged-")
    try:
        for diff_id in img.diff_ids:
            ref = layer_ref(diff_id)
            wh = json.loads(repo.metadata(ref, META_WHITEOUTS) or "{}")
            layers.apply_whiteouts(merged, layers.Whiteouts(wh.get("deleted", []), wh.get("opaque", [])))
            repo.checkout_union(ref, merged)
        ostree_layout(merged)
        version = img.labels.get("org.opencontainers.image.version", "")
        created = img.config.get("created", "")
        meta = {
            META_IMAGE: image,
            META_DIGEST: img.manifest_digest,
            META_MANIFEST: json.dumps(img.manifest, sort_keys=True),
            META_CONFIG: json.dumps(img.config, sort_keys=True),
        }
        if version:
            meta[META_VERSION] = version
        ref = ref_for(image)
        commit = repo.commit(
            merged,
            ref,
            subject=f"{image}@{img.manifest_digest}",
            metadata=meta,
            timestamp=_epoch(created),
            link_checkout_speedup=True,
        )
    finally:
        layers.remove_path(merged)
    return ImportResult(commit, ref, image, img.manifest_digest, version, len(descs), imported)


def _epoch(created: str) -> int | None:
    from datetime import datetime

    if not created:
        return None
    try:
        return int(datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


def import_image(
    repo: Repo, src: ImageRef, work: Path, on_layer: Callable[[int, int, bool], None] | None = None
) -> ImportResult:
    """Import `src`. Layers are copied only when the store lacks one of them, and an image already
    imported under the same digest is not merged again."""
    found = storage.manifest_and_config(src)
    if found is not None:
        digest, manifest, config = found
        ref = ref_for(src)
        commit = repo.resolve(ref)
        if commit and repo.metadata(commit, META_DIGEST) == digest:
            n = len(config["rootfs"]["diff_ids"])
            return ImportResult(
                commit, ref, src.skopeo, digest, repo.metadata(commit, META_VERSION) or "", n, 0
            )
        img = OciImage(Path("/nonexistent"), digest, manifest, config)
        if all(repo.resolve(layer_ref(d)) for d in img.diff_ids):
            return import_oci(repo, img, src.skopeo, work, on_layer)  # every blob is in the store already
    img = fetch(src, work)
    try:
        return import_oci(repo, img, src.skopeo, work, on_layer)
    finally:
        shutil.rmtree(img.layout, ignore_errors=True)
