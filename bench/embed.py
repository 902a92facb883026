"""Benchmark (not a test): embedded images against MicroShift's method, on the same image set.

    .venv/bin/python bench/embed.py [--rounds N]

The image set: a runtime image (busybox and the host's Python standard library, a few thousand
files), and three applications built on it, each with a small layer of its own (one of them deletes
files from the runtime, so its layers hold whiteouts). All four are served by a docker-registry on
127.0.0.1.

- MicroShift's method, reproduced: at build time, `skopeo copy docker://REF dir:/usr/lib/containers/
  storage/<sha>` for each image; at every start, `skopeo copy dir:… containers-storage:REF` for each
  image into /var/lib/containers/storage, before anything can run.
- imagemode: `imagemode embed` into /usr; at start, nothing is copied.

Disk is measured three ways, each hard-linked inode counted once: the files as they lie (/usr and,
after the first start, /var); the same with /usr committed to an ostree repo (what a device stores:
ostree keeps one copy of identical files, so it already folds the dir: copies of a shared layer); and
/usr as a gzip image layer (what a registry stores and a device downloads).
First start: from "the OS is up" to "every image is in podman's storage", timed side by side in each
round with a fresh /var. Prints JSON with the medians and the ratios imagemode / MicroShift.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from imagemode.build.containerfile import isolation  # noqa: E402
from imagemode.disk.image import tree_size  # noqa: E402
from imagemode.embed import store  # noqa: E402
from imagemode.embed.sources import Wanted, qualify  # noqa: E402
from imagemode.oci.layout import write_layer  # noqa: E402
from imagemode.vm.registry import Registry  # noqa: E402

RUNTIME = "localhost/imagemode-bench/runtime:1"
APPS = ("app-a", "app-b", "app-c")


def sh(*cmd: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout


def build_images(work: Path) -> list[str]:
    """The runtime and the three applications, in local storage. Returns their local tags."""
    ctx = work / "runtime"
    ctx.mkdir()
    bb = Path("/bin/busybox")  # Debian's busybox-static, which scripts/setup installs
    shutil.copy(bb, ctx / "busybox")
    shutil.copytree(f"/usr/lib/python3.{sys.version_info.minor}", ctx / "python", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "test", "tests"))  # fmt: skip
    (ctx / "Containerfile").write_text(
        'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
        "COPY python /usr/lib/python3\n"
    )
    sh("podman", "build", "-q", f"--isolation={isolation()}", "-t", RUNTIME, str(ctx))
    tags = [RUNTIME]
    for i, app in enumerate(APPS):
        actx = work / app
        actx.mkdir()
        drop = "RUN rm -rf /usr/lib/python3/email /usr/lib/python3/xml\n" if i == 0 else ""
        (actx / "Containerfile").write_text(
            f"FROM {RUNTIME}\n{drop}RUN mkdir -p /app && echo '{app}' > /app/name && "
            f"head -c 200000 /usr/lib/python3/{['ast.py', 'typing.py', 'argparse.py'][i]} > /app/data\n"
        )
        tag = f"localhost/imagemode-bench/{app}:1"
        sh("podman", "build", "-q", f"--isolation={isolation()}", "-t", tag, str(actx))
        tags.append(tag)
    return tags


def ostree_size(tree: Path, work: Path) -> int:
    """Bytes that committing `tree` to a fresh bare repo occupies: what a device stores for it."""
    repo = work / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    sh("ostree", f"--repo={repo}", "init", "--mode=bare")
    sh("ostree", f"--repo={repo}", "commit", "--branch=bench", f"--tree=dir={tree}", "--no-xattrs")
    return tree_size(repo / "objects")


def layer_gzip_size(tree: Path, work: Path) -> int:
    """Bytes of `tree` as a gzip-compressed image layer: what a registry stores and a device downloads
    for it (hard links stay links, as in any layer tar)."""
    tar = work / "layer.tar"
    write_layer(tree, tar, 0)
    sh("gzip", "-6", "-f", str(tar))
    size = (work / "layer.tar.gz").stat().st_size
    (work / "layer.tar.gz").unlink()
    return size


def microshift_build(refs: list[str], root: Path) -> None:
    for ref in refs:
        dest = root / "usr/lib/containers/storage" / hashlib.sha256(ref.encode()).hexdigest()
        dest.parent.mkdir(parents=True, exist_ok=True)
        sh("skopeo", "copy", "--quiet", "--preserve-digests", "--src-tls-verify=false",
           f"docker://{ref}", f"dir:{dest}")  # fmt: skip


def microshift_start(refs: list[str], root: Path, var: Path) -> float:
    """The copy at start: every dir: image into /var's containers-storage."""
    t0 = time.monotonic()
    spec = store.store_spec(var / "storage", var / "run")
    for ref in refs:
        src = root / "usr/lib/containers/storage" / hashlib.sha256(ref.encode()).hexdigest()
        sh("skopeo", "copy", "--quiet", f"dir:{src}", spec + ref)
    return time.monotonic() - t0


def usable(refs: list[str], graph: Path, additional: Path | None, var: Path) -> float:
    """Seconds until podman, with this storage config, has every image."""
    conf = var / "storage.conf"
    extra = f'[storage.options]\nadditionalimagestores = ["{additional}"]\n' if additional else ""
    conf.write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{graph}"\nrunroot = "{var}/run"\n{extra}')
    env = {"CONTAINERS_STORAGE_CONF": str(conf), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}
    t0 = time.monotonic()
    for ref in refs:
        sh("podman", "image", "exists", ref, env=env)
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imagemode-bench-embed-", dir="/var/tmp"))
    rows: dict[str, list[float]] = {k: [] for k in ("microshift_start_s", "imagemode_start_s")}
    try:
        tags = build_images(work)
        with Registry() as reg:
            refs = []
            for tag in tags:
                name = "bench/" + tag.split("/")[-1]
                reg.push(f"containers-storage:{tag}", name)
                refs.append(f"{reg.address}/{name}")
            ms, im = work / "microshift", work / "imagemode"
            t0 = time.monotonic()
            microshift_build(refs, ms)
            ms_build = time.monotonic() - t0
            t0 = time.monotonic()
            store.embed([Wanted(qualify(r, "bench"), "bench") for r in refs], im, tls_verify=False)
            im_build = time.monotonic() - t0
        for _ in range(args.rounds):
            for name in ("ms-var", "im-var"):
                shutil.rmtree(work / name, ignore_errors=True)
                (work / name).mkdir()
            copy = microshift_start(refs, ms, work / "ms-var")
            ready = usable(refs, work / "ms-var/storage", None, work / "ms-var")
            rows["microshift_start_s"].append(copy + ready)
            rows["imagemode_start_s"].append(
                usable(refs, work / "im-var/graph", im / store.STORE, work / "im-var")
            )
        disk = {
            "microshift_files_bytes": tree_size(ms / "usr") + tree_size(work / "ms-var/storage"),
            "imagemode_files_bytes": tree_size(im / "usr"),
            "microshift_ostree_bytes": ostree_size(ms / "usr", work) + tree_size(work / "ms-var/storage"),
            "imagemode_ostree_bytes": ostree_size(im / "usr", work),
            "microshift_layer_gzip_bytes": layer_gzip_size(ms / "usr", work),
            "imagemode_layer_gzip_bytes": layer_gzip_size(im / "usr", work),
        }
        med = {k: round(statistics.median(v), 2) for k, v in rows.items()}
        out: dict[str, Any] = {
            "images": refs,
            "build_s": {"microshift": round(ms_build, 1), "imagemode": round(im_build, 1)},
            "start_s": {k: [round(x, 2) for x in v] for k, v in rows.items()},
            "start_median_s": med,
            "disk": disk,
            "ratio_disk_files": round(disk["imagemode_files_bytes"] / disk["microshift_files_bytes"], 3),
            "ratio_disk_ostree": round(disk["imagemode_ostree_bytes"] / disk["microshift_ostree_bytes"], 3),
            "ratio_layer_gzip": round(
                disk["imagemode_layer_gzip_bytes"] / disk["microshift_layer_gzip_bytes"], 3
            ),
            "copied_at_start_bytes": {"microshift": tree_size(work / "ms-var/storage"), "imagemode": 0},
        }
        print(json.dumps(out, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
