"""grub.cfg from ostree's BLS entries. Debian's GRUB 2.06 has no `blscfg`, so the menu is generated.

Why GRUB (docs/boot.md): the ESP holds only a standalone GRUB binary written once at install, and the
menu is a file on the ext4 root that is replaced by rename. A power cut at any moment leaves either
the old or the new menu. An old menu still boots: see _ostree_target.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from imagemode.boot import bls, cmdline, grubenv, replace

GRUB_CFG = "grub/grub.cfg"
DEFAULT_TIMEOUT = 1


_BOOTLINK_RE = re.compile(r"^/ostree/boot\.([01])/(.+)$")


def _ostree_target(value: str) -> list[str]:
    """GRUB lines that set $ostree_target to ostree's link, or to the other boot version's twin.

    ostree-prepare-root and ostree-system-generator (2022.7) accept only the form
    /ostree/boot.[01]/STATEROOT/BOOTCSUM/SERIAL, and ostree deletes the old boot version's links right
    after it swaps /boot/loader. If the power goes between that swap and this menu's rewrite, the old
    menu's link is gone, and its twin under the new version names a deployment with the same kernel.
    """
    m = _BOOTLINK_RE.match(value)
    if not m:
        return [f"  set ostree_target={value}"]
    other = f"/ostree/boot.{1 - int(m.group(1))}/{m.group(2)}"
    return [f"  set ostree_target={value}",
            f"  if [ ! -e $ostree_target ]; then set ostree_target={other}; fi"]  # fmt: skip


def boot_counting(tried: str) -> list[str]:
    """GRUB lines that count the boots of the default entry while grubenv says it is being tried.

    `tried` is entry 0's deployment (checksum.serial). The counter applies only while grubenv names that
    same deployment: tries armed at staging wait until finalization makes it the default, and a menu
    whose entry 0 is something else ignores them. At 0 tries left GRUB boots entry 1, the previous
    deployment, and records the fallback for `imagemode-health.service` to make permanent.
    """
    env = f"/boot/{grubenv.PATH.removeprefix('boot/')}"
    t, n, fb = grubenv.TRY, grubenv.TRIES, grubenv.FALLBACK
    lines = [
        f"if [ -f {env} ]; then load_env --file {env} {t} {n} {fb}; fi",
        f'if [ "${{{t}}}" = "{tried}" ]; then',
        f'  if [ "${{{n}}}" = "0" ]; then',
        "    set default=1",
        f"    set {fb}={tried}",
        f"    save_env --file {env} {fb}",
    ]
    for i in range(1, grubenv.MAX_TRIES + 1):
        lines.append(f'  elif [ "${{{n}}}" = "{i}" ]; then set {n}={i - 1}; save_env --file {env} {n}')
    lines += [f"  else set {n}=0; save_env --file {env} {n}", "  fi", "fi"]
    return lines


def render(
    entries: list[bls.Entry], timeout: int = DEFAULT_TIMEOUT, ids: list[str | None] | None = None
) -> str:
    """`ids`: each entry's deployment (checksum.serial), where known; boot counting needs entry 0's."""
    lines = [
        "# Written by imagemode from /boot/loader/entries (ostree's BLS entries). Edits are overwritten.",
        "serial --unit=0 --speed=115200",
        "terminal_input serial console",
        "terminal_output serial console",
        f"set timeout={timeout}",
        "set default=0",
    ]
    if ids and ids[0] and len(entries) > 1:
        lines += boot_counting(ids[0])
    for e in entries:
        opts, target = [], []
        for arg in cmdline.split(e.options):
            if arg.startswith("ostree="):
                target = _ostree_target(arg[len("ostree=") :])
                opts.append("ostree=$ostree_target")  # GRUB's variable: the one word left unquoted
            else:
                opts.append(cmdline.for_grub(arg))
        title = e.title.replace("'", "")
        lines += [
            f"menuentry '{title}' --id 'ostree-{e.index}' {{",
            *target,
            f"  linux /boot{e.linux} {' '.join(opts)}",
            f"  initrd /boot{e.initrd}",
            "}",
        ]
    return "\n".join(lines) + "\n"


def deployment_of(sysroot: Path, entry: bls.Entry) -> str | None:
    """The deployment (checksum.serial) an entry boots: where its `ostree=` link points."""
    link = entry.karg("ostree")
    if not link:
        return None
    try:
        target = os.readlink(sysroot / link.lstrip("/"))
    except OSError:
        return None
    return Path(target).name or None


def update(sysroot: Path, timeout: int = DEFAULT_TIMEOUT) -> Path:
    """Rewrite sysroot/boot/grub/grub.cfg from the current entries (imagemode.boot.replace). Also makes
    sure grubenv exists, since GRUB can only write a block that is there."""
    boot = sysroot / "boot"
    entries = bls.read(boot)
    text = render(entries, timeout, [deployment_of(sysroot, e) for e in entries])
    if not (sysroot / grubenv.PATH).exists():
        grubenv.write(sysroot, {})
    out = boot / GRUB_CFG
    if out.exists() and out.read_text() == text:
        return out
    replace.replace(out, text.encode(), replace.live(sysroot))
    return out


def early_config(root_uuid: str) -> str:
    """The config embedded in the standalone GRUB on the ESP: find the root, hand over to its grub.cfg.

    `prefix` is left alone: modules live in the binary's memdisk (boot-path.md, pitfall).
    """
    return f"search --no-floppy --fs-uuid --set=root {root_uuid}\nconfigfile ($root)/boot/{GRUB_CFG}\n"


GRUB_MODULES = "part_gpt ext2 search_fs_uuid configfile normal linux serial terminal echo test gzio loadenv"
