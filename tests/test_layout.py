"""Reproducible layers: the same tree gives the same bytes, whatever the files' own timestamps."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from imagemode.oci.layout import write_layer

EPOCH = 1_700_000_000


def make_tree(root: Path, mtime: int) -> None:
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_text("#!/bin/sh\n")
    (root / "usr/bin/tool").chmod(0o4755)
    os.link(root / "usr/bin/tool", root / "usr/bin/tool-link")
    (root / "usr/lib").symlink_to("lib64")
    (root / "etc").mkdir()
    (root / "etc/config").write_text("a=1\n")
    os.setxattr(root / "etc/config", "user.imagemode", b"\xff\x00bin")
    for p in [root, *root.rglob("*")]:
        os.utime(p, (mtime, mtime), follow_symlinks=False)


def test_same_tree_same_digest_regardless_of_mtimes(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    make_tree(a, EPOCH + 1000)  # newer than the epoch: clamped
    make_tree(b, EPOCH + 5000)
    la = write_layer(a, tmp_path / "a.tar", EPOCH)
    lb = write_layer(b, tmp_path / "b.tar", EPOCH)
    assert la.digest == lb.digest
    assert la.size == (tmp_path / "a.tar").stat().st_size


def test_layer_content(tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    make_tree(root, EPOCH - 10)
    write_layer(root, tmp_path / "l.tar", EPOCH, prefix=("opt",))
    with tarfile.open(tmp_path / "l.tar") as tar:
        members = {m.name: m for m in tar.getmembers()}
    names = list(members)
    assert names[0] == "opt"
    assert names == [
        "opt",
        "etc",
        "etc/config",
        "usr",
        "usr/bin",
        "usr/bin/tool",
        "usr/bin/tool-link",
        "usr/lib",
    ]
    assert members["usr/bin/tool"].mode == 0o4755
    assert members["usr/bin/tool-link"].islnk() and members["usr/bin/tool-link"].linkname == "usr/bin/tool"
    assert members["usr/lib"].issym() and members["usr/lib"].linkname == "lib64"
    assert members["etc/config"].mtime == EPOCH - 10  # older than the epoch: kept
    assert members["etc/config"].uname == ""
    xattr = members["etc/config"].pax_headers["SCHILY.xattr.user.imagemode"]
    assert xattr.encode("utf-8", "surrogateescape") == b"\xff\x00bin"


def test_imagemode_layer_is_reproducible_across_processes(tmp_path: Path) -> None:
    """Each process has its own string hash seed; the layer (with its .pyc files) must not depend on it."""
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from imagemode.build.base import write_imagemode_layer;"
        "print(write_imagemode_layer(Path(sys.argv[1])).digest)"
    )
    digests = set()
    for seed in ("1", "2", "random"):
        out = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / f"{seed}.tar")],
            check=True,
            capture_output=True,
            text=True,
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
        )
        digests.add(out.stdout.strip())
    assert len(digests) == 1, digests


def test_the_embed_layer_is_clamped_to_source_date_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`build --embed` writes its store with the one layer writer, clamped: the same store at two
    times gives the same bytes."""
    from imagemode.embed.layer import epoch_of
    from imagemode.oci.reference import ImageRef, Transport

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert epoch_of(ImageRef(Transport.CONTAINERS_STORAGE, name="localhost/x", tag="1")) == 1700000000
    store = tmp_path / "root/usr/lib/imagemode/containers/storage"
    store.mkdir(parents=True)
    (store / "images.json").write_text("[]")
    first = write_layer(tmp_path / "root", tmp_path / "a.tar", 1700000000)
    os.utime(store / "images.json", (1800000000, 1800000000))
    second = write_layer(tmp_path / "root", tmp_path / "b.tar", 1700000000)
    assert first.digest == second.digest
