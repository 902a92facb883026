"""Health checks and automatic rollback on the real thing: GRUB's boot counter, QEMU power cycles, and
a real registry on 127.0.0.1. Nobody types between a switch and the verdict: the test only starts QEMU
again when the guest powers itself off (a reboot, under -no-reboot) and reads the result at the end.

One VM on an overlay of the shared v1 disk, in file order:

1. v1 boots healthy. Switch to a v2 whose required check fails: MicroShift's check, by its real name and
   in greenboot's directory, copied in without its x bit (greenboot runs it with bash), beside a
   check that greenboot.conf disables and a hanging one after it that must never run (the first
   failure ends the checks). v2 boots once, fails, reboots by itself; GRUB boots v1, which marks v2
   failed and keeps itself as the default. v2's red.d hook, MicroShift's pre-rollback, acts only when
   `grub2-editenv - list` says boot_counter=0, and it does once.
2. With GREENBOOT_MAX_BOOT_ATTEMPTS=1 in greenboot.conf, switch to a v2 whose kernel argument panics the
   kernel (init=/bin/false): its one boot panics and reboots (panic=10); the next power-on is v1 again.
   (One try proves the fallback as well as three, for two power-ons less.)
3. Switch to a healthy v2 with failing wanted checks (one that fails, one that hangs, one not
   executable, one that prints binary garbage, one not a program, and a unit). Its first boot loses
   power once its checks have started, before their verdict: one try spent. It boots again, stays, its
   tries are cleared, so no later power cut can roll it back (bench/powercut.py's after-verdict
   trials cut there for real).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from bench import powercut
from imagemode.vm.qemu import VM, overlay
from imagemode.vm.registry import Registry, insecure_conf
from tests.conftest import GUEST_REGISTRY, HELLO_V1, HELLO_V2, imagemode

pytestmark = [pytest.mark.vm, pytest.mark.incremental]
POWER_ONS = 7  # QEMU starts (tests/conftest.py)

SCHEMA = json.loads((Path(__file__).resolve().parent / "data/bootc-host-v1.schema.json").read_text())
BAD, PANIC, GOOD = (f"localhost/imagemode/hello:health-{n}" for n in ("bad", "panic", "good"))
REMOTE = {tag: f"{GUEST_REGISTRY}/imagemode/hello:{tag.rsplit(':', 1)[1]}" for tag in (BAD, PANIC, GOOD)}

SH = "#!/bin/sh\n"
# Each check's timeout: enough for the trivial checks here on a loaded emulated guest, and every second
# of it is waited out twice by a check that hangs (at boot, and in the manual run).
CHECK_TIMEOUT = 8
X, R = 0o755, 0o644
GB = "etc/greenboot"  # greenboot's own directories, in the image's /etc (as MicroShift's RPM puts them)
MICROSHIFT = "40_microshift_running_check.sh"
BAD_FILES = {
    "usr/lib/imagemode/health.toml": (f"timeout = {CHECK_TIMEOUT}\n", R),
    f"{GB}/greenboot.conf": ('DISABLED_HEALTHCHECKS=("10-disabled.sh")\n', R),
    f"{GB}/check/required.d/10-disabled.sh": (
        SH + "mkdir -p /var/lib/health-test\necho ran > /var/lib/health-test/disabled-ran\nexit 1\n",
        X,
    ),
    "usr/lib/imagemode/check/required.d/20-ok.sh": (SH + "exit 0\n", X),
    f"{GB}/check/required.d/{MICROSHIFT}": ("echo 'database not ready'\nexit 1\n", R),
    "usr/lib/imagemode/check/required.d/50-hang.sh": (SH + "sleep 600\n", X),
    f"{GB}/red.d/40_microshift_pre_rollback.sh": (
        SH + "if grub2-editenv - list | grep -qx boot_counter=0; then\n  mkdir -p /var/lib/health-test\n"
        "  echo pre-rollback >> /var/lib/health-test/pre-rollback.log\nfi\n",
        X,
    ),
}
GOOD_FILES = {
    "usr/lib/imagemode/health.toml": (f"timeout = {CHECK_TIMEOUT}\n", R),
    "usr/lib/imagemode/check/required.d/10-release.sh": (
        SH + "grep -qx 'hello v2' /usr/share/hello/release\n", X),
    "usr/lib/imagemode/check/wanted.d/20-disk.sh": (SH + "echo 'disk 91% full'\nexit 1\n", X),
    "usr/lib/imagemode/check/wanted.d/30-hang.sh": (SH + "sleep 600\n", X),
    "usr/lib/imagemode/check/wanted.d/40-noexec": (SH + "exit 0\n", R),  # not a .sh: nothing runs it
    "usr/lib/imagemode/check/wanted.d/45-garbage.sh": (SH + "head -c 4096 /dev/urandom\nexit 7\n", X),
    "usr/lib/imagemode/green.d/10-log.sh": (
        SH + "mkdir -p /var/lib/health-test\necho green >> /var/lib/health-test/green.log\n", X),
    # A unit as a wanted check: boot-complete.target wants it, and it fails.
    "usr/lib/systemd/system/health-test-wanted.service": (
        "[Unit]\nBefore=boot-complete.target\n[Service]\nType=oneshot\n"
        "ExecStart=/bin/sh -c 'echo unit says no; exit 3'\n", R),
}  # fmt: skip
RED_D = (  # the device's own red.d script, in /etc: it runs whichever deployment is booted
    SH + 'mkdir -p /var/lib/health-test\necho "$IMAGEMODE_HEALTH $IMAGEMODE_FAILED_DEPLOYMENT"'
    " >> /var/lib/health-test/red.log\n"
)


def _context(root: Path, base: str, files: dict[str, tuple[str, int]], run: str = "") -> Path:
    for rel, (text, mode) in files.items():
        p = root / "root" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        p.chmod(mode)
    (root / "Containerfile").write_text(f"FROM {base}\nCOPY root/ /\n" + (f"RUN {run}\n" if run else ""))
    return root


@pytest.fixture(scope="module")
def images(hello_images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    bad = _context(tmp_path_factory.mktemp("bad"), HELLO_V1, BAD_FILES)
    imagemode("build", "-t", BAD, str(bad))
    kargs = {"usr/lib/bootc/kargs.d/90-panic.toml": ('kargs = ["init=/bin/false"]\n', R)}
    panic = _context(tmp_path_factory.mktemp("panic"), HELLO_V1, kargs)
    imagemode("build", "-t", PANIC, str(panic))
    wants = "/usr/lib/systemd/system/boot-complete.target.wants"
    good = _context(tmp_path_factory.mktemp("good"), HELLO_V2, GOOD_FILES,
                    f"mkdir -p {wants} && ln -s ../health-test-wanted.service {wants}/")  # fmt: skip
    # Not a program at all: random bytes with the executable bit.
    elf = good / "root/usr/lib/imagemode/check/wanted.d/50-not-a-program"
    elf.write_bytes(os.urandom(512))
    elf.chmod(X)
    imagemode("build", "-t", GOOD, str(good))
    return dict(hello_images)


@pytest.fixture(scope="module")
def registry(images: dict[str, str]) -> Iterator[Registry]:
    """The three images in a registry; `images` gets the digests it serves, which the device records."""
    with Registry() as reg:
        for tag, remote in REMOTE.items():
            name = remote.split("/", 1)[1]
            reg.push(f"containers-storage:{tag}", name)
            images[tag] = reg.digest(name)
        yield reg


@pytest.fixture(scope="module")
def vm(registry: Registry, device_disk: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VM]:
    d = tmp_path_factory.mktemp("health-vm")
    machine = VM(overlay(device_disk, d / "overlay.qcow2"), serial_log=d / "serial.log",
                 guestfwds=[("10.0.2.100", 5000, registry.port)])  # fmt: skip
    machine.ssh_key = device_disk.parent / "id_ed25519"
    with machine:
        machine.wait_ssh(900)
        machine.exec(f"mkdir -p /etc/containers/registries.conf.d && cat > "
                     f"/etc/containers/registries.conf.d/50-test.conf <<'EOF'\n"
                     f"{insecure_conf(GUEST_REGISTRY)}EOF")  # fmt: skip
        machine.exec(f"mkdir -p /etc/imagemode/red.d && cat > /etc/imagemode/red.d/10-log.sh <<'EOF'\n"
                     f"{RED_D}EOF\nchmod 755 /etc/imagemode/red.d/10-log.sh")  # fmt: skip
        yield machine


def settled(vm: VM) -> dict[str, Any]:
    """Once the boot's jobs are done (imagemode-health.service among them): status, schema-checked."""
    vm.exec("systemctl is-system-running --wait", check=False, timeout=900)
    ran = vm.exec("systemctl show -p ActiveState -p Result imagemode-health").stdout
    assert "ActiveState=active" in ran and "Result=success" in ran, ran
    st: dict[str, Any] = json.loads(vm.exec("imagemode status --json").stdout)
    jsonschema.validate(st, SCHEMA)
    return st


def grubenv(vm: VM) -> dict[str, str]:
    text = vm.exec("cat /sysroot/boot/grub/grubenv").stdout
    return dict(ln.split("=", 1) for ln in text.splitlines() if "=" in ln and not ln.startswith("#"))


def switch(vm: VM, tag: str, tries: int = 3) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(vm.exec(f"imagemode switch {REMOTE[tag]} --json").stdout)
    assert result["outcome"] == "staged" and result["tries"] == tries, result
    env = grubenv(vm)
    assert env == {"imagemode_try": result["staged"], "imagemode_tries": str(tries)}, env
    return result


def by_name(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in results}


# ---- 1: a failing required check ---------------------------------------------------------------------


def test_v1_boots_healthy(vm: VM, images: dict[str, str]) -> None:
    st = settled(vm)
    assert st["status"]["booted"]["image"]["imageDigest"] == images[HELLO_V1]
    assert st["status"]["booted"]["health"]["state"] == "healthy"
    report = json.loads(vm.exec("imagemode health --json").stdout)
    assert report["healthy"] is True
    assert [(r["name"], r["status"], r["output"]) for r in report["results"]] == [
        ("10-hello.sh", "passed", "hello v1\n")
    ]  # hello's own check
    assert grubenv(vm) == {}


def test_failing_required_check_falls_back_by_itself(vm: VM, images: dict[str, str]) -> None:
    bad = switch(vm, BAD)["staged"]
    vm.poweroff()
    vm.start().wait_down(900)  # v2: its check fails, and it reboots (QEMU exits: -no-reboot)
    assert "Kernel panic" not in vm.console
    vm.start().wait_ssh(900)  # GRUB's fallback: v1
    st = settled(vm)
    booted, rollback = st["status"]["booted"], st["status"]["rollback"]
    assert booted["image"]["imageDigest"] == images[HELLO_V1] and booted["health"]["state"] == "healthy"
    assert rollback["image"]["imageDigest"] == images[BAD]
    assert f"{rollback['ostree']['checksum']}.{rollback['ostree']['deploySerial']}" == bad
    health = rollback["health"]
    assert health["state"] == "failed" and health["check"] == MICROSHIFT and health["fellBack"] is True
    assert health["reason"] == f"required check {MICROSHIFT} failed (exit 1): database not ready"
    # The first failure ended the checks: the hang after it never ran (it would have failed, timed
    # out), and the disabled one neither (it fails, and leaves a mark).
    assert [r["name"] for r in health["failed"]] == [MICROSHIFT]
    assert st["status"]["rollbackQueued"] is False  # v1 is the default again, not a one-off
    human = vm.exec("imagemode status --format humanreadable").stdout
    assert "Health: failed at " in human and "database not ready" in human
    assert grubenv(vm) == {}
    assert vm.exec("cat /var/lib/health-test/red.log").stdout == f"failed {bad}\nfallback {bad}\n"
    # MicroShift's pre-rollback hook saw boot_counter=0 on the failed boot, and only then.
    assert vm.exec("cat /var/lib/health-test/pre-rollback.log").stdout == "pre-rollback\n"
    assert vm.exec("test -e /var/lib/health-test/disabled-ran", check=False).returncode == 1


def test_failed_image_is_not_staged_again(vm: VM, images: dict[str, str]) -> None:
    p = vm.exec(f"imagemode switch {REMOTE[BAD]}")
    assert p.stdout.startswith("not staged:") and "failed its health checks" in p.stdout, p.stdout
    assert f"imagemode health --forget {images[BAD]}" in p.stdout
    assert json.loads(vm.exec("imagemode status --json").stdout)["status"]["staged"] is None


# ---- 2: a kernel that panics -------------------------------------------------------------------------


def test_kernel_panic_falls_back_after_its_tries(vm: VM, images: dict[str, str]) -> None:
    vm.exec("mkdir -p /etc/greenboot && echo GREENBOOT_MAX_BOOT_ATTEMPTS=1 > /etc/greenboot/greenboot.conf")
    panicked = switch(vm, PANIC, tries=1)["staged"]
    vm.exec("rm /etc/greenboot/greenboot.conf")  # the next switch gets the default 3 again
    vm.poweroff()
    vm.start().wait_down(600)  # init=/bin/false: the kernel panics, and panic=10 reboots it
    assert "Kernel panic" in vm.console, "the boot did not panic"
    vm.start().wait_ssh(900)
    st = settled(vm)
    assert st["status"]["booted"]["image"]["imageDigest"] == images[HELLO_V1]
    rollback = st["status"]["rollback"]
    assert f"{rollback['ostree']['checksum']}.{rollback['ostree']['deploySerial']}" == panicked
    assert rollback["health"]["state"] == "failed"
    assert rollback["health"]["reason"].startswith("no healthy boot in its tries")
    assert grubenv(vm) == {}
    assert vm.exec("tail -n1 /var/lib/health-test/red.log").stdout == f"fallback {panicked}\n"


# ---- 3: a healthy v2 ---------------------------------------------------------------------------------


def test_healthy_v2_survives_a_cut_before_its_verdict_and_wanted_failures_only_warn(
    vm: VM, images: dict[str, str]
) -> None:
    """A fixed moment of bench/powercut.py first: v2's first boot loses power as its checks start,
    before their verdict (its hanging wanted check alone takes CHECK_TIMEOUT, and the console is read
    every second). That was one of its three tries: the next boot is v2 again, and its verdict, a
    counted one, clears the tries."""
    switch(vm, GOOD)
    vm.poweroff()
    vm.start()
    powercut.cut_on_console(vm, powercut.Trial(3, "first-boot", 0), random.Random(0),
                            r"Starting .*imagemode-health", 0.0)  # fmt: skip
    vm.start().wait_ssh(900)
    st = settled(vm)
    booted = st["status"]["booted"]
    assert booted["image"]["imageDigest"] == images[GOOD]
    assert st["status"]["rollback"]["image"]["imageDigest"] == images[HELLO_V1]
    assert booted["health"]["state"] == "healthy"
    assert sorted(booted["health"]["warned"]) == [
        "20-disk.sh", "30-hang.sh", "40-noexec", "45-garbage.sh", "50-not-a-program",
        "health-test-wanted.service",
    ]  # fmt: skip
    # Tries cleared by the healthy (second) boot: with no counter left, GRUB boots v2 whatever cuts the
    # power from here on.
    assert grubenv(vm) == {}
    assert vm.exec("cat /var/lib/health-test/green.log").stdout == "green\n"
    journal = vm.exec("journalctl -b -u imagemode-health -p warning --no-pager -o cat").stdout
    assert "wanted 20-disk.sh: warned (exit 1): disk 91% full" in journal, journal
    assert "wanted health-test-wanted.service: warned (failed (exit-code))" in journal, journal
    boot = vm.exec("journalctl -b -u imagemode-health --no-pager -o cat").stdout
    assert "tries cleared: the deployment stays" in boot and "healthy at " in boot, boot
    p = vm.exec("imagemode health --json")
    results = by_name(json.loads(p.stdout)["results"])
    assert results["10-release.sh"]["status"] == "passed"
    assert results["health-test-wanted.service"]["status"] == "warned"  # units are read in a manual run too
    assert results["30-hang.sh"] | {"seconds": 0, "output": ""} == {
        "name": "30-hang.sh", "kind": "wanted", "source": "/usr/lib/imagemode/check/wanted.d/30-hang.sh",
        "status": "warned", "reason": f"timed out after {CHECK_TIMEOUT}s", "seconds": 0, "output": "",
    }  # fmt: skip
    # Bad scripts end within their timeout and say why, in words.
    assert CHECK_TIMEOUT <= results["30-hang.sh"]["seconds"] < CHECK_TIMEOUT + 10
    assert results["40-noexec"]["reason"] == "not executable (mode 0644)"
    assert results["45-garbage.sh"]["reason"] == "exit 7"
    assert all(c in "\n\t" or c.isprintable() for c in results["45-garbage.sh"]["output"])
    assert results["50-not-a-program"]["reason"] == "Exec format error"
    motd = vm.exec("cat /run/motd.d/50-imagemode-health").stdout
    assert motd.startswith("imagemode: this boot is healthy ("), motd
    shown = json.loads(vm.exec("imagemode health --show --json").stdout)
    assert shown["at"] == json.loads(p.stdout)["at"]
    vm.poweroff()
