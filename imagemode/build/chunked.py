"""A flat OS layer into the layers of a chunked image (imagemode.chunk), for `build base` and `rechunk`.

The prior build is read from its config label (one inspect of its manifest and one of its config, no
layer). A patched component keeps the prior's base layer; its bytes come from the chunk cache
(`CACHE/chunks`, where every base this host wrote is kept) or, when this host never wrote it, from the
prior image itself, copied with every other layer skipped.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from imagemode.chunk import components, write
from imagemode.chunk import label as chunk_label
from imagemode.chunk import plan as chunk_plan
from imagemode.errors import ImagemodeError
from imagemode.oci import manifest as oci_manifest
from imagemode.oci import storage
from imagemode.oci.layout import MEDIA_LAYER_TAR, Blob, blob_path
from imagemode.oci.reference import ImageRef, Transport
from imagemode.run import RunError
from imagemode.store import fetch

CHUNKS_KEEP = 64  # base layers kept in the chunk cache, the most recently used first


class ChunkError(ImagemodeError):
    pass


@dataclass(frozen=True)
class PriorImage:
    ref: ImageRef
    prior: chunk_plan.Prior
    tls_verify: bool = True


def inspect(ref: ImageRef, what: str, tls_verify: bool = True) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(manifest digest, manifest, config) of an image, each checked; no layer is read. `what` names
    the image in an error."""
    try:
        raw = storage.inspect_raw(ref, tls_verify=tls_verify)
        if oci_manifest.is_index(oci_manifest.load(raw, f"{what}: manifest")):
            raise ChunkError(f"{what}: a manifest list; name one platform's image")
        manifest = oci_manifest.manifest(raw, f"{what}: manifest")
        cfg_raw = storage.inspect_raw(ref, config=True, tls_verify=tls_verify)
        config = oci_manifest.config(cfg_raw, len(manifest["layers"]), f"{what}: config")
    except RunError as e:
        raise ChunkError(f"{what}: cannot read it: {fetch.cause(e)}") from None
    except oci_manifest.ManifestError as e:
        raise ChunkError(str(e)) from None
    return oci_manifest.digest_of(raw), manifest, config


def read_prior(ref: ImageRef, tls_verify: bool = True) -> PriorImage | None:
    """The prior build's plan, from its config label; None when the image has no label (then the slots
    start fresh). An image that cannot be read, or a label that fails its checks, is an error."""
    what = f"--prior {ref.skopeo}"
    digest, _, config = inspect(ref, what, tls_verify)
    try:
        label = chunk_label.of_config(config)
    except chunk_label.LabelError as e:
        raise ChunkError(f"{what}: {e}") from None
    if label is None:
        return None
    if len(label.layers) > len(config["rootfs"]["diff_ids"]):
        raise ChunkError(f"{what}: its label names more layers than the image has")
    return PriorImage(ref, chunk_plan.Prior(label, tuple(config["rootfs"]["diff_ids"]), digest), tls_verify)


def default_prior(tag: ImageRef) -> PriorImage | None:
    """The image now under the tag being built, if it is a chunked one: its slots are kept. One whose
    label fails its checks (not imagemode's) is no prior: the slots start afresh, once. The same for
    the image that `rechunk` reads, whose label its base gave it."""
    if tag.transport is not Transport.CONTAINERS_STORAGE or not storage.exists(tag):
        return None
    try:
        return read_prior(tag)
    except ChunkError as e:
        logging.getLogger(__name__).warning("%s; its slots are not kept", str(e).removeprefix("--prior "))
        return None


@dataclass(frozen=True)
class Chunked:
    layers: tuple[tuple[str, Path, Blob], ...]  # (slot, file, blob), bottom first
    label: chunk_label.ChunkLabel
    components: int
    patches: tuple[str, ...]


def chunk(
    flat: Path,
    epoch: int,
    prior: PriorImage | None,
    work: Path,
    cache_dir: Path,
    say: Callable[[str], None] = lambda s: None,
    rebase: bool = False,
) -> Chunked:
    """The chunked layers of the tree in the flat layer tar `flat`, written under `work`. `rebase`: no
    patch layers; every changed component is shipped whole (imagemode.chunk.plan.make)."""
    with tarfile.open(flat, "r:") as tar:
        scan = components.scan(tar)
        contents = write.Contents(tar, scan)
        sizes = [chunk_plan.Size(c.name, c.size) for c in scan.components.values()]
        plan = chunk_plan.make(sizes, prior.prior if prior else None, scan.kernel, contents.fingerprints,
                               contents.tree, patches=not rebase)  # fmt: skip
        written = write.write(tar, scan, plan, work, epoch, contents)
    store = cache_dir / "chunks"
    reused = _reused_blobs([w.plan.reuse for w in written if w.plan.reuse], store, prior, work)
    layers = []
    for w in written:
        if w.plan.reuse is not None:
            path = reused[w.plan.reuse]
            layers.append((w.plan.slot, path, Blob(w.plan.reuse, path.stat().st_size, MEDIA_LAYER_TAR)))
        else:
            assert w.path is not None and w.blob is not None
            layers.append((w.plan.slot, w.path, w.blob))
            if w.plan.components[0] in plan.bases and w.plan.slot.startswith("own:"):
                _keep(w.path, w.blob.digest, store)  # a base a later build may patch over
    _gc(store)
    for p in plan.patches:
        say(f"patch for {p.component}: {p.changed_bytes} bytes over the base {p.base[:19]}")
    return Chunked(
        tuple(layers),
        plan.label(scan.packages, prior.prior if prior else None),
        len(scan.components),
        tuple(p.component for p in plan.patches),
    )


def settle(
    label: chunk_label.ChunkLabel, diff_ids: list[str], prior: PriorImage | None
) -> chunk_label.ChunkLabel:
    """The label of the finished image (`diff_ids`: all its layers). When the image is its prior again,
    layer for layer, the prior's own history stands: so a rebuild from the same inputs, whose prior
    is the image itself, gives the same image."""
    if (
        prior is not None
        and label.layers == prior.prior.label.layers
        and diff_ids == list(prior.prior.diff_ids)
    ):
        return replace(label, prior=prior.prior.label.prior)
    return label


def _cached(store: Path, diff_id: str) -> Path:
    return store / (oci_manifest.digest(diff_id, "diff_id").removeprefix("sha256:") + ".tar")


def _keep(path: Path, diff_id: str, store: Path) -> None:
    dest = _cached(store, diff_id)
    if dest.exists():
        os.utime(dest)
        return
    store.mkdir(parents=True, exist_ok=True)
    tmp = store / f".{dest.name}.tmp"
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copyfile(path, tmp)
    os.replace(tmp, dest)


def _gc(store: Path) -> None:
    if not store.is_dir():
        return
    kept = sorted(store.glob("*.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in kept[CHUNKS_KEEP:]:
        old.unlink(missing_ok=True)


def _reused_blobs(
    diff_ids: list[str | None], store: Path, prior: PriorImage | None, work: Path
) -> dict[str, Path]:
    """A file for each base layer kept from the prior build: from the chunk cache, else from the prior
    image (every other layer of it skipped), checked against its diff_id either way."""
    wanted = [d for d in diff_ids if d is not None]
    found: dict[str, Path] = {}
    missing = []
    for d in wanted:
        p = _cached(store, d)
        if p.exists():
            os.utime(p)
            found[d] = p
        else:
            missing.append(d)
    if not missing:
        return found
    assert prior is not None
    remote = fetch.inspect(prior.ref, tls_verify=prior.tls_verify)
    got = fetch.fetch(remote, lambda diff_id: diff_id not in missing, work)
    try:
        for desc, diff_id in zip(remote.manifest["layers"], remote.diff_ids, strict=True):
            if diff_id not in missing:
                continue
            src = blob_path(got.layout, desc["digest"])
            dest = work / f"prior-{diff_id[7:19]}.tar"
            _uncompressed(src, dest, diff_id)
            _keep(dest, diff_id, store)
            found[diff_id] = _cached(store, diff_id)
    finally:
        shutil.rmtree(got.layout, ignore_errors=True)
    return found


def _uncompressed(src: Path, dest: Path, diff_id: str) -> None:
    with open(src, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    h = hashlib.sha256()
    with gzip.open(src, "rb") if gz else open(src, "rb") as i, open(dest, "wb") as o:
        while chunk := i.read(1 << 20):
            h.update(chunk)
            o.write(chunk)
    if f"sha256:{h.hexdigest()}" != diff_id:
        dest.unlink(missing_ok=True)
        raise ChunkError(f"the prior image's layer {diff_id} does not match its diff_id; refused")
