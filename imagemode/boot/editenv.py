"""`grub2-editenv - list` on an imagemode device, in greenboot's meaning (/usr/bin/grub2-editenv).

MicroShift's and flightctl's red.d scripts ask GRUB's environment whether a rollback follows: greenboot
keeps `boot_counter` (the boots a new deployment has left; 0: the next boot is the previous one) and
`boot_success` there. imagemode's counter is its own (imagemode_try names the deployment being tried,
imagemode_tries its boots left: imagemode.boot.grubenv). This prints greenboot's two variables derived
from it, beside the block's own:

- booted deployment being tried:  boot_counter=<boots left>, boot_success=0. The verdict of a failed
  boot sets the boots left to 0 before red.d runs, so `boot_counter=0` is said exactly when GRUB boots
  the previous deployment next;
- anything else:                  boot_success=1 and no boot_counter (greenboot unsets it after a
  healthy boot, and after a fallback there is nothing left to roll back).

Only `list` is answered: the counter is imagemode's health service's to change (docs/health.md).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from imagemode.boot import grubenv

PROG = "grub2-editenv"


def booted_id(cmdline: str, sysroot: Path = grubenv.PHYSICAL) -> str | None:
    """checksum.serial of the booted deployment, from the kernel's ostree= argument (no libostree: a
    red.d script runs this in the middle of a boot's verdict)."""
    for arg in cmdline.split():
        if arg.startswith("ostree="):
            target = os.path.realpath(sysroot / arg[len("ostree=") :].lstrip("/"))
            return os.path.basename(target) or None
    return None


def greenboot_view(env: dict[str, str], booted: str | None) -> dict[str, str]:
    out = {k: v for k, v in env.items() if k not in ("boot_counter", "boot_success")}
    if booted is not None and env.get(grubenv.TRY) == booted and grubenv.TRIES in env:
        out["boot_counter"] = env[grubenv.TRIES]
        out["boot_success"] = "0"
    else:
        out["boot_success"] = "1"
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[1] != "list":
        print(f"{PROG} (imagemode): only '{PROG} - list' is answered; imagemode's health service keeps the"
              " boot counter (docs/health.md)", file=sys.stderr)  # fmt: skip
        return 1
    try:
        with open("/proc/cmdline") as f:
            cmdline = f.read()
    except OSError:
        cmdline = ""
    view = greenboot_view(grubenv.read(grubenv.PHYSICAL), booted_id(cmdline))
    sys.stdout.write("".join(f"{k}={v}\n" for k, v in view.items()))
    return 0
