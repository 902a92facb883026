"""Reading image references from the sources `imagemode embed` will take (issue 5, first part)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagemode.embed import sources

RELEASE = Path(__file__).resolve().parent / "data/microshift-release-x86_64.json"  # a real one
PINNED = "@sha256:" + "a" * 64


def refs(ws: list[sources.Wanted]) -> list[str]:
    return [str(w.ref) for w in ws]


def test_real_microshift_release_json() -> None:
    release = RELEASE
    ws = sources.read(release)
    data = json.loads(release.read_text())
    assert refs(ws) == list(data["images"].values())
    assert all(w.pinned for w in ws)
    assert ws[0].source == f"{release}: images.cli"


def test_plain_list_with_comments_and_short_names(tmp_path: Path) -> None:
    f = tmp_path / "images.txt"
    f.write_text(f"# workload\nbusybox:1.36\n\n  quay.io/acme/app{PINNED}  # pinned\nacme/tool\n")
    ws = sources.read(f)
    assert refs(ws) == [
        "docker.io/library/busybox:1.36",
        f"quay.io/acme/app{PINNED}",
        "docker.io/acme/tool:latest",
    ]
    assert [w.source for w in ws] == [f"{f}:2", f"{f}:4", f"{f}:5"]


def test_manifests_find_every_container_at_any_depth(tmp_path: Path) -> None:
    f = tmp_path / "app.yaml"
    f.write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: till}\nspec:\n  template:\n    spec:\n"
        "      initContainers: [{name: init, image: 'localhost:5000/shop/init:1'}]\n"
        "      containers: [{name: app, image: 'localhost:5000/shop/till:2'}]\n"
        "---\napiVersion: batch/v1\nkind: CronJob\nmetadata: {name: report}\nspec:\n  jobTemplate:\n"
        "    spec:\n      template:\n        spec:\n          containers: [{name: r, image: busybox}]\n"
        "---\n"
    )
    ws = sources.read(f)
    assert refs(ws) == [
        "localhost:5000/shop/init:1",
        "localhost:5000/shop/till:2",
        "docker.io/library/busybox:latest",
    ]
    assert ws[0].source == f"{f}: Deployment/till initContainers[0]"


def test_kustomization_applies_image_overrides_through_bases(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "base/kustomization.yaml").write_text(
        "resources: [deploy.yaml]\nimages: [{name: till, newName: localhost:5000/shop/till}]\n"
    )
    (tmp_path / "base/deploy.yaml").write_text(
        "kind: Deployment\nmetadata: {name: till}\n"
        "spec: {template: {spec: {containers: [{name: a, image: till:1}]}}}\n"
    )
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: [base]\nimages: [{{name: localhost:5000/shop/till, digest: 'sha256:{'b' * 64}'}}]\n"
    )
    assert refs(sources.read(tmp_path)) == [f"localhost:5000/shop/till@sha256:{'b' * 64}"]


def test_quadlet_container_and_image_units(tmp_path: Path) -> None:
    (tmp_path / "web.image").write_text("[Image]\nImage=localhost:5000/shop/web:3\n")
    (tmp_path / "web.container").write_text(
        "[Unit]\nDescription=web\n[Container]\nImage=web.image\nExec=/bin/web\n"
    )
    (tmp_path / "db.container").write_text(f"[Container]\nImage=quay.io/acme/db{PINNED}\n")
    assert refs(sources.gather([tmp_path])) == [f"quay.io/acme/db{PINNED}", "localhost:5000/shop/web:3"]


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("r.json", '{"release": {}, "images": ["a"]}', 'expected a MicroShift release JSON: {"release"'),
        ("r.json", '{"images": {"cli": 3}}', "images.cli is int"),
        ("r.json", "{not json", "not JSON (Expecting property name"),
        ("list.txt", "ok/image:1\nBad Ref!\n", "list.txt:2: invalid image reference 'Bad Ref!'"),
        (
            "a.yaml",
            "kind: Pod\nspec: {containers: [{image: 'UPPER/case'}]}\n",
            "a.yaml: Pod/? containers[0]",
        ),
        ("a.yaml", "kind: [\n", "a.yaml: not YAML at line"),
        ("x.container", "[Container]\nExec=/bin/true\n", "x.container: no Image= in [Container]"),
    ],
)
def test_bad_sources_are_one_line(tmp_path: Path, name: str, text: str, message: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(sources.SourceError) as e:
        sources.read(tmp_path / name)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_missing_resource_and_loops(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: [gone.yaml]\n")
    with pytest.raises(sources.SourceError, match=r"resource gone\.yaml does not exist"):
        sources.read(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("resources: [.]\n")
    with pytest.raises(sources.SourceError, match="resources include each other in a loop"):
        sources.read(tmp_path)


def test_example_manifests_dir_reads_each_kustomization_through_itself() -> None:
    """MicroShift's manifests.d: a directory of kustomization directories. The Deployment alone names
    `edge-workload`; through its kustomization it is registry.example.com/edge/workload:stable."""
    example = Path(__file__).resolve().parent.parent / "examples/microshift-edge"
    refs = [str(w.ref) for w in sources.gather([example / "release-x86_64.json", example / "manifests.d"])]
    assert refs == ["registry.example.com/edge/workload:stable", "registry.example.com/edge/sidecar:stable"]
    found = sources.read(example / "manifests.d")
    assert [str(w.ref) for w in found] == [
        "registry.example.com/edge/sidecar:stable",
        "registry.example.com/edge/workload:stable",
    ]


def test_a_quadlet_that_names_itself_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "a.image").write_text("[Image]\nImage=b.image\n")
    (tmp_path / "b.image").write_text("[Image]\nImage=a.image\n")
    with pytest.raises(sources.SourceError, match=r"Image=a.image is not another .image unit beside it"):
        sources.from_quadlet(tmp_path / "a.image")
    (tmp_path / "c.container").write_text("[Container]\nImage=../../etc/x.image\n")
    with pytest.raises(sources.SourceError, match=r"is not another \.image unit beside it"):
        sources.from_quadlet(tmp_path / "c.container")
