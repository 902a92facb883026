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
    os_layer, top_layer = remote.manifest["layers"]
    seen: list[tuple[int, int]] = []
    got = fetch.fetch(
        remote, lambda d: d == remote.diff_ids[0], tmp_path, on_bytes=lambda a, b, t: seen.append((a, b))
    )
    assert got.layers_fetched == 1
    assert got.bytes_fetched == top_layer["size"] + remote.manifest["config"]["size"]
    blob = got.layout / "blobs/sha256"
    # The OS layer (about 220 MB compressed) was never downloaded: its file is a sparse placeholder.
    assert (blob / os_layer["digest"].split(":")[1]).stat().st_blocks == 0
    assert (blob / top_layer["digest"].split(":")[1]).stat().st_size == top_layer["size"]
    assert read_layout(got.layout, "image").digest == remote.digest
    assert seen[-1] == (top_layer["size"], top_layer["size"])


def test_missing_image_is_named(registry: Registry) -> None:
    with pytest.raises(fetch.FetchError, match="image not found"):
        fetch.inspect(parse(f"docker://{registry.address}/imagemode/absent:1"), tls_verify=False)
