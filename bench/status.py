"""Benchmark (not a test): `imagemode status --json` on a booted guest, the disk's own code against this
working tree's, side by side in one boot.

    .venv/bin/python bench/status.py DISK [--rounds N]

DISK is a disk made by `imagemode disk` (its id_ed25519 beside it), booted from a copy-on-write
overlay. The working tree's `imagemode/` is copied into the guest's /var/tmp, and each round runs
both, interleaved, after the boot has settled (`systemctl is-system-running --wait`): the "before"
is the package in the image, the "after" the copy, run with PYTHONPATH. Each is timed inside the
guest with bash's `time`, so SSH does not count. `status-uncached` removes status_cache's answer
first (untimed), as any change of the device does. `imagemode --help`, `imagemode health --show` and
`python3 -c pass` (the floor of any Python tool) are timed the same way. It prints JSON: each run's
seconds, the medians and the ratios after/before.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from imagemode.run import run  # noqa: E402
from imagemode.vm.qemu import VM, overlay  # noqa: E402

# name: (what runs before it, untimed; the arguments timed)
COMMANDS = {
    "status": ("", "status --json"),
    # status_cache's answer removed first: the whole read through libostree, as after any change
    "status-uncached": ("rm -f /run/imagemode/status.json", "status --json"),
    "help": ("", "--help"),
    "health-show": ("", "health --show --json"),
}
NEW = "/var/tmp/imagemode-new"


def seconds(vm: VM, command: str, prep: str = "") -> float:
    timed = f"TIMEFORMAT=%R; {prep + '; ' if prep else ''}{{ time {command} >/dev/null 2>&1; }} 2>&1"
    out = vm.exec(timed, check=False).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("disk", type=Path)
    ap.add_argument("--rounds", type=int, default=10)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-status-") as d:
        vm = VM(overlay(a.disk, Path(d) / "overlay.qcow2"), ssh_key=a.disk.parent / "id_ed25519")
        with vm:
            vm.wait_ssh(900)
            vm.exec("systemctl is-system-running --wait", check=False)
            tar = subprocess.run(
                ["tar", "-C", str(ROOT), "--exclude=__pycache__", "-czf", "-", "imagemode"],
                check=True, capture_output=True,
            ).stdout  # fmt: skip
            unpack = f"mkdir -p {NEW} && base64 -d | tar -C {NEW} -xzf - && python3 -m compileall -q {NEW}"
            run(vm.ssh_cmd(unpack), input=base64.b64encode(tar).decode())
            runs: dict[str, dict[str, list[float]]] = {k: {"before": [], "after": []} for k in COMMANDS}
            floor: list[float] = []
            for _ in range(a.rounds):
                floor.append(seconds(vm, "python3 -c pass"))
                for name, (prep, args) in COMMANDS.items():
                    runs[name]["before"].append(seconds(vm, f"python3 -m imagemode {args}", prep))
                    after = f"PYTHONPATH={NEW} python3 -m imagemode {args}"
                    runs[name]["after"].append(seconds(vm, after, prep))
            vm.poweroff()
    out: dict[str, object] = {
        "rounds": a.rounds,
        "accel": vm.accel,
        "python3_floor": statistics.median(floor),
    }
    for name, r in runs.items():
        before, after = statistics.median(r["before"]), statistics.median(r["after"])
        out[name] = {"median_before": before, "median_after": after, "ratio_after_to_before":
                     round(after / before, 3), "runs": r}  # fmt: skip
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
