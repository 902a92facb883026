"""Benchmark (not a test): cold boot of an imagemode disk against the same packages without image mode.

    .venv/bin/python bench/boot.py [IMAGE] [--runs N] [--keep DIR]

Two disks are made from IMAGE (the base image by default):
- **imagemode**: `imagemode disk IMAGE`, as a user makes it.
- **plain**: the image's own tree on a plain ext4 root: the same kernel, initramfs, kernel arguments
  (without `ostree=`) and standalone GRUB, no ostree. What imagemode adds to a booted device is taken
  out: its units, the per-device host-key unit (the keys are made at build time, as Debian's
  openssh-server does at install), and the menu's boot counting.

Each run boots one of each, interleaved, from copy-on-write overlays with the same QEMU settings. It
times, from QEMU's start, the console's "Reached target ... Multi-User System" and the first command
that SSH runs (polled every half second), then collects `systemd-analyze time`, the critical chain of
multi-user.target and the slowest units. It prints JSON: each run's seconds, the medians and
`ratio_imagemode_to_plain` for both, with the chains of the median runs.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from imagemode.boot import cmdline  # noqa: E402
from imagemode.disk import image as diskimage  # noqa: E402
from imagemode.run import run  # noqa: E402
from imagemode.vm.qemu import VM, overlay  # noqa: E402

MULTI_USER = re.compile(r"^\[\s*([0-9.]+)\].*Reached target.*Multi-User System")
# Units of the imagemode layer and of the base's configure step that a plain Debian would not have.
IMAGEMODE_UNITS = "usr/lib/systemd/system/imagemode-*"


def imagemode_disk(image: str, out: Path) -> tuple[Path, dict[str, Any]]:
    run([str(ROOT / ".venv/bin/imagemode"), "disk", image, "-o", str(out)], timeout=3600)
    return out / "disk.qcow2", json.loads((out / "disk.json").read_text())


def plain_disk(image: str, kargs: list[str], key: Path, work: Path) -> Path:
    """The image's tree as a plain root filesystem, booted by the same GRUB binary."""
    tree = work / "plain-root"
    mnt = run(["podman", "image", "mount", image]).stdout.strip()
    try:
        run(["cp", "-a", f"{mnt}/.", str(tree)])
    finally:
        run(["podman", "image", "unmount", image], check=False)
    units = tree / "usr/lib/systemd/system"
    for unit in units.glob("imagemode-*"):
        for link in units.glob(f"*.wants/{unit.name}"):
            link.unlink()
        unit.unlink()
    (tree / "etc/ssh/sshd_config.d/10-imagemode-hostkeys.conf").unlink(missing_ok=True)
    run(["ssh-keygen", "-A", "-f", str(tree)])  # what openssh-server's postinst does at install
    home = tree / "var/roothome"
    (home / ".ssh").mkdir(parents=True, mode=0o700, exist_ok=True)
    (home / ".ssh/authorized_keys").write_text(key.with_suffix(".pub").read_text())
    (kver,) = [p.name for p in (tree / "usr/lib/modules").iterdir()]
    root_uuid = str(uuid.uuid4())
    words = [cmdline.for_grub(k) for k in kargs if not k.startswith(("ostree=", "root="))]
    (tree / "boot/grub").mkdir(parents=True, exist_ok=True)
    (tree / "boot/grub/grub.cfg").write_text(
        "serial --unit=0 --speed=115200\nterminal_input serial console\nterminal_output serial console\n"
        "set timeout=1\nset default=0\nmenuentry 'Debian (plain)' {\n"
        f"  linux /usr/lib/modules/{kver}/vmlinuz root=UUID={root_uuid} {' '.join(words)}\n"
        f"  initrd /usr/lib/modules/{kver}/initramfs.img\n}}\n"
    )
    raw = work / "plain.raw"
    size = diskimage.root_size(diskimage.tree_size(tree), None)
    diskimage.write_raw(tree, raw, root_uuid, size, work)
    shutil.rmtree(tree)
    disk = work / "plain.qcow2"
    diskimage.convert(raw, disk, "qcow2")
    raw.unlink()
    return disk


def serial_seconds(log: Path) -> float | None:
    for line in log.read_text(errors="replace").splitlines():
        m = MULTI_USER.search(re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line))
        if m:
            return float(m.group(1))
    return None


def boot_once(disk: Path, key: Path, work: Path, name: str, i: int) -> dict[str, Any]:
    log = work / f"{name}-{i}.serial"
    vm = VM(overlay(disk, work / f"{name}-{i}.qcow2"), ssh_key=key, serial_log=log)
    with vm:
        ssh = vm.wait_ssh(900, poll=0.5)
        vm.exec("systemctl is-system-running --wait", check=False)
        checks = {
            "analyze": "systemd-analyze time",
            "chain": "systemd-analyze critical-chain --no-pager multi-user.target",
            "blame": "systemd-analyze blame --no-pager | grep -v '\\.device$' | head -15",
            "failed": "systemctl --failed --no-legend --plain",
        }
        report: dict[str, Any] = {"ssh_s": round(ssh, 2), "multi_user_s": serial_seconds(log)}
        report |= {k: vm.exec(c, check=False).stdout.strip() for k, c in checks.items()}
        vm.kill()
    (work / f"{name}-{i}.qcow2").unlink()
    return report


def summary(reports: list[dict[str, Any]]) -> dict[str, Any]:
    ssh = [r["ssh_s"] for r in reports]
    mu = [r["multi_user_s"] for r in reports if r["multi_user_s"] is not None]
    median_run = min(reports, key=lambda r: abs(r["ssh_s"] - statistics.median(ssh)))
    return {
        "ssh_s": ssh,
        "ssh_median_s": round(statistics.median(ssh), 2),
        "multi_user_s": mu,
        "multi_user_median_s": round(statistics.median(mu), 2) if mu else None,
        "median_run": {k: median_run[k] for k in ("analyze", "chain", "blame", "failed")},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("image", nargs="?", default="localhost/imagemode/debian:12")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--keep", type=Path, help="build the disks here, or reuse the ones found there")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-boot-", dir="/var/tmp") as tmp:
        work = a.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if not (work / "im/disk.qcow2").exists():
            imagemode_disk(a.image, work / "im")
        im, meta = work / "im/disk.qcow2", json.loads((work / "im/disk.json").read_text())
        key = work / "im/id_ed25519"
        plain = work / "plain.qcow2"
        if not plain.exists():
            plain = plain_disk(a.image, meta["kargs"], key, work)
        runs: dict[str, list[dict[str, Any]]] = {"imagemode": [], "plain": []}
        for i in range(a.runs):
            for name, disk in (("imagemode", im), ("plain", plain)):
                runs[name].append(boot_once(disk, key, work, name, i))
                print(f"{name} {i + 1}/{a.runs}: {runs[name][-1]['ssh_s']} s to SSH", file=sys.stderr)
        out: dict[str, Any] = {"image": a.image, "runs": a.runs, **{k: summary(v) for k, v in runs.items()}}
        for metric in ("ssh_median_s", "multi_user_median_s"):
            i_, p_ = out["imagemode"][metric], out["plain"][metric]
            out[f"ratio_imagemode_to_plain_{metric.removesuffix('_median_s')}"] = (
                round(i_ / p_, 3) if i_ and p_ else None
            )
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
