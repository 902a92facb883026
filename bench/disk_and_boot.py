"""Benchmark (not a test): image → qcow2 against its floor, and cold boot to SSH.

    .venv/bin/python bench/disk_and_boot.py [IMAGE] [--runs N]

The floor is what no disk builder can avoid for the same tree: an ostree commit of the merged tree
into a fresh bare repo, plus `mkfs.ext4 -d` of it. Each run does the floor and `imagemode disk` side
by side (the machine is noisy: compare ratios, not seconds). `imagemode disk` runs cold, with a new
cache, so the import is counted whole, and again warm, with the layers already in the store.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from imagemode.oci.reference import parse_local  # noqa: E402
from imagemode.store import importer  # noqa: E402
from imagemode.store.ostree import Repo  # noqa: E402
from imagemode.vm.qemu import VM  # noqa: E402


def timed(cmd: list[str]) -> float:
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - t0


def floor(tree: Path, work: Path) -> float:
    repo = work / "floor-repo"
    subprocess.run(["ostree", f"--repo={repo}", "init", "--mode=bare"], check=True)
    t0 = time.monotonic()
    subprocess.run(
        ["ostree", f"--repo={repo}", "commit", "--branch=floor", f"--tree=dir={tree}"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    img = work / "floor.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(img), "3G"], check=True)
    took = time.monotonic() - t0
    shutil.rmtree(repo)
    img.unlink()
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("image", nargs="?", default="localhost/imagemode/debian:12")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--no-boot", action="store_true")
    a = ap.parse_args()
    base = Path("/var/tmp/imagemode-bench")
    base.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[float]] = {"floor": [], "disk-cold": [], "disk-warm": [], "boot-to-ssh": []}
    for _ in range(a.runs):
        with tempfile.TemporaryDirectory(dir=base) as tmp:
            work = Path(tmp)
            cache = work / "cache"
            # the same merged tree the disk builder commits: import once, check it out
            repo = Repo(work / "tree-repo").ensure()
            (work / "w").mkdir()
            res = importer.import_image(repo, parse_local(a.image), work / "w")
            tree = work / "tree"
            subprocess.run(
                ["ostree", f"--repo={repo.path}", "checkout", "--force-copy", res.commit, str(tree)],
                check=True,
            )
            shutil.rmtree(repo.path)
            rows["floor"].append(floor(tree, work))
            shutil.rmtree(tree)
            im = [str(ROOT / ".venv/bin/imagemode"), "disk", a.image, "--cache-dir", str(cache)]
            rows["disk-cold"].append(timed([*im, "-o", str(work / "o1")]))
            rows["disk-warm"].append(timed([*im, "-o", str(work / "o2")]))
            if not a.no_boot:
                with VM(work / "o2/disk.qcow2", snapshot=True) as vm:
                    rows["boot-to-ssh"].append(vm.wait_ssh(900))
                    vm.poweroff()
    fl = statistics.median(rows["floor"])
    out = {}
    for k, v in rows.items():
        if v:
            med = statistics.median(v)
            out[k] = {
                "median_s": round(med, 1),
                "runs": [round(x, 1) for x in v],
                "ratio_to_floor": round(med / fl, 2) if k.startswith("disk") else None,
            }
    print(json.dumps({"image": a.image, "results": out}, indent=2))


if __name__ == "__main__":
    main()
