"""Image → ostree → disk → boot, on the real thing: the base image, the hello example, QEMU and OVMF,
and a device that enforces signatures (`disk --enforce-container-sigpolicy`).

The disk is built once for the module, from hello plus what verifies signatures: a policy.json that
requires the fleet key for the registry the device follows and for the bundles' identity, the key, and
registries.d naming the lookaside. The VM boots from it with `snapshot=on`, so the disk file is never
written. It reaches a registry (10.0.2.100:5000) and the lookaside the signatures are served from
(10.0.2.100:5003) through guestfwd, and has a second disk holding bundles, the USB stick.

Its one power-on is the suite's read-only boot: every check that only reads a booted device (status,
the kernel command line, units, the filesystem layout, users, the GRUB menu) runs here first, before
the signature stories change anything. A new read-only check belongs here, and costs no power-on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from imagemode.oci.policy import Trust
from imagemode.oci.reference import parse_local
from imagemode.store import importer
from imagemode.store.ostree import Repo
from imagemode.vm.qemu import VM
from imagemode.vm.registry import Registry, insecure_conf
from tests import signing
from tests.conftest import ROOT, imagemode, podman
from tests.hostile import Image, Layer, tar_bytes

pytestmark = pytest.mark.vm
POWER_ONS = 1  # QEMU starts (tests/conftest.py)

HELLO = "localhost/imagemode/hello:test"
HELLO_V2 = "localhost/imagemode/hello:test-v2"
SIGNED = "localhost/imagemode/hello:signed"  # hello, with the fleet's policy and key
SIGNED_V2 = "localhost/imagemode/hello:signed-v2"
UNSIGNED_V3 = "localhost/imagemode/hello:signed-v3"
KARG = "imagemode.test=hello"
SCHEMA = json.loads((Path(__file__).resolve().parent / "data/bootc-host-v1.schema.json").read_text())
GUEST = "10.0.2.100"
FOLLOWS = f"{GUEST}:5000/imagemode/signed"  # the repository the device follows
FLEET = "registry.example.com/fleet/os"  # the identity bundles are signed as
POLICY = "/etc/containers/policy.json"


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
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, signing.Key]:
    d = tmp_path_factory.mktemp("keys")
    return {name: signing.make_key(d, name) for name in ("owner", "other")}


@pytest.fixture(scope="module")
def signed(hello: str, keys: dict[str, signing.Key], tmp_path_factory: pytest.TempPathFactory) -> str:
    """hello with the fleet's trust, as docs/signing.md writes it; then v2 and v3 on top."""
    ctx = tmp_path_factory.mktemp("signed")
    (ctx / "fleet.gpg").write_bytes(keys["owner"].public.read_bytes())
    key = "/etc/pki/containers/fleet.gpg"
    (ctx / "policy.json").write_text(signing.policy({FOLLOWS: [key], FLEET: [key]}))
    (ctx / "lookaside.yaml").write_text(f"docker:\n  {GUEST}:5000:\n    lookaside: http://{GUEST}:5003\n")
    (ctx / "registry.conf").write_text(insecure_conf(f"{GUEST}:5000"))
    (ctx / "Containerfile").write_text(
        f"FROM {HELLO}\n"
        "COPY policy.json /etc/containers/policy.json\n"
        f"COPY fleet.gpg {key}\n"
        "COPY lookaside.yaml /etc/containers/registries.d/fleet.yaml\n"
        "COPY registry.conf /etc/containers/registries.conf.d/50-fleet.conf\n"
    )
    imagemode("build", "-t", SIGNED, str(ctx))
    for tag, marker in ((SIGNED_V2, "signed v2"), (UNSIGNED_V3, "v3")):
        (ctx / "Containerfile").write_text(f"FROM {SIGNED}\nRUN echo '{marker}' > /usr/share/hello/marker\n")
        imagemode("build", "-t", tag, str(ctx))
    digest: str = json.loads(podman("image", "inspect", SIGNED).stdout)[0]["Digest"]
    return digest


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, signing.Lookaside, Trust]]:
    d = tmp_path_factory.mktemp("site")
    lookaside = signing.Lookaside(d / "sigs")
    with Registry() as reg:
        regd = signing.registries_d(d / "registries.d", reg.address, "http://unused", staging=lookaside.root)
        yield reg, lookaside, Trust(registries_d=regd)
    lookaside.stop()


def push(
    site: tuple[Registry, signing.Lookaside, Trust], image: str, key: signing.Key | None = None
) -> None:
    """`image` to the followed tag, signed as the guest names it."""
    reg, _, trust = site
    if key is None:
        reg.push(f"containers-storage:{image}", "imagemode/signed:latest")
        return
    with key.active():
        reg.push(f"containers-storage:{image}", "imagemode/signed:latest", sign_by=key.fingerprint,
                 trust=trust, sign_identity=f"{FOLLOWS}:latest")  # fmt: skip


@pytest.fixture(scope="module")
def bundles(
    signed: str, keys: dict[str, signing.Key], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """The USB stick: v2 signed as the fleet's image, and two tampered bundles, on ext4 (BUNDLES)."""
    d = tmp_path_factory.mktemp("bundles")
    content = d / "content"
    content.mkdir()
    with keys["owner"].active():
        out = json.loads(imagemode(
            "bundle", SIGNED_V2, "-o", str(content / "v2.tar"), "--sign-by", keys["owner"].fingerprint,
            "--sign-identity", f"{FLEET}:2", "--json",
        ).stdout)  # fmt: skip
    assert out["signed_as"] == f"{FLEET}:2", out
    small = Image([Layer.of(tar_bytes([("file", "usr/share/small", b"small")]), gz=True)])
    tiny = signing.sign_archive(small.archive(d / "tiny.tar"), keys["owner"], f"{FLEET}:tiny")
    name, cfg = signing.config_blob(tiny)
    signing.replace_member(tiny, name, cfg.replace(b"amd64", b"amd65"), content / "one-byte.tar")
    other = Image([Layer.of(tar_bytes([("file", "usr/share/other", b"other")]), gz=True)])
    signing.graft_signatures(content / "v2.tar", other.archive(content / "same-signature.tar"))
    size = sum(p.stat().st_size for p in content.iterdir()) + (64 << 20)
    img = d / "bundles.img"
    with open(img, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "BUNDLES", "-d", str(content), str(img)], check=True)
    return {"disk": str(img), "v2": out["digest"]}


@pytest.fixture(scope="module")
def ssh_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("key")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "key")], check=True)
    return d / "key"


@pytest.fixture(scope="module")
def disk(signed: str, ssh_key: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("disk")
    cfg = out / "config.toml"
    pub = ssh_key.with_suffix(".pub").read_text().strip()
    cfg.write_text(
        f'[[customizations.user]]\nname = "root"\nkey = "{pub}"\n\n'
        f'[[customizations.user]]\nname = "edge"\nkey = "{pub}"\n'
        'groups = ["sudo"]\n\n'
        f'[customizations.kernel]\nappend = "{KARG}"\n'
    )
    p = imagemode("disk", SIGNED, "--config", str(cfg), "-o", str(out / "out"), "--json",
                  "--target-imgref", f"{FOLLOWS}:latest", "--enforce-container-sigpolicy")  # fmt: skip
    result = json.loads(p.stdout)
    assert result["image_digest"] == signed
    assert result["ssh_key"] is None  # the config's key is the way in
    assert result["enforce"] is True and result["target"] == f"docker://{FOLLOWS}:latest"
    return out / "out/disk.qcow2"


@pytest.fixture(scope="module")
def vm(
    disk: Path,
    ssh_key: Path,
    site: tuple[Registry, signing.Lookaside, Trust],
    bundles: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[VM]:
    log = tmp_path_factory.mktemp("vm") / "serial.log"
    reg, lookaside, _ = site
    machine = VM(disk, snapshot=True, ssh_key=ssh_key, serial_log=log, extra_disks=[Path(bundles["disk"])],
                 guestfwds=[(GUEST, 5000, reg.port), (GUEST, 5003, lookaside.port)])  # fmt: skip
    mtime = disk.stat().st_mtime
    with machine:
        machine.wait_ssh(900)
        yield machine
        machine.poweroff()
    assert disk.stat().st_mtime == mtime, "snapshot=on must never write to the disk file"


def status(vm: VM) -> dict[str, Any]:
    st: dict[str, Any] = json.loads(vm.exec("imagemode status --json").stdout)
    jsonschema.validate(st, SCHEMA)
    return st


def test_status_json_validates_and_names_the_image(vm: VM, signed: str) -> None:
    st = json.loads(vm.exec("imagemode status --json").stdout)
    jsonschema.validate(st, SCHEMA)
    booted = st["status"]["booted"]
    assert booted["image"]["imageDigest"] == signed
    followed = {"image": f"{FOLLOWS}:latest", "transport": "registry", "signature": "containerPolicy"}
    assert booted["image"]["image"] == followed and st["spec"]["image"] == followed
    assert booted["image"]["version"] == "1"
    assert st["status"]["staged"] is None and st["status"]["rollback"] is None
    yaml_out = vm.exec("imagemode status").stdout  # not a terminal: YAML, as bootc does
    assert "kind: BootcHost" in yaml_out
    assert "ostree-image-signed:" in vm.exec("cat /ostree/deploy/default/deploy/*.origin").stdout


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


# ---- signatures, enforced ----------------------------------------------------------------------------


def test_unsigned_and_foreign_signed_updates_are_refused(
    vm: VM, site: tuple[Registry, signing.Lookaside, Trust], keys: dict[str, signing.Key]
) -> None:
    """Whoever can push the followed tag, without the fleet's key: nothing is staged, /etc untouched."""
    etc = vm.exec("find /etc -xdev -printf '%p %s %T@\\n' | sort | md5sum").stdout
    push(site, UNSIGNED_V3)
    line = one_line_error(vm.exec("imagemode upgrade", check=False))
    assert line == (
        f"imagemode: error: not signed by a key that {POLICY} trusts for {FOLLOWS} (signature missing);"
        " nothing was staged"
    ), line
    push(site, UNSIGNED_V3, keys["other"])  # the same image, now with a signature by another key
    line = one_line_error(vm.exec("imagemode upgrade", check=False))
    assert f"trusts for {FOLLOWS} (signed by a key it does not trust); nothing was staged" in line, line
    assert status(vm)["status"]["staged"] is None
    assert vm.exec("find /etc -xdev -printf '%p %s %T@\\n' | sort | md5sum").stdout == etc


def test_signed_update_is_staged_and_status_shows_enforcement(
    vm: VM, site: tuple[Registry, signing.Lookaside, Trust], keys: dict[str, signing.Key]
) -> None:
    push(site, SIGNED_V2, keys["owner"])
    result = json.loads(vm.exec("imagemode upgrade --json").stdout)
    assert result["outcome"] == "staged" and result["layers_fetched"] == 1, result
    st = status(vm)
    staged = st["status"]["staged"]
    assert staged["image"]["image"]["signature"] == "containerPolicy", staged
    assert "Signature: required by the policy" in vm.exec("imagemode status --format humanreadable").stdout


def test_signed_bundle_switches_with_no_network_and_tampered_ones_are_refused(
    vm: VM, bundles: dict[str, str]
) -> None:
    vm.exec("mkdir -p /run/bundles && mount -o ro LABEL=BUNDLES /run/bundles")
    offline = "unshare --net imagemode switch --transport oci-archive"  # no network at all
    refused = {
        "one-byte.tar": "is missing or does not match its digest",  # the config, read from the tar
        "same-signature.tar": "the bundle's signatures are for " + bundles["v2"],
    }
    staged = status(vm)["status"]["staged"]
    for name, expected in refused.items():
        line = one_line_error(vm.exec(f"{offline} /run/bundles/{name}", check=False))
        assert expected in line, (name, line)
        assert status(vm)["status"]["staged"] == staged, name
    result = json.loads(vm.exec(f"{offline} /run/bundles/v2.tar --json").stdout)
    assert result["outcome"] == "staged" and result["digest"] == bundles["v2"], result
    st = status(vm)
    assert st["spec"]["image"] == {
        "image": "/run/bundles/v2.tar", "transport": "oci-archive", "signature": "containerPolicy"
    }  # fmt: skip


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


def test_enforce_needs_a_policy_that_can_verify(hello: str, signed: str, tmp_path: Path) -> None:
    """A disk whose device could not verify its first update is refused before anything is written."""
    out = tmp_path / "out"
    follows = ("--target-imgref", f"{FOLLOWS}:latest", "--enforce-container-sigpolicy")
    err = one_line_error(imagemode("disk", HELLO, "-o", str(out), *follows, check=False))  # Debian's policy
    assert "its default accepts any image, and signature enforcement is on" in err, err
    assert err.endswith("nothing was written"), err
    elsewhere = ("--target-imgref", "registry.example.com/other/os:1", "--enforce-container-sigpolicy")
    err = one_line_error(imagemode("disk", SIGNED, "-o", str(out), *elsewhere, check=False))
    assert "has no signature requirement for registry.example.com/other/os:1" in err, err
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
