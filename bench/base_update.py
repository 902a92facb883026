"""Benchmark (not a test): what one Debian security update in the base image costs a device, four ways.

    .venv/bin/python bench/base_update.py [--updates openssh,openssl,...] [--json FILE]

For each source package (openssh, openssl, systemd, python3.11, perl by default), v1 is the base image
with that package's binaries at the older version the Debian 12 archive still carries (`apt-cache
madison`), and v2 the base of today; the same recipe, the same epoch. Side by side in one run:

- **ostree**: the importer's v1 and v2 commits, served from an ostree archive repo over HTTP on
  127.0.0.1; the bytes `ostree pull` downloads for v2 into a repo that has v1;
- **single**: both built with `--single-layer` (the OS as one layer, as before chunking);
- **chunked**: v1 chunked, v2 built with `--prior` v1 and `--rebase` (changed components whole);
- **patched**: the same, with patch layers allowed.

The images are pushed to a docker-registry on 127.0.0.1 (gzip at skopeo's default level), and the real
importer takes v1, then v2, into a fresh repo: the bytes it downloads for v2 and the seconds its
import takes. It also checks that the three v2 images compose into the same ostree tree, and builds
today's base again with a new epoch (`--source-date-epoch`, one day later) to show which layers change.
Prints a table and JSON.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from upgrade import SENT, serve  # noqa: E402  (bench/upgrade.py: the counting HTTP server)

from imagemode.build import apt, base  # noqa: E402
from imagemode.build.spec import BaseSpec, Lock  # noqa: E402
from imagemode.chunk.packages import compare_versions  # noqa: E402
from imagemode.oci import storage  # noqa: E402
from imagemode.oci.reference import local_tag, parse  # noqa: E402
from imagemode.store import fetch, importer  # noqa: E402
from imagemode.store.ostree import Repo  # noqa: E402
from imagemode.vm.qemu import free_port  # noqa: E402
from imagemode.vm.registry import Registry  # noqa: E402

UPDATES = ("openssh", "openssl", "systemd", "python3.11", "perl")
TAG = "localhost/imagemode/bench-base"
VARIANTS = ("single", "chunked", "patched")


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


SOURCE = [ROOT]  # where the builds take imagemode from: a copy made at the start (snapshot())


def snapshot(work: Path) -> None:
    """The builds run imagemode from a copy of the source: an edit during a run of an hour must not
    give v1 and v2 two different imagemode layers."""
    shutil.copytree(ROOT / "imagemode", work / "src/imagemode", ignore=shutil.ignore_patterns("__pycache__"))
    SOURCE[0] = work / "src"


def imagemode(*args: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(SOURCE[0])}
    p = subprocess.run([sys.executable, "-m", "imagemode", *args, "--json"], capture_output=True, text=True,
                       cwd=SOURCE[0], env=env)  # fmt: skip
    if p.returncode != 0:
        raise SystemExit(f"imagemode {' '.join(args)} failed:\n{p.stderr}")
    out: dict[str, Any] = json.loads(p.stdout)
    return out


# ---- the two locks of an update ---------------------------------------------------------------------


def apt_state(spec: BaseSpec) -> apt.AptState:
    state = apt.AptState(spec, base._apt_dir(base.BaseOptions(spec, local_tag(f"{TAG}:x"))))
    state.update()
    return state


def sources(state: apt.AptState, lock: Lock) -> dict[str, str]:
    """binary package -> its source package, as apt knows the locked versions."""
    out, name = {}, ""
    for line in state._apt("apt-cache", "show", "--no-all-versions", *lock.pins()).splitlines():
        if line.startswith("Package: "):
            name = line[9:].strip()
            out[name] = name
        elif line.startswith("Source: "):
            out[name] = line[8:].strip().split(" ", 1)[0]
    return out


def older_lock(state: apt.AptState, lock: Lock, source: str, owners: dict[str, str]) -> tuple[Lock, str]:
    """`lock` with the binaries of `source` at the newest older version the archive has for all of them."""
    binaries = [p for p in lock.packages if owners.get(p.name) == source]
    if not binaries:
        raise SystemExit(f"no package of the base comes from {source}")
    common: set[str] | None = None
    for p in binaries:
        listed = state._apt("apt-cache", "madison", p.name)
        versions = {line.split("|")[1].strip() for line in listed.splitlines() if "|" in line}
        older = {v for v in versions if compare_versions(v, p.version) < 0}
        common = older if common is None else common & older
    if not common:
        raise SystemExit(f"the archive has no older version of every binary of {source}")
    pick = max(common, key=functools.cmp_to_key(compare_versions))
    names = {p.name for p in binaries}
    pkgs = tuple(replace(p, version=pick) if p.name in names else p for p in lock.packages)
    return replace(lock, packages=pkgs), f"{binaries[0].version} from {pick}"


# ---- what a device downloads ------------------------------------------------------------------------


def push(registry: Registry, tag: str, name: str) -> str:
    # skopeo's default gzip level, as a registry fed by a build pipeline serves it
    storage.copy(f"containers-storage:{tag}", f"docker://{registry.address}/{name}", dest_tls_verify=False)
    return f"{registry.address}/{name}"


def import_pair(work: Path, v1: str, v2: str) -> dict[str, Any]:
    """v1, then v2, from the registry into a fresh repo with the real importer."""
    repo = Repo(work / "repo").ensure()
    out: dict[str, Any] = {}
    for which, ref in (("v1", v1), ("v2", v2)):
        src = parse(ref)
        remote = fetch.inspect(src, tls_verify=False)
        t0 = time.monotonic()
        res = importer.import_image(repo, src, work, remote=remote)
        out[which] = {"seconds": round(time.monotonic() - t0, 1), "bytes": res.bytes_fetched,
                      "layers": res.layers_total, "layers_imported": res.layers_imported,
                      "commit": res.commit, "diff_ids": list(remote.diff_ids)}  # fmt: skip
    _, root, _ = repo.handle.read_commit(out["v2"]["commit"], None)
    out["tree"] = f"{root.tree_get_contents_checksum()}/{root.tree_get_metadata_checksum()}"
    out["layers_changed"] = len(set(out["v2"]["diff_ids"]) - set(out["v1"]["diff_ids"]))
    out["repo"] = repo
    return out


def ostree_native(work: Path, store: Repo, v1: str, v2: str) -> int:
    """Bytes `ostree pull` downloads for v2 into a repo that has v1, from an archive repo over HTTP."""
    served = Repo(work / "http/repo").ensure("archive")
    for ref, commit in (("bench/v1", v1), ("bench/v2", v2)):
        sh("ostree", f"--repo={served.path}", "pull-local", str(store.path), commit)
        sh("ostree", f"--repo={served.path}", "refs", f"--create={ref}", commit)
    port = free_port()
    http = serve(work / "http", port)
    try:
        client = Repo(work / "client").ensure("bare")
        sh(
            "ostree",
            f"--repo={client.path}",
            "remote",
            "add",
            "--no-gpg-verify",
            "bench",
            f"http://127.0.0.1:{port}/repo",
        )
        sh("ostree", f"--repo={client.path}", "pull", "bench", "bench/v1")
        SENT[0] = 0
        sh("ostree", f"--repo={client.path}", "pull", "bench", "bench/v2")
        return SENT[0]
    finally:
        http.shutdown()


def layer_slots(tag: str) -> list[tuple[str, str]]:
    """(slot, diff_id) of each layer of a local image: its chunk label names the slots."""
    from imagemode.chunk import label as chunk_label

    cfg = json.loads(storage.inspect_raw(local_tag(tag), config=True))
    lab = chunk_label.of_config(cfg)
    ids = cfg["rootfs"]["diff_ids"]
    names = list(lab.layers) if lab else []
    return [(names[i] if i < len(names) else "top", d) for i, d in enumerate(ids)]


# ---- the run ----------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--updates", default=",".join(UPDATES), help="source packages, comma-separated")
    ap.add_argument("--json", metavar="FILE", help="also write the result here")
    ap.add_argument("--keep", action="store_true", help="keep the bench images in containers-storage")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-base-update-", dir="/var/tmp"))
    snapshot(work)
    spec = BaseSpec()
    results: dict[str, Any] = {"updates": {}}
    made: list[str] = []
    try:
        state = apt_state(spec)
        lock = base.resolve(base.BaseOptions(spec, local_tag(f"{TAG}:x")))
        owners = sources(state, lock)
        (work / "v2.lock.json").write_text(lock.to_json())
        say(f"today's base: {len(lock.packages)} packages, epoch {lock.source_date_epoch}")
        v2_single = f"{TAG}:v2-single"
        imagemode("build", "base", "--lock", str(work / "v2.lock.json"), "--single-layer", "-t", v2_single)
        made.append(v2_single)
        with Registry() as registry:
            push(registry, v2_single, "bench/single:v2")
            for source in a.updates.split(","):
                say(f"{source}: building v1 and v2")
                v1_lock, versions = older_lock(state, lock, source, owners)
                lf = work / f"{source}.lock.json"
                lf.write_text(v1_lock.to_json())
                tags = {
                    "v1-single": f"{TAG}:{source}-v1-single",
                    "v1": f"{TAG}:{source}-v1",
                    "v2-chunked": f"{TAG}:{source}-v2-chunked",
                    "v2-patched": f"{TAG}:{source}-v2-patched",
                }
                for t in tags.values():
                    storage.untag(t)  # no tag may name an earlier run's image: it would be a prior
                made += tags.values()
                imagemode("build", "base", "--lock", str(lf), "--single-layer", "-t", tags["v1-single"])
                imagemode("build", "base", "--lock", str(lf), "-t", tags["v1"])
                lock2 = str(work / "v2.lock.json")
                imagemode(
                    "build",
                    "base",
                    "--lock",
                    lock2,
                    "--prior",
                    tags["v1"],
                    "--rebase",
                    "-t",
                    tags["v2-chunked"],
                )
                patched = imagemode(
                    "build", "base", "--lock", lock2, "--prior", tags["v1"], "-t", tags["v2-patched"]
                )
                say(f"{source}: pushing")
                refs = {
                    "single": (push(registry, tags["v1-single"], f"bench/{source}-single:v1"),
                               f"{registry.address}/bench/single:v2"),
                    "chunked": (push(registry, tags["v1"], f"bench/{source}:v1"),
                                push(registry, tags["v2-chunked"], f"bench/{source}:v2-chunked")),
                    "patched": (f"{registry.address}/bench/{source}:v1",
                                push(registry, tags["v2-patched"], f"bench/{source}:v2-patched")),
                }  # fmt: skip
                row: dict[str, Any] = {"versions": versions, "patches": patched["patches"]}
                trees = set()
                for variant in VARIANTS:
                    say(f"{source}: importing {variant} v1 then v2")
                    d = work / source / variant
                    d.mkdir(parents=True)
                    got = import_pair(d, *refs[variant])
                    trees.add(got["tree"])
                    row[variant] = {
                        "bytes": got["v2"]["bytes"], "import_seconds": got["v2"]["seconds"],
                        "first_install_seconds": got["v1"]["seconds"], "layers": got["v2"]["layers"],
                        "layers_changed": got["layers_changed"],
                    }  # fmt: skip
                    if variant == "single":
                        say(f"{source}: ostree pull of the same two commits")
                        row["ostree"] = {"bytes": ostree_native(d, got["repo"], got["v1"]["commit"],
                                                                got["v2"]["commit"])}  # fmt: skip
                    shutil.rmtree(d, ignore_errors=True)
                row["same_tree"] = len(trees) == 1
                native = row["ostree"]["bytes"]
                row["ratio_chunked_to_ostree"] = round(row["chunked"]["bytes"] / native, 2)
                row["ratio_patched_to_ostree"] = round(row["patched"]["bytes"] / native, 2)
                row["single_over_chunked"] = round(row["single"]["bytes"] / row["chunked"]["bytes"], 1)
                if any(s.startswith("patch:") for s, _ in layer_slots(tags["v2-chunked"])):
                    raise SystemExit(f"{source}: the --rebase build has a patch layer")
                had = {d for _, d in layer_slots(tags["v1"])}
                for variant in ("chunked", "patched"):
                    row[variant]["changed_slots"] = [
                        s for s, d in layer_slots(tags[f"v2-{variant}"]) if d not in had
                    ]
                results["updates"][source] = row
                say(f"{source}: {json.dumps({k: v for k, v in row.items() if k.startswith('ratio')})}")
                if a.json:
                    Path(a.json).write_text(json.dumps(results, indent=1))
        # The same packages with a new epoch: which layers change.
        say("today's base with an epoch one day later")
        fresh, later = f"{TAG}:epoch-a", f"{TAG}:epoch-b"
        for t in (fresh, later):
            storage.untag(t)
        made += [fresh, later]
        imagemode("build", "base", "--lock", str(work / "v2.lock.json"), "-t", fresh)
        later_epoch = str(lock.source_date_epoch + 86400)
        imagemode("build", "base", "--source-date-epoch", later_epoch, "--prior", fresh, "-t", later)
        a_ids = {d for _, d in layer_slots(fresh)}
        slots = layer_slots(later)
        results["new_epoch"] = {"layers": len(slots), "changed": [s for s, d in slots if d not in a_ids]}
    finally:
        if not a.keep:
            for t in made:
                storage.untag(t)
        shutil.rmtree(work, ignore_errors=True)
    print(table(results))
    text = json.dumps(results, indent=1)
    print(text)
    if a.json:
        Path(a.json).write_text(text)


def table(results: dict[str, Any]) -> str:
    mb = 1e6
    lines = ["| update | ostree | single | chunked | patched | chunked/ostree | patched/ostree |"
             " single/chunked | layers (changed) | import s (single / chunked) | same tree |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for name, r in results["updates"].items():
        lines.append(
            f"| {name} ({r['versions']}) | {r['ostree']['bytes'] / mb:.2f} MB"
            f" | {r['single']['bytes'] / mb:.1f} MB"
            f" | {r['chunked']['bytes'] / mb:.2f} MB | {r['patched']['bytes'] / mb:.2f} MB"
            f" | {r['ratio_chunked_to_ostree']} | {r['ratio_patched_to_ostree']}"
            f" | {r['single_over_chunked']}"
            f" | {r['chunked']['layers']} ({r['chunked']['layers_changed']})"
            f" | {r['single']['import_seconds']} / {r['chunked']['import_seconds']} | {r['same_tree']} |"
        )
    if "new_epoch" in results:
        e = results["new_epoch"]
        lines.append(
            f"\nsame lock, new epoch: {len(e['changed'])} of {e['layers']} layers changed: {e['changed']}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
