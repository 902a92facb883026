"""Bound images: which references an image binds, and which recorded ones prune collects. The pulls
and the refusal to stage are proven in a VM (tests/test_edge_vm.py); these are the rules, with fakes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from imagemode import confined
from imagemode.embed import bound as bound_images
from imagemode.host import bound
from imagemode.host import sysroot as sysroot_mod
from imagemode.store.ostree import Repo


def tree(root: Path, images: dict[str, str], relative: bool = False) -> Path:
    """A deployment tree binding `images` (file name: reference) through quadlet .image files."""
    q = root / "usr/share/containers/systemd"
    q.mkdir(parents=True, exist_ok=True)
    d = root / bound_images.BOUND_D
    d.mkdir(parents=True, exist_ok=True)
    for name, ref in images.items():
        (q / name).write_text(f"[Image]\nImage={ref}\n")
        target = (
            f"../../../share/containers/systemd/{name}"
            if relative
            else f"/usr/share/containers/systemd/{name}"
        )
        (d / name).symlink_to(target)
    return root


def test_bound_images_are_read_through_absolute_and_relative_links(tmp_path: Path) -> None:
    root = tree(tmp_path / "a", {"tool.image": "registry.example.com/edge/tool:1"})
    tree(root, {"db.image": "quay.io/x/db@sha256:" + "a" * 64}, relative=True)
    (root / bound_images.BOUND_D / "README").write_text("not a quadlet: ignored\n")
    found = bound_images.in_tree(confined.Tree(root))
    db = "quay.io/x/db@sha256:" + "a" * 64
    assert [str(w.ref) for w in found] == [db, "registry.example.com/edge/tool:1"]
    assert [w.source for w in found] == [
        f"/{bound_images.BOUND_D}/db.image",
        f"/{bound_images.BOUND_D}/tool.image",
    ]
    (tmp_path / "empty").mkdir()
    assert bound_images.in_tree(confined.Tree(tmp_path / "empty")) == []


def test_bound_images_are_read_from_a_commit(tmp_path: Path) -> None:
    """As `upgrade` reads them: from the imported commit, before anything is checked out."""
    tree(tmp_path / "tree", {"tool.image": "registry.example.com/edge/tool:1"})
    tree(tmp_path / "tree", {"db.image": "registry.example.com/edge/db:2"}, relative=True)
    repo = Repo(tmp_path / "repo").ensure()
    commit = repo.commit(tmp_path / "tree", "test")
    refs = [str(w.ref) for w in bound_images.in_commit(repo, commit)]
    assert refs == ["registry.example.com/edge/db:2", "registry.example.com/edge/tool:1"]
    bare = repo.commit(tmp_path / "tree/usr/share", "bare")  # no bound-images.d at all
    assert bound_images.in_commit(repo, bare) == []


def test_a_dangling_link_is_an_error_that_names_it(tmp_path: Path) -> None:
    d = tmp_path / bound_images.BOUND_D
    d.mkdir(parents=True)
    (d / "gone.image").symlink_to("/usr/share/containers/systemd/gone.image")
    with pytest.raises(
        bound_images.BoundImageError, match=r"bound-images.d/gone.image: points to /usr/share/"
    ):
        bound_images.in_tree(confined.Tree(tmp_path))


class FakeSysroot:
    def __init__(self, deployments: list[Path]) -> None:
        self.deployments = deployments

    def get_deployments(self) -> list[Path]:
        return self.deployments


def test_prune_removes_only_recorded_images_no_deployment_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keep = tree(tmp_path / "dep1", {"a.image": "registry.example.com/a:1"})
    monkeypatch.setattr(bound, "RECORD", tmp_path / "record.json")
    monkeypatch.setattr(sysroot_mod, "deployment_dir", lambda sysroot, dep: dep)
    removed: list[list[str]] = []
    monkeypatch.setattr(bound, "run", lambda cmd, check=True: removed.append(list(cmd)))
    bound.RECORD.write_text(json.dumps({"pulled": ["registry.example.com/a:1", "registry.example.com/b:1"]}))
    sysroot: Any = FakeSysroot([keep])
    assert bound.gc(sysroot) == ["registry.example.com/b:1"]
    assert removed == [["podman", "rmi", "registry.example.com/b:1"]]
    assert json.loads(bound.RECORD.read_text()) == {"pulled": ["registry.example.com/a:1"]}
    # An image the user pulled (not in the record) is never touched.
    assert bound.gc(FakeSysroot([])) == ["registry.example.com/a:1"]
    assert bound.gc(sysroot) == []


def test_nothing_bound_needs_no_podman(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bound, "which", lambda program: None)
    assert bound.pull([]) == []
