"""An ostree repository, driven through the `ostree` CLI (the runner logs every call)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from imagemode.run import RunError, run


class Repo:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _ostree(self, *args: str | os.PathLike[str]) -> str:
        return run(["ostree", f"--repo={self.path}", *args]).stdout

    def ensure(self, mode: str = "bare") -> Repo:
        if not (self.path / "config").exists():
            self.path.mkdir(parents=True, exist_ok=True)
            self._ostree("init", f"--mode={mode}")
        return self

    def resolve(self, ref: str) -> str | None:
        try:
            return self._ostree("rev-parse", ref).strip()
        except RunError:
            return None

    def refs(self, prefix: str = "") -> list[str]:
        out = self._ostree("refs", *([prefix] if prefix else []))
        return [f"{prefix.rstrip('/')}/{r}" if prefix else r for r in out.split()]

    def commit(
        self,
        tree: Path,
        branch: str,
        *,
        subject: str = "",
        metadata: Mapping[str, str] | None = None,
        timestamp: int | None = None,
        link_checkout_speedup: bool = False,
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
        if link_checkout_speedup:
            args.append("--link-checkout-speedup")
        for k, v in (metadata or {}).items():
            args.append(f"--add-metadata-string={k}={v}")
        return self._ostree(*args).strip()

    def checkout_union(self, rev: str, dest: Path) -> None:
        """Check `rev` out over `dest` by hard links; files already there are replaced."""
        self._ostree("checkout", "--union", rev, dest)

    def metadata(self, rev: str, key: str) -> str | None:
        """A string metadata value of a commit, or None."""
        try:
            out = self._ostree("show", f"--print-metadata-key={key}", rev).strip()
        except RunError:
            return None
        return _unquote_gvariant_string(out)


def _unquote_gvariant_string(text: str) -> str:
    """`ostree show --print-metadata-key` prints GVariant text: a quoted string with escapes."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        body = text[1:-1]
        return body.encode("latin-1", "backslashreplace").decode("unicode_escape") if "\\" in body else body
    return text
