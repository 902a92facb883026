"""Kernel arguments: the kernel's splitting, GRUB's quoting, and the kargs.d types an image may use."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagemode import confined
from imagemode.boot import cmdline, grub, kargs


def test_split_keeps_quoted_values_whole() -> None:
    assert cmdline.split('root=UUID=x  opt="a b" "q=c d" rw') == [
        "root=UUID=x",
        'opt="a b"',
        '"q=c d"',
        "rw",
    ]


@pytest.mark.parametrize(
    "arg,why",
    [
        ("", "empty"),
        ("a\nb", "control character"),
        ("a b", "white space outside"),
        ('a="b', "does not close"),
        ("a='b c'", "single quote"),
        ("a\\b", "backslash"),
    ],
)
def test_what_cannot_be_one_argument(arg: str, why: str) -> None:
    assert why in (cmdline.problem(arg) or "")


def test_grub_gets_each_argument_literally() -> None:
    assert cmdline.for_grub("console=ttyS0,115200") == "console=ttyS0,115200"
    # `;` ends a GRUB command and `$` expands a variable: both stay text inside single quotes.
    assert cmdline.for_grub('imagemode.test="a;b$c d"') == "'imagemode.test=a;b$c d'"


def test_grub_menu_quotes_what_grub_would_read(tmp_path: Path) -> None:
    from imagemode.boot import bls

    e = bls.Entry(
        tmp_path / "e.conf",
        "Debian (ostree:0)",
        "6.1",
        'root=UUID=u x="1;2" ostree=/ostree/boot.1/d/k/0',
        "/vmlinuz",
        "/initrd",
    )
    text = grub.render([e])
    assert "linux /boot/vmlinuz root=UUID=u 'x=1;2' ostree=$ostree_target" in text


def kargs_tree(tmp_path: Path, text: str) -> confined.Tree:
    d = tmp_path / kargs.KARGS_D
    d.mkdir(parents=True)
    (d / "10-x.toml").write_text(text)
    return confined.Tree(tmp_path)


@pytest.mark.parametrize(
    "text,message",
    [
        ('kargs = "quiet splash"', "kargs must be a list of strings"),
        ("kargs = [1]", "kargs must be a list of strings"),
        ('kargs = ["a b"]', "is not one kernel argument (white space outside double quotes)"),
        ('match-architectures = "x86_64"\nkargs = []', "match-architectures must be a list of strings"),
        ("kargs = [", "not TOML"),
    ],
)
def test_kargs_d_types_are_checked(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(kargs.KargsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        kargs.image_kargs(kargs_tree(tmp_path, text))


def test_kargs_d_link_out_of_the_tree_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside.toml"
    outside.write_text('kargs = ["stolen"]\n')
    root = tmp_path / "root"
    d = root / kargs.KARGS_D
    d.mkdir(parents=True)
    (d / "10-x.toml").symlink_to(outside)  # absolute: inside the image, that path does not exist
    assert kargs.image_kargs(confined.Tree(root)) == []


def test_a_broken_kargs_d_in_the_running_image_does_not_block_the_update(tmp_path: Path) -> None:
    from imagemode.host.update import new_kargs
    from imagemode.store.ostree import Repo

    repo = Repo(tmp_path / "repo").ensure()

    def commit(name: str, text: str) -> str:
        d = tmp_path / name / kargs.KARGS_D
        d.mkdir(parents=True)
        (d / "10.toml").write_text(text)
        return repo.commit(tmp_path / name, name)

    old, new, bad = (
        commit("old", 'kargs = "quiet"\n'),
        commit("new", 'kargs = ["b=2"]\n'),
        commit("bad", "kargs = 1"),
    )

    class Merge:
        def get_csum(self) -> str:
            return old

        def get_bootconfig(self) -> dict[str, str]:
            return {"options": "root=UUID=u rw q u i e t"}

    assert new_kargs(None, repo, Merge(), new) == ["root=UUID=u", "rw", "q", "u", "i", "e", "t", "b=2"]
    with pytest.raises(kargs.KargsError, match="kargs must be a list of strings"):
        new_kargs(None, repo, Merge(), bad)
