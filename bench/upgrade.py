"""Benchmark (not a test): `imagemode upgrade` against an ostree-native pull + deploy of the same change.

    .venv/bin/python bench/upgrade.py [--rounds N]

v1 is the hello example; v2 is v1 plus one changed file (one COPY layer). Each round boots two fresh
VMs from copy-on-write overlays of the same v1 disk, one after the other:

- imagemode: `imagemode upgrade` from a docker-registry on 127.0.0.1 (guestfwd 10.0.2.100:5000):
  manifest, the one new layer, import, /etc check, stage, prune;
- ostree: the v2 commit that imagemode imports on the host, served as an archive repo over HTTP on
  127.0.0.1 (guestfwd 10.0.2.101:8000): `ostree pull` + `ostree admin deploy --stage`.

Both are timed inside the guest (bash's `time`), so SSH is not counted. Bytes: what imagemode reports
it fetched, and what the HTTP server sent to `ostree pull`. Prints JSON with the ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from imagemode.oci.reference import parse_local  # noqa: E402
from imagemode.store import importer  # noqa: E402
from imagemode.store.ostree import Repo  # noqa: E402
from imagemode.vm.qemu import VM, free_port, overlay  # noqa: E402
from imagemode.vm.registry import Registry, insecure_conf  # noqa: E402

V1, V2 = "localhost/imagemode/hello:bench-v1", "localhost/imagemode/hello:bench-v2"
SINGLE_BASE = "localhost/imagemode/debian:bench-single"
PROFILED = "python3 -m cProfile -s cumtime /usr/bin/imagemode upgrade 2>&1 | head -60"
REGISTRY, OSTREE_HTTP = "10.0.2.100:5000", "10.0.2.101:8000"


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def guest_time(vm: VM, command: str) -> tuple[float, str]:
    """Seconds that `command` took in the guest, and its output."""
    out = vm.exec(f"TIMEFORMAT=%R; {{ time ( {command} ) 2>&1 ; }} 2>&1", timeout=1800).stdout
    *lines, seconds = out.strip().splitlines()
    return float(seconds), "\n".join(lines)


SENT = [0]  # bytes the HTTP server sent: what `ostree pull` downloaded


def serve(directory: Path, port: int) -> ThreadingHTTPServer:
    class Counting(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, directory=str(directory), **kw)

        def copyfile(self, source: Any, outputfile: Any) -> None:
            data = source.read()
            SENT[0] += len(data)
            outputfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Counting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument(
        "--single-layer",
        action="store_true",
        help="v1 FROM a base built with --single-layer (the baseline before chunking)",
    )
    ap.add_argument(
        "--profile", action="store_true", help="also print where imagemode's upgrade spends its time"
    )
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-upgrade-"))
    try:
        hello = work / "hello"
        shutil.copytree(ROOT / "examples/hello", hello)
        if a.single_layer:
            sh("imagemode", "build", "base", "--single-layer", "-t", SINGLE_BASE)
            cf = hello / "Containerfile"
            cf.write_text(
                cf.read_text().replace("FROM localhost/imagemode/debian:12", f"FROM {SINGLE_BASE}")
            )
        else:
            sh("imagemode", "build", "base")
        sh("imagemode", "build", "-t", V1, str(hello))
        ctx = work / "v2"
        ctx.mkdir()
        (ctx / "changed").write_text(f"changed at {time.time()}\n")
        (ctx / "Containerfile").write_text(f"FROM {V1}\nCOPY changed /usr/share/hello/changed\n")
        sh("imagemode", "build", "-t", V2, str(ctx))
        sh("imagemode", "disk", V1, "--target-imgref", f"{REGISTRY}/imagemode/hello:latest", "-o",
           str(work / "disk"))  # fmt: skip
        # The ostree-native side: v2's commit as imagemode's importer makes it, in an archive repo.
        store = Repo(work / "store").ensure()
        v2 = importer.import_image(store, parse_local(V2), work)
        served = Repo(work / "http/repo").ensure("archive")
        sh("ostree", f"--repo={served.path}", "pull-local", str(store.path), v2.commit)
        sh("ostree", f"--repo={served.path}", "refs", "--create=bench/v2", v2.commit)
        http_port = free_port()
        http = serve(work / "http", http_port)
        rows: dict[str, list[float]] = {"imagemode": [], "ostree": []}
        sizes: dict[str, int] = {}
        with Registry() as registry:
            registry.push(f"containers-storage:{V2}", "imagemode/hello:latest")
            fwds = [("10.0.2.100", 5000, registry.port), ("10.0.2.101", 8000, http_port)]
            if a.profile:  # one boot more: the same upgrade under cProfile, untimed
                disk = overlay(work / "disk/disk.qcow2", work / "profile.qcow2")
                with VM(disk, ssh_key=work / "disk/id_ed25519", guestfwds=fwds) as vm:
                    vm.wait_ssh(900)
                    conf = "/etc/containers/registries.conf.d/50-bench.conf"
                    vm.exec(
                        f"mkdir -p {Path(conf).parent} && printf '%s' '{insecure_conf(REGISTRY)}' > {conf}"
                    )
                    print(vm.exec(PROFILED, timeout=1800).stdout, file=sys.stderr)
                    vm.kill()
            for r in range(a.rounds):
                for side in ("imagemode", "ostree"):
                    disk = overlay(work / "disk/disk.qcow2", work / f"{side}-{r}.qcow2")
                    vm = VM(disk, ssh_key=work / "disk/id_ed25519", guestfwds=fwds)
                    with vm:
                        vm.wait_ssh(900)
                        conf = "/etc/containers/registries.conf.d/50-bench.conf"
                        text = insecure_conf(REGISTRY)
                        vm.exec(f"mkdir -p {Path(conf).parent} && printf '%s' '{text}' > {conf}")
                        if side == "imagemode":
                            secs, out = guest_time(vm, "imagemode upgrade --json")
                            sizes["imagemode"] = json.loads(out[out.index("{") :])["bytes_fetched"]
                        else:
                            vm.exec("ostree remote add --no-gpg-verify --repo=/sysroot/ostree/repo bench"
                                    f" http://{OSTREE_HTTP}/repo")  # fmt: skip
                            secs, out = guest_time(
                                vm, "ostree pull --repo=/sysroot/ostree/repo bench bench/v2 &&"
                                " ostree admin deploy --stage --os=default bench:bench/v2")  # fmt: skip
                            # g_format_size: "569 bytes", "3.2 kB", "1.5 MB"
                            sizes["ostree"] = SENT[0]
                            SENT[0] = 0
                        rows[side].append(secs)
                        vm.kill()
        http.shutdown()
        med = {k: statistics.median(v) for k, v in rows.items()}
        print(json.dumps({
            "runs": rows,
            "median_seconds": med,
            "bytes": sizes,
            "ratio_imagemode_to_ostree": round(med["imagemode"] / med["ostree"], 2),
        }, indent=2))  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
