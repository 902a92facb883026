"""The chunked base on the real thing (docs/chunking.md): the base image of the session, built with
mmdebstrap, its label, its tree against the single-layer build of the same lock, one source package
changed, rechunk of a derived image, and a derived image of ten RUN steps under Debian 12's podman."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from imagemode.chunk import label as chunk_label
from imagemode.chunk import plan as chunk_plan
from imagemode.chunk.packages import compare_versions
from imagemode.oci.reference import parse_local
from imagemode.store import importer
from imagemode.store.ostree import Repo
from tests.conftest import BASE_TAG, HELLO_V1, ROOT, imagemode, podman

pytestmark = pytest.mark.host

SINGLE = "localhost/imagemode/debian:single-layer-test"
JQ_OLD = "localhost/imagemode/debian:jq-older-test"
HELLO_CHUNKED = "localhost/imagemode/hello:rechunk-test"


def config(tag: str) -> dict[str, Any]:
    import subprocess

    out = subprocess.run(["skopeo", "inspect", "--config", f"containers-storage:{tag}"], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    cfg: dict[str, Any] = json.loads(out)
    return cfg


def slots(tag: str) -> list[tuple[str, str]]:
    cfg = config(tag)
    lab = chunk_label.of_config(cfg)
    assert lab is not None, f"{tag} has no chunk label"
    ids = cfg["rootfs"]["diff_ids"]
    assert len(lab.layers) == len(ids), "the label describes every layer"
    return list(zip(lab.layers, ids, strict=True))


def tree(tmp_path: Path, tag: str) -> str:
    """The ostree tree the importer makes of a local image."""
    repo = Repo(tmp_path / f"repo-{tag.rsplit(':', 1)[-1]}").ensure()
    res = importer.import_image(repo, parse_local(tag), tmp_path)
    _, root, _ = repo.handle.read_commit(res.commit, None)
    shutil.rmtree(repo.path, ignore_errors=True)
    return f"{root.tree_get_contents_checksum()}/{root.tree_get_metadata_checksum()}"


def test_the_base_is_chunked_and_labelled(base_image: dict[str, Any]) -> None:
    cfg = config(BASE_TAG)
    lab = chunk_label.of_config(cfg)
    assert lab is not None
    pairs = slots(BASE_TAG)
    assert len(pairs) <= chunk_plan.MAX_LAYERS and base_image["layers"] == len(pairs)
    names = [s for s, _ in pairs]
    assert names[-3:] == ["initramfs", "volatile", "imagemode"]
    assert {"own:linux-signed-amd64", "own:systemd", "own:perl", "own:python3.11"} <= set(names)
    mnt = Path(podman("image", "mount", BASE_TAG).stdout.strip())
    try:
        lock = json.loads((mnt / "usr/lib/imagemode/packages.lock.json").read_text())
    finally:
        podman("image", "unmount", BASE_TAG, check=False)
    assert lab.packages == {p["name"]: p["version"] for p in lock["packages"]}
    assert len(lab.to_json()) < 200_000  # with the fingerprints of its patchable layers


def test_chunked_and_single_layer_give_the_same_tree(base_image: dict[str, Any], tmp_path: Path) -> None:
    """Same lock, both ways: the same ostree tree, so no file was lost, duplicated or given other
    metadata by the chunking."""
    podman("rmi", "-f", SINGLE, check=False)
    one = json.loads(imagemode("build", "base", "--single-layer", "-t", SINGLE, "--json").stdout)
    try:
        assert one["layers"] == 2 and one["os_layer"] == base_image["os_layer"]
        assert tree(tmp_path, SINGLE) == tree(tmp_path, BASE_TAG)
    finally:
        podman("rmi", "-f", SINGLE, check=False)


def _older(lock: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The lock with `names` at the version before theirs that the archive still has."""
    import subprocess

    apt = next(Path("/var/cache/imagemode/apt").iterdir())
    env = {"APT_CONFIG": str(apt / "apt.conf")}
    out = dict(lock)
    out["packages"] = []
    for p in lock["packages"]:
        if p["name"] in names:
            listed = subprocess.run(["apt-cache", "madison", p["name"]], capture_output=True, text=True,
                                    env=env, check=True).stdout  # fmt: skip
            versions = [ln.split("|")[1].strip() for ln in listed.splitlines() if "|" in ln]
            older = [v for v in versions if compare_versions(v, p["version"]) < 0]
            assert older, f"the mirror has no older {p['name']} than {p['version']}"
            p = {**p, "version": older[0]}
        out["packages"].append(p)
    return out


def test_one_source_package_changed_changes_its_slot_and_the_volatile_layer(
    base_image: dict[str, Any], tmp_path: Path
) -> None:
    """jq (binaries jq and libjq1) one version back, slots kept from the base: only jq's layer and the
    volatile one differ (jq is not in the initramfs), and rebuilding gives the same manifest."""
    mnt = Path(podman("image", "mount", BASE_TAG).stdout.strip())
    try:
        lock = json.loads((mnt / "usr/lib/imagemode/packages.lock.json").read_text())
    finally:
        podman("image", "unmount", BASE_TAG, check=False)
    lf = tmp_path / "lock.json"
    lf.write_text(json.dumps(_older(lock, ("jq", "libjq1"))))
    podman("rmi", "-f", JQ_OLD, check=False)
    args = ("build", "base", "--lock", str(lf), "--prior", BASE_TAG, "-t", JQ_OLD, "--json")
    first = json.loads(imagemode(*args).stdout)
    try:
        before = dict(slots(BASE_TAG))
        changed = sorted(s for s, d in slots(JQ_OLD) if before.get(s) != d)
        jq = "own:jq" if "own:jq" in before else f"bin:{chunk_plan.bin_of('jq')}"
        assert changed == sorted([jq, "volatile"]), changed
        assert first["prior"] == base_image["digest"]
        again = json.loads(imagemode(*args[:-1], "--json").stdout)  # same inputs, its prior now itself
        assert again["digest"] == first["digest"]
    finally:
        podman("rmi", "-f", JQ_OLD, check=False)


def test_rechunk_keeps_the_base_s_layers_and_the_tree(hello_images: dict[str, str], tmp_path: Path) -> None:
    podman("rmi", "-f", HELLO_CHUNKED, check=False)
    out = json.loads(imagemode("rechunk", HELLO_V1, "-t", HELLO_CHUNKED, "--json").stdout)
    try:
        pairs = slots(HELLO_CHUNKED)
        assert out["layers"] == len(pairs) <= chunk_plan.MAX_LAYERS
        base = {d for _, d in slots(BASE_TAG)}
        new = [s for s, d in pairs if d not in base]
        # hello adds tree, a motd and its own files; apt-get update recreates apt's partial directory
        assert len(new) <= 8, new
        assert "imagemode" in [s for s, _ in pairs]
        lab = chunk_label.of_config(config(HELLO_CHUNKED))
        assert lab is not None and lab.packages["tree"]
        assert tree(tmp_path, HELLO_CHUNKED) == tree(tmp_path, HELLO_V1)
        again = json.loads(imagemode("rechunk", HELLO_V1, "-t", HELLO_CHUNKED, "--json").stdout)
        assert again["digest"] == out["digest"]  # its prior is the tag itself: the same image
    finally:
        podman("rmi", "-f", HELLO_CHUNKED, check=False)


def test_ten_run_steps_on_the_chunked_base_build(base_image: dict[str, Any], tmp_path: Path) -> None:
    """Debian 12's podman (containers/storage 1.43) caps an image at 128 layers: the base leaves room."""
    runs = "".join(f"RUN echo {i} > /usr/share/step-{i}\n" for i in range(10))
    (tmp_path / "Containerfile").write_text(f"FROM {BASE_TAG}\n{runs}")
    tag = "localhost/imagemode/ten-runs:test"
    try:
        imagemode("build", "-t", tag, str(tmp_path))
        info = json.loads(podman("image", "inspect", tag).stdout)[0]
        assert len(info["RootFS"]["Layers"]) == base_image["layers"] + 10
    finally:
        podman("rmi", "-f", tag, check=False)


def test_rechunk_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    p = imagemode("rechunk", "localhost/imagemode/none-such:1", "-t", "localhost/x:1", check=False)
    assert p.returncode == 1 and p.stderr.count("\n") == 1, p.stderr
    p = imagemode("rechunk", HELLO_V1, "-t", "localhost/x:1", "--prior", "localhost/imagemode/none-such:1",
                  check=False)  # fmt: skip
    assert p.returncode == 1 and "--prior" in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert podman("image", "exists", "localhost/x:1", check=False).returncode == 1
    assert ROOT.exists()


def test_a_prior_it_cannot_read_is_refused_before_anything_is_built(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    p = imagemode("build", "base", "--prior", "localhost/imagemode/none-such:1", "-t", "localhost/x:1",
                  "--cache-dir", str(cache), check=False)  # fmt: skip
    assert p.returncode == 1 and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith(
        "imagemode: error: --prior containers-storage:localhost/imagemode/none-such:1"
    )
    assert not cache.exists(), "apt or mmdebstrap ran before the prior was read"
    assert podman("image", "exists", "localhost/x:1", check=False).returncode == 1
