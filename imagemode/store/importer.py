"""OCI image → ostree commit, layer by layer, each layer cached by its digest.

1. skopeo copies the image (any transport) into an OCI layout, keeping its manifest digest. Layers
   the store has are not copied (imagemode.store.fetch).
2. Each layer not yet in the repo is extracted (imagemode.store.layers) and committed under
   `imagemode/layer/<diff_id>`, all of them in one repository transaction; its whiteouts travel in
   that commit's metadata.
3. The layer commits are composed into one tree inside libostree, each after its whiteouts are
   applied, and given the ostree layout (imagemode.store.compose).
4. The tree is committed with the manifest digest, config and reference as metadata. `status` reads
   them from there.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from imagemode.errors import ImagemodeError
from imagemode.oci import manifest as oci_manifest
from imagemode.oci.image import Image
from imagemode.oci.layout import blob_path, epoch_of
from imagemode.oci.policy import Trust
from imagemode.oci.reference import ImageRef
from imagemode.store import compose, fetch, layers, meta
from imagemode.store.ostree import Repo

REF_NAME = "org.opencontainers.image.ref.name"
LAYER_REF = "imagemode/layer/"
IMAGE_REF = "imagemode/image/"


class ImageImportError(ImagemodeError):
    pass


@dataclass(frozen=True, kw_only=True)
class OciImage(Image):
    """An image in an OCI layout directory."""

    layout: Path

    def blob(self, digest: str) -> Path:
        return blob_path(self.layout, digest)


def read_layout(path: Path, tag: str | None = None) -> OciImage:
    """The image tagged `tag` in an OCI layout (or its only image), its manifest and config checked."""
    try:
        entries = oci_manifest.index((path / "index.json").read_bytes(), f"{path}/index.json")
        if tag is not None:
            entries = [m for m in entries if (m.get("annotations") or {}).get(REF_NAME) == tag]
        if len(entries) != 1:
            raise ImageImportError(
                f"{path}: expected one image{f' tagged {tag}' if tag else ''}, found {len(entries)}"
            )
        digest = entries[0]["digest"]
        raw = _read_blob(blob_path(path, digest), digest)
        if oci_manifest.is_index(oci_manifest.load(raw, "manifest")):
            raise ImageImportError("the image is a manifest list; copy one platform's image")
        manifest = oci_manifest.manifest(raw)
        cfg_digest = manifest["config"]["digest"]
        cfg = oci_manifest.config(
            _read_blob(blob_path(path, cfg_digest), cfg_digest), len(manifest["layers"])
        )
    except oci_manifest.ManifestError as e:
        raise ImageImportError(str(e)) from None
    return OciImage(layout=path, digest=digest, manifest=manifest, config=cfg)


def _read_blob(path: Path, digest: str) -> bytes:
    """A small blob (a manifest or config), checked against its digest before it is parsed."""
    try:
        with open(path, "rb") as f:
            data = f.read(oci_manifest.MAX_JSON + 1)
    except OSError as e:
        raise ImageImportError(f"blob {digest} is missing from the layout ({e.strerror})") from None
    if len(data) > oci_manifest.MAX_JSON:
        raise ImageImportError(
            f"blob {digest}: more than the {oci_manifest.MAX_JSON} bytes a manifest or config may have"
        )
    if oci_manifest.digest_of(data) != digest:
        raise ImageImportError(f"blob {digest} does not match its digest")
    return data


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
    merged: str | None = None  # the key of its merged run of layers (imagemode.store.compose)

    @property
    def store_refs(self) -> list[str]:
        """The refs that a store which holds this image keeps beside it: its layers, and the merge of
        its first layers (a disk's store starts with them, so that its first update merges nothing)."""
        merged = [compose.MERGED_REF + self.merged] if self.merged else []
        return [layer_ref(d) for d in self.diff_ids] + merged


def layer_ref(diff_id: str) -> str:
    return LAYER_REF + oci_manifest.digest(diff_id, "diff_id").replace(":", "/")


def _layer_commit(repo: Repo, img: OciImage, desc: dict[str, Any], diff_id: str, work: Path) -> bool:
    """Commit one layer unless the repo has it. Returns True when it was imported now."""
    ref = layer_ref(diff_id)
    if repo.resolve(ref):
        return False
    layers.commit_layer(repo, img.blob(desc["digest"]), ref, digest=desc["digest"], diff_id=diff_id)
    return True


def import_oci(
    repo: Repo,
    img: OciImage,
    image: str,
    work: Path,
    on_layer: Callable[[int, int, bool], None] | None = None,
    *,
    check_bootable: bool = False,
    digest: str | None = None,
) -> ImportResult:
    """Import an image already in an OCI layout. `image` is the reference recorded in the commit, and
    `digest` the manifest digest (default: the layout's; a copy out of containers-storage has its own).

    check_bootable: refuse a tree without exactly one kernel before it is committed (the device's
    check; `imagemode build` and `disk` run the whole lint on the image itself).
    """
    descs = img.manifest["layers"]
    made: list[str] = []  # layer refs this import added: a refused image takes them away again
    try:
        # One transaction for the layers: a layer is in the store when all of them are. Its refs are
        # not seen until it commits, so a layer named twice in one image is committed once by name.
        with layers.transaction(repo):
            for i, (desc, diff_id) in enumerate(zip(descs, img.diff_ids, strict=True)):
                new = diff_id not in img.diff_ids[:i] and _layer_commit(repo, img, desc, diff_id, work)
                if new:
                    made.append(layer_ref(diff_id))
                if on_layer:
                    on_layer(i + 1, len(descs), new)
        commit, ref, version = _compose(repo, img, image, check_bootable, digest or img.digest)
        merged = repo.metadata(commit, meta.MERGED)
    except BaseException:
        for r in made:
            repo.delete_ref(r)
        raise
    return ImportResult(
        commit,
        ref,
        image,
        digest or img.digest,
        version,
        len(descs),
        len(made),
        diff_ids=tuple(img.diff_ids),
        merged=merged,
    )


def _compose(
    repo: Repo, img: OciImage, image: str, check_bootable: bool, digest: str
) -> tuple[str, str, str]:
    """The image's tree from its layer commits, committed: (commit, ref, version)."""
    version = img.labels.get("org.opencontainers.image.version", "")
    keys = {
        meta.IMAGE: image,
        meta.DIGEST: digest,
        meta.MANIFEST: json.dumps(img.manifest, sort_keys=True),
        meta.CONFIG: json.dumps(img.config, sort_keys=True),
    }
    if version:
        keys[meta.VERSION] = version
    ref = ref_for(image)
    with compose.transaction(repo) as tree:
        merged = tree.add_layers([
            (layer_ref(d), layers.Whiteouts.from_json(repo.metadata(layer_ref(d), meta.WHITEOUTS)))
            for d in img.diff_ids
        ])  # fmt: skip
        if merged is not None:
            keys[meta.MERGED] = merged
        if check_bootable:
            kernels = tree.kernels()
            if len(kernels) != 1:
                found = "no kernel in /usr/lib/modules" if not kernels else f"{len(kernels)} kernels"
                raise ImageImportError(
                    f"{image} is not bootable: {found}; a bootable image carries exactly one"
                )
        tree.ostree_layout()
        subject = f"{image}@{digest}"
        commit = tree.commit(ref, subject, keys, epoch_of(img.config.get("created")))
    return commit, ref, version


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
    trust: Trust | None = None,
    on_layers: fetch.OnLayers | None = None,
) -> ImportResult:
    """Import `src`: only the layers the store lacks are copied, and an image already imported under
    the same digest is not merged again. `remote` is `src` already inspected (with the same `trust`).

    The copy runs every time, through the trust policy, even when every layer is cached: a manifest
    that only reorders or drops cached layers, or an old one replayed, is an image too."""
    remote = remote or fetch.inspect(src, authfile, trust=trust)

    def have(diff_id: str) -> bool:
        return repo.resolve(layer_ref(diff_id)) is not None

    got = fetch.fetch(
        remote, have, work, authfile, on_bytes, store=repo.path, trust=trust, on_layers=on_layers
    )
    try:
        img = read_layout(got.layout, "image")
        # A repacked copy has a manifest of its own (fetch.Remote.repacked): the same image is the same
        # config, and it is recorded under the digest podman knows it by.
        repacked = remote.repacked
        copied, read = (img.config_digest, remote.config_digest) if repacked else (img.digest, remote.digest)
        if copied != read:
            what = "config" if repacked else "manifest"
            raise ImageImportError(
                f"{src.skopeo}: the {what} copied is {copied}, not the {read} that was read (it changed"
                " meanwhile); nothing was imported"
            )
        ref = ref_for(src)
        commit = repo.resolve(ref)
        if commit and repo.metadata(commit, meta.DIGEST) == remote.digest:
            version = repo.metadata(commit, meta.VERSION) or ""
            n = len(remote.diff_ids)
            merged = repo.metadata(commit, meta.MERGED)
            return ImportResult(commit, ref, src.skopeo, remote.digest, version, n, 0,
                                diff_ids=tuple(remote.diff_ids), merged=merged)  # fmt: skip
        result = import_oci(
            repo, img, src.skopeo, work, on_layer, check_bootable=check_bootable, digest=remote.digest
        )
        return replace(result, bytes_fetched=got.bytes_fetched)
    finally:
        shutil.rmtree(got.layout, ignore_errors=True)
