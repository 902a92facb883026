"""The VM runner's early-failure watch and tool checks, without booting anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagemode.vm import qemu


def vm_with_console(text: str) -> qemu.VM:
    vm = qemu.VM(Path("/nonexistent.qcow2"))
    vm._console.extend(text.encode())
    return vm


@pytest.mark.parametrize(
    "line",
    [
        "grub> ",
        "[   3.1] Kernel panic - not syncing: VFS: Unable to mount root fs",
        'You are in emergency mode. After logging in, type "journalctl -xb"',
        "\x1b[0;1;31mFAILED\x1b[0m ostree-prepare-root[238]: ostree-prepare-root: error: Couldn't find",
        "Give root password for maintenance",
    ],
)
def test_failures_are_caught_with_their_line(line: str) -> None:
    vm = vm_with_console(f"BdsDxe: loading Boot0001\n{line}\nmore\n")
    found = vm._failure()
    assert found is not None and found.strip() in line.replace("\x1b[0;1;31m", "").replace("\x1b[0m", "")


def test_a_normal_boot_is_not_a_failure() -> None:
    vm = vm_with_console(
        "BdsDxe: starting Boot0001\n[    0.0] Linux version 6.1.0\n"
        "[  OK  ] Finished ostree-prepare-root.service - OSTree Prepare OS/.\n"
        "[  OK  ] Reached target multi-user.target\nlocalhost login: \n"
    )
    assert vm._failure() is None


def test_missing_ovmf_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu, "OVMF_CODE", Path("/nonexistent/OVMF_CODE_4M.fd"))
    monkeypatch.setattr(qemu, "which", lambda p: "/usr/bin/" + p)
    with pytest.raises(qemu.VMError, match=r"apt-get install ovmf$"):
        qemu.check_tools()


def test_network_is_restricted_and_local() -> None:
    vm = qemu.VM(Path("/d.qcow2"), ssh_port=2222, guestfwds=[("10.0.2.100", 5000, 5055)])
    vm._tmp = Path("/tmp")
    cmd = " ".join(vm.command())
    assert "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22" in cmd
    # One socat per guest connection, to 127.0.0.1 only.
    assert "guestfwd=tcp:10.0.2.100:5000-cmd:socat -lf /dev/null STDIO TCP:127.0.0.1:5055" in cmd
    assert "format=qcow2,file=/d.qcow2" in cmd
