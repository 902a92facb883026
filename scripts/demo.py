"""The demo lifecycle on the built-in example (run by scripts/demo after the set-up).

build base → build hello v1 and v2 → lint → disk (v1, following the registry) → registry with v2 →
boot v1 → upgrade in the guest → power-cycle: v2 with the local /etc edit → rollback → power-cycle: v1.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

from imagemode.vm.qemu import VM, overlay
from imagemode.vm.registry import Registry, insecure_conf

OUT = Path("out/demo")
GUEST_REGISTRY = "10.0.2.100:5000"
FOLLOWS = f"{GUEST_REGISTRY}/imagemode/hello:stable"
TIMES: list[tuple[str, float]] = []


def step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.monotonic()


def took(name: str, t0: float) -> None:
    TIMES.append((name, time.monotonic() - t0))


def host(*cmd: str) -> None:
    print(f"$ {shlex.join(cmd)}", flush=True)
    subprocess.run(cmd, check=True)


def guest(vm: VM, command: str) -> str:
    print(f"device$ {command}", flush=True)
    out = vm.exec(command).stdout
    print(out.rstrip(), flush=True)
    return out


def main() -> int:
    t_all = time.monotonic()
    t = step("build the base image, and the example FROM it, twice (v1, v2)")
    host("imagemode", "build", "base")
    took("build base", t)
    t = time.monotonic()
    for v in ("1", "2"):
        host("imagemode", "build", "-t", f"localhost/imagemode/hello:{v}", "--build-arg", f"VERSION={v}",
             "examples/hello")  # fmt: skip
    host("imagemode", "lint", "localhost/imagemode/hello:1")
    took("build hello v1 + v2", t)

    t = step(f"disk from v1; the device follows {FOLLOWS}")
    host("imagemode", "disk", "localhost/imagemode/hello:1", "--target-imgref", FOLLOWS, "-o", str(OUT))
    took("disk", t)

    with Registry() as registry:
        t = step(f"a registry on {registry.address}; push v2 as imagemode/hello:stable")
        registry.push("containers-storage:localhost/imagemode/hello:2", "imagemode/hello:stable")
        took("registry + push v2", t)

        disk = overlay(OUT / "disk.qcow2", OUT / "device.qcow2")  # the device's writes go here
        vm = VM(disk, serial_log=OUT / "serial.log", guestfwds=[("10.0.2.100", 5000, registry.port)])
        with vm:
            t = step("boot v1")
            vm.wait_ssh(900)
            took("boot v1", t)
            conf = "/etc/containers/registries.conf.d/50-demo.conf"
            text = shlex.quote(insecure_conf(GUEST_REGISTRY))
            guest(vm, f"mkdir -p {Path(conf).parent} && printf '%s' {text} > {conf}")
            guest(vm, "echo 'edited on the device' >> /etc/motd")
            guest(vm, "imagemode status --format humanreadable")

            t = step("upgrade in the guest: fetch the changed layer, stage v2")
            guest(vm, "imagemode upgrade")
            guest(vm, "imagemode status --format humanreadable")
            took("upgrade (in the guest)", t)

            t = step("power-cycle: v2 boots, with the local /etc edit")
            vm.poweroff()
            vm.start().wait_ssh(900)
            took("power-cycle into v2", t)
            # v2 had 3 boots to pass its health checks; the first healthy boot clears the counter.
            guest(vm, "systemctl is-system-running --wait >/dev/null; imagemode health --show")
            guest(vm, "imagemode status --format humanreadable")
            guest(vm, "cat /usr/share/hello/release /etc/hello.conf; tail -1 /etc/motd")

            t = step("rollback, power-cycle: v1 boots")
            guest(vm, "imagemode rollback")
            vm.poweroff()
            vm.start().wait_ssh(900)
            took("rollback + power-cycle", t)
            guest(vm, "imagemode status --format humanreadable")
            guest(vm, "cat /usr/share/hello/release /etc/hello.conf")
            vm.poweroff()

    print("\n== timings")
    for name, seconds in TIMES:
        print(f"{name:<28} {seconds:6.1f}s")
    print(f"demo: done in {time.monotonic() - t_all:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
