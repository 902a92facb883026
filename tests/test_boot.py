"""grub.cfg from ostree's BLS entries, on a synthetic sysroot laid out as ostree lays it out."""

from __future__ import annotations

from pathlib import Path

from imagemode.boot import bls, grub

CSUM_A, CSUM_B = "a" * 64, "b" * 64


def sysroot(tmp_path: Path) -> Path:
    s = tmp_path / "sysroot"
    for csum in (CSUM_A, CSUM_B):
        (s / f"ostree/deploy/default/deploy/{csum}.0").mkdir(parents=True)
    boot = s / "ostree/boot.1.1/default/k1"
    boot.mkdir(parents=True)
    (boot / "0").symlink_to(f"../../../deploy/default/deploy/{CSUM_B}.0")
    (boot / "1").symlink_to(f"../../../deploy/default/deploy/{CSUM_A}.0")
    (s / "ostree/boot.1").symlink_to("boot.1.1")
    entries = s / "boot/loader.1/entries"
    entries.mkdir(parents=True)
    (s / "boot/loader").symlink_to("loader.1")
    for i, _version in ((0, "2"), (1, "1")):
        (entries / f"ostree-{2 - i}-default.conf").write_text(
            f"title Debian GNU/Linux 12 (ostree:{i})\nversion {2 - i}\n"
            f"options root=UUID=u rw ostree=/ostree/boot.1/default/k1/{i}\n"
            "linux /ostree/default-k1/vmlinuz-6.1\ninitrd /ostree/default-k1/initramfs-6.1.img\n"
        )
    return s


def test_entries_are_read_default_first(tmp_path: Path) -> None:
    entries = bls.read(sysroot(tmp_path) / "boot")
    assert [e.index for e in entries] == [0, 1]
    assert entries[0].karg("root") == "UUID=u"


def test_menu_in_ostree_order_with_fallback_to_the_other_boot_version(tmp_path: Path) -> None:
    s = sysroot(tmp_path)
    out = grub.update(s)
    cfg = out.read_text()
    first, second = cfg.split("menuentry")[1:]
    assert "set ostree_target=/ostree/boot.1/default/k1/0" in first
    assert "if [ ! -e $ostree_target ]; then set ostree_target=/ostree/boot.0/default/k1/0; fi" in first
    assert "set ostree_target=/ostree/boot.1/default/k1/1" in second
    assert "linux /boot/ostree/default-k1/vmlinuz-6.1 root=UUID=u rw ostree=$ostree_target" in first
    assert "initrd /boot/ostree/default-k1/initramfs-6.1.img" in first
    assert "set default=0" in cfg
    assert not list(out.parent.glob("*.new"))


def test_menu_follows_undeploy(tmp_path: Path) -> None:
    s = sysroot(tmp_path)
    grub.update(s)
    (s / "boot/loader.1/entries/ostree-1-default.conf").unlink()  # ostree undeployed the rollback
    cfg = grub.update(s).read_text()
    assert cfg.count("menuentry") == 1
    assert "boot.1/default/k1/0" in cfg


def test_early_config_finds_root_by_uuid() -> None:
    cfg = grub.early_config("1234-uuid")
    assert "search --no-floppy --fs-uuid --set=root 1234-uuid" in cfg
    assert "prefix" not in cfg
