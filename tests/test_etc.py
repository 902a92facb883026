"""The /etc check before staging: file ↔ directory clashes that ostree's merge would hit at shutdown."""

from __future__ import annotations

from pathlib import Path

from imagemode.host.etc import conflicts


def trees(tmp_path: Path) -> tuple[Path, Path, Path]:
    local, old, new = (tmp_path / n for n in ("local", "old", "new"))
    for d in (local, old, new):
        (d / "ssh").mkdir(parents=True)
        (d / "ssh/sshd_config").write_text("Port 22\n")
        (d / "motd").write_text("hi\n")
    return local, old, new


def test_no_clash_when_types_agree(tmp_path: Path) -> None:
    local, old, new = trees(tmp_path)
    (local / "motd").write_text("edited\n")
    (new / "motd").write_text("new default\n")
    assert conflicts(local, old, new) == []


def test_locally_added_file_that_becomes_a_directory(tmp_path: Path) -> None:
    local, old, new = trees(tmp_path)
    (local / "foo.d").write_text("mine\n")
    (new / "foo.d").mkdir()
    (new / "foo.d/a.conf").write_text("x\n")
    assert conflicts(local, old, new) == ["foo.d (file here, directory in the new image)"]


def test_locally_added_directory_where_the_image_has_a_file(tmp_path: Path) -> None:
    local, old, new = trees(tmp_path)
    (local / "bar").mkdir()
    (local / "bar/x").write_text("mine\n")
    (new / "bar").write_text("image\n")
    assert conflicts(local, old, new) == ["bar (directory here, file in the new image)"]


def test_unmodified_paths_follow_the_image(tmp_path: Path) -> None:
    """An image that turns its own file into a directory is fine when the device never touched it."""
    local, old, new = trees(tmp_path)
    (new / "motd").unlink()
    (new / "motd").mkdir()
    assert conflicts(local, old, new) == []
    (local / "motd").write_text("edited\n")  # now ostree would carry the edit into a directory
    assert conflicts(local, old, new) == ["motd (file here, directory in the new image)"]


def test_unmodified_directory_whose_children_are_untouched(tmp_path: Path) -> None:
    local, old, new = trees(tmp_path)
    (new / "ssh/sshd_config").unlink()
    (new / "ssh").rmdir()
    (new / "ssh").write_text("now a file\n")
    assert conflicts(local, old, new) == []
    (local / "ssh/sshd_config").write_text("Port 2222\n")
    assert conflicts(local, old, new) == ["ssh (directory here, file in the new image)"]
