"""The layers of a plan, streamed out of the flat layer: every entry goes to its component's layer,
with the directories above it, in the flat layer's (name) order.

- A component's files keep their .deb mtime. Directories and generated files are clamped to the
  layer's own time: the newest .deb mtime among its files (the kernel's for the initramfs); for a
  layer without one, the newest mtime older than the epoch, else a fixed date (_clamp). So a new
  epoch changes no component's layer.
- Only xattrs travel in the PAX headers; the same content gives the same layer bytes.
- A hard link whose target is in another layer becomes a copy of the file: ostree stores both as
  the same object, so the composed tree is the same as the flat layer's.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from imagemode.chunk import plan as chunk_plan
from imagemode.chunk.components import INITRAMFS, Entry, Scan, hashed
from imagemode.oci.layout import Blob, LayerWriter

XATTR = "SCHILY.xattr."
UNDATED = 946684800  # 2000-01-01: the time of a layer whose every file the build made


def path_hash(name: str) -> bytes:
    return hashlib.sha256(name.encode("utf-8", "surrogateescape")).digest()[:6]


def parents(name: str) -> Iterator[str]:
    """The directories above `name`, top first."""
    parts = name.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


class Contents:
    """The flat layer read for what the plan asks: which entries a component's layer holds, and the
    fingerprint of each (its path, and its type, owner, mode, xattrs and bytes)."""

    def __init__(self, tar: tarfile.TarFile, scan: Scan) -> None:
        self.tar = tar
        self.scan = scan
        self._data: dict[str, bytes] = {}
        self._by_hash: dict[bytes, Entry] | None = None
        self._fingerprints: dict[str, chunk_plan.Fingerprints] = {}

    def data_hash(self, e: Entry) -> bytes:
        t = self.scan.target(e)
        if t.name not in self._data:
            data = self.tar.extractfile(t.info) if t.info.isreg() else None
            # b"" for what has no bytes: the labels' fingerprints are made with it
            self._data[t.name] = hashed(data, hashlib.sha256()).digest() if data is not None else b""
        return self._data[t.name]

    def content_hash(self, e: Entry) -> bytes:
        i = self.scan.target(e).info if e.info.islnk() else e.info
        kind = "f" if i.isreg() else "d" if i.isdir() else "l" if i.issym() else f"t{i.type!r}"
        xattrs = sorted((k, v) for k, v in i.pax_headers.items() if k.startswith(XATTR))
        head = repr((kind, i.mode & 0o7777, i.uid, i.gid, xattrs, i.linkname if i.issym() else ""))
        return hashlib.sha256(head.encode("utf-8", "surrogateescape") + self.data_hash(e)).digest()[:6]

    def layer(self, component: str) -> list[Entry]:
        """The entries of a component's layer: its own and the directories above them, in order."""
        own = self.scan.components[component].entries
        wanted = {e.name for e in own}
        for e in own:
            wanted.update(parents(e.name))
        return [e for e in self.scan.entries if e.name in wanted]

    def fingerprints(self, component: str) -> chunk_plan.Fingerprints:
        if component not in self._fingerprints:
            self._fingerprints[component] = {
                path_hash(e.name): self.content_hash(e) for e in self.layer(component)
            }
        return self._fingerprints[component]

    def sizes(self, component: str) -> dict[bytes, int]:
        """path hash -> bytes, of the component's regular files (and of its hard links' targets)."""
        out = {}
        for e in self.scan.components[component].entries:
            t = self.scan.target(e)
            if t.info.isreg():
                out[path_hash(e.name)] = t.info.size
        return out

    def tree(self) -> chunk_plan.Tree:
        if self._by_hash is None:
            self._by_hash = {path_hash(e.name): e for e in self.scan.entries}
        by_hash = self._by_hash

        def lookup(h: bytes) -> tuple[bytes, str, bool] | None:
            e = by_hash.get(h)
            return None if e is None else (self.content_hash(e), e.component, e.is_dir)

        return chunk_plan.Tree(self.fingerprints, self.sizes, lookup)


@dataclass
class _Out:
    """One layer being written."""

    path: Path
    writer: LayerWriter
    clamp: int
    dirs: set[str] = field(default_factory=set)
    files: dict[str, str] = field(default_factory=dict)  # a hard link's target -> its name here


@dataclass(frozen=True)
class Written:
    plan: chunk_plan.LayerPlan
    blob: Blob | None  # None: a prior layer reused (plan.reuse)
    path: Path | None


def _clamp(lp: chunk_plan.LayerPlan, scan: Scan, epoch: int, entries: list[Entry] | None) -> int:
    """The layer's time: the newest .deb mtime among its files (the kernel's for the initramfs). A layer
    without one takes the newest mtime of its files older than the epoch (files a Containerfile
    copied, say), else UNDATED: its files were all made by the build, and the epoch is no date of
    theirs (a new epoch must leave such a layer as it was)."""
    comps = scan.components
    if entries is not None:  # a patch: its own entries
        own = entries
        newest = max((int(e.info.mtime) for e in entries if e.packaged and not e.is_dir), default=0)
    else:
        names = lp.components
        if names == (INITRAMFS,) and scan.kernel in comps:
            names = (scan.kernel,)  # built from the kernel's files, dated with them
        own = [e for c in lp.components for e in comps[c].entries]
        newest = max((comps[c].packaged_mtime for c in names), default=0)
    if not newest:
        newest = max(
            (int(e.info.mtime) for e in own if not e.is_dir and e.info.mtime < epoch), default=UNDATED
        )
    return min(newest, epoch)


def _clean(info: tarfile.TarInfo, name: str, mtime: int) -> tarfile.TarInfo:
    """The entry as the chunk layer writes it: its name, type, owner, mode, size, link and xattrs, the
    layer's mtime, and no other PAX field (a stale `path` or `mtime` there would win over these)."""
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.uid, ti.gid = info.type, info.mode, info.uid, info.gid
    ti.size = info.size if info.isreg() else 0
    ti.linkname = info.linkname
    ti.devmajor, ti.devminor = info.devmajor, info.devminor
    # A directory's mtime says which layer wrote it last (a merged view of layers, `rechunk`'s input,
    # shows the topmost's): it is the layer's own time, always.
    ti.mtime = mtime if info.isdir() else min(int(info.mtime), mtime)
    ti.pax_headers = {k: v for k, v in info.pax_headers.items() if k.startswith(XATTR)}
    return ti


def write(
    tar: tarfile.TarFile, scan: Scan, plan: chunk_plan.Plan, out: Path, epoch: int, contents: Contents
) -> list[Written]:
    """Write each layer of `plan` that is not reused into `out`; in plan order."""
    route: dict[str, int] = {}
    patched: dict[str, tuple[int, frozenset[bytes]]] = {}
    for i, lp in enumerate(plan.layers):
        if lp.only is not None:
            patched[lp.components[0]] = (i, lp.only)
        elif lp.reuse is None:
            for c in lp.components:
                route[c] = i
    targets: list[tuple[int, Entry]] = []
    for e in scan.entries:
        if e.component in route:
            targets.append((route[e.component], e))
    patch_entries: dict[int, list[Entry]] = {}
    for comp, (i, only) in patched.items():
        patch_entries[i] = [e for e in contents.layer(comp) if path_hash(e.name) in only]
        targets += [(i, e) for e in patch_entries[i]]
    order = {e.name: n for n, e in enumerate(scan.entries)}
    targets.sort(key=lambda t: (order[t[1].name], t[0]))
    outs: dict[int, _Out] = {}
    try:
        for i, e in targets:
            o = outs.get(i)
            if o is None:
                lp = plan.layers[i]
                path = out / f"layer-{i:03d}.tar"
                o = outs[i] = _Out(path, LayerWriter(path), _clamp(lp, scan, epoch, patch_entries.get(i)))
            _emit(tar, scan, contents, o, e)
        written = []
        for i, lp in enumerate(plan.layers):
            if lp.reuse is not None:
                written.append(Written(lp, None, None))
            elif i in outs:
                o = outs.pop(i)
                written.append(Written(lp, o.writer.close(), o.path))
        return written
    finally:
        for o in outs.values():
            o.writer.abort()


def _emit(tar: tarfile.TarFile, scan: Scan, contents: Contents, o: _Out, e: Entry) -> None:
    for d in parents(e.name):
        if d not in o.dirs:
            parent = scan.by_name.get(d)
            if parent is None or not parent.is_dir:
                ti = tarfile.TarInfo(d)  # the flat layer lacks it: a plain root-owned directory
                ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, o.clamp
            else:
                ti = _clean(parent.info, d, o.clamp)
            o.writer.add(ti)
            o.dirs.add(d)
    if e.is_dir:
        if e.name not in o.dirs:
            o.writer.add(_clean(e.info, e.name, o.clamp))
            o.dirs.add(e.name)
        return
    if e.info.islnk():
        t = scan.target(e)
        here = o.files.get(t.name)
        if here is not None:
            ti = _clean(e.info, e.name, o.clamp)
            ti.linkname = here
            o.writer.add(ti)
            return
        # Its target is in another layer: the bytes come here whole.
        ti = _clean(t.info, e.name, o.clamp)
        ti.mode, ti.uid, ti.gid = e.info.mode, e.info.uid, e.info.gid
        o.writer.add(ti, tar.extractfile(t.info))
        o.files[t.name] = e.name
        return
    ti = _clean(e.info, e.name, o.clamp)
    if e.info.isreg():
        o.writer.add(ti, tar.extractfile(e.info))
        o.files[e.name] = e.name
    else:
        o.writer.add(ti)
