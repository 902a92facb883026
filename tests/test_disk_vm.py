"""Image → ostree → disk → boot, on the real thing: the base image, the hello example, QEMU and OVMF.

The disk is built once for the module. The VM boots from it with `snapshot=on`, so the disk file is
never written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from imagemode.oci.reference import parse_local
from imagemode.store import importer
from imagemode.store.ostree import Repo
from imagemode.vm.qemu import VM
from tests.conftest import ROOT, imagemode, podman

pytestmark = pytest.mark.integration

HELLO = "localhost/imagemode/hello:test"
HELLO_V2 = "localhost/imagemode/hello:test-v2"
KARG = "imagemode.test=hello"
SCHEMA = json.loads((Path(__file__).resolve().parent / "data/bootc-host-v1.schema.json").read_text())


def one_line_error(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode != 0, p.stdout + p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("imagemode: error:")]
    assert len(lines) == 1, p.stderr
    return lines[0]


@pytest.fixture(scope="module")
def hello(base_image: dict[str, str]) -> str:
    if podman("image", "exists", HELLO, check=False).returncode != 0:
        imagemode("build", "-t", HELLO, str(ROOT / "examples/hello"))
    digest: str = json.loads(podman("image", "inspect", HELLO).stdout)[0]["Digest"]
    return digest


@pytest.fixture(scope="module")
def ssh_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("key")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "key")], check=True)
    return d / "key"


@pytest.fixture(scope="module")
def disk(hello: str, ssh_key: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("disk")
    cfg = out / "config.toml"
    pub = ssh_key.with_suffix(".pub").read_text().strip()
    cfg.write_text(
        f'[[customizations.user]]\nname = "root"\nkey = "{pub}"\n\n'
        f'[[customizations.user]]\nname = "edge"\nkey = "{pub}"\n'
        'groups = ["sudo"]\n\n'
        f'[customizations.kernel]\nappend = "{KARG}"\n'
    )
    p = imagemode("disk", HELLO, "--config", str(cfg), "-o", str(out / "out"), "--json")
    result = json.loads(p.stdout)
    assert result["image_digest"] == hello
    assert result["ssh_key"] is None  # the config's key is the way in
    return out / "out/disk.qcow2"


@pytest.fixture(scope="module")
def vm(disk: Path, ssh_key: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VM]:
    log = tmp_path_factory.mktemp("vm") / "serial.log"
    machine = VM(disk, snapshot=True, ssh_key=ssh_key, serial_log=log)
    mtime = disk.stat().st_mtime
    with machine:
        machine.wait_ssh(900)
        yield machine
        machine.poweroff()
    assert disk.stat().st_mtime == mtime, "snapshot=on must never write to the disk file"


def test_status_json_validates_and_names_the_image(vm: VM, hello: str) -> None:
    st = json.loads(vm.exec("imagemode status --json").stdout)
    jsonschema.validate(st, SCHEMA)
    booted = st["status"]["booted"]
    assert booted["image"]["imageDigest"] == hello
    assert booted["image"]["image"] == {"image": HELLO, "transport": "containers-storage"}
    assert booted["image"]["version"] == "1"
    assert st["status"]["staged"] is None and st["status"]["rollback"] is None
    yaml_out = vm.exec("imagemode status").stdout  # not a terminal: YAML, as bootc does
    assert "kind: BootcHost" in yaml_out


def test_kernel_command_line(vm: VM) -> None:
    cmdline = vm.exec("cat /proc/cmdline").stdout.split()
    assert KARG in cmdline
    assert "console=ttyS0,115200n8" in cmdline  # from the base image's kargs.d
    assert any(a.startswith("ostree=/ostree/boot.") for a in cmdline)


def test_no_failed_units(vm: VM) -> None:
    state = vm.exec("systemctl is-system-running --wait", check=False).stdout.strip()
    failed = vm.exec("systemctl --failed --no-legend --plain").stdout.strip()
    assert failed == "", failed
    assert state == "running", state


def test_root_is_an_ostree_deployment_with_readonly_usr(vm: VM) -> None:
    assert vm.exec("test -e /run/ostree-booted").returncode == 0
    usr = vm.exec("findmnt -no OPTIONS /usr").stdout
    assert "ro" in usr.split(",")
    root_src = vm.exec("findmnt -no SOURCE /").stdout.strip()
    assert "/ostree/deploy/default/deploy/" in root_src
    assert vm.exec("touch /usr/x", check=False).returncode != 0
    # /etc came from the image and is writable; /var is the stateroot's
    assert "imagemode hello example" in vm.exec("cat /etc/motd").stdout
    assert vm.exec("test -x /usr/bin/tree").returncode == 0
    assert "/ostree/deploy/default/var" in vm.exec("findmnt -no SOURCE /var").stdout


def test_user_from_config(vm: VM) -> None:
    out = vm.exec("id edge; stat -c '%U %a' /var/home/edge/.ssh/authorized_keys").stdout
    assert "(sudo)" in out
    assert "edge 600" in out


def test_grub_menu_follows_entries(vm: VM) -> None:
    cfg = vm.exec("cat /boot/grub/grub.cfg").stdout
    assert "menuentry" in cfg and "set ostree_target=/ostree/boot." in cfg
    assert vm.exec("systemctl is-active imagemode-bootloader.service").stdout.strip() == "active"


# ---- the importer on real images ----------------------------------------------------------------------


def test_shared_layers_and_whiteouts(hello: str, tmp_path: Path) -> None:
    """v2 = hello + one RUN that deletes a file: one new layer, and the file is gone."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Containerfile").write_text(
        f"FROM {HELLO}\nRUN rm /usr/bin/tree && echo v2 > /usr/share/imagemode-v2\n"
    )
    imagemode("build", "-t", HELLO_V2, str(ctx))
    repo = Repo(tmp_path / "repo").ensure()
    work = tmp_path / "work"
    work.mkdir()
    try:
        first = importer.import_image(repo, parse_local(HELLO), work)
        second = importer.import_image(repo, parse_local(HELLO_V2), work)
    finally:
        podman("rmi", "-f", HELLO_V2, check=False)
    assert first.layers_imported == first.layers_total
    assert (second.layers_total, second.layers_imported) == (first.layers_total + 1, 1)
    ls = subprocess.run(
        ["ostree", f"--repo={repo.path}", "ls", second.commit, "/usr/bin/tree"],
        capture_output=True,
        text=True,
    )
    assert ls.returncode != 0  # the whiteout removed it
    cat = subprocess.run(
        ["ostree", f"--repo={repo.path}", "cat", second.commit, "/usr/share/imagemode-v2"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert cat.stdout == "v2\n"


# ---- bad input: one line, non-zero exit, nothing at the output path ------------------------------------


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        ('[customizations.kernel]\nappendd = "x"\n', "unknown key customizations.kernel.appendd"),
        (
            '[[customizations.user]]\nname = "a"\nkey = "ssh-ed25519 AAAAnot-a-key"\n',
            "SSH public key does not parse",
        ),
        ('[[customizations.user]]\nname = "a"\npassword = "plain"\n', "must be a crypt(3) hash"),
        (
            '[[customizations.filesystem]]\nmountpoint = "/"\nminsize = "100 MiB"\n',
            "minsize 100 MiB is smaller",
        ),
    ],
    ids=["unknown-key", "bad-ssh-key", "plain-password", "minsize-too-small"],
)
def test_bad_config(hello: str, tmp_path: Path, toml: str, fragment: str) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(toml)
    out = tmp_path / "out"
    err = one_line_error(imagemode("disk", HELLO, "--config", str(cfg), "-o", str(out), check=False))
    assert fragment in err
    assert not out.exists() or list(out.iterdir()) == []


def test_not_bootable_image_stops_before_writing(tmp_path: Path) -> None:
    tag = "localhost/imagemode/not-bootable:test"
    tar = tmp_path / "t.tar"
    subprocess.run(["tar", "-cf", str(tar), "-C", str(tmp_path), "--files-from=/dev/null"], check=True)
    podman("import", str(tar), tag)
    out = tmp_path / "out"
    try:
        err = one_line_error(imagemode("disk", tag, "-o", str(out), check=False))
    finally:
        podman("rmi", "-f", tag, check=False)
    assert "fails lint" in err and "kernel: no kernel" in err
    assert not out.exists()


def test_full_output_disk(hello: str, tmp_path: Path) -> None:
    out = tmp_path / "small"
    out.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(out)], check=True)
    try:
        err = one_line_error(imagemode("disk", HELLO, "-o", str(out), check=False))
        assert "No space left on device" in err or "no space left on device" in err
        assert list(out.iterdir()) == []  # no half-written disk, no temporary file
    finally:
        subprocess.run(["umount", str(out)], check=False)


def test_qemu_missing_says_how_to_install(tmp_path: Path) -> None:
    fake = tmp_path / "disk.qcow2"
    fake.write_bytes(b"")
    env = {**os.environ, "PATH": "/nonexistent"}
    p = subprocess.run(
        [sys.executable, "-m", "imagemode", "vm", str(fake), "--exec", "true"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    err = one_line_error(p)
    assert "apt-get install qemu-system-x86" in err
