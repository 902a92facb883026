"""`imagemode build base`: a bootable Debian image in two layers, the OS and imagemode itself.

The OS layer is cached under the sha256 of the spec and the resolved lock list, so the second run with
unchanged inputs only writes the thin imagemode layer and a new manifest. Both layers are written
reproducibly (imagemode.oci.layout), so the same lock list gives the same digests.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import imagemode
from imagemode import atomic
from imagemode.build import apt, chunked, lint
from imagemode.build.spec import DEFAULT_CACHE, BaseSpec, Lock, cache_key
from imagemode.build.steps import TREE_STEPS, BuildContext, Step
from imagemode.chunk import components
from imagemode.chunk import label as chunk_label
from imagemode.errors import ImagemodeError
from imagemode.oci import storage
from imagemode.oci.layout import Blob, Layout, iso_time, write_layer
from imagemode.oci.reference import ImageRef, Transport, parse
from imagemode.run import run
from imagemode.ui import Progress, human_size

PYTHON_DIR = "usr/lib/python3/dist-packages"
IMAGEMODE_EPOCH = 1767225600  # 2026-01-01: the mtimes of imagemode's own layer
CACHE_KEEP = 3  # OS layers kept in the cache, newest first


@dataclass(frozen=True)
class BaseOptions:
    spec: BaseSpec
    tag: ImageRef
    cache_dir: Path = DEFAULT_CACHE
    lock_file: Path | None = None
    output: ImageRef | None = None
    use_cache: bool = True
    source_date_epoch: int | None = None
    single_layer: bool = False  # the OS as one layer, as before chunking (docs/chunking.md)
    prior: ImageRef | None = None  # whose slots to keep (default: the image now under `tag`)
    rebase: bool = False  # no patch layers: every changed component whole


@dataclass(frozen=True)
class BaseResult:
    tag: str
    digest: str
    image_id: str
    os_layer: str
    size_bytes: int
    packages: int
    cache_key: str
    cached: bool
    seconds: float
    layers: int = 0
    patches: tuple[str, ...] = ()
    prior: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def human(self) -> str:
        patches = f", patches for {', '.join(self.patches)}" if self.patches else ""
        prior = f"\n  prior    {self.prior}" if self.prior else ""
        return (
            f"{self.tag}\n  digest   {self.digest}\n  size     {human_size(self.size_bytes)}"
            f"\n  packages {self.packages}\n  OS layer {'cached' if self.cached else 'built'}"
            f" ({self.cache_key[:12]})\n  layers   {self.layers}{patches}{prior}"
            f"\n  time     {self.seconds:.1f}s"
        )


@dataclass(frozen=True)
class Plan:
    """What `build base --plan` prints: the resolved packages and the ordered steps."""

    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return self.data

    def human(self) -> str:
        p = self.data
        lines = [f"Resolved by apt for Debian {p['release']}/{p['architecture']}"
                 f" (SOURCE_DATE_EPOCH={p['source_date_epoch']}):"]  # fmt: skip
        width = max(len(x["name"]) for x in p["packages"])
        lines += [f"  {x['name']:<{width}}  {x['version']:<36} {x['installed_size_kib']:>8} KiB"
                  for x in p["packages"]]  # fmt: skip
        lines.append(
            f"{len(p['packages'])} packages, {human_size(p['total_installed_kib'] * 1024)} installed"
        )
        cache = "cached" if p["os_layer_cached"] else "not cached"
        lines.append(f"Build steps (OS layer {cache}, key {p['cache_key'][:12]}):")
        lines += [f"  {i:>2}. {s['name']:<16} {s['summary']}" for i, s in enumerate(p["steps"], 1)]
        return "\n".join(lines)


PLAN_STEPS = (
    Step(
        "resolve", "resolve the package set with apt's solver (apt-get install --simulate)", lambda c: None
    ),
    *TREE_STEPS,
    Step("lint", "lint the tree (imagemode container lint rules)", lambda c: None),
    Step(
        "os-layer",
        "write the OS tree as a reproducible layer; cache it by the hash of its inputs",
        lambda c: None,
    ),
    Step(
        "chunk",
        "group the OS tree into layers by source package, keeping the prior build's slots",
        lambda c: None,
    ),
    Step("imagemode-layer", "install imagemode from this source tree as a thin top layer", lambda c: None),
    Step("image", "write config and manifest; copy into containers-storage", lambda c: None),
)


OS_LAYER = next(s for s in PLAN_STEPS if s.name == "os-layer")


def load_lock(path: Path) -> Lock:
    try:
        return Lock.from_json(path.read_text())
    except FileNotFoundError:
        raise ImagemodeError(f"lock list not found: {path}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ImagemodeError(f"lock list {path} is not a valid imagemode lock list: {e}") from None


def _apt_dir(opts: BaseOptions) -> Path:
    h = hashlib.sha256(json.dumps([opts.spec.sources, opts.spec.architecture]).encode()).hexdigest()[:16]
    return opts.cache_dir / "apt" / h


def resolve(opts: BaseOptions) -> Lock:
    locked = load_lock(opts.lock_file) if opts.lock_file else None
    lock = apt.resolve(opts.spec, _apt_dir(opts), locked=locked, source_date_epoch=opts.source_date_epoch)
    if locked is None and opts.source_date_epoch is None and opts.use_cache:
        return cached_epoch(opts, lock)
    return lock


def cached_epoch(opts: BaseOptions, lock: Lock) -> Lock:
    """The lock of a cached OS layer with the same packages, if there is one: its epoch, not today's.

    The default epoch is the newest Date of the mirror's Release files, and a mirror behind a CDN
    answers two reads a minute apart from nodes a day apart (seen here: 2026-12-01 02:13 then
    2026-12-02 02:09, the same packages). The epoch only clamps timestamps, so a package set keeps
    the epoch it was first built with, and the same packages give the same image. A lock list, or
    --source-date-epoch, says the epoch outright and is never replaced."""
    best: tuple[float, Lock] | None = None
    for d in (opts.cache_dir / "layers").glob("*/lock.json"):
        try:
            kept = Lock.from_json(d.read_text())
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a broken cache entry is the cache's GC's business, not a reason to fail
        if replace(kept, source_date_epoch=lock.source_date_epoch) != lock:
            continue
        if cache_key(opts.spec, kept) != d.parent.name or not (d.parent / "layer.json").exists():
            continue
        mtime = d.parent.stat().st_mtime
        if best is None or mtime > best[0]:
            best = (mtime, kept)
    return best[1] if best else lock


def plan(opts: BaseOptions) -> Plan:
    """What `build base` would do: the resolved packages and the ordered steps. Builds nothing."""
    lock = resolve(opts)
    key = cache_key(opts.spec, lock)
    cached = (opts.cache_dir / "layers" / key / "layer.json").exists()
    return Plan(
        {
            "release": lock.release,
            "architecture": lock.architecture,
            "source_date_epoch": lock.source_date_epoch,
            "packages": [asdict(p) for p in lock.packages],
            "total_installed_kib": lock.total_installed_kib,
            "cache_key": key,
            "os_layer_cached": cached and opts.use_cache,
            "steps": [{"name": s.name, "summary": s.summary} for s in PLAN_STEPS],
        }
    )


def _labels(spec: BaseSpec, lock: Lock, key: str, tree_version: str) -> dict[str, str]:
    date = iso_time(lock.source_date_epoch)
    return {
        "containers.bootc": "1",
        "ostree.bootable": "true",
        "org.opencontainers.image.title": f"imagemode Debian {tree_version.split('.')[0]} base",
        "org.opencontainers.image.version": f"{tree_version}.{date[:10].replace('-', '')}",
        "org.opencontainers.image.created": date,
        "org.opencontainers.image.description": f"Debian {spec.release} bootable base, built by imagemode",
        "io.imagemode.base.cache-key": key,
        "io.imagemode.version": imagemode.__version__,
    }


def _gc_layers(layers_dir: Path, keep: str) -> None:
    entries = sorted(
        (p for p in layers_dir.iterdir() if p.is_dir() and p.name != keep),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in entries[CACHE_KEEP - 1 :]:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _workdir(base: Path, prefix: str) -> Iterator[Path]:
    base.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def build_os_layer(opts: BaseOptions, lock: Lock, key: str, progress: Progress) -> dict[str, Any]:
    """Run the tree steps and write the OS layer into the cache. Returns the layer record."""
    layers = opts.cache_dir / "layers"
    with _workdir(opts.cache_dir / "work", "base-") as work:
        tree = work / "rootfs"
        ctx = BuildContext(
            spec=opts.spec, lock=lock, tree=tree, deb_cache=opts.cache_dir / "debs", log=progress.line
        )
        for step in TREE_STEPS:
            with progress.step(step.name, step.summary):
                step.func(ctx)
        with progress.step("lint", "lint the tree"):
            report = lint.lint_tree(tree, {"containers.bootc": "1"})
            if report.errors:
                raise ImagemodeError(f"the base tree fails lint: {report.errors[0]}")
        tree_version = (tree / "etc/debian_version").read_text().strip()
        with progress.step("os-layer", "write the OS tree as a reproducible layer"):
            staged = work / "layer"
            staged.mkdir()
            blob = write_layer(tree, staged / "layer.tar", lock.source_date_epoch)
            record = {
                "digest": blob.digest,
                "size": blob.size,
                "debian_version": tree_version,
                "packages": len(lock.packages),
            }
            (staged / "layer.json").write_text(json.dumps(record))
            (staged / "lock.json").write_text(lock.to_json())
            final = layers / key
            if final.exists():
                shutil.rmtree(final)
            layers.mkdir(parents=True, exist_ok=True)
            atomic.publish(staged, final)  # a cache entry appears whole or not at all
        # The tree is rebuilt from the lock list when needed; only the layer is kept.
    _gc_layers(layers, key)
    return record


def imagemode_source() -> Path:
    return Path(imagemode.__file__).resolve().parent


# The programs imagemode's layer puts in /usr/bin: its own, bootc's command line for the tools that
# call bootc by name, and greenboot's view of the boot counter for red.d scripts (docs/health.md).
COMMANDS = (
    ("imagemode", "imagemode.entry", "run"),
    ("bootc", "imagemode.entry", "bootc"),
    ("grub2-editenv", "imagemode.boot.editenv", "main"),
)


def write_imagemode_layer(dest: Path) -> Blob:
    """imagemode's own code, byte-compiled, as it runs on the device's python3. Its mtimes are a fixed
    date, so its bytes follow its code alone (a new epoch of the OS leaves this layer as it was), and
    its files carry user.component=imagemode, so that `rechunk` of a derived image finds them."""
    epoch = IMAGEMODE_EPOCH
    with tempfile.TemporaryDirectory(prefix="imagemode-layer-") as tmp:
        root = Path(tmp)
        pkg = root / PYTHON_DIR / "imagemode"
        shutil.copytree(imagemode_source(), pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        # /usr is read-only on the device, so compile here. For reproducible bytes: unchecked hashes keep
        # mtimes out, -d records the device's path rather than this temporary one, and a fixed hash seed
        # fixes the order in which frozensets of strings are marshalled.
        compile_cmd = [sys.executable, "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash",
                       "-d", f"/{PYTHON_DIR}/imagemode", os.fspath(pkg)]  # fmt: skip
        run(compile_cmd, env={"PYTHONHASHSEED": "0"})
        bindir = root / "usr/bin"
        bindir.mkdir(parents=True)
        for name, module, func in COMMANDS:
            entry = bindir / name
            entry.write_text(
                f"#!/usr/bin/python3\nfrom {module} import {func}\n\nraise SystemExit({func}())\n"
            )
            entry.chmod(0o755)
        # The device side's units ship with the code that they run, so the two never drift apart.
        units = root / "usr/lib/systemd/system"
        wants = units / "multi-user.target.wants"
        wants.mkdir(parents=True)
        for unit in sorted((pkg / "data/units").glob("imagemode-*")):
            shutil.copy(unit, units / unit.name)
            # Only units wanted by multi-user.target are enabled; the upgrade timer ships disabled.
            if "WantedBy=multi-user.target" in unit.read_text():
                (wants / unit.name).symlink_to(f"../{unit.name}")
        for dropin in sorted((pkg / "data/units").glob("*.d")):
            shutil.copytree(dropin, units / dropin.name)
        kargs_d = root / "usr/lib/bootc/kargs.d"
        kargs_d.mkdir(parents=True)
        shutil.copy(pkg / "data/units/10-imagemode-panic.toml", kargs_d)
        for p in [root, *root.rglob("*")]:
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)
            os.utime(p, (epoch, epoch), follow_symlinks=False)
        return write_layer(root, dest, epoch, component=components.IMAGEMODE)


def build(opts: BaseOptions, progress: Progress) -> BaseResult:
    # The prior is read first: one it cannot read is refused before a minute of building, not after.
    prior = None
    if not opts.single_layer:
        prior = chunked.read_prior(opts.prior) if opts.prior else chunked.default_prior(opts.tag)
    with progress.step(PLAN_STEPS[0].name, PLAN_STEPS[0].summary):
        lock = resolve(opts)
    key = cache_key(opts.spec, lock)
    layer_dir = opts.cache_dir / "layers" / key
    cached = opts.use_cache and (layer_dir / "layer.json").exists()
    if cached:
        record = json.loads((layer_dir / "layer.json").read_text())
        os.utime(layer_dir)  # recently used: kept by the cache's GC
        for step in PLAN_STEPS[1 : PLAN_STEPS.index(OS_LAYER) + 1]:
            progress.skipped(step.name, f"cached (key {key[:12]})")
    else:
        record = build_os_layer(opts, lock, key, progress)
    os_blob = Blob(record["digest"], record["size"], "application/vnd.oci.image.layer.v1.tar")
    epoch = lock.source_date_epoch
    with _workdir(opts.cache_dir / "work", "image-") as work:
        os_layers: list[tuple[str, Path, Blob]] = [("os", layer_dir / "layer.tar", os_blob)]
        label: chunk_label.ChunkLabel | None = None
        patches: tuple[str, ...] = ()
        if opts.single_layer:
            progress.skipped("chunk", "--single-layer: the OS is one layer")
        else:
            with progress.step("chunk", "group the OS tree into layers by source package"):
                done = chunked.chunk(
                    layer_dir / "layer.tar", epoch, prior, work, opts.cache_dir, progress.line, opts.rebase
                )
                os_layers, label, patches = list(done.layers), done.label, done.patches
                progress.line(f"{len(done.layers)} layers from {done.components} components"
                              + (f", slots kept from {prior.ref}" if prior else ""))  # fmt: skip
        with progress.step(
            "imagemode-layer", f"imagemode {imagemode.__version__} from {imagemode_source()}"
        ):
            top = write_imagemode_layer(work / "imagemode.tar")
        with progress.step("image", f"config and manifest, then containers-storage:{opts.tag}"):
            layout = Layout(work / "oci")
            for _, path, blob in os_layers:
                layout.add_file(path, blob)
            layout.add_file(work / "imagemode.tar", top)
            labels = _labels(opts.spec, lock, key, record["debian_version"])
            pairs = [(b, b.digest) for _, _, b in os_layers] + [(top, top.digest)]
            if label is not None:
                # The label describes every layer, imagemode's own too: a device that finds more layers
                # than it names knows that its package list may not be the whole story.
                label = replace(label, layers=(*label.layers, "imagemode"))
                label = chunked.settle(label, [d for _, d in pairs], prior)
                labels[chunk_label.KEY] = label.to_json()
            what = f"Debian {opts.spec.release}, {record['packages']} packages (cache key {key[:12]})"
            config = {
                "created": iso_time(epoch),
                "architecture": opts.spec.architecture,
                "os": "linux",
                "config": {
                    "Cmd": ["/sbin/init"],
                    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                    "Labels": labels,
                    "StopSignal": "SIGRTMIN+3",
                },
                "history": [
                    *({"created": iso_time(epoch), "created_by": f"imagemode build base: {what}"
                       + ("" if slot == "os" else f", layer {slot}")} for slot, _, _ in os_layers),
                    {"created": iso_time(epoch), "created_by": f"imagemode {imagemode.__version__}"},
                ],
            }  # fmt: skip
            manifest = layout.write_image(pairs, config, "latest")
            src = ImageRef(Transport.OCI, path=str(layout.path), tag="latest")
            storage.copy(src, opts.tag)
            if opts.output is not None:
                Path(opts.output.path).parent.mkdir(parents=True, exist_ok=True)
                # The same manifest, byte for byte: skopeo would otherwise gzip the layers for oci:.
                storage.copy(src, opts.output, preserve_digests=True)
    info = storage.inspect(opts.tag)
    return BaseResult(
        tag=str(opts.tag),
        digest=manifest.digest,
        image_id=info["Id"],
        os_layer=os_blob.digest,
        size_bytes=int(info.get("Size", 0)),
        packages=record["packages"],
        cache_key=key,
        cached=cached,
        seconds=0.0,
        layers=len(pairs),
        patches=patches,
        prior=label.prior if label is not None else None,
    )


def parse_output(text: str) -> ImageRef:
    ref = parse(text)
    if ref.transport not in (Transport.OCI, Transport.OCI_ARCHIVE):
        raise ImagemodeError(f"--output {text!r}: use oci:DIR or oci-archive:FILE")
    return ref
