"""Fetching from a real registry (docker-registry on 127.0.0.1): only the layers the store lacks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from imagemode.oci.reference import parse
from imagemode.store import fetch
from imagemode.store.importer import read_layout
from imagemode.vm.registry import Registry
from tests.conftest import BASE_TAG

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def registry(base_image: dict[str, str]) -> Iterator[Registry]:
    with Registry() as r:
        r.push(f"containers-storage:{BASE_TAG}", "imagemode/debian:12")
        yield r


def test_only_missing_layers_are_downloaded(registry: Registry, tmp_path: Path) -> None:
    # Plain HTTP: a device says so in registries.conf (the VM tests do); the host's /etc stays as it is.
    remote = fetch.inspect(parse(f"docker://{registry.address}/imagemode/debian:12"), tls_verify=False)
    *os_layers, top_layer = remote.manifest["layers"]
    seen: list[tuple[int, int]] = []
    layers: list[tuple[dict[str, int], int]] = []
    # The store has the OS's layers (the chunked base's), not imagemode's on top.
    got = fetch.fetch(remote, lambda d: d != remote.diff_ids[-1], tmp_path,
                      on_bytes=lambda a, b, t: seen.append((a, b)),
                      on_layers=lambda per, in_flight: layers.append((per, in_flight)))  # fmt: skip
    assert got.layers_fetched == 1
    assert got.bytes_fetched == top_layer["size"] + remote.manifest["config"]["size"]
    blob = got.layout / "blobs/sha256"
    # The OS layers (about 220 MB compressed) were never downloaded: each file is a sparse placeholder.
    for layer in os_layers:
        assert (blob / layer["digest"].split(":")[1]).stat().st_blocks == 0
    assert (blob / top_layer["digest"].split(":")[1]).stat().st_size == top_layer["size"]
    assert read_layout(got.layout, "image").digest == remote.digest
    assert seen[-1] == (top_layer["size"], top_layer["size"])
    # skopeo named every blob it wrote: nothing is left in flight, and the layer is whole.
    per, in_flight = layers[-1]
    assert in_flight == 0 and list(per) == [top_layer["digest"]]
    assert per[top_layer["digest"]] >= top_layer["size"]


def test_missing_image_is_named(registry: Registry) -> None:
    with pytest.raises(fetch.FetchError, match="image not found"):
        fetch.inspect(parse(f"docker://{registry.address}/imagemode/absent:1"), tls_verify=False)


def test_an_image_podman_pulled_imports_from_containers_storage(registry: Registry, tmp_path: Path) -> None:
    """What a fleet agent does: `podman pull`, then switch to it in containers-storage. podman keeps the
    registry's manifest (gzip layers) over uncompressed layers, which skopeo cannot copy with the same
    digests; the import matches the copy by its config and records the digest podman knows."""
    import json
    import subprocess

    from imagemode.store import importer
    from imagemode.store.ostree import CommitReader, Repo

    tree = tmp_path / "tree"
    (tree / "usr/share/pulled").mkdir(parents=True)
    (tree / "usr/share/pulled/file").write_text("pulled\n")
    subprocess.run(["tar", "-C", str(tree), "-cf", str(tmp_path / "t.tar"), "."], check=True)
    local, pulled = "localhost/imagemode/pulled:src", f"{registry.address}/imagemode/pulled:1"
    child_local, child = "localhost/imagemode/pulled:child", f"{registry.address}/imagemode/pulled:2"
    subprocess.run(
        ["podman", "import", "-q", str(tmp_path / "t.tar"), local], check=True, capture_output=True
    )
    try:
        registry.push(f"containers-storage:{local}", "imagemode/pulled:1")
        subprocess.run(
            ["podman", "pull", "-q", "--tls-verify=false", pulled], check=True, capture_output=True
        )
        src = parse(pulled, "containers-storage")
        remote = fetch.inspect(src)
        assert remote.repacked and remote.digest == registry.digest("imagemode/pulled:1")
        repo = Repo(tmp_path / "repo").ensure()
        work = tmp_path / "work"
        work.mkdir()
        res = importer.import_image(repo, src, work)
        assert (res.layers_total, res.layers_imported, res.manifest_digest) == (1, 1, remote.digest)
        assert repo.metadata(res.commit, "imagemode.manifest-digest") == remote.digest
        again = importer.import_image(repo, src, work)  # the same image: nothing imported again
        assert (again.commit, again.layers_imported) == (res.commit, 0)
        # A pulled child: its cached layer is a placeholder the copy reuses (named by its diff_id, as
        # containers-storage names it), so only the new layer is read out of storage and compressed.
        ctx = tmp_path / "child"  # the imported tree has no shell to RUN: a COPY makes the layer
        ctx.mkdir()
        (ctx / "child").write_text("child\n")
        (ctx / "Containerfile").write_text(f"FROM {local}\nCOPY child /usr/share/pulled/child\n")
        subprocess.run(
            ["podman", "build", "-q", "-t", child_local, str(ctx)], check=True, capture_output=True
        )
        registry.push(f"containers-storage:{child_local}", "imagemode/pulled:2")
        subprocess.run(
            ["podman", "pull", "-q", "--tls-verify=false", child], check=True, capture_output=True
        )
        child_remote = fetch.inspect(parse(child, "containers-storage"))
        assert child_remote.repacked and child_remote.diff_ids[0] == remote.diff_ids[0]
        got = fetch.fetch(child_remote, lambda d: d == remote.diff_ids[0], work)
        placeholder = got.layout / "blobs/sha256" / remote.diff_ids[0].split(":")[1]
        assert got.layers_fetched == 1 and placeholder.stat().st_blocks == 0
        copied = read_layout(got.layout, "image").manifest["layers"]
        assert copied[0]["digest"] == remote.diff_ids[0] and copied[0]["size"] == placeholder.stat().st_size
        grown = importer.import_image(repo, parse(child, "containers-storage"), work)
        assert (grown.layers_total, grown.layers_imported, grown.manifest_digest) == (
            2,
            1,
            child_remote.digest,
        )
        assert CommitReader(repo, grown.commit).read_bytes("usr/share/pulled/child") == b"child\n"
        # What was built here names its layers uncompressed, and copies with its digests (placeholders
        # for the cached layers and all).
        assert not fetch.inspect(parse(BASE_TAG, "containers-storage")).repacked
        shown = subprocess.run(
            ["podman", "image", "inspect", pulled], capture_output=True, text=True, check=True
        )
        assert (
            f"{registry.address}/imagemode/pulled@{remote.digest}"
            in json.loads(shown.stdout)[0]["RepoDigests"]
        )
    finally:
        subprocess.run(["podman", "rmi", "-f", child, child_local, local, pulled], capture_output=True)
