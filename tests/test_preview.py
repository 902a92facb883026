"""`upgrade --check`'s preview (imagemode.host.preview) on a real ostree store: the bytes of the layers
the store lacks, and the package changes from the new image's label against the booted commit's dpkg
status. The booted VM test of it is in tests/test_lifecycle.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagemode.chunk import label as chunk_label
from imagemode.host import preview
from imagemode.oci.reference import parse
from imagemode.store import fetch
from imagemode.store.importer import layer_ref
from imagemode.store.ostree import Repo

STATUS = (
    "Package: openssh-server\nStatus: install ok installed\nVersion: 1:9.2p1-2+deb12u9\n\n"
    "Package: jq\nStatus: install ok installed\nVersion: 1.6-2.1+deb12u3\n"
)
D = ["sha256:" + c * 64 for c in "abcd"]


@pytest.fixture
def store(tmp_path: Path) -> tuple[Repo, str]:
    repo = Repo(tmp_path / "repo").ensure()
    tree = tmp_path / "tree/usr/lib/sysimage/dpkg"
    tree.mkdir(parents=True)
    (tree / "status").write_text(STATUS)
    booted = repo.commit(tmp_path / "tree", "booted")
    layer = repo.commit(tmp_path / "tree", "x")
    for diff_id in D[:2]:  # the store has the first two layers
        repo.handle.set_ref_immediate(None, layer_ref(diff_id), layer, None)
    return repo, booted


def remote(label: str | None, layers: int = 4) -> fetch.Remote:
    labels = {chunk_label.KEY: label} if label is not None else {}
    manifest = {"layers": [{"digest": d, "size": 1000 * (i + 1)} for i, d in enumerate(D[:layers])]}
    config = {"config": {"Labels": labels}, "rootfs": {"diff_ids": D[:layers]}}
    ref = parse("registry.example.com/os:2")
    return fetch.Remote(ref=ref, source=ref, digest="sha256:" + "e" * 64, manifest=manifest, config=config)


def label(layers: int = 4, **packages: str) -> str:
    slots = ("own:openssh", "own:jq", "volatile", "imagemode")[:layers]
    return chunk_label.ChunkLabel(
        slots, 16, (), {}, {k.replace("_", "-"): v for k, v in packages.items()}
    ).to_json()


def test_the_preview_names_the_changes_and_the_bytes(store: tuple[Repo, str]) -> None:
    repo, booted = store
    p = preview.preview(
        repo, booted, remote(label(openssh_server="1:9.2p1-2+deb12u10", jq="1.6-2.1+deb12u3"))
    )
    assert (p.download_bytes, p.layers_to_download, p.layers_total) == (3000 + 4000, 2, 4)
    assert p.changes is not None
    assert p.changes.upgraded == (("openssh-server", "1:9.2p1-2+deb12u9", "1:9.2p1-2+deb12u10"),)
    text = "\n".join(p.lines())
    assert "to download: " in text and "in 2 of 4 layers" in text
    assert "openssh-server 1:9.2p1-2+deb12u9 -> 1:9.2p1-2+deb12u10" in text
    assert p.to_dict()["packages"]["upgraded"][0]["to"] == "1:9.2p1-2+deb12u10"
    assert p.status()["downloadBytes"] == 7000


@pytest.mark.parametrize(
    ("text", "layers", "note"),
    [
        (None, 4, "has no package list"),
        ('{"version": 1, "layers": ["own:../x"], "bins": 0, "packages": {}}', 4, "not a component name"),
        (label(3, jq="1"), 4, "names 3 of its 4 layers"),
    ],
)
def test_no_package_list_is_shown_that_may_not_be_the_image_s(
    store: tuple[Repo, str], text: str | None, layers: int, note: str
) -> None:
    repo, booted = store
    p = preview.preview(repo, booted, remote(text, layers))
    assert p.changes is None and note in p.note
    assert p.download_bytes == 7000  # the bytes are known all the same
    assert "packages: not known" in "\n".join(p.lines())
