"""Which component each entry of a flat OS layer belongs to.

The input is one layer tar holding a whole tree (the base build's OS layer, or a derived image
flattened by `rechunk`). Its dpkg database is read out of the tar itself, so no path of the tree is
ever opened on a filesystem, and every line of it is treated as hostile: a `..`, a NUL or a name
that is no Debian name is no claim of ownership. The rules, first match wins (docs/chunking.md):

0. `usr/lib/modules/*/initramfs.img` is `@initramfs`, and the volatile files (the dpkg status,
   passwd and group, ld.so.cache, the lock list, alternatives, enablement links...) are `@volatile`:
   each of the two is a layer of its own.
1. the `user.component` xattr (as rpm-ostree and chunkah use it);
2. dpkg's `.list` files, after usrmerge canonicalisation and diversions; a package's own files in
   dpkg's `info/` go with it;
3. derived files go to their origin: a `.pyc` to the owner of its `.py`, `modules.*` and `vmlinuz`
   to the kernel, hwdb.bin to udev, the CA bundle to ca-certificates...;
4. copied files by md5sums;
5. large unowned files each get a component of their own (`@file:PATH`); the rest are `@unowned`.

A component is named by the Debian *source* package, so that the binary packages of one source,
which change together, share a layer.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
from dataclasses import dataclass, field
from typing import IO, Any

from imagemode.chunk.label import PACKAGE, VERSION_TEXT
from imagemode.chunk.packages import paragraphs

INITRAMFS = "@initramfs"
VOLATILE = "@volatile"
UNOWNED = "@unowned"
IMAGEMODE = "imagemode"  # imagemode's own layer marks its files with user.component=imagemode
COMPONENT_XATTR = "SCHILY.xattr.user.component"
DPKG_DIRS = ("usr/lib/sysimage/dpkg", "var/lib/dpkg")
LOCK_PATH = "usr/lib/imagemode/packages.lock.json"
LARGE = 1 << 20  # an unowned file this large is a component of its own
MAX_DB_FILE = 64 << 20  # a dpkg database file larger than this is not read
_INITRAMFS = re.compile(r"usr/lib/modules/[^/]+/initramfs\.img\Z")
_MODULES = re.compile(r"usr/lib/modules/(?P<kver>[^/]+)/")
_PYC = re.compile(r"(?P<dir>(?:.*/)?)__pycache__/(?P<stem>[^/.]+)\.[a-z]+-[0-9]+(?:\.opt-[12])?\.pyc\Z")
_SAFE_PATH = re.compile(r"[A-Za-z0-9._+/@-]{1,240}\Z")

# Files written by package scripts or by the build for the system as a whole, which change whenever the
# package set does: a layer of their own, so that no component's layer changes with them.
VOLATILE_FILES = frozenset({
    "etc/passwd", "etc/passwd-", "etc/group", "etc/group-", "etc/shadow", "etc/shadow-", "etc/gshadow",
    "etc/gshadow-", "etc/subuid", "etc/subuid-", "etc/subgid", "etc/subgid-", "etc/ld.so.cache",
    "etc/shells", "var/lib/shells.state", "var/lib/apt/extended_states", "var/cache/ldconfig/aux-cache",
    LOCK_PATH,
})  # fmt: skip
VOLATILE_TREES = (
    "etc/alternatives/", "etc/systemd/system/", "etc/systemd/user/", "var/lib/ucf/", "var/cache/debconf/",
    "var/lib/systemd/deb-systemd-helper-enabled/", "var/lib/systemd/deb-systemd-user-helper-enabled/",
    "var/lib/pam/", "var/lib/python/", "var/log/",
)  # fmt: skip

# Rule 3: files that a package's scripts generate, named by the binary package whose source they go to
# (the first one installed).
DERIVED = (
    (re.compile(r"(?:usr/lib|etc)/udev/hwdb\.bin\Z"), ("udev", "systemd")),
    (re.compile(r"etc/ssl/certs/|etc/ca-certificates\.conf\Z"), ("ca-certificates",)),
    (re.compile(r"var/lib/systemd/catalog/database\Z"), ("systemd",)),
    (re.compile(r"usr/lib/[^/]+/gio/modules/giomodule\.cache\Z"), ("libglib2.0-0",)),
    (re.compile(r"usr/share/glib-2\.0/schemas/gschemas\.compiled\Z"), ("libglib2.0-0",)),
    (re.compile(r"usr/share/mime/"), ("shared-mime-info",)),
    (re.compile(r"usr/share/info/dir\Z"), ("install-info",)),
    (re.compile(r"etc/ssh/sshd_config\Z"), ("openssh-server",)),
    (re.compile(r"etc/pam\.d/common-"), ("libpam-runtime",)),
)


@dataclass
class Entry:
    info: tarfile.TarInfo
    name: str
    component: str = ""  # "" for a directory that is only a parent of other entries
    packaged: bool = False  # its bytes and mtime come from a .deb (rules 1 and 2)

    @property
    def is_dir(self) -> bool:
        return self.info.isdir()


@dataclass
class Component:
    name: str
    entries: list[Entry] = field(default_factory=list)
    size: int = 0  # bytes of its regular files
    packaged_mtime: int = 0  # the newest mtime of its files from a .deb, outside /etc and /var


@dataclass
class Scan:
    entries: list[Entry]  # in the flat layer's order
    by_name: dict[str, Entry]
    components: dict[str, Component]
    packages: dict[str, str]  # binary package -> version
    kernel: str | None  # the kernel's component

    def target(self, e: Entry) -> Entry:
        """The entry whose bytes a hard link shares (the entry itself otherwise)."""
        if e.info.islnk():
            t = self.by_name.get(normalize(e.info.linkname) or "")
            if t is not None and t.info.isreg():
                return t
        return e


@dataclass
class _Package:
    version: str
    source: str


def normalize(name: str) -> str | None:
    """A tar name or a `.list` line as a path inside the tree; None for one that is not (`..`, NUL)."""
    if "\0" in name or "\n" in name:
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        return None
    return "/".join(parts)


def _read(tar: tarfile.TarFile, entry: Entry | None, limit: int = MAX_DB_FILE) -> str:
    if entry is None or not entry.info.isreg() or entry.info.size > limit:
        return ""
    f = tar.extractfile(entry.info)
    return f.read().decode("utf-8", "surrogateescape") if f is not None else ""


class _Dpkg:
    """The dpkg database of the tree, read out of the tar."""

    def __init__(self, tar: tarfile.TarFile, by_name: dict[str, Entry], db: str | None) -> None:
        self.db = db
        self.packages: dict[str, _Package] = {}
        self.owners: dict[str, list[str]] = {}  # canonical path -> packages listing it
        self.md5: dict[str, set[str]] = {}  # md5 -> sources with a file of those bytes
        if db is None:
            return
        for p in paragraphs(_read(tar, by_name.get(f"{db}/status"))):
            name, version = p.get("Package", ""), p.get("Version", "")
            if not p.get("Status", "").endswith(" installed") or not PACKAGE.match(name):
                continue
            source = p.get("Source", name).split(" ", 1)[0]
            if VERSION_TEXT.match(version) and PACKAGE.match(source):
                self.packages[name] = _Package(version, source)
        links = _top_links(by_name)
        for e in by_name.values():
            pkg, ext = info_file(e.name, db) or ("", "")
            if pkg not in self.packages:
                continue
            if ext == "list":
                for line in _read(tar, e).splitlines():
                    path = _canonical(line, links)
                    if path is not None:
                        self.owners.setdefault(path, []).append(pkg)
            elif ext == "md5sums":
                for line in _read(tar, e).splitlines():
                    md5, _, _ = line.partition(" ")
                    if len(md5) == 32:
                        self.md5.setdefault(md5, set()).add(self.packages[pkg].source)
        lines = _read(tar, by_name.get(f"{db}/diversions")).splitlines()
        for i in range(0, len(lines) - 2, 3):
            frm, to, by = _canonical(lines[i], links), _canonical(lines[i + 1], links), lines[i + 2]
            if frm is None or to is None:
                continue
            # The diverted file is the original package's, under its new name.
            moved = [p for p in self.owners.get(frm, []) if p != by]
            if moved:
                self.owners[frm] = [p for p in self.owners[frm] if p == by]
                self.owners.setdefault(to, []).extend(moved)

    def source(self, package: str) -> str | None:
        p = self.packages.get(package)
        return p.source if p is not None else None

    def owner(self, path: str) -> str | None:
        pkgs = self.owners.get(path)
        return self.packages[min(pkgs)].source if pkgs else None


def info_file(name: str, db: str | None) -> tuple[str, str] | None:
    """(package, extension) of a package's own file in dpkg's `info/` (`libc6:amd64.list`); None for
    any other path, dpkg's `info/format` included."""
    prefix = f"{db}/info/"
    if db is None or not name.startswith(prefix) or name == f"{prefix}format":
        return None
    pkg, _, ext = name[len(prefix) :].rpartition(".")
    return pkg.split(":", 1)[0], ext


def _top_links(by_name: dict[str, Entry]) -> dict[str, str]:
    """Top-level symlinks inside the tree (usrmerge's /bin -> usr/bin, the bootc layout's /home ->
    var/home): a path through one is the path of its target."""
    links = {}
    for e in by_name.values():
        if "/" not in e.name and e.info.issym():
            target = normalize(e.info.linkname)
            if target:
                links[e.name] = target
    return links


def _canonical(line: str, links: dict[str, str]) -> str | None:
    path = normalize(line)
    if not path:
        return None
    first, _, rest = path.partition("/")
    if first in links:
        path = f"{links[first]}/{rest}" if rest else links[first]
    return path


def _dpkg_dir(by_name: dict[str, Entry]) -> str | None:
    for d in DPKG_DIRS:
        e = by_name.get(f"{d}/status")
        if e is not None and e.info.isreg():
            return d
    return None


def _volatile(e: Entry, db: str | None) -> bool:
    n = e.name
    if n in VOLATILE_FILES or n.startswith(VOLATILE_TREES):
        return True
    if db is not None and n.startswith(f"{db}/") and info_file(n, db) is None:
        return True  # dpkg's status, diversions, triggers...: all of its own but the packages' files
    # The links update-alternatives makes (/usr/bin/awk -> /etc/alternatives/awk) follow its choices.
    return e.info.issym() and e.info.linkname.startswith("/etc/alternatives/")


def _file_component(name: str) -> str:
    return (
        f"@file:{name}"
        if _SAFE_PATH.match(name)
        else "@file:#" + hashlib.sha256(name.encode()).hexdigest()[:16]
    )


def scan(tar: tarfile.TarFile) -> Scan:
    """Every entry of the flat layer `tar` (opened for random access) with its component."""
    entries = []
    for member in tar.getmembers():
        name = normalize(member.name)
        if name:
            entries.append(Entry(member, name))
    by_name = {e.name: e for e in entries}
    db = _dpkg_dir(by_name)
    dpkg = _Dpkg(tar, by_name, db)
    parents = {e.name.rpartition("/")[0] for e in entries}
    kernels: dict[str, str] = {}
    for e in entries:
        m = _MODULES.match(e.name)
        if m and not e.is_dir and m["kver"] not in kernels:
            owner = dpkg.owner(e.name)
            if owner is not None:
                kernels[m["kver"]] = owner
    for e in entries:
        if e.is_dir and e.name in parents:
            continue  # a parent only: written into every layer that has something beneath it
        e.component, e.packaged = _component(tar, e, dpkg, kernels)
    components: dict[str, Component] = {}
    found = Scan(
        entries, by_name, components, {n: p.version for n, p in sorted(dpkg.packages.items())}, None
    )
    for e in entries:
        if not e.component:
            continue
        c = components.setdefault(e.component, Component(e.component))
        c.entries.append(e)
        target = found.target(e)
        if target.info.isreg():
            c.size += target.info.size
        if e.packaged and not e.is_dir and not e.name.startswith(("etc/", "var/")):
            c.packaged_mtime = max(c.packaged_mtime, int(e.info.mtime))
    found.kernel = next(iter(sorted(set(kernels.values()))), None)
    return found


def _component(tar: tarfile.TarFile, e: Entry, dpkg: _Dpkg, kernels: dict[str, str]) -> tuple[str, bool]:
    """(component, packaged) of one entry, by the rules of the module's docstring."""
    n, info = e.name, e.info
    if _INITRAMFS.match(n) and info.isreg():
        return INITRAMFS, False
    tagged = info.pax_headers.get(COMPONENT_XATTR, "")
    if PACKAGE.match(tagged):
        return tagged, True
    owner = dpkg.owner(n)
    if owner is not None:
        return owner, True
    own = info_file(n, dpkg.db)
    source = dpkg.source(own[0]) if own is not None else None
    if source is not None:
        return source, False
    if _volatile(e, dpkg.db):
        return VOLATILE, False
    derived = _derived(n, dpkg, kernels)
    if derived is not None:
        return derived, False
    if info.isreg() and info.size > 0:
        md5 = hashed(tar.extractfile(info), hashlib.md5(usedforsecurity=False)).hexdigest()
        sources = dpkg.md5.get(md5, set())
        if len(sources) == 1:
            return next(iter(sources)), False
        if info.size >= LARGE:
            return _file_component(n), False
    return UNOWNED, False


def _derived(n: str, dpkg: _Dpkg, kernels: dict[str, str]) -> str | None:
    m = _PYC.match(n)
    if m:
        return dpkg.owner(f"{m['dir']}{m['stem']}.py")
    if n.endswith(".pyc"):
        return dpkg.owner(n[:-1])
    m = _MODULES.match(n)
    if m and m["kver"] in kernels:
        return kernels[m["kver"]]
    for pattern, packages in DERIVED:
        if pattern.match(n):
            for p in packages:
                source = dpkg.source(p)
                if source is not None:
                    return source
    return None


def hashed(f: IO[bytes] | None, h: Any) -> Any:
    """`h` (a hashlib object) updated with everything `f` holds, read a MiB at a time."""
    if f is not None:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h
