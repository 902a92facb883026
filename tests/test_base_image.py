"""The real base image: built once per session with mmdebstrap, podman and skopeo, then examined."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BASE_TAG, ROOT, imagemode, podman

pytestmark = pytest.mark.host

HELLO = "localhost/imagemode/hello:test"


def one_line_error(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 1, p.stdout + p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("imagemode: error:")]
    assert len(lines) == 1, p.stderr
    return lines[0]


@pytest.fixture(scope="module")
def mounted_base(base_image: dict[str, str]) -> Iterator[Path]:
    path = Path(podman("image", "mount", BASE_TAG).stdout.strip())
    yield path
    podman("image", "unmount", BASE_TAG, check=False)


def test_base_image_is_tagged_with_bootc_labels(base_image: dict[str, str]) -> None:
    info = json.loads(podman("image", "inspect", BASE_TAG).stdout)[0]
    labels = info["Labels"]
    assert labels["containers.bootc"] == "1"
    assert labels["org.opencontainers.image.version"].startswith("12.")
    # the OS by source package (docs/chunking.md), then imagemode itself
    assert 40 <= len(info["RootFS"]["Layers"]) <= 80
    assert info["Digest"] == base_image["digest"]


def test_base_image_passes_lint(base_image: dict[str, str]) -> None:
    p = imagemode("lint", "--fatal-warnings", BASE_TAG)
    assert "0 errors, 0 warnings" in p.stdout


def test_base_layout(mounted_base: Path) -> None:
    r = mounted_base
    (kdir,) = list((r / "usr/lib/modules").iterdir())
    assert (kdir / "vmlinuz").stat().st_size > 5_000_000
    initrd = kdir / "initramfs.img"
    assert 5_000_000 < initrd.stat().st_size < 30_000_000  # lean: only the drivers listed in the spec
    assert initrd.read_bytes()[:4] == b"\x28\xb5\x2f\xfd", "the initramfs is not zstd (dracut fell back)"
    assert not (kdir / "kernel/drivers/gpu").exists()
    assert list((r / "boot").iterdir()) == []
    for link, target in {
        "home": "var/home",
        "root": "var/roothome",
        "opt": "var/opt",
        "srv": "var/srv",
        "mnt": "var/mnt",
        "ostree": "sysroot/ostree",
    }.items():
        assert os.readlink(r / link) == target
    assert (r / "etc/os-release").exists() and not (r / "usr/etc").exists()
    assert not list((r / "etc/ssh").glob("ssh_host_*"))
    assert (r / "etc/machine-id").read_text() == ""
    assert (r / "usr/lib/sysimage/dpkg/status").exists()
    assert os.readlink(r / "var/lib/dpkg") == "../../usr/lib/sysimage/dpkg"
    assert (r / "usr/lib/dracut/modules.d/98ostree").is_dir()
    for tool in ("usr/bin/ostree", "usr/bin/skopeo", "usr/bin/podman", "usr/sbin/sshd", "usr/bin/python3"):
        assert (r / tool).exists(), tool
    assert not list((r / "usr/share/man").glob("*")) if (r / "usr/share/man").exists() else True
    # imagemode itself, byte-compiled, on the device's python3
    assert (r / "usr/lib/python3/dist-packages/imagemode/cli.py").exists()
    assert list((r / "usr/lib/python3/dist-packages/imagemode/__pycache__").glob("cli.cpython-311.pyc"))
    assert (r / "usr/bin/imagemode").read_text().startswith("#!/usr/bin/python3")
    for name in (
        "bootc",
        "grub2-editenv",
    ):  # for the tools that call them by name (docs/bootc-differences.md)
        assert (r / "usr/bin" / name).read_text().startswith("#!/usr/bin/python3\nfrom imagemode."), name
    assert (r / "usr/bin/jq").exists()


def test_lock_list_in_image(mounted_base: Path) -> None:
    lock = json.loads((mounted_base / "usr/lib/imagemode/packages.lock.json").read_text())
    names = {p["name"] for p in lock["packages"]}
    assert {
        "linux-image-amd64",
        "ostree-boot",
        "dracut",
        "python3-gi",
        "gir1.2-ostree-1.0",
        "skopeo",
        "podman",
        "openssh-server",
    } <= names
    status = (mounted_base / "usr/lib/sysimage/dpkg/status").read_text()
    assert status.count("Status: install ok installed") == len(lock["packages"])


def test_second_build_reuses_cache(base_image: dict[str, str]) -> None:
    p = imagemode("build", "base", "--json")
    again = json.loads(p.stdout)
    assert again["cached"] is True
    assert again["cache_key"] == base_image["cache_key"]
    assert again["digest"] == base_image["digest"]  # reproducible manifest, not just the same layer


def test_output_oci_layout(base_image: dict[str, str], tmp_path: Path) -> None:
    """--output oci:DIR writes the same image (same manifest digest) as an OCI layout, and it lints."""
    out = tmp_path / "layout"
    imagemode("build", "base", "--output", f"oci:{out}")
    inspected = subprocess.run(
        ["skopeo", "inspect", f"oci:{out}"], capture_output=True, text=True, check=True
    )
    assert json.loads(inspected.stdout)["Digest"] == base_image["digest"]
    assert "0 errors" in imagemode("lint", f"oci:{out}").stdout


def test_plan_lists_packages_and_steps(base_image: dict[str, str]) -> None:
    plan = json.loads(imagemode("build", "base", "--plan", "--json").stdout)
    assert plan["os_layer_cached"] is True
    assert len(plan["packages"]) == base_image["packages"]
    assert [s["name"] for s in plan["steps"]][:3] == ["resolve", "bootstrap", "verify"]
    human = imagemode("-v", "build", "base", "--plan").stdout  # -v before the verb, as a user types it
    assert f"{len(plan['packages'])} packages, " in human


def test_derived_image_builds_and_lints(base_image: dict[str, str]) -> None:
    podman("rmi", "-f", HELLO, check=False)
    p = imagemode("build", "-t", HELLO, "examples/hello")
    assert f"built {HELLO}" in p.stdout
    assert "0 errors" in p.stdout
    imagemode("lint", HELLO)
    root = Path(podman("image", "mount", HELLO).stdout.strip())
    try:
        assert (root / "usr/bin/tree").exists()
        assert "Package: tree\n" in (root / "usr/lib/sysimage/dpkg/status").read_text()
        assert "imagemode hello example" in (root / "etc/motd").read_text()
    finally:
        podman("image", "unmount", HELLO, check=False)


def test_failed_derived_build_leaves_no_tag(base_image: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "Containerfile").write_text(f"FROM {BASE_TAG}\nRUN apt-get install -y no-such-package-x\n")
    tag = "localhost/imagemode/broken:1"
    podman("rmi", "-f", tag, check=False)
    err = one_line_error(imagemode("build", "-t", tag, str(tmp_path), check=False))
    assert "podman failed" in err
    assert podman("image", "exists", tag, check=False).returncode == 1
    leftovers = podman("images", "--format", "{{.Repository}}").stdout
    assert "imagemode-build-tmp" not in leftovers


def _import(tar: Path, tag: str, *changes: str) -> None:
    podman("rmi", "-f", tag, check=False)
    podman("import", *[f"--change={c}" for c in changes], str(tar), tag)


def _tiny_image(tmp_path: Path, kernels: list[str], tag: str) -> None:
    tar_path = tmp_path / f"{len(kernels)}.tar"
    with tarfile.open(tar_path, "w") as tar:
        for d in ("usr", "usr/lib", "usr/lib/modules", "run", "tmp", "etc"):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(ti)
        for k in kernels:
            for f in ("vmlinuz", "initramfs.img"):
                ti = tarfile.TarInfo(f"usr/lib/modules/{k}/{f}")
                ti.size = 0
                tar.addfile(ti)
    _import(tar_path, tag, "LABEL=containers.bootc=1")


@pytest.mark.parametrize(
    ("kernels", "reason"),
    [([], "kernel: no kernel"), (["6.1.0-1-amd64", "6.1.0-2-amd64"], "kernel: 2 kernels found")],
    ids=["no-kernel", "two-kernels"],
)
def test_lint_fails_on_kernel_count(tmp_path: Path, kernels: list[str], reason: str) -> None:
    tag = f"localhost/imagemode/lint-{len(kernels)}:test"
    _tiny_image(tmp_path, kernels, tag)
    try:
        err = one_line_error(imagemode("lint", tag, check=False))
        assert reason in err
    finally:
        podman("rmi", "-f", tag, check=False)


def test_lint_fails_on_plain_debian_rootfs(base_image: dict[str, str]) -> None:
    """The real Debian tree of the base image, imported without the bootc label, is not bootable."""
    layer = Path("/var/cache/imagemode/layers") / base_image["cache_key"] / "layer.tar"
    tag = "localhost/imagemode/plain-debian:test"
    _import(layer, tag)
    try:
        err = one_line_error(imagemode("lint", tag, check=False))
        assert "bootc-label: label containers.bootc=1 is missing" in err
    finally:
        podman("rmi", "-f", tag, check=False)


def test_same_lock_list_gives_same_tree(
    base_image: dict[str, str], mounted_base: Path, tmp_path: Path
) -> None:
    """Determinism: a fresh build (no cache) from the image's own lock list gives the same OS layer."""
    lock = tmp_path / "lock.json"
    lock.write_text((mounted_base / "usr/lib/imagemode/packages.lock.json").read_text())
    tag = "localhost/imagemode/debian:determinism"
    # --prior: the slots of the image it reproduces (docs/base-image.md)
    args = ("--lock", str(lock), "--no-cache", "--prior", BASE_TAG, "-t", tag, "--json")
    p = imagemode("build", "base", *args)
    again = json.loads(p.stdout)
    try:
        assert again["cached"] is False
        assert again["os_layer"] == base_image["os_layer"], "the OS layer differs between two builds"
        assert again["digest"] == base_image["digest"]
    finally:
        podman("rmi", "-f", tag, check=False)


# ---- bad input: one line, non-zero exit, nothing tagged ----------------------------------------------

NOT_TAGGED = "localhost/imagemode/must-not-exist:1"


def _assert_not_tagged() -> None:
    assert podman("image", "exists", NOT_TAGGED, check=False).returncode == 1


def test_unreachable_mirror(tmp_path: Path) -> None:
    err = one_line_error(
        imagemode(
            "build",
            "base",
            "-t",
            NOT_TAGGED,
            "--cache-dir",
            str(tmp_path),
            "--mirror",
            "http://127.0.0.1:9/debian",
            "--security-mirror",
            "",
            check=False,
        )
    )
    assert "cannot read the package mirror http://127.0.0.1:9/debian" in err
    _assert_not_tagged()


def test_unknown_package(base_image: dict[str, str]) -> None:
    err = one_line_error(
        imagemode("build", "base", "-t", NOT_TAGGED, "--package", "no-such-package-x", check=False)
    )
    assert err == "imagemode: error: package 'no-such-package-x' does not exist in bookworm"
    _assert_not_tagged()


def test_disk_full(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)], check=True)
    try:
        err = one_line_error(
            imagemode("build", "base", "-t", NOT_TAGGED, "--cache-dir", str(small), check=False)
        )
        assert "No space left on device" in err or "no space left on device" in err
    finally:
        subprocess.run(["umount", str(small)], check=False)
    _assert_not_tagged()


def test_lint_unknown_image() -> None:
    err = one_line_error(imagemode("lint", "localhost/imagemode/none-such:1", check=False))
    assert (
        err == "imagemode: error: image localhost/imagemode/none-such:1 is not in local containers-storage"
    )


def test_readme_opens_with_the_two_commands() -> None:
    lines = [ln for ln in (ROOT / "README.md").read_text().splitlines() if ln.startswith(("bash ", "sudo "))]
    assert lines[:2] == ["bash scripts/demo", "bash scripts/test"]
    assert (ROOT / ".ci/run").read_text().strip().endswith("exec bash scripts/test")


def test_cache_key_follows_the_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    """An edit to the build steps or to a file under data/base must rebuild the OS layer."""
    from imagemode.build import spec

    s = spec.BaseSpec()
    lock = spec.Lock(release="bookworm", architecture="amd64", source_date_epoch=0)
    first = spec.cache_key(s, lock)
    assert spec.cache_key(s, lock) == first
    monkeypatch.setattr(spec, "recipe_digest", lambda: "0" * 64)
    assert spec.cache_key(s, lock) != first


def test_a_cached_package_set_keeps_its_epoch(tmp_path: Path) -> None:
    """A mirror behind a CDN gives Release dates a day apart a minute apart: the same packages must
    still give the cached layer (and its epoch), while other packages, or a stated epoch, do not."""
    from imagemode.build import base, spec
    from imagemode.oci.reference import local_tag

    s = spec.BaseSpec()
    pkgs = (spec.LockedPackage("bash", "5.2.15-2+b7", "amd64", 7000),)
    kept = spec.Lock("bookworm", "amd64", 1796091214, pkgs)
    entry = tmp_path / "layers" / spec.cache_key(s, kept)
    entry.mkdir(parents=True)
    (entry / "lock.json").write_text(kept.to_json())
    (entry / "layer.json").write_text("{}")
    opts = base.BaseOptions(s, local_tag("x:1"), cache_dir=tmp_path)
    today = spec.Lock("bookworm", "amd64", 1796177397, pkgs)
    assert base.cached_epoch(opts, today) == kept
    other = spec.Lock("bookworm", "amd64", 1796177397, (spec.LockedPackage("bash", "5.2.15-2+b8", "amd64"),))
    assert base.cached_epoch(opts, other) == other
    (entry / "layer.json").unlink()  # an unfinished entry is not a cached layer
    assert base.cached_epoch(opts, today) == today
