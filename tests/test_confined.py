"""The confined tree: writes never follow a link, reads follow links only inside the tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagemode import confined


def test_resolve_stays_in_the_root(tmp_path: Path) -> None:
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "usr/lib/real").write_text("x")
    (tmp_path / "lib").symlink_to("usr/lib")
    (tmp_path / "abs").symlink_to("/usr/lib/real")
    (tmp_path / "up").symlink_to("../../../../usr/lib/real")
    (tmp_path / "loop").symlink_to("loop")
    t = confined.Tree(tmp_path)
    assert confined.resolve(t, "lib/real") == "usr/lib/real"
    assert confined.resolve(t, "abs") == "usr/lib/real"  # an absolute link starts at the tree's root
    assert confined.resolve(t, "up") == "usr/lib/real"  # `..` stops at the root
    assert confined.resolve(t, "loop") is None
    assert confined.resolve(t, "missing/x") is None


def test_writes_refuse_links_on_the_way(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "d").symlink_to(outside)
    t = confined.Tree(root)
    with pytest.raises(confined.ConfinedError, match="is a symlink in the image"):
        t.write_bytes("d/file", b"x")
    with pytest.raises(confined.ConfinedError, match="is a symlink in the image"):
        t.makedirs("d/sub")
    with pytest.raises(confined.ConfinedError, match="leaves the tree"):
        t.write_bytes("../outside/file", b"x")
    t.chmod("d", 0o777)  # a link has no mode of its own; what it names is not touched
    assert (outside.stat().st_mode & 0o777) != 0o777
    assert list(outside.iterdir()) == []


def test_a_file_of_the_same_name_as_a_link_replaces_it(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("keep")
    root = tmp_path / "root"
    root.mkdir()
    (root / "f").symlink_to(secret)
    confined.Tree(root).write_bytes("f", b"new", 0o600)
    assert secret.read_text() == "keep"
    assert not (root / "f").is_symlink() and (root / "f").read_text() == "new"


def test_copy_tree_copies_links_as_links(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a/f").write_text("f")
    (src / "a/l").symlink_to("/etc/shadow")
    dst = tmp_path / "dst"
    dst.mkdir()
    confined.Tree(dst).copy_tree(confined.Tree(src), "a", "b")
    assert (dst / "b/f").read_text() == "f"
    assert (dst / "b/l").is_symlink() and str((dst / "b/l").readlink()) == "/etc/shadow"
