"""QEMU with OVMF, for development and for the tests: boot, exec over SSH, power off, power on.

- Networking is QEMU's user mode with `restrict=on`: the guest reaches nothing but the forwards
  given, and those are bound to 127.0.0.1.
- The serial console is logged and watched. A boot that drops to `grub>`, enters emergency mode or
  panics stops at once, with that line in the error. So does one that prints nothing for too long.
- KVM is used only when a probe shows that it really runs a guest. On some hosts /dev/kvm exists but
  guests never print a line (boot-path.md).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from imagemode.errors import ImagemodeError
from imagemode.run import RunError, ToolMissingError, run, spawn, which

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
QEMU = "qemu-system-x86_64"

# The first of these on the console ends the boot: nothing good follows any of them.
FAILURE_PATTERNS = (
    re.compile(r"grub> ?$"),
    re.compile(r"Kernel panic"),
    re.compile(r"[Ee]mergency mode"),
    re.compile(r"Give root password for maintenance"),
    re.compile(r"dracut-emergency|dracut Warning: Could not boot"),
    re.compile(r"ostree-prepare-root.*(?:[Ff]ailed|error)"),
    re.compile(r"error: (?:file|disk) .* not found"),
)
SSH_OPTS = ("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "ServerAliveInterval=5")  # fmt: skip


class VMError(ImagemodeError):
    pass


# Fixed PCI slots for every device but the boot disk, which keeps the first free one. OVMF keeps its
# boot entry by PCI path: a network card or a second disk that took the boot disk's slot on a later
# power-on would leave that boot at the UEFI shell.
NET_SLOT = 0x18


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def check_tools(guestfwds: bool = False) -> None:
    if which(QEMU) is None:
        raise ToolMissingError(QEMU)
    if guestfwds and which("socat") is None:
        raise ToolMissingError("socat")
    if not OVMF_CODE.exists() or not OVMF_VARS.exists():
        raise VMError(f"OVMF firmware not found at {OVMF_CODE}; install it with: apt-get install ovmf")


_kvm_ok: bool | None = None


def kvm_works() -> bool:
    """Boot OVMF alone under KVM and wait for its first console line; a few seconds at most."""
    global _kvm_ok
    if _kvm_ok is not None:
        return _kvm_ok
    _kvm_ok = False
    if os.environ.get("IMAGEMODE_ACCEL") == "tcg" or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    with tempfile.TemporaryDirectory() as tmp:
        vars_ = Path(tmp) / "vars.fd"
        shutil.copy(OVMF_VARS, vars_)
        cmd = [QEMU, "-machine", "q35,accel=kvm", "-cpu", "host", "-m", "256", "-nodefaults",
               "-display", "none", "-serial", "stdio", "-net", "none",
               "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
               "-drive", f"if=pflash,format=raw,unit=1,file={vars_}"]  # fmt: skip
        try:
            p = spawn(cmd, stderr=subprocess.DEVNULL)
        except (OSError, ToolMissingError):
            return False
        try:
            assert p.stdout is not None
            os.set_blocking(p.stdout.fileno(), False)
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline and p.poll() is None:
                if p.stdout.read(1):
                    _kvm_ok = True
                    break
                time.sleep(0.2)
        finally:
            p.kill()
            p.wait()
    return _kvm_ok


def overlay(base: Path, dest: Path) -> Path:
    """A copy-on-write qcow2 over `base`: a VM that writes to it (and survives a power cycle) leaves
    `base` as it was, so many tests share one disk."""
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base.resolve(), "-F",
         "qcow2" if base.suffix == ".qcow2" else "raw", dest])  # fmt: skip
    return dest


@dataclass
class VM:
    disk: Path
    memory: int = 1024
    cpus: int = 2
    snapshot: bool = False
    serial_log: Path | None = None
    ssh_port: int = 0
    ssh_key: Path | None = None
    network: bool = True
    extra_disks: Sequence[Path] = ()
    guestfwds: Sequence[tuple[str, int, int]] = ()  # (guest ip, guest port, host port on 127.0.0.1)
    silence_timeout: float = 240.0
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _console: bytearray = field(default_factory=bytearray, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _last_output: float = field(default=0.0, init=False, repr=False)
    _tmp: Path | None = field(default=None, init=False, repr=False)
    accel: str = field(default="", init=False)

    def command(self) -> list[str]:
        assert self._tmp is not None
        self.accel = "kvm" if kvm_works() else "tcg"
        cpu = "host" if self.accel == "kvm" else "max"
        fmt = "qcow2" if self.disk.suffix == ".qcow2" else "raw"
        drive = f"if=virtio,format={fmt},file={self.disk}" + (",snapshot=on" if self.snapshot else "")
        cmd = [QEMU, "-machine", f"q35,accel={self.accel}", "-cpu", cpu, "-smp", str(self.cpus),
               "-m", str(self.memory), "-nodefaults", "-display", "none", "-serial", "stdio",
               "-no-user-config", "-no-reboot", "-device", "virtio-rng-pci",
               "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
               "-drive", f"if=pflash,format=raw,unit=1,file={self._tmp / 'vars.fd'}",
               "-drive", drive]  # fmt: skip
        for i, extra in enumerate(self.extra_disks):
            efmt = "qcow2" if extra.suffix == ".qcow2" else "raw"
            # The serial number is a property of the device: QEMU 7 refuses `serial=` on -drive.
            dev = f"virtio-blk-pci,drive=extra{i},serial=extra{i},addr={0x10 + i:#x}"
            cmd += ["-drive", f"if=none,id=extra{i},format={efmt},file={extra},readonly=on", "-device", dev]
        if self.network:
            net = f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22"
            # guestfwd to a tcp: chardev connects once, when QEMU starts, and serves one guest connection
            # in all; cmd: starts a socat for each connection, which is what a registry client needs.
            # Its log goes to /dev/null: stderr is the guest's socket, and an error there reads as HTTP.
            for ip, gport, hport in self.guestfwds:
                net += f",guestfwd=tcp:{ip}:{gport}-cmd:socat -lf /dev/null STDIO TCP:127.0.0.1:{hport}"
            cmd += ["-netdev", net, "-device", f"virtio-net-pci,netdev=n0,addr={NET_SLOT:#x}"]
        return cmd

    def start(self) -> VM:
        check_tools(bool(self.guestfwds))
        if self.proc is not None and self.proc.poll() is None:
            raise VMError("the VM is already running")
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="imagemode-vm-"))
            shutil.copy(OVMF_VARS, self._tmp / "vars.fd")
        if not self.ssh_port:
            self.ssh_port = free_port()
        if self.ssh_key is None and (self.disk.parent / "id_ed25519").exists():
            self.ssh_key = self.disk.parent / "id_ed25519"
        self._console.clear()
        self._last_output = time.monotonic()
        logf = open(self.serial_log, "ab") if self.serial_log else None  # noqa: SIM115
        self.proc = spawn(self.command(), stderr=subprocess.STDOUT)
        threading.Thread(target=self._read, args=(self.proc, logf), daemon=True).start()
        return self

    def _read(self, proc: subprocess.Popen[bytes], logf: object) -> None:
        assert proc.stdout is not None
        t0 = time.monotonic()
        for line in iter(proc.stdout.readline, b""):
            with self._lock:
                self._console.extend(line)
                self._last_output = time.monotonic()
            if logf is not None:
                logf.write(f"[{time.monotonic() - t0:7.2f}] ".encode() + line)  # type: ignore[attr-defined]
                logf.flush()  # type: ignore[attr-defined]
        if logf is not None:
            logf.close()  # type: ignore[attr-defined]

    @property
    def console(self) -> str:
        with self._lock:
            return self._console.decode("utf-8", "replace")

    def _failure(self) -> str | None:
        for line in self.console.splitlines():
            clean = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line).strip()
            if any(p.search(clean) for p in FAILURE_PATTERNS):
                return clean
        return None

    def ssh_cmd(self, command: str, *, tty: bool = False) -> list[str]:
        if self.ssh_key is None:
            raise VMError(
                "no SSH key: pass --ssh-key (a disk built without config has id_ed25519 beside it)"
            )
        tty_opt = ["-t"] if tty else []
        return ["ssh", *SSH_OPTS, *self._multiplex(), *tty_opt, "-i", str(self.ssh_key),
                "-p", str(self.ssh_port), "root@127.0.0.1", command]  # fmt: skip

    def _multiplex(self) -> list[str]:
        """One SSH connection per power-on, shared by every command (OpenSSH's ControlMaster).

        A new connection costs the guest a key exchange, sshd's re-exec and a PAM session: 1.2 s per
        command under TCG, against 0.15 s for a session on a shared connection. The master leaves
        when QEMU exits (its socket closes) or 2 minutes after the last command; a socket left from
        an earlier power-on is stale, and ssh replaces it."""
        if self._tmp is None:
            return []
        return ["-o", "ControlMaster=auto", "-o", f"ControlPath={self._tmp}/ssh-%C",
                "-o", "ControlPersist=120"]  # fmt: skip

    def _still_booting(self, t0: float, timeout: float, waiting_for: str) -> None:
        """Raise, with the console's last line, if the boot failed, QEMU exited or time ran out."""
        failure = self._failure()
        if failure:
            self.kill()
            raise VMError(f"boot failed: {failure}")
        last = (self.console.strip().splitlines()[-1:] or ["no output"])[0]
        if self.proc is None or self.proc.poll() is not None:
            status = self.proc.returncode if self.proc else "?"
            raise VMError(f"qemu exited with status {status} before {waiting_for} (last: {last})")
        if time.monotonic() - t0 > timeout:
            self.kill()
            raise VMError(f"no {waiting_for} after {timeout:.0f}s (last: {last})")

    def wait_ssh(self, timeout: float = 600, poll: float = 1.0) -> float:
        """Wait until SSH runs a command. Returns the seconds it took; stops early on a failed boot.
        `poll`: the pause between attempts (each one costs the guest a little CPU)."""
        t0 = time.monotonic()
        while True:
            self._still_booting(t0, timeout, "SSH")
            if time.monotonic() - self._last_output > self.silence_timeout:
                last = self.console.strip().splitlines()[-1:] or ["nothing"]
                self.kill()
                raise VMError(
                    f"boot hangs: no console output for {self.silence_timeout:.0f}s (last: {last[0]})"
                )
            try:
                run(self.ssh_cmd("true"), timeout=20)
                return time.monotonic() - t0
            except RunError:
                time.sleep(poll)

    def wait_console(self, pattern: str, timeout: float = 900) -> str:
        """Wait for a console line matching `pattern` and return it: the way to follow a guest that
        has no network, hence no SSH. Stops early when QEMU exits or the boot fails."""
        rx = re.compile(pattern)
        t0 = time.monotonic()
        while True:
            for line in self.console.splitlines():
                if rx.search(line):
                    return line.strip()
            self._still_booting(t0, timeout, f"console line {pattern!r}")
            time.sleep(1)

    def exec(
        self, command: str, *, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        return run(self.ssh_cmd(command), check=check, timeout=timeout)

    def poweroff(self, timeout: float = 120) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        run(self.ssh_cmd("systemctl poweroff"), check=False, timeout=30)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def wait_down(self, timeout: float = 300) -> None:
        """Wait for the guest to power itself off. A reboot counts: QEMU runs with -no-reboot, because
        a cold start is what these machines do reliably under OVMF (boot-path.md)."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise VMError(f"the guest did not go down within {timeout:.0f}s") from None

    def kill(self) -> None:
        """Pull the plug: no shutdown, as in a power cut."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        self.kill()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> VM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
