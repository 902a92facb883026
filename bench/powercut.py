"""Power cuts at every moment of an update: a soak (not a test), with a table of what every cut left.

    .venv/bin/python bench/powercut.py [--trials N] [--first N] [--seed S] [--phase P ...]
                                       [--layer-mb MB] [--json FILE]

Built once: examples/microshift-edge with its workload embedded (v1), a disk of it that follows a
docker-registry on 127.0.0.1 (the guest reaches it at 10.0.2.100:5000), and v2: v1 with a new layer
of random bytes (48 MB unless --layer-mb says), so that a pull and an import last long enough under
TCG to be cut into. The pull of 48 MB is over in about a second; the pull trials take a bigger one.

Each trial boots a fresh copy-on-write overlay of the v1 disk, makes a local /etc edit and writes /var
data (then syncs), and drives an update to its phase, where QEMU is killed (`VM.kill()`: no shutdown)
after a delay drawn from the trial's seed. Then it powers on again and checks the device:

  boot      SSH answers: no grub>, no emergency shell, no panic (imagemode.vm.qemu's failure patterns)
  status    `imagemode status --json` validates against bootc-host-v1
  etc, var  the /etc edit and the /var data are as they were written
  fsck      `ostree fsck` passes, and no update work directory is left after the next update
  upgrade   `imagemode upgrade` runs to completion (staged, already staged, or no update)
  workload  the embedded images are in podman and the workload's unit is active

The phases (`--phase`, repeatable; all by default, trials spread over them in turn):
  pull, import, etc, staging  during `imagemode upgrade`, told apart by its --progress-fd lines
  finalize                    during `systemctl poweroff` with v2 staged (ostree-finalize-staged)
  first-boot                  v2's first boot, up to 3 s after imagemode-health.service starts its checks
  after-verdict               v2's first boot, once imagemode-health.service has finished
  prune                       during `imagemode prune` with v2 staged
  rollback                    during `imagemode rollback` on v2, v1 its rollback

Prints the table, and with --json writes every trial's record.
"""

from __future__ import annotations

import argparse
import inspect
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jsonschema  # noqa: E402

from imagemode.vm.qemu import VM, VMError, overlay  # noqa: E402
from imagemode.vm.registry import Registry, insecure_conf  # noqa: E402

EXAMPLE = ROOT / "examples/microshift-edge"
SCHEMA = json.loads((ROOT / "tests/data/bootc-host-v1.schema.json").read_text())
GUEST_REGISTRY = "10.0.2.100:5000"
V1, V2 = "localhost/imagemode/edge:powercut-1", "localhost/imagemode/edge:powercut-2"
FOLLOWS = f"{GUEST_REGISTRY}/imagemode/edge:powercut"
WORKLOAD = "registry.example.com/edge/workload:stable"
EMBEDDED = (WORKLOAD, "registry.example.com/edge/sidecar:stable")
ETC_EDIT, VAR_DATA = "/etc/powercut-edit", "/var/lib/powercut/data"
PHASES = ("pull", "import", "etc", "staging", "finalize", "first-boot", "after-verdict", "prune", "rollback")
CHECKS = ("boot", "status", "etc", "var", "fsck", "upgrade", "workload")


def sh(*cmd: str, env: dict[str, str] | None = None) -> str:
    import os

    return subprocess.run(
        cmd, check=True, capture_output=True, text=True, env={**os.environ, **(env or {})}
    ).stdout


def imagemode(*args: str, env: dict[str, str] | None = None) -> str:
    return sh(str(ROOT / ".venv/bin/imagemode"), *args, env=env)


def why(e: BaseException) -> str:
    """An exception's last line, short: what a table cell can hold."""
    text = str(e).strip()
    return text.splitlines()[-1][:160] if text else type(e).__name__


@dataclass
class Trial:
    n: int
    phase: str
    seed: int
    hit: str = ""  # where the cut landed, as the device showed it at that moment
    delay: float = 0.0
    booted: str = ""  # v1, v2 or what status said
    checks: dict[str, str] = field(default_factory=dict)  # check -> "ok", "n/a" or why not
    prepared: bool = True  # the /etc edit and the /var data were written (drive() stopped after it)
    seconds: float = 0.0


# ---- building the images and the disk, once ----------------------------------------------------------


def build(work: Path, registry: Registry, mib: int = 48) -> dict[str, str]:
    """v2 (v1 and `mib` MB more) in the registry, the disk of v1 at work/disk, and their digests
    (digest -> "v1", "v2")."""
    conf = work / "registries.conf"
    conf.write_text(
        f'[[registry]]\nprefix = "registry.example.com/edge"\nlocation = "{registry.address}/edge"\n'
        f"insecure = true\n\n{insecure_conf(registry.address)}"
    )
    env = {"CONTAINERS_REGISTRIES_CONF": str(conf)}
    imagemode("build", "base")
    local = "localhost/imagemode-powercut/edge"
    for role in ("workload", "sidecar"):
        sh(str(EXAMPLE / "build-workload.sh"), "1", role, f"{local}-{role}:1")
        registry.push(f"containers-storage:{local}-{role}:1", f"edge/{role}:stable")
    imagemode("build", "-t", V1, "--embed", str(EXAMPLE / "release-x86_64.json"),
              "--embed", str(EXAMPLE / "manifests.d"), str(EXAMPLE), env=env)  # fmt: skip
    grown(V1, V2, work / "v2", mib)
    (work / "config.toml").write_text('[[customizations.filesystem]]\nmountpoint = "/"\nminsize = "6 GiB"\n')
    imagemode("disk", V1, "--target-imgref", FOLLOWS, "--config", str(work / "config.toml"),
              "-o", str(work / "disk"))  # fmt: skip
    # The disk was made from local v1; the tag it follows serves v2, so every trial has an update.
    registry.push(f"containers-storage:{V2}", "imagemode/edge:powercut")
    return {sh("podman", "image", "inspect", "--format", "{{.Digest}}", V1).strip(): "v1",
            registry.digest("imagemode/edge:powercut"): "v2"}  # fmt: skip


def grown(base: str, tag: str, ctx: Path, mib: int = 48) -> None:
    """`tag`: `base` with a new layer of `mib` MB of random bytes (no compression shrinks it), so that
    its pull and its import last long enough under TCG to be cut into."""
    ctx.mkdir()
    (ctx / "big").write_bytes(random.randbytes(mib << 20))
    (ctx / "Containerfile").write_text(f"FROM {base}\nCOPY big /usr/share/powercut/big\n")
    sh("podman", "build", "-q", "-t", tag, str(ctx))
    (ctx / "big").unlink()


def configure(vm: VM) -> None:
    """The device's own set-up, not a trial's: the test registry speaks plain HTTP."""
    vm.exec(f"mkdir -p /etc/containers/registries.conf.d && cat > /etc/containers/registries.conf.d/"
            f"50-powercut.conf <<'EOF'\n{insecure_conf(GUEST_REGISTRY)}EOF")  # fmt: skip


def prepare(vm: VM, n: int) -> None:
    """A local /etc edit and 1 MiB of /var data, on disk before the cut (check() reads both back)."""
    data = f"mkdir -p {Path(VAR_DATA).parent}; head -c 1048576 /dev/urandom > {VAR_DATA}"
    md5 = f"md5sum {VAR_DATA} > /var/lib/powercut/md5"
    vm.exec(f"echo 'edited before trial {n}' > {ETC_EDIT}; {data}; {md5}; sync")


# ---- driving an update to its phase ------------------------------------------------------------------


def _in_phase(phase: str, ev: dict[str, Any]) -> bool:
    done = [s.get("completed") for s in ev.get("subtasks", [])]
    if phase == "pull":
        return ev.get("type") == "ProgressBytes" and 0 < ev.get("bytes", 0) < ev.get("bytesTotal", 0)
    if phase == "import":  # a layer still to commit: the last event, every layer done, is too late
        return ev.get("task") == "importing" and not all(done)
    if phase == "etc":
        return ev.get("task") == "staging" and not any(done)
    if phase == "staging":
        return ev.get("task") == "staging" and len(done) == 4 and done[:2] == [True, True] and not done[2]
    return False


# Read now, not when a trial runs: inspect reads the file again, and a file edited since would give
# other lines.
IN_PHASE = inspect.getsource(_in_phase)


def _describe(ev: dict[str, Any]) -> str:
    if ev.get("type") == "ProgressBytes":
        return f"pulling {ev.get('bytes', 0)}/{ev.get('bytesTotal', 0)} bytes"
    subs = ev.get("subtasks", [])
    done = sum(1 for s in subs if s.get("completed"))
    return f"{ev.get('task', ev.get('type', 'nothing yet'))} {done}/{len(subs)}"


def start_upgrade(vm: VM) -> None:
    upgrade = "imagemode upgrade --progress-fd 3 3>/run/powercut.jsonl >/run/powercut.out 2>&1"
    vm.exec(f"rm -f /run/powercut.jsonl /run/powercut.rc; nohup sh -c '{upgrade}; echo $? >/run/powercut.rc'"
            " >/dev/null 2>&1 &")  # fmt: skip


def finish_upgrade(vm: VM, timeout: float = 1800) -> None:
    t0 = time.monotonic()
    while vm.exec("test -e /run/powercut.rc", check=False).returncode != 0:
        if time.monotonic() - t0 > timeout:
            raise VMError("the upgrade did not end")
        time.sleep(2)
    rc = vm.exec("cat /run/powercut.rc").stdout.strip()
    if rc != "0":
        raise VMError(f"the upgrade failed: {vm.exec('tail -n 3 /run/powercut.out').stdout.strip()}")


# Runs in the guest, so that a phase of a second or less is not missed between two SSH round trips:
# it polls the progress lines every 50 ms, waits the trial's delay once the phase is reached, and
# prints the event of that moment (or ENDED, when the upgrade ended first). The host kills on return.
WATCH = """\
import json, os, time
from typing import Any
{in_phase}
def last():
    try:
        line = open("/run/powercut.jsonl").read().splitlines()[-1]
        return json.loads(line)
    except (OSError, IndexError, ValueError):  # nothing yet, or a line half written
        return {{}}
while not _in_phase({phase!r}, last()):
    if os.path.exists("/run/powercut.rc"):
        print("ENDED", json.dumps(last()))
        raise SystemExit(0)
    time.sleep(0.05)
time.sleep({delay})
print(json.dumps(last()))
"""


def cut_during_upgrade(vm: VM, t: Trial, rng: random.Random, spread: float | None = None) -> None:
    """Kill a delay (up to `spread` seconds, by default the phase's own) into the phase."""
    if spread is None:
        spread = {"pull": 2.0, "import": 4.0}.get(t.phase, 0.5)
    t.delay = round(rng.uniform(0, spread), 2)
    start_upgrade(vm)
    script = WATCH.format(in_phase=IN_PHASE, phase=t.phase, delay=t.delay)
    out = vm.exec(f"python3 - <<'PY'\n{script}PY", timeout=1800).stdout.strip()
    vm.kill()
    event = json.loads(out.removeprefix("ENDED "))
    missed = out.startswith("ENDED")
    t.hit = (
        f"missed: the upgrade ended at {_describe(event)}" if missed else f"{_describe(event)} (+{t.delay}s)"
    )


def cut_on_console(vm: VM, t: Trial, rng: random.Random, pattern: str, spread: float) -> None:
    """Kill a delay after a console line matching `pattern` (the boot or the shutdown is under way).
    Only lines systemd prints before the serial login prompt will do: once getty owns the console,
    PID 1 prints no more status lines there (no "Finished imagemode-health" ever shows)."""
    vm.wait_console(pattern, timeout=900)
    t.delay = round(rng.uniform(0, spread), 2)
    time.sleep(t.delay)
    t.hit = f"{pattern} +{t.delay}s"
    vm.kill()


def cut_after_verdict(vm: VM, t: Trial, rng: random.Random, spread: float) -> None:
    """Kill a delay after imagemode-health.service has ended (RemainAfterExit: active, or failed)."""
    vm.wait_ssh(900)
    t0 = time.monotonic()
    while (state := vm.exec("systemctl is-active imagemode-health", check=False).stdout.strip()) not in (
        "active",
        "failed",
    ):
        if time.monotonic() - t0 > 900:
            raise VMError(f"imagemode-health.service still {state} after 900s")
        time.sleep(0.5)
    t.delay = round(rng.uniform(0, spread), 2)
    time.sleep(t.delay)
    t.hit = f"verdict {state} +{t.delay}s"
    vm.kill()


def staged_v2(vm: VM) -> None:
    start_upgrade(vm)
    finish_upgrade(vm)


def drive(vm: VM, t: Trial, rng: random.Random) -> None:
    """Power on v1, prepare, and cut at the trial's phase."""
    t.prepared = False
    vm.start().wait_ssh(900)
    configure(vm)
    prepare(vm, t.n)
    t.prepared = True
    vm.exec("systemctl is-system-running --wait", check=False, timeout=900)  # the boot's verdict is in
    if t.phase in ("pull", "import", "etc", "staging"):
        cut_during_upgrade(vm, t, rng)
        return
    staged_v2(vm)
    if t.phase == "prune":
        vm.exec("nohup imagemode prune >/dev/null 2>&1 &")
        t.delay = round(rng.uniform(0, 4), 2)
        time.sleep(t.delay)
        t.hit = f"prune +{t.delay}s"
        vm.kill()
        return
    # --no-block: the cut is timed from the console, not from when SSH lets go.
    vm.exec("systemctl --no-block poweroff")
    if t.phase == "finalize":
        cut_on_console(vm, t, rng, r"Stopping .*ostree-finalize", 3.0)
        return
    vm.wait_down(300)
    vm.start()
    if t.phase == "first-boot":  # the checks run: the required one waits for the workload
        cut_on_console(vm, t, rng, r"Starting .*imagemode-health", 3.0)
        return
    if t.phase == "after-verdict":
        cut_after_verdict(vm, t, rng, 5.0)
        return
    vm.wait_ssh(900)  # rollback: on v2, with v1 as its rollback
    vm.exec("systemctl is-system-running --wait", check=False, timeout=900)
    vm.exec("nohup imagemode rollback >/dev/null 2>&1 &")
    t.delay = round(rng.uniform(0, 1.5), 2)
    time.sleep(t.delay)
    t.hit = f"rollback +{t.delay}s"
    vm.kill()


# ---- what the device must be after a cut -------------------------------------------------------------


def check(vm: VM, t: Trial, images: dict[str, str]) -> None:
    """Power on after the cut and check every promise into `t.checks`; `images`: digest -> the name
    `t.booted` gets."""

    def run(name: str, fn: Callable[[], str]) -> None:
        try:
            t.checks[name] = fn()
        except Exception as e:  # a check that fails says why, and the others still run
            t.checks[name] = f"FAILED: {why(e)}"

    def boot() -> str:
        vm.start().wait_ssh(900)
        vm.exec("systemctl is-system-running --wait", check=False, timeout=900)
        return "ok"

    run("boot", boot)
    if t.checks["boot"] != "ok":
        return

    def status() -> str:
        st = json.loads(vm.exec("imagemode status --json").stdout)
        jsonschema.validate(st, SCHEMA)
        digest = st["status"]["booted"]["image"]["imageDigest"]
        t.booted = images.get(digest, f"unknown {digest}")
        return "ok"

    # A trial stopped before it wrote them (its first boot never came up) has nothing to lose there.
    never = "n/a (never written: the trial stopped before it)"

    def etc() -> str:
        if not t.prepared:
            return never
        got = vm.exec(f"cat {ETC_EDIT}").stdout
        assert got == f"edited before trial {t.n}\n", got
        return "ok"

    def var() -> str:
        if not t.prepared:
            return never
        vm.exec("md5sum -c --quiet /var/lib/powercut/md5")
        return "ok"

    def fsck() -> str:
        vm.exec("ostree fsck --repo=/sysroot/ostree/repo --quiet", timeout=1800)
        return "ok"

    def upgrade() -> str:
        if not t.prepared:  # drive() configures before it prepares
            configure(vm)
        out = vm.exec("imagemode upgrade --json", timeout=1800).stdout
        outcome = json.loads(out)["outcome"]
        left = vm.exec("ls /sysroot/ostree/imagemode | grep -c '^update-' || true").stdout.strip()
        assert left == "0", f"{left} update work directories left behind"
        return f"ok ({outcome})"

    def workload() -> str:
        for ref in EMBEDDED:
            vm.exec(f"podman image exists {ref}")
        vm.exec("systemctl is-active --quiet edge-workload")
        return "ok"

    for name, fn in (("status", status), ("etc", etc), ("var", var), ("fsck", fsck), ("upgrade", upgrade),
                     ("workload", workload)):  # fmt: skip
        run(name, fn)


def held(check: str) -> bool:
    return check.startswith(("ok", "n/a"))


# ---- the soak ----------------------------------------------------------------------------------------


def table(trials: list[Trial]) -> str:
    head = ["#", "phase", "cut at", "booted", *CHECKS]
    rows = [
        [str(t.n), t.phase, t.hit, t.booted or "-", *(t.checks.get(c, "-") for c in CHECKS)] for t in trials
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *rows])


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a trial is numbered from 1, a layer has bytes)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return n


def record(path: str | None, seed: int, trials: list[Trial]) -> None:
    if path:
        Path(path).write_text(json.dumps({"seed": seed, "trials": [t.__dict__ for t in trials]}, indent=2))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=positive, default=len(PHASES))
    ap.add_argument("--seed", type=int, default=int(time.time()))
    resumed = "number the trials from N (a soak resumed: trial N has the same seed and phase)"
    ap.add_argument("--first", type=positive, default=1, metavar="N", help=resumed)
    ap.add_argument("--phase", action="append", choices=PHASES, help="only these phases (repeatable)")
    ap.add_argument("--json", metavar="FILE", help="write every trial's record here")
    grow = "v2's new layer, in MB (default 48): the pull of 48 MB over guestfwd is over in about a second"
    ap.add_argument("--layer-mb", type=positive, default=48, metavar="MB", help=grow)
    args = ap.parse_args()
    phases = args.phase or list(PHASES)
    trials: list[Trial] = []
    try:  # a soak is hours long: a record it cannot write is found now, not after its first trial
        if args.json:
            open(args.json, "a").close()  # appending: a record there from an earlier soak is kept until then
    except OSError as e:
        ap.error(f"--json {args.json}: {e.strerror}")
    print(f"seed {args.seed}", flush=True)
    with tempfile.TemporaryDirectory(prefix="powercut-", dir="/var/tmp") as tmp, Registry() as registry:
        work = Path(tmp)
        images = build(work, registry, args.layer_mb)
        for n in range(args.first, args.first + args.trials):
            t = Trial(n, phases[(n - 1) % len(phases)], args.seed + n)
            rng = random.Random(t.seed)
            started = time.monotonic()
            d = work / f"trial-{n}"
            d.mkdir()
            vm = VM(overlay(work / "disk/disk.qcow2", d / "overlay.qcow2"), serial_log=d / "serial.log",
                    guestfwds=[("10.0.2.100", 5000, registry.port)])  # fmt: skip
            vm.ssh_key = work / "disk/id_ed25519"
            try:
                drive(vm, t, rng)
            except Exception as e:  # the trial could not reach its cut: say so, and check what is there
                t.hit = f"not reached: {why(e)}"
                vm.kill()
            check(vm, t, images)
            vm.close()
            t.seconds = round(time.monotonic() - started, 1)
            trials.append(t)
            record(args.json, args.seed, trials)  # after each trial: a soak stopped halfway keeps it
            last, kept = args.first + args.trials - 1, sum(held(v) for v in t.checks.values())
            print(f"trial {n}/{last}: {t.phase}, cut at {t.hit}, booted {t.booted or '-'}, "
                  f"{kept}/{len(CHECKS)} checks, {t.seconds}s",
                  flush=True)  # fmt: skip
    print(table(trials))
    bad = [t for t in trials if not all(held(v) for v in t.checks.values())]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
