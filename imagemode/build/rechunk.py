"""`imagemode rechunk IMAGE -t TAG`: a derived image written again as a chunked one.

The image's layers are flattened (its merged root, through `podman image mount`, written as one layer
tar that is only read, never unpacked), its dpkg database and `user.component` xattrs name the
components, and the layers are written as `build base` writes the base's (imagemode.chunk). The
config is the image's own, with the new layers, one history entry per layer and the chunk label.

The slots it keeps: those of `--prior`; else of the image now under TAG (a rebuild); else of the
image's own label, which a Containerfile's image inherits from the chunked base. That last one is what
makes a derived image that changes one package cost its devices that package: every component it did
not touch is written into the very layer the base has.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from imagemode.build import chunked
from imagemode.build.spec import DEFAULT_CACHE
from imagemode.chunk import label as chunk_label
from imagemode.errors import ImagemodeError
from imagemode.oci import storage
from imagemode.oci.layout import Layout, epoch_of, iso_time, write_layer
from imagemode.oci.reference import ImageRef, Transport
from imagemode.ui import human_size


@dataclass(frozen=True)
class RechunkOptions:
    image: ImageRef
    tag: ImageRef
    prior: ImageRef | None = None
    rebase: bool = False
    source_date_epoch: int | None = None
    cache_dir: Path = DEFAULT_CACHE


@dataclass(frozen=True)
class RechunkResult:
    image: str
    tag: str
    digest: str
    layers_before: int
    layers: int
    components: int
    packages: int
    patches: tuple[str, ...]
    prior: str | None  # where the slots came from
    size_bytes: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["patches"] = list(self.patches)
        return d

    def human(self) -> str:
        patches = f", patches for {', '.join(self.patches)}" if self.patches else ""
        return (
            f"{self.tag}\n  digest   {self.digest}\n  from     {self.image} ({self.layers_before} layers)"
            f"\n  layers   {self.layers} from {self.components} components, {self.packages} packages"
            f"{patches}"
            f"\n  slots    {self.prior or 'new (no prior build)'}\n  size     {human_size(self.size_bytes)}"
            f"\n  time     {self.seconds:.1f}s"
        )


def _prior(opts: RechunkOptions, source: ImageRef) -> chunked.PriorImage | None:
    if opts.prior is not None:
        return chunked.read_prior(opts.prior)
    return chunked.default_prior(opts.tag) or chunked.default_prior(source)


def rechunk(opts: RechunkOptions, say: Callable[[str], None] = lambda s: None) -> RechunkResult:
    t0 = time.monotonic()
    if opts.image.transport is Transport.CONTAINERS_STORAGE and not storage.exists(opts.image):
        raise storage.ImageNotFoundError(f"image {opts.image} is not in local containers-storage")
    with storage.as_local(opts.image, "rechunk") as src:
        _, manifest, config = chunked.inspect(src, opts.image.spec)
        epoch = (
            opts.source_date_epoch if opts.source_date_epoch is not None else epoch_of(config.get("created"))
        )
        if epoch is None:
            raise ImagemodeError(
                f"the image's config has no usable created time ({str(config.get('created'))[:40]!r});"
                " give --source-date-epoch"
            )
        prior = _prior(opts, src)
        opts.cache_dir.joinpath("work").mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="rechunk-", dir=opts.cache_dir / "work"))
        try:
            flat = work / "flat.tar"
            with storage.mounted(src) as root:
                say(f"flattening {len(manifest['layers'])} layers of {opts.image.spec}")
                write_layer(root, flat, epoch)
            say("grouping by source package" + (f", keeping the slots of {prior.ref.spec}" if prior else ""))
            done = chunked.chunk(flat, epoch, prior, work, opts.cache_dir, say, opts.rebase)
            flat.unlink()
            digest = _write(work, config, done, epoch, opts.tag, prior)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    info = storage.inspect(opts.tag)
    return RechunkResult(
        image=opts.image.spec,
        tag=str(opts.tag),
        digest=digest,
        layers_before=len(manifest["layers"]),
        layers=len(done.layers),
        components=done.components,
        packages=len(done.label.packages),
        patches=done.patches,
        prior=prior.ref.spec if prior else None,
        size_bytes=int(info.get("Size", 0)),
        seconds=round(time.monotonic() - t0, 1),
    )


def _write(
    work: Path,
    config: dict[str, Any],
    done: chunked.Chunked,
    epoch: int,
    tag: ImageRef,
    prior: chunked.PriorImage | None,
) -> str:
    """The chunked image into containers-storage under `tag`; returns its manifest digest."""
    layout = Layout(work / "oci")
    for _, path, blob in done.layers:
        layout.add_file(path, blob)
    new = json.loads(json.dumps(config))  # the image's own settings: Cmd, Env, Labels, StopSignal...
    inner = new.setdefault("config", {})
    labels = dict(inner.get("Labels") or {})
    labels[chunk_label.KEY] = chunked.settle(
        done.label, [b.digest for _, _, b in done.layers], prior
    ).to_json()
    inner["Labels"] = labels
    created = new.get("created") or iso_time(epoch)
    new["history"] = [
        {"created": created, "created_by": f"imagemode rechunk: layer {slot}"} for slot, _, _ in done.layers
    ]
    new.pop("rootfs", None)
    mblob = layout.write_image([(b, b.digest) for _, _, b in done.layers], new, "latest")
    storage.copy(ImageRef(Transport.OCI, path=str(layout.path), tag="latest"), tag)
    return mblob.digest
