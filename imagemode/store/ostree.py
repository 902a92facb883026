"""An ostree repository: commits and checkouts through the `ostree` CLI (the runner logs them), and
questions (refs, metadata) and pruning through libostree in process."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from imagemode import confined
from imagemode.run import run
from imagemode.store.libostree import commit_string, gi


class Repo:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: Any = None
        self.in_transaction = False  # imagemode.store.layers.transaction() holds one open

    @property
    def handle(self) -> Any:
        """The repository opened by libostree (an OSTree.Repo)."""
        if self._handle is None:
            g = gi()
            self._handle = g.OSTree.Repo.new(g.Gio.File.new_for_path(str(self.path)))
            self._handle.open(None)
        return self._handle

    def _ostree(self, *args: str | os.PathLike[str]) -> str:
        return run(["ostree", f"--repo={self.path}", *args]).stdout

    def ensure(self, mode: str = "bare") -> Repo:
        if not (self.path / "config").exists():
            self.path.mkdir(parents=True, exist_ok=True)
            self._ostree("init", f"--mode={mode}")
        return self

    def resolve(self, ref: str) -> str | None:
        try:
            _, rev = self.handle.resolve_rev(ref, True)
        except gi().GLib.Error:  # not a valid ref or checksum
            return None
        return rev or None

    def refs(self, prefix: str = "") -> list[str]:
        _, refs = self.handle.list_refs(None, None)
        return sorted(r for r in refs if r.startswith(prefix))

    def delete_ref(self, ref: str) -> None:
        self.handle.set_ref_immediate(None, ref, None, None)

    def prune(self) -> int:
        """Delete the objects that no ref reaches (deployments have refs); returns the bytes freed."""
        g = gi()
        _, _, _, freed = self.handle.prune(g.OSTree.RepoPruneFlags.REFS_ONLY, -1, None)
        return int(freed)

    def commit(
        self,
        tree: Path,
        branch: str,
        *,
        subject: str = "",
        metadata: Mapping[str, str] | None = None,
        timestamp: int | None = None,
    ) -> str:
        args: list[str | os.PathLike[str]] = [
            "commit",
            f"--branch={branch}",
            f"--tree=dir={tree}",
            "--no-bindings",
        ]
        if subject:
            args.append(f"--subject={subject}")
        if timestamp is not None:
            args.append(f"--timestamp=@{timestamp}")
        for k, v in (metadata or {}).items():
            args.append(f"--add-metadata-string={k}={v}")
        return self._ostree(*args).strip()

    def checkout_subpath(self, rev: str, subpath: str, dest: Path) -> bool:
        """Check one directory of `rev` out into `dest`, by hard links. False when `rev` has no such
        path, which is no error: an image may ship no kargs.d, or no /etc."""
        sub = f"--subpath=/{subpath.strip('/')}"
        run(["ostree", f"--repo={self.path}", "checkout", sub, rev, os.fspath(dest)], check=False)
        return dest.is_dir()

    def metadata(self, rev: str, key: str) -> str | None:
        """A string metadata value of a commit, or None."""
        csum = self.resolve(rev)
        return commit_string(self.handle, csum, key) if csum else None


class CommitReader:
    """An ostree commit read in place, entry by entry, following nothing (imagemode.confined.Reader):
    the files an update needs before staging (kargs.d, bound images) are read without a checkout."""

    def __init__(self, repo: Repo, rev: str) -> None:
        self.g = gi()
        _, self.root, _ = repo.handle.read_commit(rev, None)

    def _info(self, rel: str) -> Any:
        f = self.root.resolve_relative_path(rel) if rel.strip("/") else self.root
        try:
            info = f.query_info(
                "standard::type,standard::size,standard::symlink-target",
                self.g.Gio.FileQueryInfoFlags.NOFOLLOW_SYMLINKS,
                None,
            )
        except self.g.GLib.Error:
            return None, None
        return f, info

    def kind(self, rel: str) -> confined.Kind | None:
        _, info = self._info(rel)
        if info is None:
            return None
        t = info.get_file_type()
        FT = self.g.Gio.FileType
        return {FT.DIRECTORY: confined.Kind.DIR, FT.REGULAR: confined.Kind.FILE,
                FT.SYMBOLIC_LINK: confined.Kind.LINK}.get(t, confined.Kind.OTHER)  # fmt: skip

    def readlink(self, rel: str) -> str:
        _, info = self._info(rel)
        return str(info.get_symlink_target()) if info is not None else ""

    def listdir(self, rel: str = "") -> list[str]:
        f, info = self._info(rel)
        if info is None or info.get_file_type() != self.g.Gio.FileType.DIRECTORY:
            raise confined.ConfinedError(f"/{rel}: not a directory in the commit")
        names = []
        for child in f.enumerate_children(
            "standard::name", self.g.Gio.FileQueryInfoFlags.NOFOLLOW_SYMLINKS, None
        ):
            names.append(str(child.get_name()))
        return sorted(names)

    def read_bytes(self, rel: str, limit: int = 16 << 20) -> bytes:
        f, info = self._info(rel)
        if info is None or info.get_file_type() != self.g.Gio.FileType.REGULAR:
            raise confined.ConfinedError(f"/{rel}: not a regular file in the commit")
        if info.get_size() > limit:
            raise confined.ConfinedError(f"/{rel}: larger than {limit} bytes")
        # A stream, not load_contents(): GIO's load_contents asks the stream for file info, which an
        # ostree file stream does not give, and logs a GLib-CRITICAL line for each read.
        stream = f.read(None)
        chunks: list[bytes] = []
        try:
            while chunk := bytes(stream.read_bytes(1 << 20, None).get_data() or b""):
                chunks.append(chunk)
        finally:
            stream.close(None)
        return b"".join(chunks)
