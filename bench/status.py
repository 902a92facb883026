"""Benchmark (not a test): `imagemode status --json` on a booted guest, the disk's own code against this
working tree's, side by side in one boot.

    .venv/bin/python bench/status.py DISK [--rounds N] [--before REV]

DISK is a disk made by `imagemode disk` (its id_ed25519 beside it), booted from a copy-on-write
overlay. The working tree's `imagemode/` is copied into the guest's /var/tmp, and each round runs
both, interleaved, after the boot has settled (`systemctl is-system-running --wait`): the "before"
is /usr/bin/imagemode (or, with --before REV, that revision's package, copied in the same way), the
"after" the copy. Both copies run as /usr/bin/imagemode does, with PYTHONPATH (not `python3 -m`,
whose runpy costs the guest a tenth of a second). Each is timed inside the guest with bash's `time`,
so SSH does not count. `status-uncached` removes status_cache's answer
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
NEW, OLD = "/var/tmp/imagemode-new", "/var/tmp/imagemode-old"
# What /usr/bin/imagemode runs: imagemode.entry since the status cache, imagemode.cli before it.
ENTRY = "python3 -c 'from imagemode.entry import run; raise SystemExit(run())'"
CLI_ENTRY = "python3 -c 'from imagemode.cli import main; raise SystemExit(main())'"


def copy_in(vm: VM, tar: bytes, dest: str) -> None:
    """A gzipped tar holding `imagemode/`, unpacked and byte-compiled under `dest` in the guest."""
    unpack = f"mkdir -p {dest} && base64 -d | tar -C {dest} -xzf - && python3 -m compileall -q {dest}"
    run(vm.ssh_cmd(unpack), input=base64.b64encode(tar).decode())


def seconds(vm: VM, command: str, prep: str = "") -> float:
    timed = f"TIMEFORMAT=%R; {prep + '; ' if prep else ''}{{ time {command} >/dev/null 2>&1; }} 2>&1"
    out = vm.exec(timed, check=False).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("disk", type=Path)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument(
        "--before", metavar="REV", help="git revision of the 'before' side (default: the image's)"
    )
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
            copy_in(vm, tar, NEW)
            before_cmd = "/usr/bin/imagemode"
            if a.before:
                archive = ["git", "-C", str(ROOT), "archive", "--format=tar.gz", a.before, "imagemode"]
                old = subprocess.run(archive, check=True, capture_output=True).stdout
                copy_in(vm, old, OLD)
                probe = ["git", "-C", str(ROOT), "cat-file", "-e", f"{a.before}:imagemode/entry.py"]
                has_entry = subprocess.run(probe, capture_output=True).returncode == 0
                before_cmd = f"PYTHONPATH={OLD} {ENTRY if has_entry else CLI_ENTRY}"
            runs: dict[str, dict[str, list[float]]] = {k: {"before": [], "after": []} for k in COMMANDS}
            floor: list[float] = []
            for _ in range(a.rounds):
                floor.append(seconds(vm, "python3 -c pass"))
                for name, (prep, args) in COMMANDS.items():
                    runs[name]["before"].append(seconds(vm, f"{before_cmd} {args}", prep))
                    new_cmd = f"PYTHONPATH={NEW} {ENTRY} {args}"
                    runs[name]["after"].append(seconds(vm, new_cmd, prep))
            vm.poweroff()
    out: dict[str, object] = {
        "rounds": a.rounds,
        "accel": vm.accel,
        "python3_floor": statistics.median(floor),
        "before": a.before or "the image's code",
    }
    for name, r in runs.items():
        before, after = statistics.median(r["before"]), statistics.median(r["after"])
        out[name] = {"median_before": before, "median_after": after, "ratio_after_to_before":
                     round(after / before, 3), "runs": r}  # fmt: skip
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
