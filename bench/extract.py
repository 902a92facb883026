"""Confined layer import against the extraction it replaced, on the base image's OS layer.

    .venv/bin/python bench/extract.py [--rounds 3] [--layer /var/cache/imagemode/layers/<key>/layer.tar]

- **before**: the importer as it was until the hostile-input issue: the tar extracted with Python's
  tarfile onto a filesystem (following whatever symlinks the layer made), then `ostree commit
  --tree=dir=` of that directory into a bare repo, then the directory removed.
- **after**: `imagemode.store.layers.commit_layer`: the tar streamed into libostree, every entry an
  object, nothing written outside the repo, the compressed and uncompressed bytes hashed against
  the digest and the diff_id, the expanded size capped.

Each round runs both, in alternating order, into fresh bare repos on the same filesystem. It prints
JSON with each run's seconds, the medians, `ratio_after_to_before`, and whether both commits hold the
same tree (the same dirtree checksum: same files, owners, modes and xattrs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import stat
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imagemode.store import layers
from imagemode.store.ostree import Repo

CACHE = Path("/var/cache/imagemode/layers")


def before(tar_path: Path, repo: Path, work: Path) -> str:
    """The old importer's extraction, kept here as the baseline it is measured against."""
    dest = Path(tempfile.mkdtemp(dir=work))
    dest.chmod(0o755)
    root = os.fspath(dest)
    dir_modes: list[tuple[str, int]] = []
    with tarfile.open(tar_path, mode="r|*") as tar:
        for m in tar:
            name = "/".join(p for p in m.name.split("/") if p not in ("", "."))
            if not name:
                continue
            parent, _, base = name.rpartition("/")
            if base.startswith(".wh."):
                continue
            path = os.path.join(root, name)
            if parent:
                os.makedirs(os.path.join(root, parent), exist_ok=True)
            if m.isdir():
                os.makedirs(path, exist_ok=True)
                os.chown(path, m.uid, m.gid)
                _xattrs(path, m.pax_headers)
                dir_modes.append((path, m.mode))
                continue
            if os.path.lexists(path) and not os.path.isdir(path):
                os.unlink(path)
            if m.isreg():
                f = tar.extractfile(m)
                assert f is not None
                with open(path, "wb") as out:
                    shutil.copyfileobj(f, out, 1 << 20)
            elif m.issym():
                os.symlink(m.linkname, path)
            elif m.islnk():
                os.link(os.path.join(root, m.linkname.strip("/")), path)
                continue
            else:
                continue
            os.chown(path, m.uid, m.gid, follow_symlinks=False)
            if not m.issym():
                os.chmod(path, stat.S_IMODE(m.mode))
            _xattrs(path, m.pax_headers)
            os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)
    for path, mode in reversed(dir_modes):
        os.chmod(path, stat.S_IMODE(mode))
    out = subprocess.run(
        ["ostree", f"--repo={repo}", "commit", "--branch=layer", f"--tree=dir={dest}", "--no-bindings",
         "--timestamp=@0"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    shutil.rmtree(dest)
    return out


def _xattrs(path: str, headers: dict[str, str]) -> None:
    for key, value in headers.items():
        if key.startswith("SCHILY.xattr."):
            try:
                os.setxattr(path, key[13:], value.encode("utf-8", "surrogateescape"), follow_symlinks=False)
            except OSError:
                pass


def after(tar_path: Path, repo: Path, digest: str) -> str:
    r = Repo(repo)
    layers.commit_layer(r, tar_path, "layer", digest=digest, diff_id=digest)
    rev = r.resolve("layer")
    assert rev
    return rev


def tree_checksum(repo: Path, rev: str) -> str:
    r = Repo(repo)
    _, root, _ = r.handle.read_commit(rev, None)
    return str(root.tree_get_contents_checksum())


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--layer", type=Path, help="an uncompressed layer tar (default: the cached OS layer)")
    ap.add_argument("--work", type=Path, default=Path("/var/tmp"))
    args = ap.parse_args()
    tar_path = args.layer or max(CACHE.glob("*/layer.tar"), key=lambda p: p.stat().st_mtime)
    digest = sha256(tar_path)
    runs: dict[str, list[float]] = {"before": [], "after": []}
    same: list[bool] = []
    for i in range(args.rounds):
        sums = {}
        for side in ("before", "after") if i % 2 == 0 else ("after", "before"):
            work = Path(tempfile.mkdtemp(prefix=f"bench-extract-{side}-", dir=args.work))
            repo = work / "repo"
            Repo(repo).ensure("bare")
            subprocess.run(["sync"], check=True)
            t0 = time.monotonic()
            rev = before(tar_path, repo, work) if side == "before" else after(tar_path, repo, digest)
            runs[side].append(round(time.monotonic() - t0, 2))
            sums[side] = tree_checksum(repo, rev)
            shutil.rmtree(work)
        same.append(sums["before"] == sums["after"])
        b, a = runs["before"][-1], runs["after"][-1]
        print(f"round {i + 1}: before {b}s, after {a}s, same tree: {same[-1]}", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(json.dumps({
        "layer": str(tar_path), "layer_bytes": tar_path.stat().st_size, "runs": runs, "median": med,
        "ratio_after_to_before": round(med["after"] / med["before"], 3), "same_tree": all(same),
    }, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
