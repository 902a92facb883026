"""The one way to touch a tree that came from an image: every path stays beneath the tree's root.

A tree from an image (a deployment, an image's root filesystem, an embedded store, a layer's diff) is
content that somebody else wrote, symlinks included. Code running as root that opened
`root / "etc/skel/.ssh/authorized_keys"` would follow a `.ssh` link wherever it points, on the build
host or the device. So here:

- **Writes never follow a symlink.** A path is walked one component at a time from a descriptor of
  the root, each with O_NOFOLLOW and relative to the one before (openat). A symlink on the way, or a
  file where a directory is needed, stops the write with an error that names the path. Owners, modes,
  times and xattrs are set on the entry itself (by descriptor, or with AT_SYMLINK_NOFOLLOW), never on
  a followed path. `..` is refused.
- **Reads may follow symlinks, inside the root.** `resolve()` follows them the way the image itself
  would see them when booted (an absolute target starts at the tree's root, `..` stops there), like
  openat2's RESOLVE_IN_ROOT. It works on any `Reader`: a directory here, or an ostree commit
  (imagemode.store.ostree.CommitReader), so the same rules hold before a tree is ever checked out.

A symlink is content, never a way out.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from imagemode.errors import ImagemodeError

MAX_LINKS = 40  # as the kernel's own limit for one path lookup
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# An entry opened to read it or set its metadata: never through a link, never blocking on a fifo.
ENTRY_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class ConfinedError(ImagemodeError):
    pass


class Kind(StrEnum):
    DIR = "dir"
    FILE = "file"
    LINK = "link"
    OTHER = "other"


def parts(rel: str) -> list[str]:
    """The components of a path inside a tree; `..` is refused, never resolved against the host."""
    out = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in out:
        raise ConfinedError(f"/{rel.lstrip('/')}: a path with '..' leaves the tree")
    if any("\0" in p for p in out):
        raise ConfinedError(f"{rel!r}: a path with a NUL byte")
    return out


class Reader(Protocol):
    """A tree to read: a directory (Tree) or an ostree commit. Each call looks at one entry and
    follows nothing; `resolve()` follows links inside the tree."""

    def kind(self, rel: str) -> Kind | None: ...

    def readlink(self, rel: str) -> str: ...

    def listdir(self, rel: str = "") -> list[str]: ...

    def read_bytes(self, rel: str, limit: int = 16 << 20) -> bytes: ...


def read_text(tree: Reader, rel: str) -> str | None:
    """A text file of the tree with its links followed inside the tree; None when it is absent."""
    path = resolve(tree, rel)
    if path is None or tree.kind(path) is not Kind.FILE:
        return None
    return tree.read_bytes(path).decode(errors="replace")


def resolve(tree: Reader, rel: str) -> str | None:
    """The in-tree path that `rel` names once every symlink on the way is followed inside the tree,
    or None when it names nothing (a dangling link, a loop, a missing entry)."""
    todo = [p for p in rel.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while todo:
        name = todo.pop(0)
        if name == "..":
            if done:
                done.pop()
            continue
        cur = "/".join([*done, name])
        kind = tree.kind(cur)
        if kind is None:
            return None
        if kind is Kind.LINK:
            hops += 1
            if hops > MAX_LINKS:
                return None
            target = tree.readlink(cur)
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p not in ("", ".")] + todo
            continue
        if todo and kind is not Kind.DIR:
            return None
        done.append(name)
    return "/".join(done)


def _kind(mode: int) -> Kind:
    if stat.S_ISDIR(mode):
        return Kind.DIR
    if stat.S_ISREG(mode):
        return Kind.FILE
    if stat.S_ISLNK(mode):
        return Kind.LINK
    return Kind.OTHER


class Tree:
    """A directory tree from an image, written and read only beneath its root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        try:
            # The root itself is the caller's path, not the image's: a link to it is followed.
            self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise ConfinedError(f"{root}: cannot open the tree ({e.strerror})") from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _show(self, names: list[str]) -> str:
        return f"{self.root}/{'/'.join(names)}"

    # -- walking ------------------------------------------------------------------------------------

    def _dir(self, names: list[str], create: bool = False, mode: int = 0o755) -> int:
        """A descriptor of the directory `names`, walked without following anything. The caller
        closes it."""
        fd = os.dup(self.fd)
        try:
            for i, name in enumerate(names):
                try:
                    nfd = os.open(name, DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, mode, dir_fd=fd)
                    nfd = self._open_dir(fd, name, names[: i + 1])
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise self._not_dir(fd, name, names[: i + 1]) from None
                    raise
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open_dir(self, fd: int, name: str, shown: list[str]) -> int:
        try:
            return os.open(name, DIR_FLAGS, dir_fd=fd)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise self._not_dir(fd, name, shown) from None
            raise

    def _not_dir(self, fd: int, name: str, shown: list[str]) -> ConfinedError:
        try:
            is_link = stat.S_ISLNK(os.lstat(name, dir_fd=fd).st_mode)
        except OSError:
            is_link = False
        what = "a symlink" if is_link else "not a directory"
        return ConfinedError(f"{self._show(shown)} is {what} in the image; refusing to write through it")

    @contextlib.contextmanager
    def parent(self, rel: str, create: bool = False) -> Iterator[tuple[int, str]]:
        """(descriptor of the directory holding `rel`, last name); nothing on the way is followed."""
        names = parts(rel)
        if not names:
            raise ConfinedError(f"{self.root}: the tree's root itself cannot be written here")
        fd = self._dir(names[:-1], create)
        try:
            yield fd, names[-1]
        finally:
            os.close(fd)

    # -- reading (Reader) ---------------------------------------------------------------------------

    def lstat(self, rel: str) -> os.stat_result | None:
        names = parts(rel)
        if not names:
            return os.fstat(self.fd)
        try:
            with self.parent(rel) as (fd, name):
                return os.lstat(name, dir_fd=fd)
        except (FileNotFoundError, ConfinedError):
            return None

    def kind(self, rel: str) -> Kind | None:
        st = self.lstat(rel)
        return None if st is None else _kind(st.st_mode)

    def readlink(self, rel: str) -> str:
        with self.parent(rel) as (fd, name):
            return os.readlink(name, dir_fd=fd)

    def listdir(self, rel: str = "") -> list[str]:
        fd = self._dir(parts(rel))
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)

    def xattrs(self, rel: str) -> list[tuple[str, bytes]]:
        """The xattrs of a file or directory; a symlink's are not read (see setxattr)."""
        fd = self._open_entry(rel)
        if fd is None:
            return []
        try:
            return [(n, os.getxattr(fd, n)) for n in sorted(os.listxattr(fd))]
        except OSError:
            return []
        finally:
            os.close(fd)

    def _open_entry(self, rel: str) -> int | None:
        """A descriptor of a file or directory (not a symlink), opened without following one."""
        if not parts(rel):
            return os.dup(self.fd)
        with self.parent(rel) as (fd, name):
            st = os.lstat(name, dir_fd=fd)
            if stat.S_ISLNK(st.st_mode):
                return None
            return os.open(name, ENTRY_FLAGS, dir_fd=fd)

    def read_bytes(self, rel: str, limit: int = 16 << 20) -> bytes:
        """A regular file's bytes, the last component not followed either (resolve() first to
        follow links inside the tree)."""
        with self.parent(rel) as (dfd, name):
            try:
                fd = os.open(name, ENTRY_FLAGS, dir_fd=dfd)
            except OSError as e:
                raise ConfinedError(f"{self._show(parts(rel))}: cannot read it ({e.strerror})") from None
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    raise ConfinedError(f"{self._show(parts(rel))} is not a regular file")
                data = f.read(limit + 1)
        if len(data) > limit:
            raise ConfinedError(f"{self._show(parts(rel))}: larger than {limit} bytes")
        return data

    # -- writing ------------------------------------------------------------------------------------

    def makedirs(self, rel: str, mode: int = 0o755) -> None:
        os.close(self._dir(parts(rel), create=True, mode=mode))

    def mkdir(self, rel: str, mode: int = 0o755, *, exist_ok: bool = False) -> bool:
        """Make one directory (its parents must be directories already). False when it existed."""
        with self.parent(rel) as (fd, name):
            try:
                os.mkdir(name, mode, dir_fd=fd)
            except FileExistsError:
                if not exist_ok:
                    raise ConfinedError(f"{self._show(parts(rel))} exists already") from None
                os.close(self._open_dir(fd, name, parts(rel)))
                return False
        return True

    def write_bytes(self, rel: str, data: bytes, mode: int = 0o644, *, create_parents: bool = False) -> None:
        """Write a regular file anew: written beside it and renamed over it, so a link of the same
        name is replaced, never followed, and a reader sees the old file or the new one."""
        with self.parent(rel, create=create_parents) as (fd, name):
            st = self._lstat_at(fd, name)
            if st is not None and stat.S_ISDIR(st.st_mode):
                raise ConfinedError(f"{self._show(parts(rel))} is a directory in the image")
            tmp = f".{name}.imagemode-tmp"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=fd)
            wfd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=fd
            )
            try:
                with os.fdopen(wfd, "wb") as f:
                    f.write(data)
                    os.fchmod(f.fileno(), mode)
                os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=fd)
                raise

    @staticmethod
    def _lstat_at(fd: int, name: str) -> os.stat_result | None:
        try:
            return os.lstat(name, dir_fd=fd)
        except FileNotFoundError:
            return None

    def symlink(self, rel: str, target: str) -> None:
        with self.parent(rel) as (fd, name):
            os.symlink(target, name, dir_fd=fd)

    def link_from(self, src: Tree, src_rel: str, rel: str) -> None:
        """A hard link at `rel` to the entry `src_rel` of another tree (on the same filesystem)."""
        with src.parent(src_rel) as (sfd, sname), self.parent(rel) as (fd, name):
            os.link(sname, name, src_dir_fd=sfd, dst_dir_fd=fd, follow_symlinks=False)

    def chown(self, rel: str, uid: int, gid: int) -> None:
        if not parts(rel):
            os.fchown(self.fd, uid, gid)
            return
        with self.parent(rel) as (fd, name):
            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)

    def chmod(self, rel: str, mode: int) -> None:
        """The mode of a file or directory; a symlink has none, and is not followed to find one."""
        efd = self._open_entry(rel)
        if efd is None:
            return
        try:
            os.fchmod(efd, mode)
        finally:
            os.close(efd)

    def utime(self, rel: str, ns: tuple[int, int]) -> None:
        if not parts(rel):
            os.utime(self.fd, ns=ns)
            return
        with self.parent(rel) as (fd, name):
            os.utime(name, ns=ns, dir_fd=fd, follow_symlinks=False)

    def setxattr(self, rel: str, name: str, value: bytes) -> None:
        """An xattr on a file or directory (a symlink's are not copied: Linux allows only trusted.*
        and security.* there, and nothing here needs them)."""
        efd = self._open_entry(rel)
        if efd is None:
            return
        try:
            os.setxattr(efd, name, value)
        finally:
            os.close(efd)

    def remove(self, rel: str) -> None:
        """Remove an entry, a whole directory included; a symlink is removed, not what it names."""
        with self.parent(rel) as (fd, name):
            st = self._lstat_at(fd, name)
            if st is None:
                return
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(name, dir_fd=fd)
            else:
                os.unlink(name, dir_fd=fd)

    def copy_tree(self, src: Tree, src_rel: str, rel: str) -> None:
        """Copy the directory `src_rel` of `src` to the new directory `rel`: files, directories and
        symlinks (as links), with modes; nothing on either side is followed."""
        st = src.lstat(src_rel)
        if st is None or not stat.S_ISDIR(st.st_mode):
            raise ConfinedError(f"{src._show(parts(src_rel))} is not a directory")
        self.mkdir(rel, stat.S_IMODE(st.st_mode))
        self.chmod(rel, stat.S_IMODE(st.st_mode))
        for name in src.listdir(src_rel):
            s, d = f"{src_rel}/{name}", f"{rel}/{name}"
            est = src.lstat(s)
            if est is None:
                continue
            if stat.S_ISDIR(est.st_mode):
                self.copy_tree(src, s, d)
            elif stat.S_ISLNK(est.st_mode):
                self.symlink(d, src.readlink(s))
            elif stat.S_ISREG(est.st_mode):
                self.write_bytes(d, src.read_bytes(s, limit=1 << 30), stat.S_IMODE(est.st_mode))
            # devices, fifos and sockets are not copied into a home directory


def chown_tree(tree: Tree, rel: str, uid: int, gid: int) -> None:
    """chown a directory and everything in it, symlinks themselves included, following none."""
    tree.chown(rel, uid, gid)
    if tree.kind(rel) is Kind.DIR:
        for name in tree.listdir(rel):
            chown_tree(tree, f"{rel}/{name}", uid, gid)
