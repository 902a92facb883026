"""The embedded store on the real thing: skopeo copies into an overlay store, podman reads it as an
additional image store (a private storage.conf, so the host's own storage is not touched), and a
registry on 127.0.0.1 serves the images."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagemode.build.containerfile import isolation
from imagemode.embed import store
from imagemode.embed.sources import Wanted, qualify
from imagemode.vm.registry import Registry
from tests.conftest import ROOT, imagemode

pytestmark = pytest.mark.host

BUILD = str(ROOT / "examples/microshift-edge/build-workload.sh")
BASE = "localhost/imagemode-test/embed-base:1"
DELETES = "localhost/imagemode-test/embed-deletes:1"
# A file deleted, and a directory removed and made again: a whiteout and an opaque directory.
DELETES_CF = f"""FROM {BASE}
RUN rm /www/index.html && echo kept > /www/kept
RUN rm -rf /www && mkdir /www && echo fresh > /www/fresh
"""


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    subprocess.run([BUILD, "1", "workload", BASE], check=True)
    ctx = tmp_path_factory.mktemp("deletes")
    (ctx / "Containerfile").write_text(DELETES_CF)
    subprocess.run(
        ["podman", "build", "-q", f"--isolation={isolation()}", "-t", DELETES, str(ctx)], check=True
    )
    with Registry() as reg:
        reg.push(f"containers-storage:{BASE}", "embed/base:1")
        reg.push(f"containers-storage:{DELETES}", "embed/deletes:1")
        yield reg


def want(reg: Registry, name: str) -> Wanted:
    return Wanted(qualify(f"{reg.address}/{name}", "test"), "test")


def embed(reg: Registry, root: Path, *names: str) -> list[store.Embedded]:
    return store.embed([want(reg, n) for n in names], root, tls_verify=False)


def podman_env(tmp: Path, root: Path) -> dict[str, str]:
    """A podman whose own storage is in `tmp` and whose additional store is the one under `root`."""
    conf = tmp / "storage.conf"
    conf.write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{tmp}/graph"\nrunroot = "{tmp}/run"\n'
        f'[storage.options]\nadditionalimagestores = ["{root / store.STORE}"]\n'
    )
    return {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf)}


def pm(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], env=env, capture_output=True, text=True, check=check)


def test_whiteouts_become_base_layers_and_podman_sees_the_same_tree(
    registry: Registry, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    [item] = embed(registry, root, "embed/deletes:1")
    assert item.digest == registry.digest("embed/deletes:1")
    st = root / store.STORE
    for dirpath, dirnames, filenames in os.walk(st):
        for name in dirnames + filenames:
            mode = os.lstat(os.path.join(dirpath, name)).st_mode
            assert not stat.S_ISCHR(mode), os.path.join(dirpath, name)
        assert not any("overlay." in x for x in os.listxattr(dirpath)), dirpath
    env = podman_env(tmp_path, root)
    ref = f"{registry.address}/embed/deletes:1"
    assert pm(env, "image", "inspect", "--format", "{{.Digest}}", ref).stdout.strip() == item.digest
    ctr = pm(env, "create", "--pull=never", ref, "true").stdout.strip()
    try:
        mnt = Path(pm(env, "mount", ctr).stdout.strip())
        assert sorted(os.listdir(mnt / "www")) == ["fresh"]
        assert (mnt / "bin/busybox").is_file()
    finally:
        pm(env, "umount", ctr, check=False)
        pm(env, "rm", ctr, check=False)
    # The list, and the storage.conf that points podman at the store without /etc.
    listed = json.loads((root / store.LIST).read_text())["images"]
    assert listed == [{"ref": ref, "digest": item.digest, "image_id": item.image_id, "source": "test"}]
    assert f'additionalimagestores = ["{store.DEVICE_STORE}"]' in (root / store.STORAGE_CONF).read_text()


def test_layers_are_shared_and_links_are_stable_across_rebuilds(registry: Registry, tmp_path: Path) -> None:
    """v1 and v2 of an OS embed the same image: a container made from v1's store still mounts from
    v2's, because the layer paths and link names are the same (MicroShift's RHEL-75827)."""
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    embed(registry, v1, "embed/base:1", "embed/deletes:1")
    embed(registry, v2, "embed/deletes:1")
    layers = json.loads((v1 / store.STORE / "overlay-layers/layers.json").read_text())
    diffs = {d.name for d in (v1 / store.STORE / "overlay").iterdir() if d.is_dir() and d.name != "l"}
    # base: 3 layers; deletes: those 3 and 2 of its own. Each is stored once.
    assert diffs == {str(x["id"]) for x in layers} and len(diffs) == 5
    for layer in layers:
        lid = str(layer["id"])
        link = (v1 / store.STORE / "overlay" / lid / "link").read_text()
        assert link == store.link_name(lid)
        if (v2 / store.STORE / "overlay" / lid).exists():
            assert (v2 / store.STORE / "overlay" / lid / "link").read_text() == link
    live = tmp_path / "live"  # the path the device's storage.conf names, whichever OS is booted
    v1.rename(live)
    env = podman_env(tmp_path, live)
    ctr = pm(env, "create", "--pull=never", f"{registry.address}/embed/deletes:1", "true").stdout.strip()
    live.rename(v1)
    v2.rename(live)  # the upgrade: /usr is now v2's
    try:
        mnt = Path(pm(env, "mount", ctr).stdout.strip())
        assert (mnt / "www/fresh").read_text() == "fresh\n"
        pm(env, "umount", ctr)
        # The same store as skopeo leaves it, with the driver's random link names: the container
        # made from v1 no longer mounts.
        live.rename(v2)
        with tempfile.TemporaryDirectory() as run:
            store.copy_one(
                want(registry, "embed/deletes:1"), live / store.STORE, Path(run), tls_verify=False
            )
        broken = pm(env, "mount", ctr, check=False)
        assert broken.returncode != 0 and "lower" in broken.stderr, broken.stderr
    finally:
        pm(env, "umount", ctr, check=False)
        pm(env, "rm", ctr, check=False)


def test_bad_references_name_themselves_and_leave_no_list(registry: Registry, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(store.EmbedError, match=r"embed/nope:1 \(test\): cannot embed"):
        embed(registry, root, "embed/nope:1")
    assert list(root.iterdir()) == []  # no list, and no empty store left behind
    other = registry.digest("embed/base:1")
    pinned = Wanted(qualify(f"{registry.address}/embed/deletes:1@{other}", "list:3"), "list:3")
    with pytest.raises(store.EmbedError, match=r"list:3\): digest mismatch: tag 1 is now sha256:"):
        store.embed([pinned], root, tls_verify=False)
    assert list(root.iterdir()) == []
    # Tag and digest that agree: fetched by the digest, found by the tag.
    right = registry.digest("embed/deletes:1")
    ok = Wanted(qualify(f"{registry.address}/embed/deletes:1@{right}", "list:4"), "list:4")
    [item] = store.embed([ok], root, tls_verify=False)
    assert item.digest == right
    env = podman_env(root.parent, root)
    found = pm(env, "image", "inspect", "--format", "{{.Digest}}", f"{registry.address}/embed/deletes:1")
    assert found.stdout.strip() == right


def test_cli_dry_run_copies_nothing_and_errors_are_one_line(registry: Registry, tmp_path: Path) -> None:
    src = tmp_path / "images.txt"
    digest = registry.digest("embed/base:1")
    src.write_text(f"{registry.address}/embed/base:1\n{registry.address}/embed/base@{digest}\n")
    p = imagemode("embed", "--dry-run", "--root", str(tmp_path / "root"), str(src))
    lines = p.stdout.splitlines()
    assert "(tag: digest read when embedded)" in lines[0] and digest in lines[1], p.stdout
    assert lines[-1] == "2 images would be embedded; nothing was copied"
    assert not (tmp_path / "root").exists()
    bad = tmp_path / "release.json"
    bad.write_text('{"images": ["not", "a", "map"]}')
    p = imagemode("embed", "--root", str(tmp_path / "root"), str(bad), check=False)
    assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert p.stderr.startswith(f"imagemode: error: {bad}"), p.stderr
    p = imagemode("embed", "--root", str(tmp_path / "root"), "--tls-verify=false", str(src))
    assert p.stdout.splitlines()[-1].startswith("2 images in "), p.stdout


def test_build_embed_with_a_bad_reference_fails_and_tags_nothing(
    base_image: dict[str, str], registry: Registry, tmp_path: Path
) -> None:
    src = tmp_path / "images.txt"
    src.write_text(f"# the workload\n{registry.address}/embed/base:1\n{registry.address}/embed/missing:2\n")
    tag = "localhost/imagemode-test/embed-bad:1"
    p = imagemode("build", "-t", tag, "--embed", str(src), "--tls-verify=false",
                  str(ROOT / "examples/microshift-edge"), check=False)  # fmt: skip
    assert p.returncode == 1, p.stdout
    last = p.stderr.strip().splitlines()[-1]
    expected = f"imagemode: error: {registry.address}/embed/missing:2 ({src}:3): cannot embed"
    assert last.startswith(expected), last
    assert subprocess.run(["podman", "image", "exists", tag]).returncode != 0


def test_bundle_refuses_an_image_that_does_not_boot(registry: Registry, tmp_path: Path) -> None:
    out = tmp_path / "update.tar"
    p = imagemode("bundle", BASE, "-o", str(out), check=False)
    assert p.returncode == 1 and p.stderr.strip() == (
        f"imagemode: error: {BASE}: not a bootable image (no containers.bootc=1 label)"
    ), p.stderr
    assert list(tmp_path.iterdir()) == []


def test_build_embed_on_an_image_that_embeds_already_keeps_both(registry: Registry, tmp_path: Path) -> None:
    first, second = "localhost/imagemode-test/embed-first:1", "localhost/imagemode-test/embed-second:1"
    for tag, base, name in ((first, BASE, "embed/base:1"), (second, first, "embed/deletes:1")):
        ctx = tmp_path / tag.rsplit("/", 1)[1]
        ctx.mkdir()
        (ctx / "Containerfile").write_text(f"FROM {base}\n")
        (ctx / "images.txt").write_text(f"{registry.address}/{name}\n")
        imagemode("build", "--no-lint", "-t", tag, "--embed", str(ctx / "images.txt"), "--tls-verify=false",
                  str(ctx))  # fmt: skip
    mnt = Path(subprocess.run(["podman", "image", "mount", second], capture_output=True, text=True,
                              check=True).stdout.strip())  # fmt: skip
    try:
        listed = [e["ref"] for e in json.loads((mnt / store.LIST).read_text())["images"]]
        assert listed == [f"{registry.address}/embed/base:1", f"{registry.address}/embed/deletes:1"]
        env = podman_env(tmp_path, mnt)
        names = pm(env, "images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
        assert sorted(names) == sorted(listed), names
    finally:
        subprocess.run(["podman", "image", "unmount", second], check=False)
