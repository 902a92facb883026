"""The importer on small synthetic images, with the real ostree: whiteouts, metadata, layer reuse."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from imagemode.oci.layout import Layout, write_layer
from imagemode.store import compose, importer, meta
from imagemode.store.ostree import Repo

EPOCH = 1_700_000_000


def layer_tree(root: Path, files: dict[str, str], modes: dict[str, int] | None = None) -> Path:
    root.mkdir(parents=True)
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if content.endswith("/"):
            p.mkdir(exist_ok=True)
        else:
            p.write_text(content)
    for rel, mode in (modes or {}).items():
        os.chmod(root / rel, mode)
    return root


def make_image(tmp: Path, name: str, trees: list[Path]) -> importer.OciImage:
    layout = Layout(tmp / f"{name}-oci")
    pairs = []
    for i, t in enumerate(trees):
        blob = write_layer(t, tmp / f"{name}-{i}.tar", EPOCH)
        layout.add_file(tmp / f"{name}-{i}.tar", blob)
        pairs.append((blob, blob.digest))
    config = {
        "created": "2023-11-14T22:13:20Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {"containers.bootc": "1", "org.opencontainers.image.version": name}},
    }
    layout.write_image(pairs, config, "latest")
    return importer.read_layout(layout.path)


@pytest.fixture
def base_layer(tmp_path: Path) -> Path:
    t = layer_tree(
        tmp_path / "l0",
        {
            "usr/bin/tool": "#!/bin/sh\n",
            "usr/bin/gone": "deleted by the next layer\n",
            "usr/share/data/old-1": "hidden by an opaque dir\n",
            "usr/share/data/old-2": "hidden too\n",
            "etc/app.conf": "a=1\n",
            "var/lib/app/state": "first boot content\n",
        },
        modes={"usr/bin/tool": 0o4755},
    )
    os.setxattr(t / "usr/bin/tool", "user.test", b"v1")
    return t


def whiteout_layer(tmp_path: Path, name: str) -> Path:
    t = layer_tree(
        tmp_path / name,
        {"usr/share/data/new": f"{name}\n", "usr/bin/.wh.gone": "", "usr/share/data/.wh..wh..opq": ""},
    )
    return t


def test_import_applies_whiteouts_and_layout(tmp_path: Path, base_layer: Path) -> None:
    repo = Repo(tmp_path / "repo").ensure()
    work = tmp_path / "work"
    work.mkdir()
    img = make_image(tmp_path, "v1", [base_layer, whiteout_layer(tmp_path, "l1")])
    res = importer.import_oci(repo, img, "oci:/x:v1", work)
    assert (res.layers_total, res.layers_imported) == (2, 2)
    out = tmp_path / "co"
    subprocess.run(["ostree", f"--repo={repo.path}", "checkout", res.commit, str(out)], check=True)
    assert (out / "usr/bin/tool").stat().st_mode & 0o7777 == 0o4755
    assert os.getxattr(out / "usr/bin/tool", "user.test") == b"v1"
    assert not (out / "usr/bin/gone").exists()
    assert sorted(p.name for p in (out / "usr/share/data").iterdir()) == ["new"]
    assert not list((out / "usr/bin").glob(".wh.*"))
    assert (out / "usr/etc/app.conf").read_text() == "a=1\n" and not (out / "etc").exists()
    assert list((out / "var").iterdir()) == []
    assert (out / "usr/share/factory/var/lib/app/state").exists()
    conf = (out / compose.VAR_TMPFILES).read_text()
    assert "C /var/lib/app - - - - /usr/share/factory/var/lib/app" in conf
    assert (out.stat().st_mode & 0o777) == 0o755
    # the commit carries what status needs
    assert repo.metadata(res.commit, meta.DIGEST) == img.digest
    assert repo.metadata(res.commit, meta.IMAGE) == "oci:/x:v1"
    assert repo.metadata(res.commit, meta.VERSION) == "v1"
    cfg = json.loads(repo.metadata(res.commit, meta.CONFIG) or "{}")
    assert cfg["config"]["Labels"]["containers.bootc"] == "1"


def test_shared_layers_are_imported_once(tmp_path: Path, base_layer: Path) -> None:
    repo = Repo(tmp_path / "repo").ensure()
    work = tmp_path / "work"
    work.mkdir()
    v1 = make_image(tmp_path, "v1", [base_layer, whiteout_layer(tmp_path, "l1")])
    v2 = make_image(tmp_path, "v2", [base_layer, whiteout_layer(tmp_path, "l2")])
    assert importer.import_oci(repo, v1, "v1", work).layers_imported == 2
    again = importer.import_oci(repo, v2, "v2", work)
    assert (again.layers_total, again.layers_imported) == (2, 1)
    assert len(repo.refs("imagemode/layer")) == 3


def test_streamed_layer_equals_an_ostree_commit_of_the_same_tree(tmp_path: Path, base_layer: Path) -> None:
    """Owners, modes, setuid bits, xattrs, symlinks and hard links: the layer streamed into libostree
    is the very tree `ostree commit --tree=dir=` makes of the directory it came from."""
    from imagemode.store import layers

    os.link(base_layer / "usr/bin/tool", base_layer / "usr/bin/tool-again")
    (base_layer / "usr/bin/sh").symlink_to("tool")
    os.chown(base_layer / "etc/app.conf", 1000, 100)
    base_layer.chmod(0o755)
    blob = write_layer(base_layer, tmp_path / "l.tar", EPOCH)
    repo = Repo(tmp_path / "repo").ensure()
    layers.commit_layer(repo, tmp_path / "l.tar", "streamed", digest=blob.digest, diff_id=blob.digest)
    direct = repo.commit(base_layer, "direct", timestamp=0)

    def contents(rev: str) -> str:
        _, root, _ = repo.handle.read_commit(rev, None)
        return str(root.tree_get_contents_checksum())

    assert contents(repo.resolve("streamed") or "") == contents(direct)


def test_ref_for() -> None:
    assert (
        importer.ref_for("docker://127.0.0.1:5000/os:v2") == "imagemode/image/docker_/127.0.0.1_5000/os_v2"
    )


def test_one_pass_merge_is_the_layer_by_layer_compose(tmp_path: Path) -> None:
    """Layers without whiteouts are merged in one pass (compose.Tree.merge): the tree must be the one
    that applying them one by one gives, type changes included: a file over a directory, a directory
    over a file, a link over a directory, a directory that two layers share with other metadata."""
    from imagemode.store import layers

    def layer(n: int, build: dict[str, str | None]) -> str:
        root = tmp_path / f"l{n}"
        for rel, content in build.items():
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            if content is None:
                p.mkdir(exist_ok=True)
            elif content.startswith("->"):
                p.symlink_to(content[2:])
            else:
                p.write_text(content)
        (root / "shared").chmod(0o700 + n)  # each layer says other metadata for /shared
        blob = write_layer(root, tmp_path / f"l{n}.tar", 1_700_000_000)
        layers.commit_layer(repo, tmp_path / f"l{n}.tar", f"l/{n}", digest=blob.digest, diff_id=blob.digest)
        return f"l/{n}"

    repo = Repo(tmp_path / "repo").ensure()
    revs = [
        layer(0, {"shared/a": "a0", "dir-then-file/x": "x", "file-then-dir": "f", "dir-then-link/y": "y",
                  "only0/deep/z": "z", "kept/k": "k"}),
        layer(1, {"shared/b": "b1", "dir-then-file": "now a file", "file-then-dir/inside": "i",
                  "dir-then-link": "->only0"}),
        layer(2, {"shared/a": "a2", "kept/k2": "k2", "file-then-dir/more": "m", "only2": None}),
    ]  # fmt: skip

    def composed(one_by_one: bool) -> str:
        with compose.transaction(repo) as tree:
            if one_by_one:
                for r in revs:
                    tree.add_layer(r, layers.Whiteouts())
            else:
                tree.add_layers([(r, layers.Whiteouts()) for r in revs])
            _, root = repo.handle.write_mtree(tree.root, None)
            return str(root.tree_get_contents_checksum()) + str(root.tree_get_metadata_checksum())

    merged = composed(one_by_one=False)
    assert len(merged) == 128 and merged == composed(one_by_one=True)


def test_the_merged_run_is_kept_and_taken_by_the_next_image(
    tmp_path: Path, base_layer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Images on one base: an image whose first layers (no whiteouts) are another's takes their merge
    from imagemode/merged/KEY instead of merging again, and composes the tree a store without that
    ref composes."""
    second = layer_tree(tmp_path / "second", {"etc/second": "2"})
    extra = layer_tree(tmp_path / "extra", {"usr/share/only-in-b": "b"})
    a = make_image(tmp_path, "a", [base_layer, second])
    repo = Repo(tmp_path / "repo").ensure()
    first = importer.import_oci(repo, a, "a", tmp_path)
    key = repo.metadata(first.commit, meta.MERGED)
    assert key and repo.resolve(compose.MERGED_REF + key)

    def no_merge(*args: object) -> None:
        raise AssertionError("merged again")

    with monkeypatch.context() as m:
        m.setattr(compose.Tree, "merge", no_merge)
        again = importer.import_oci(repo, make_image(tmp_path, "a2", [base_layer, second]), "a2", tmp_path)
    assert repo.metadata(again.commit, meta.MERGED) == key

    def tree(r: Repo, commit: str) -> str:
        return str(r.handle.read_commit(commit, None)[1].tree_get_contents_checksum())

    assert tree(repo, again.commit) == tree(repo, first.commit)
    b = make_image(tmp_path, "b", [base_layer, second, extra])  # another run: merged anew
    got = importer.import_oci(repo, b, "b", tmp_path)
    assert repo.metadata(got.commit, meta.MERGED) not in (None, key)
    fresh = Repo(tmp_path / "fresh").ensure()
    assert tree(repo, got.commit) == tree(fresh, importer.import_oci(fresh, b, "b", tmp_path).commit)
