"""A GPT disk from a sysroot directory, without loop devices or mounts.

- The ESP is a FAT image made by mkfs.vfat and mtools, holding only a standalone GRUB. It is written
  once and never changes.
- The root is written by `mkfs.ext4 -d SYSROOT -E offset=…` straight into its partition. That keeps
  hard links, so the repo and the deployment still share inodes.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from imagemode.boot import grub
from imagemode.errors import ImagemodeError
from imagemode.run import disk_watchdog, run

MiB = 1 << 20
ESP_MIB = 128
ESP_TYPE = "ef00"
ROOT_TYPE = "8304"  # Linux x86-64 root (/), discoverable-partitions type


class DiskError(ImagemodeError):
    pass


@dataclass(frozen=True)
class Partition:
    start: int  # bytes
    size: int  # bytes


def tree_size(root: Path) -> int:
    """Bytes the tree occupies, each hard-linked inode counted once (as mkfs.ext4 -d stores it)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def root_size(content: int, minsize: int | None) -> int:
    """Room for the content, a second deployment of the same size (an update) and some slack."""
    needed = int(content * 1.15) + 128 * MiB  # ext4 metadata and journal on top of the files
    if minsize is not None:
        if minsize < needed:
            raise DiskError(
                f"minsize {minsize // MiB} MiB is smaller than the content ({needed // MiB} MiB with"
                " filesystem overhead)"
            )
        return (minsize + MiB - 1) // MiB * MiB
    return (content * 2 + 512 * MiB + MiB - 1) // MiB * MiB


def _partition(disk: Path, index: int) -> Partition:
    out = run(["sgdisk", "-i", str(index), disk]).stdout
    first = re.search(r"First sector: (\d+)", out)
    last = re.search(r"Last sector: (\d+)", out)
    if not first or not last:
        raise DiskError(f"sgdisk wrote no partition {index} on {disk}")
    return Partition(int(first.group(1)) * 512, (int(last.group(1)) - int(first.group(1)) + 1) * 512)


def grub_efi(dest: Path, root_uuid: str, work: Path) -> None:
    early = work / "early.cfg"
    early.write_text(grub.early_config(root_uuid))
    run(["grub-mkstandalone", "-O", "x86_64-efi", "-o", dest, "--locales=", "--themes=", "--fonts=",
         f"--install-modules={grub.GRUB_MODULES} all_video efi_gop fat search",
         f"--modules={grub.GRUB_MODULES}", f"boot/grub/grub.cfg={early}"])  # fmt: skip


def write_raw(sysroot: Path, disk: Path, root_uuid: str, rootfs_bytes: int, work: Path) -> None:
    total = MiB + ESP_MIB * MiB + rootfs_bytes + MiB
    with open(disk, "wb") as f:
        f.truncate(total)
    # No -q: with it sgdisk has been seen to write no table and still exit 0 (boot-path.md).
    run(["sgdisk", "-n", f"1:1M:+{ESP_MIB}M", "-t", f"1:{ESP_TYPE}", "-c", "1:esp",
         "-n", "2:0:0", "-t", f"2:{ROOT_TYPE}", "-c", "2:root", disk])  # fmt: skip
    esp_part, root_part = _partition(disk, 1), _partition(disk, 2)
    esp = work / "esp.img"
    efi = work / "BOOTX64.EFI"
    grub_efi(efi, root_uuid, work)
    run(["mkfs.vfat", "-F", "32", "-n", "ESP", "-C", esp, str(esp_part.size // 1024)])
    run(["mmd", "-i", esp, "::/EFI", "::/EFI/BOOT"])
    run(["mcopy", "-i", esp, efi, "::/EFI/BOOT/BOOTX64.EFI"])
    with open(esp, "rb") as src, open(disk, "r+b") as dst:
        dst.seek(esp_part.start)
        shutil.copyfileobj(src, dst, 4 * MiB)
    esp.unlink()
    run(["mkfs.ext4", "-q", "-F", "-L", "root", "-U", root_uuid, "-d", sysroot,
         "-E", f"offset={root_part.start}", disk, f"{root_part.size // 1024}k"],
        watchdog=disk_watchdog(disk.parent))  # fmt: skip


def convert(raw: Path, dest: Path, fmt: str) -> None:
    run(["qemu-img", "convert", "-f", "raw", "-O", fmt, raw, dest], watchdog=disk_watchdog(dest.parent))
