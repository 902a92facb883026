"""The device lifecycle on the real thing: a v1 disk, a real registry on 127.0.0.1, QEMU.

One VM on a copy-on-write overlay goes through three boots, in this order (the tests share it and
run in file order):

1. v1: `bootc` as its callers run it, no update, bad input of every kind, auth files, an /etc
   conflict, `upgrade --check`, `--download-only` (with a bound image from the htpasswd registry),
   then flightctl's sequence through the `bootc` name: status, `podman pull` with the OS image's pull
   secret, `switch --transport containers-storage --retain` (with progress-v0 lines), `upgrade
   --apply`, which reboots: QEMU runs with -no-reboot, so that is a power-off, and the staged
   deployment is finalized on the way down.
2. v2: booted with the local /etc edit and v2's new default, the image in status exactly as the agent
   gave it; the upgrade service finds nothing new and does not reboot; rollback, twice; prune; then
   the agent's `bootc rollback --apply`.
3. v1 again.

The guest reaches the registries through guestfwd: 10.0.2.100:5000 open, :5001 with htpasswd, :5002
a port where nothing listens.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from imagemode.vm.qemu import VM, free_port, overlay
from imagemode.vm.registry import Registry, insecure_conf
from tests import hostile
from tests.conftest import GUEST_REGISTRY, HELLO_V1, HELLO_V2, digest_of, imagemode, podman
from tests.hostile import Image, Layer

pytestmark = [pytest.mark.vm, pytest.mark.incremental]
POWER_ONS = 3  # QEMU starts (tests/conftest.py)

SCHEMA = json.loads((Path(__file__).resolve().parent / "data/bootc-host-v1.schema.json").read_text())
GUEST = "10.0.2.100"
OPEN, AUTH, DEAD = GUEST_REGISTRY, f"{GUEST}:5001", f"{GUEST}:5002"  # the disk follows DEVICE_TARGET
V1, V2 = HELLO_V1, HELLO_V2
# v2 as the device meets it: hello v2 plus a /var directory whose name has a space and a kernel argument
# with GRUB's special characters, quoted (the honest cases of the hostile-input issue).
V2X = "localhost/imagemode/hello:lc-v2x"
BOUND = f"{AUTH}/imagemode/bound:1"  # V2X binds it: pulled with /etc/ostree/auth.json alone
AGENT_REF = f"{AUTH}/imagemode/hello-next:v2"  # what the fleet agent pulls and switches to
PROGRESS = json.loads((Path(__file__).resolve().parent / "data/bootc-progress-v0.schema.json").read_text())
QUOTED_KARG = 'hello.quoted="semi;colon$dollar"'
CONFLICT = "localhost/imagemode/hello:lc-conflict"
LOCAL_EDIT = "edited on the device"
# v1 with one package at another version, rechunked: what `upgrade --check` previews. tzdata has more
# than one version in Debian 12's archive (main, -updates, -security); the build takes one that is not
# v1's, and fails if the mirror has none.
PREVIEW = "localhost/imagemode/hello:lc-preview"
PREVIEW_RUN = (
    "RUN apt-get update && now=$(dpkg-query -W -f '${Version}' tzdata)"
    " && other=$(apt-cache madison tzdata | awk -v now=\"$now\" '$3 != now {print $3; exit}')"
    ' && test -n "$other" && apt-get install -y --allow-downgrades "tzdata=$other" && apt-get clean'
    " && rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log /var/log/alternatives.log\n"
)


@pytest.fixture(scope="module")
def images(hello_images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    ctx = tmp_path_factory.mktemp("conflict")
    # v1, and /etc/imagemode-test.d is a directory: the device makes it a file first. (FROM v1: the
    # upgrade to v2 below must still find v2's own layer missing.)
    (ctx / "Containerfile").write_text(
        f"FROM {V1}\nRUN mkdir /etc/imagemode-test.d && echo x > /etc/imagemode-test.d/a\n"
    )
    imagemode("build", "-t", CONFLICT, str(ctx))
    v2x = tmp_path_factory.mktemp("v2x")
    (v2x / "60-quoted.toml").write_text(f"kargs = [{json.dumps(QUOTED_KARG)}]\n")
    (v2x / "Containerfile").write_text(
        f"FROM {V2}\nCOPY 60-quoted.toml /usr/lib/bootc/kargs.d/60-quoted.toml\n"
        'RUN mkdir -p "/var/lib/my app" && echo kept > "/var/lib/my app/state"\n'
        "RUN mkdir -p /usr/share/containers/systemd /usr/lib/bootc/bound-images.d"
        f" && printf '[Image]\\nImage={BOUND}\\n' > /usr/share/containers/systemd/lc-bound.image"
        " && ln -s /usr/share/containers/systemd/lc-bound.image /usr/lib/bootc/bound-images.d/\n"
    )
    imagemode("build", "-t", V2X, str(v2x))
    pv = tmp_path_factory.mktemp("preview")
    (pv / "Containerfile").write_text(f"FROM {V1}\n{PREVIEW_RUN}")
    podman("rmi", "-f", PREVIEW, check=False)  # its slots come from v1's label, not a stale tag's
    imagemode("build", "--rechunk", "-t", PREVIEW, str(pv))
    tar = ctx / "nokernel.tar"
    (ctx / "root/etc").mkdir(parents=True)
    (ctx / "root/etc/os-release").write_text("ID=nokernel\n")
    subprocess.run(["tar", "-C", str(ctx / "root"), "-cf", str(tar), "."], check=True)
    podman("import", str(tar), "localhost/imagemode/nokernel:lc")
    return {**hello_images, CONFLICT: digest_of(CONFLICT), V2X: digest_of(V2X), PREVIEW: digest_of(PREVIEW)}


@pytest.fixture(scope="module")
def registries(images: dict[str, str]) -> Iterator[tuple[Registry, Registry]]:
    with Registry() as open_, Registry(user="edge", password="s3cret") as auth:
        open_.push(f"containers-storage:{V1}", "imagemode/hello:latest")
        open_.push(f"containers-storage:{CONFLICT}", "imagemode/hello:conflict")
        open_.push("containers-storage:localhost/imagemode/nokernel:lc", "imagemode/nokernel:v1")
        auth.push(f"containers-storage:{V1}", "imagemode/hello:v1")
        auth.push(f"containers-storage:{V2X}", AGENT_REF.split("/", 1)[1])
        auth.push("containers-storage:localhost/imagemode/nokernel:lc", BOUND.split("/", 1)[1])
        yield open_, auth


@pytest.fixture(scope="module")
def disk(images: dict[str, str], device_disk: Path) -> Path:
    return device_disk


@pytest.fixture(scope="module")
def vm(
    disk: Path, registries: tuple[Registry, Registry], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VM]:
    d = tmp_path_factory.mktemp("lc-vm")
    open_, auth = registries
    fwds = [(GUEST, 5000, open_.port), (GUEST, 5001, auth.port), (GUEST, 5002, free_port())]
    machine = VM(overlay(disk, d / "overlay.qcow2"), serial_log=d / "serial.log", guestfwds=fwds)
    machine.ssh_key = disk.parent / "id_ed25519"
    with machine:
        machine.wait_ssh(900)
        conf = insecure_conf(OPEN, AUTH, DEAD)
        machine.exec(f"mkdir -p /etc/containers/registries.conf.d && cat > "
                     f"/etc/containers/registries.conf.d/50-test.conf <<'EOF'\n{conf}EOF")  # fmt: skip
        machine.exec(f"echo '{LOCAL_EDIT}' >> /etc/motd")
        yield machine
        machine.poweroff()


def status(vm: VM) -> dict[str, Any]:
    st: dict[str, Any] = json.loads(vm.exec("imagemode status --json").stdout)
    jsonschema.validate(st, SCHEMA)
    return st


def one_line_error(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode != 0, p.stdout + p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("imagemode: error:")]
    assert len(lines) == 1, p.stderr
    return lines[0]


def etc_state(vm: VM) -> str:
    return vm.exec("find /etc -xdev -printf '%p %s %m %T@\\n' | sort | md5sum; ostree admin status").stdout


# ---- boot 1: v1 -------------------------------------------------------------------------------------


def test_booted_v1_follows_the_registry(vm: VM, images: dict[str, str]) -> None:
    st = status(vm)
    booted = st["status"]["booted"]
    assert booted["image"]["imageDigest"] == images[V1]
    assert st["spec"]["image"] == {
        "image": f"{OPEN}/imagemode/hello:latest",
        "transport": "registry",
        "signature": None,
    }
    cmdline = vm.exec("cat /proc/cmdline").stdout.split()
    assert "hello.version=1" in cmdline and QUOTED_KARG.replace('"', "") not in cmdline
    assert vm.exec("systemctl is-enabled imagemode-upgrade.timer", check=False).stdout.strip() == "disabled"
    timer = vm.exec("systemctl show -p RandomizedDelayUSec -p FixedRandomDelay imagemode-upgrade.timer")
    assert sorted(timer.stdout.split()) == ["FixedRandomDelay=yes", "RandomizedDelayUSec=2h"], timer.stdout


def test_bootc_on_the_device_answers_as_bootc(vm: VM, images: dict[str, str]) -> None:
    """What greenboot, greenboot-rs, MicroShift and flightctl run, through the `bootc` name."""
    jq = vm.exec("bootc status --booted --json | jq -r '.status.type, .status.booted.image.imageDigest'")
    assert jq.stdout.split() == ["bootcHost", images[V1]]
    booted = json.loads(vm.exec("bootc status --booted --json --format-version=1").stdout)
    jsonschema.validate(booted, SCHEMA)
    assert booted["status"]["staged"] is None and booted["status"]["rollback"] is None
    for fmt in ("humanreadable", "yaml", "json"):  # every format, at a terminal too (script's pty)
        cmd = f"bootc status --booted --format {fmt}"
        for run in (cmd, f"script -qec '{cmd}' /dev/null"):
            p = vm.exec(run)
            assert "Rollback" not in p.stdout and p.stdout.strip(), (run, p.stdout)
    p = vm.exec("bootc install to-disk /dev/vda", check=False)
    assert (p.returncode, p.stderr) == (
        2, "bootc (imagemode): 'install' is not supported; see docs/bootc-differences.md\n")  # fmt: skip
    inspected = json.loads(vm.exec("bootc container inspect --json").stdout)
    assert "hello.version=1" in inspected["kargs"] and inspected["kernel"]["unified"] is False


def test_no_update_available(vm: VM) -> None:
    # latest is v1 pushed with gzip layers: another manifest digest, the same image (config digest).
    p = vm.exec("imagemode upgrade")
    assert p.stdout.startswith("no update available"), p.stdout
    assert status(vm)["status"]["staged"] is None


BAD = {
    "unparsable": ("imagemode switch 'Not A/Ref!!'", "invalid image reference"),
    "transport": ("imagemode switch --transport ftp x/y", "unknown transport 'ftp'"),
    "404": (f"imagemode switch {OPEN}/imagemode/absent:v1", "image not found"),
    "401": (f"imagemode switch {AUTH}/imagemode/hello:v1", "401 unauthorized"),
    "unreachable": (f"imagemode switch {DEAD}/imagemode/hello:v1", "registry unreachable"),
    "not bootable": (f"imagemode switch {OPEN}/imagemode/nokernel:v1", "is not bootable: no kernel"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_changes_nothing(vm: VM, case: str) -> None:
    before = etc_state(vm)
    command, expected = BAD[case]
    line = one_line_error(vm.exec(command, check=False))
    assert expected in line, line
    st = status(vm)
    assert st["status"]["staged"] is None
    assert st["spec"]["image"]["image"] == f"{OPEN}/imagemode/hello:latest"
    assert etc_state(vm) == before


def sentinels(vm: VM) -> str:
    """What a hostile image would go for on a device: its secrets, root's keys, /usr/local, /boot."""
    return vm.exec(
        "find /etc/shadow /root/.ssh /usr/local /boot -xdev -printf '%p %y %s %m %U %G %T@\\n'"
        " | sort | md5sum;"
        " md5sum /etc/shadow /root/.ssh/authorized_keys; ostree refs --repo=/sysroot/ostree/repo | md5sum"
    ).stdout


def hostile_images() -> dict[str, tuple[Image, str]]:
    """Images an attacker who can push the followed tag would push, and what the device must say."""
    lying = Layer.of(hostile.tar_bytes([("file", "usr/x", b"the attacker's bytes")]), gz=True)
    lying.diff_id = hostile.sha(b"another layer's tar")
    # The gzip bomb is on the host (test_hostile.py); here an 8 GiB sparse file, stopped at its header.
    bomb = Layer(hostile.sparse_bomb(), hostile.sha(b"unknown"))
    layers_of = {
        "symlink-etc": hostile.tar_bytes(
            [("sym", "evil", "/etc"), ("file", "evil/shadow", b"root::1:0:::::\n")]
        ),
        "symlink-root-ssh": hostile.tar_bytes(
            [("sym", "k", "/root/.ssh"), ("link", "k2", "k/authorized_keys")]
        ),
        "usr-local-chmod": hostile.tar_bytes([("sym", "l", "../../../usr/local"), ("dir", "l", 0o777)]),
        "boot-grub-cfg": hostile.tar_bytes([("sym", "b", "/boot"), ("file", "b/grub/grub.cfg", b"pwned")]),
    }
    out = {name: (Image([Layer.of(tar, gz=True)]), msg) for name, tar, msg in (
        ("symlink-etc", layers_of["symlink-etc"], "goes through 'evil', which is not a directory"),
        ("symlink-root-ssh", layers_of["symlink-root-ssh"], "is a hard link to 'k/authorized_keys'"),
        ("usr-local-chmod", layers_of["usr-local-chmod"], "replaces a file or symlink of the same layer"),
        ("boot-grub-cfg", layers_of["boot-grub-cfg"], "goes through 'b', which is not a directory"),
    )}  # fmt: skip
    out["lying-diff-id"] = (Image([lying]), f"not the diff_id {lying.diff_id}")
    out["sparse-bomb"] = (Image([bomb]), "expands past")
    return out


def test_hostile_upgrades_are_refused_and_the_device_is_untouched(
    vm: VM, registries: tuple[Registry, Registry], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Whoever can push the tag the device follows pushes images that reach outside the store."""
    open_ = registries[0]
    d = tmp_path_factory.mktemp("hostile")
    before, etc_before = sentinels(vm), etc_state(vm)
    try:
        for name, (img, expected) in hostile_images().items():
            img.write(d / name)
            open_.push(f"oci:{d / name}:latest", "imagemode/hello:latest")
            line = one_line_error(vm.exec("imagemode upgrade", check=False))
            assert expected in line, (name, line)
            assert status(vm)["status"]["staged"] is None, name
            assert sentinels(vm) == before, f"{name} changed the device"
        assert etc_state(vm) == etc_before
    finally:
        open_.push(f"containers-storage:{V1}", "imagemode/hello:latest")
    assert vm.exec("imagemode upgrade").stdout.startswith(
        "no update available"
    )  # and the device still works


def test_an_update_that_cannot_fit_is_refused_before_any_download(
    vm: VM, registries: tuple[Registry, Registry], tmp_path_factory: pytest.TempPathFactory
) -> None:
    open_ = registries[0]

    def free() -> int:
        return int(vm.exec("sync; df -B1 --output=avail /sysroot | tail -1").stdout)

    d = tmp_path_factory.mktemp("too-big")
    big = hostile.tar_bytes(
        [("file", "usr/share/big", os.urandom(120 << 20))]
    )  # random: gzip cannot shrink it
    Image([Layer.of(big)]).write(d / "big")
    open_.push(f"oci:{d / 'big'}:latest", "imagemode/hello:latest")
    # Leave the device about 300 MB: the layer needs 120 MB to download and about 3x that unpacked.
    vm.exec(f"fallocate -l {free() - 300_000_000} /var/tmp/filler")
    try:
        before = free()
        line = one_line_error(vm.exec("imagemode upgrade", check=False))
        assert "the update needs about 377.5 MB (125.8 MB to download" in line, line
        assert "MB free; nothing was downloaded" in line
        assert abs(free() - before) < 4 << 20  # a journal line or two, not a layer
        assert status(vm)["status"]["staged"] is None
    finally:
        vm.exec("rm -f /var/tmp/filler")
        open_.push(f"containers-storage:{V1}", "imagemode/hello:latest")


def test_a_check_cannot_outlive_its_timeout(vm: VM) -> None:
    """A check that leaves its session (setsid) is still in its own cgroup, and dies with it."""
    vm.exec(
        "mkdir -p /etc/imagemode/check/wanted.d && printf '[timeouts]\\n\"50-escape.sh\" = 3\\n' >"
        " /etc/imagemode/health.toml && printf '#!/bin/sh\\nsetsid sleep 777 &\\nsleep 60\\n' >"
        " /etc/imagemode/check/wanted.d/50-escape.sh && chmod +x /etc/imagemode/check/wanted.d/50-escape.sh"
    )
    try:
        out = vm.exec("imagemode health --json", check=False).stdout
        results = {r["name"]: r for r in json.loads(out)["results"]}
        assert results["50-escape.sh"]["reason"] == "timed out after 3s", results
        assert vm.exec("pgrep -f 'sleep 777'", check=False).returncode == 1, "the check's child survived"
    finally:
        vm.exec("rm -rf /etc/imagemode/check /etc/imagemode/health.toml; pkill -f 'sleep 777'", check=False)


def test_auth_file_must_be_private_and_is_used(vm: VM) -> None:
    auth = json.dumps({"auths": {AUTH: {"auth": "ZWRnZTpzM2NyZXQ="}}})  # edge:s3cret
    vm.exec(
        f"mkdir -p /etc/ostree && echo '{auth}' > /etc/ostree/auth.json && chmod 644 /etc/ostree/auth.json"
    )
    line = one_line_error(vm.exec(f"imagemode switch {AUTH}/imagemode/hello:v1", check=False))
    assert "open to other users (mode 0644)" in line
    vm.exec("chmod 600 /etc/ostree/auth.json")
    # The same image as the booted one under another name: as bootc, a deployment of the booted commit
    # that follows the new name, staged (something for an agent's `upgrade --apply` to reboot into).
    p = vm.exec(f"imagemode switch {AUTH}/imagemode/hello:v1")
    assert "is the booted image under another name: staged a deployment" in p.stdout, p.stdout
    st = status(vm)
    assert st["spec"]["image"]["image"] == f"{AUTH}/imagemode/hello:v1"
    assert st["status"]["staged"]["ostree"]["checksum"] == st["status"]["booted"]["ostree"]["checksum"]
    assert vm.exec(f"imagemode switch {AUTH}/imagemode/hello:v1").stdout.startswith("already staged")
    # The pull secret stays, as a fleet agent leaves it: the bound image and the agent's pull use it.
    vm.exec(f"imagemode switch {OPEN}/imagemode/hello:latest")  # back: the staged one is dropped
    st = status(vm)
    assert (
        st["status"]["staged"] is None and st["spec"]["image"]["image"] == f"{OPEN}/imagemode/hello:latest"
    )


def test_etc_file_that_becomes_a_directory_is_refused(vm: VM) -> None:
    vm.exec("echo mine > /etc/imagemode-test.d")
    try:
        line = one_line_error(vm.exec(f"imagemode switch {OPEN}/imagemode/hello:conflict", check=False))
        assert "/etc/imagemode-test.d (file here, directory in the new image)" in line
        assert "Nothing was staged" in line
        assert status(vm)["status"]["staged"] is None
    finally:
        vm.exec("rm -f /etc/imagemode-test.d")


def _layers(ref: str, tls: bool = True) -> list[tuple[str, int]]:
    """(diff_id, size as served) of each layer of an image."""

    def inspect(*what: str) -> Any:
        cmd = ["skopeo", "inspect", *what, *([] if tls else ["--tls-verify=false"]), ref]
        return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)

    raw, cfg = inspect("--raw"), inspect("--config")
    return list(zip(cfg["rootfs"]["diff_ids"], [int(d["size"]) for d in raw["layers"]], strict=True))


def test_check_previews_one_package_change_before_any_layer_is_fetched(
    vm: VM, registries: tuple[Registry, Registry], images: dict[str, str]
) -> None:
    """v2 is v1 with tzdata at another version, rechunked: `upgrade --check` names tzdata with both
    versions and the bytes of the layers the device lacks, and fetches none of them."""
    open_ = registries[0]
    open_.push(f"containers-storage:{PREVIEW}", "imagemode/hello:latest")
    have = {d for d, _ in _layers(f"containers-storage:{V1}")}
    served = _layers(f"docker://{open_.address}/imagemode/hello:latest", tls=False)
    want = sum(size for d, size in served if d not in have)
    missing = sum(1 for d, _ in served if d not in have)
    assert 0 < missing < len(served) / 4, (missing, len(served))  # the base's layers are v1's own
    refs = vm.exec("ostree refs --repo=/sysroot/ostree/repo | sort").stdout
    out = vm.exec("imagemode upgrade --check").stdout
    booted = vm.exec("dpkg-query -W -f '${Version}' tzdata").stdout.strip()
    pv = json.loads(vm.exec("imagemode upgrade --check --json").stdout)
    (row,) = pv["packages"]["downgraded"] or pv["packages"]["upgraded"]
    assert row["name"] == "tzdata" and row["from"] == booted and row["to"] != booted
    assert sum(len(v) for v in pv["packages"].values()) == 1, pv["packages"]  # tzdata, and nothing else
    assert (pv["download_bytes"], pv["layers_to_download"], pv["layers_total"]) == (
        want,
        missing,
        len(served),
    )
    assert f"tzdata {booted} -> {row['to']}" in out, out
    assert f"in {missing} of {len(served)} layers" in out and "packages: 1 " in out, out
    assert vm.exec("ostree refs --repo=/sysroot/ostree/repo | sort").stdout == refs  # nothing fetched
    cached = status(vm)["status"]["booted"]["cachedUpdate"]
    assert cached["preview"]["downloadBytes"] == want
    human = vm.exec("imagemode status --format humanreadable").stdout
    assert f"{want / 1e6:.1f} MB to download; 1 package changes" in human, human
    # Another image, built FROM v1 without --rechunk: its inherited label does not name its own layers,
    # so no package list is claimed for it, and cachedUpdate (the followed image's) stays as it was.
    other = json.loads(vm.exec(f"imagemode switch --check --json {OPEN}/imagemode/hello:conflict").stdout)
    assert other["outcome"] == "update-available" and other["packages"] is None
    assert "may change packages" in other["packages_note"]
    assert status(vm)["status"]["booted"]["cachedUpdate"] == cached
    assert vm.exec("ostree refs --repo=/sysroot/ostree/repo | sort").stdout == refs


def test_check_fills_cached_update(
    vm: VM, registries: tuple[Registry, Registry], images: dict[str, str]
) -> None:
    registries[0].push(f"containers-storage:{V2X}", "imagemode/hello:latest")
    out = vm.exec("imagemode upgrade --check").stdout
    assert out.startswith("update available"), out
    st = status(vm)
    cached = st["status"]["booted"]["cachedUpdate"]
    assert cached["imageDigest"] != st["status"]["booted"]["image"]["imageDigest"]
    assert cached["version"] == "2"
    assert st["status"]["staged"] is None
    human = vm.exec("imagemode status --format humanreadable").stdout
    assert f"Update available: {OPEN}/imagemode/hello:latest {cached['imageDigest']}" in human


def test_download_only_then_upgrade(vm: VM) -> None:
    p = vm.exec("imagemode upgrade --download-only --json")
    result = json.loads(p.stdout)
    assert result["outcome"] == "downloaded"
    total = len(_layers(f"containers-storage:{V2X}"))
    assert result["layers_fetched"] == 4 and result["layers_total"] == total, result  # v2's, and V2X's three
    st = status(vm)
    assert st["status"]["staged"]["downloadOnly"] is True
    assert st["status"]["staged"]["image"]["version"] == "2"
    assert st["status"]["booted"]["cachedUpdate"] is None
    assert "Download only" in vm.exec("imagemode status --format humanreadable").stdout
    # A plain upgrade of the same image lifts the hold.
    assert vm.exec("imagemode upgrade").stdout.startswith("already staged")
    assert status(vm)["status"]["staged"]["downloadOnly"] is False
    # V2X's bound image came from the htpasswd registry with /etc/ostree/auth.json, podman's own
    # credential files being absent.
    assert vm.exec(f"podman image exists {BOUND}", check=False).returncode == 0
    assert vm.exec("ls /run/containers/0/auth.json /root/.config/containers/auth.json "
                   "/root/.docker/config.json", check=False).returncode != 0  # fmt: skip
    # Staging pruned what no deployment uses: the conflict image, imported and refused, is gone.
    refs = vm.exec("ostree refs --repo=/sysroot/ostree/repo").stdout
    assert "hello_conflict" not in refs and "hello_latest" in refs


def test_an_agent_switches_through_containers_storage(vm: VM) -> None:
    """flightctl's sequence, by the bootc name: status, a pull with the OS image's pull secret, then a
    switch to the pulled image in containers-storage (--retain, as flightctl passes it)."""
    jsonschema.validate(json.loads(vm.exec("bootc status --json").stdout), SCHEMA)
    vm.exec(f"podman pull --quiet --authfile /etc/ostree/auth.json {AGENT_REF}")
    vm.exec(f"bootc switch --transport containers-storage --retain --progress-fd 3 {AGENT_REF}"
            " 3>/run/lc-progress.jsonl")  # fmt: skip
    lines = [json.loads(ln) for ln in vm.exec("cat /run/lc-progress.jsonl").stdout.splitlines()]
    for line in lines:
        jsonschema.validate(line, PROGRESS)
    assert lines[0] == {"type": "Start", "version": "0.1.0"}
    assert {x["task"] for x in lines[1:]} >= {"pulling", "staging"}
    assert lines[-1]["task"] == "staging" and all(t["completed"] for t in lines[-1]["subtasks"])
    st = json.loads(vm.exec("bootc status --json").stdout)
    jsonschema.validate(st, SCHEMA)
    assert st["spec"]["image"] == {"image": AGENT_REF, "transport": "containers-storage", "signature": None}
    staged = st["status"]["staged"]
    assert staged["image"]["image"]["image"] == AGENT_REF and staged["image"]["version"] == "2"


def test_the_agents_upgrade_apply_reboots(vm: VM) -> None:
    """`bootc upgrade --apply` finds the switch staged and reboots into it (here: powers off)."""
    vm.exec("bootc upgrade --apply", check=False)  # the connection ends with the reboot
    vm.wait_down(300)
    # The guest rebooted (under -no-reboot QEMU then exits), rather than powering off; the next test
    # boots what was staged.
    assert "reboot: Restarting system" in vm.console, vm.console[-2000:]


# ---- boot 2: v2 -------------------------------------------------------------------------------------


def test_v2_booted_with_local_etc_kept(vm: VM, images: dict[str, str]) -> None:
    vm.start().wait_ssh(900)
    st = status(vm)
    assert st["status"]["booted"]["image"]["version"] == "2"
    agent = json.loads(vm.exec("bootc status --json").stdout)
    jsonschema.validate(agent, SCHEMA)
    assert agent["status"]["booted"]["image"]["image"]["image"] == AGENT_REF  # byte for byte
    assert agent["spec"]["image"]["image"] == AGENT_REF
    assert st["status"]["rollback"]["image"]["imageDigest"] == images[V1]
    assert vm.exec("test -e /usr/share/hello/v2").returncode == 0
    assert LOCAL_EDIT in vm.exec("cat /etc/motd").stdout  # the local edit, merged
    assert vm.exec("cat /etc/hello.conf").stdout == "greeting = hello from v2\n"  # v2's new default
    cmdline = vm.exec("cat /proc/cmdline").stdout.split()
    assert "hello.version=2" in cmdline and "hello.version=1" not in cmdline  # kargs.d replaced
    assert any(a.startswith("root=UUID=") for a in cmdline)  # the machine's own kept
    # GRUB read `;` and `$` literally and dropped only the kernel-level quotes (docs/boot.md).
    assert QUOTED_KARG.replace('"', "") in cmdline
    assert vm.exec("cat '/var/lib/my app/state'").stdout == "kept\n"  # a /var name with a space
    assert vm.exec("systemctl --failed --no-legend --plain").stdout.strip() == ""


def test_upgrade_service_finds_nothing_new_and_does_not_reboot(vm: VM) -> None:
    """The timer's service (`upgrade --apply --quiet`): what it follows is booted, so it ends well and
    the device stays up."""
    vm.exec("systemctl start imagemode-upgrade.service")  # a oneshot: returns when it has run
    ran = vm.exec("systemctl show -p Result -p ExecMainStatus -p ActiveState imagemode-upgrade").stdout
    assert sorted(ran.split()) == ["ActiveState=inactive", "ExecMainStatus=0", "Result=success"], ran
    assert vm.exec("systemctl is-system-running", check=False).stdout.strip() in ("running", "degraded")
    assert status(vm)["status"]["staged"] is None


def test_rollback_twice_undoes(vm: VM) -> None:
    # The boot's verdict clears v2's counter under the sysroot lock (rollback would wait for it); the
    # story has the verdict first. A start of its oneshot unit returns once that run has finished.
    vm.exec("systemctl start imagemode-health.service")
    assert vm.exec("imagemode rollback").stdout.startswith("next boot:")
    assert status(vm)["status"]["rollbackQueued"] is True
    assert "Rollback queued" in vm.exec("imagemode status --format humanreadable").stdout
    assert vm.exec("imagemode rollback").stdout.startswith("rollback undone")
    assert status(vm)["status"]["rollbackQueued"] is False


def test_prune_keeps_what_deployments_use(vm: VM) -> None:
    # The upgrade removed refs; imagemode-prune.service freed their objects at this boot.
    vm.exec("systemctl is-system-running --wait", check=False)  # the boot's jobs, this one included
    ran = vm.exec("systemctl show -p Result -p ExecMainStartTimestampMonotonic imagemode-prune").stdout
    assert "Result=success" in ran and "ExecMainStartTimestampMonotonic=0" not in ran, ran
    assert vm.exec("test -e /sysroot/ostree/imagemode/prune-pending", check=False).returncode != 0
    result = json.loads(vm.exec("imagemode prune --json").stdout)
    assert result["deployments_removed"] == 0 and result["bytes_freed"] >= 0, result
    deployed = set(vm.exec("ls /ostree/deploy/default/deploy | grep -v origin | cut -d. -f1").stdout.split())
    for ref in vm.exec("ostree refs --repo=/sysroot/ostree/repo imagemode/image").stdout.split():
        commit = vm.exec(
            f"ostree rev-parse --repo=/sysroot/ostree/repo imagemode/image/{ref}"
        ).stdout.strip()
        assert commit.strip() in deployed, ref


def test_a_download_only_update_before_a_reboot(vm: VM) -> None:
    """The agent's tag now names another image (the conflict one, FROM v1): downloaded, not applied. The
    rollback below drops the held deployment; boot 3 finds what was fetched still in the store."""
    conflict = f"{OPEN}/imagemode/hello:conflict"
    vm.exec(f"podman pull --quiet {conflict} && podman tag {conflict} {AGENT_REF}")
    r = json.loads(vm.exec("imagemode upgrade --download-only --json").stdout)
    assert r["outcome"] == "downloaded" and r["layers_fetched"] >= 1, r  # its layer was pruned in boot 1


def test_usr_overlay_is_writable_until_the_next_boot(vm: VM) -> None:
    assert vm.exec("touch /usr/lc-overlay", check=False).returncode != 0  # /usr is read-only
    out = vm.exec("bootc usr-overlay").stdout
    assert out.startswith("a writable overlay is mounted on /usr"), out
    vm.exec("touch /usr/lc-overlay")
    assert status(vm)["status"]["usrOverlay"] == {"accessMode": "readWrite", "persistence": "transient"}
    p = vm.exec("imagemode usr-overlay", check=False)
    assert p.returncode == 1 and p.stderr.startswith("imagemode: error: /usr already has an overlay"), (
        p.stderr
    )


def test_the_agents_rollback_apply_reboots(vm: VM) -> None:
    """A third rollback queues v1 again, and --apply reboots into it (the next boot shows v1)."""
    vm.exec("bootc rollback --apply", check=False)  # the connection ends with the reboot
    vm.wait_down(300)
    assert "reboot: Restarting system" in vm.console, vm.console[-2000:]


# ---- boot 3: v1 again -------------------------------------------------------------------------------


def test_rolled_back_to_v1(vm: VM, images: dict[str, str]) -> None:
    vm.start().wait_ssh(900)
    st = status(vm)
    assert st["status"]["booted"]["image"]["imageDigest"] == images[V1]
    assert st["status"]["rollback"]["image"]["version"] == "2"
    assert vm.exec("test -e /usr/share/hello/v2", check=False).returncode != 0  # the v2 marker is gone
    assert vm.exec("cat /usr/share/hello/release").stdout == "hello v1\n"
    assert st["status"]["usrOverlay"] is None  # boot 2's overlay was v2's, and transient
    cmdline = vm.exec("cat /proc/cmdline").stdout.split()
    assert "hello.version=1" in cmdline and QUOTED_KARG.replace('"', "") not in cmdline


def test_what_was_downloaded_outlives_the_deployment_it_was_for(vm: VM) -> None:
    """A prune after the reboot keeps what --download-only fetched: a switch to it fetches no layer."""
    jsonschema.validate(status(vm), SCHEMA)
    vm.exec("imagemode prune --quiet")
    r = json.loads(vm.exec(f"imagemode switch --transport containers-storage {AGENT_REF} --json").stdout)
    assert r["outcome"] == "staged" and r["layers_fetched"] == 0, r
