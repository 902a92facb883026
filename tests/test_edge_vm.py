"""The offline edge node on the real thing: examples/microshift-edge with its workload images embedded,
booted in QEMU with no network device at all, and updated from an archive on a second virtual disk.

A guest without a network has no SSH. A test agent in the image (tests/data/edge) reports on the serial
console once the boot's health verdict is in, and runs the next step script from a disk labelled
EDGESTEPS: the way a technician's USB stick would drive the node. One VM, in file order:

1. No network, the steps disk attached: the workload serves, and every embedded image is in podman with
   its listed digest. Step 0 edits /etc, writes /var, and switches to v2's archive; QEMU is killed in
   the middle of its layer import, while the workload runs (a power cut: one of the suite's fixed
   moments of bench/powercut.py).
2. No network: after the power cut, v1 with nothing staged, the /etc edit and the /var data kept, a
   store that passes `ostree fsck`, and the images and the workload back. Step 1 switches to an archive
   whose bound image cannot be pulled (nothing is staged), then to the archive of v2, whose embedded
   workload is version 2 (the update completes, and the dead run's work directory is gone), and powers
   off.
3. No network: v2's workload serves. Step 2 rolls back and powers off.
4. With a network (a registry on 127.0.0.1 through guestfwd): v1's workload serves again. Bound images
   over the registry: an unreachable one fails the switch with nothing staged; a reachable one is pulled
   before staging; once no deployment names it, prune removes it. Then v2 is staged from the registry,
   and QEMU is killed while ostree-finalize-staged writes it at shutdown (another fixed moment).
5. The boot after that cut: v1 or v2, whole, by bench/powercut.py's checks.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from bench import powercut
from imagemode.vm.qemu import VM, overlay
from imagemode.vm.registry import Registry, insecure_conf
from tests.conftest import GUEST_REGISTRY, ROOT, digest_of, imagemode

pytestmark = [pytest.mark.vm, pytest.mark.incremental]
POWER_ONS = 5  # QEMU starts (tests/conftest.py)

EXAMPLE = ROOT / "examples/microshift-edge"
AGENT = ROOT / "tests/data/edge"
EDGE = {1: "localhost/imagemode/edge:test-1", 2: "localhost/imagemode/edge:test-2"}
TEST = {n: f"localhost/imagemode/edge-test:{n}" for n in ("v1", "v2", "bad", "v3")}
GUEST = {n: f"{GUEST_REGISTRY}/imagemode/edge:{n}" for n in TEST}
MISSING, TOOL = "registry.example.com/edge/missing:1", "registry.example.com/edge/tool:1"
EMBEDDED = ("registry.example.com/edge/workload:stable", "registry.example.com/edge/sidecar:stable")
DONE = r"EDGE: report done"
SCHEMA = json.loads((ROOT / "tests/data/bootc-host-v1.schema.json").read_text())

# A power cut in the middle of an update, while the workload runs: /etc and /var are written and synced,
# a switch to v2's archive starts, and once some of its layers are committed and some not (v2 has a
# 48 MB layer of its own, bench/powercut.grown), the host pulls the plug on that line.
STEP_0 = """\
echo 'edited before the cut' > /etc/edge-edit
head -c 1048576 /dev/urandom > /var/lib/edge-agent/data
md5sum /var/lib/edge-agent/data > /var/lib/edge-agent/data.md5
touch /var/lib/edge-agent/cut
sync
imagemode switch --transport oci-archive /run/edge-steps/edge-v2.tar --progress-fd 3 \\
    3>/run/edge-progress.jsonl >/dev/null 2>&1 &
switch=$!
last() { grep '"task":"importing"' /run/edge-progress.jsonl 2>/dev/null | tail -n 1; }
until last | grep '"completed":true' | grep -q '"completed":false'; do
    kill -0 $switch 2>/dev/null || { echo "cut missed: the switch ended first"; exit 1; }
    sleep 0.2
done
n() { last | grep -o "$1" | wc -l; }
echo "cut now: $(n '"completed":true') of $(n '"completed"') layers in"
sleep 900
"""
STEP_1 = """\
imagemode switch --transport oci-archive /run/edge-steps/edge-bad.tar >/tmp/bad.out 2>/tmp/bad.err
echo "bad rc=$?"
echo "bad err=$(tail -n 1 /tmp/bad.err)"
staged() { python3 -c 'import json,sys; print(json.load(sys.stdin)["status"]["staged"])'; }
echo "after-bad staged=$(imagemode status --json | staged)"
imagemode switch --transport oci-archive /run/edge-steps/edge-v2.tar --json >/tmp/v2.out 2>/tmp/v2.err
echo "v2 rc=$?"
echo "v2 outcome=$(python3 -c 'import json; print(json.load(open("/tmp/v2.out"))["outcome"])')"
echo "work=$(ls /sysroot/ostree/imagemode | grep -c '^update-')"
systemctl poweroff
"""
STEP_2 = """\
imagemode rollback
echo "rollback rc=$?"
systemctl poweroff
"""


def mirror(address: str) -> str:
    """registries.conf: registry.example.com/edge is served at `address` (how a disconnected site
    mirrors), over plain HTTP."""
    return (
        f'[[registry]]\nprefix = "registry.example.com/edge"\nlocation = "{address}/edge"\n'
        f"insecure = true\n\n{insecure_conf(address)}"
    )


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    with Registry() as reg:
        yield reg


@pytest.fixture(scope="module")
def edge(
    base_image: dict[str, str], registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """The example built twice (workload v1, then v2, behind the same tag), the test variants, and the
    digests the registry serves."""
    d = tmp_path_factory.mktemp("edge")
    (d / "registries.conf").write_text(mirror(registry.address))
    env = {"CONTAINERS_REGISTRIES_CONF": str(d / "registries.conf")}
    build = str(EXAMPLE / "build-workload.sh")
    local = "localhost/imagemode-test/edge"
    for version, role in (("1", "workload"), ("2", "workload"), ("1", "sidecar"), ("1", "tool")):
        subprocess.run([build, version, role, f"{local}-{role}:{version}"], check=True)
    registry.push(f"containers-storage:{local}-sidecar:1", "edge/sidecar:stable")
    registry.push(f"containers-storage:{local}-tool:1", "edge/tool:1")
    digests: dict[str, str] = {}
    for n in (1, 2):
        registry.push(f"containers-storage:{local}-workload:{n}", "edge/workload:stable")
        digests[f"workload-{n}"] = registry.digest("edge/workload:stable")
        imagemode("build", "-t", EDGE[n], "--embed", str(EXAMPLE / "release-x86_64.json"),
                  "--embed", str(EXAMPLE / "manifests.d"), str(EXAMPLE), env=env)  # fmt: skip
    variants = {"v1": (EDGE[1], ""), "v2": (EDGE[2], ""), "bad": (EDGE[2], MISSING), "v3": (EDGE[2], TOOL)}
    for name, (base, bound) in variants.items():
        imagemode("build", "-t", TEST[name], "--build-arg", f"EDGE={base}", "--build-arg", f"BOUND={bound}",
                  str(AGENT))  # fmt: skip
    powercut.grown(TEST["v2"], TEST["v2"], d / "grown")  # an import long enough to cut into
    for name in ("v1", "v2", "bad", "v3"):
        registry.push(f"containers-storage:{TEST[name]}", f"imagemode/edge:{name}")
    digests["v1"], digests["v2"] = digest_of(TEST["v1"]), registry.digest("imagemode/edge:v2")
    return digests


@pytest.fixture(scope="module")
def steps_disk(edge: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 'USB stick': two bundles and the step scripts, on an ext4 filesystem labelled EDGESTEPS."""
    d = tmp_path_factory.mktemp("steps")
    content = d / "content"
    content.mkdir()
    for name in ("bad", "v2"):
        out = json.loads(
            imagemode("bundle", TEST[name], "-o", str(content / f"edge-{name}.tar"), "--json").stdout
        )
        assert out["embedded"] == list(EMBEDDED), out
        assert out["bound"] == ([MISSING] if name == "bad" else []), out
    (content / "step-0.sh").write_text(STEP_0)
    (content / "step-1.sh").write_text(STEP_1)
    (content / "step-2.sh").write_text(STEP_2)
    size = sum(p.stat().st_size for p in content.iterdir()) + (64 << 20)
    img = d / "steps.img"
    with open(img, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "EDGESTEPS", "-d", str(content), str(img)], check=True)
    shutil.rmtree(content)
    return img


@pytest.fixture(scope="module")
def vm(edge: dict[str, str], registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VM]:
    d = tmp_path_factory.mktemp("edge-vm")
    # Room for an update from an archive: skopeo unpacks the archive under /var/tmp first.
    (d / "config.toml").write_text('[[customizations.filesystem]]\nmountpoint = "/"\nminsize = "4 GiB"\n')
    imagemode("disk", TEST["v1"], "--target-imgref", GUEST["v1"], "--config", str(d / "config.toml"),
              "-o", str(d / "disk"))  # fmt: skip
    machine = VM(overlay(d / "disk/disk.qcow2", d / "overlay.qcow2"), serial_log=d / "serial.log",
                 guestfwds=[("10.0.2.100", 5000, registry.port)])  # fmt: skip
    machine.ssh_key = d / "disk/id_ed25519"
    try:
        yield machine
    finally:
        machine.close()


def boot(vm: VM, *, network: bool, disks: tuple[Path, ...] = ()) -> dict[str, str]:
    """Power on and wait for the agent's report: its `key=value` lines, and `images` as a list."""
    vm.network, vm.extra_disks = network, disks
    vm.start()
    vm.wait_console(DONE, timeout=1200)
    return report(vm)


def report(vm: VM) -> dict[str, str]:
    out: dict[str, str] = {}
    images = []
    for raw in vm.console.splitlines():
        # The console shows the journal's identifier first: "[  59.7] sh[468]: EDGE: page=...".
        _, marker, body = raw.strip().partition("EDGE: ")
        if not marker:
            continue
        body = body.lstrip("| ")
        if body.startswith("image "):
            images.append(body)
        elif "=" in body:
            key, _, value = body.partition("=")
            out[key] = value
    out["images"] = "\n".join(images)
    return out


def assert_serving(r: dict[str, str], version: int, edge: dict[str, str]) -> None:
    """The workload of `version` serves, and every embedded image is in podman with its listed digest."""
    assert r["active"] == "active" and r["page"] == f"edge workload v{version}", r
    lines = r["images"].splitlines()
    assert len(lines) == len(EMBEDDED), r
    for ref, line in zip(EMBEDDED, lines, strict=True):
        fields = dict(f.split("=", 1) for f in line.split()[2:])
        assert line.split()[1] == ref and fields["exists"] == "True", line
        assert fields["digest"] == fields["listed"], line
    assert f"digest={edge[f'workload-{version}']}" in lines[0], (lines[0], edge)


def test_runs_with_no_network_at_all_and_loses_power_mid_import(
    vm: VM, edge: dict[str, str], steps_disk: Path
) -> None:
    r = boot(vm, network=False, disks=(steps_disk,))
    assert r["netdevs"].split() == ["lo"], r
    assert_serving(r, 1, edge)
    line = vm.wait_console(r"EDGE: \| cut (now|missed)", timeout=1200)
    vm.kill()  # a power cut in the layer import, while the workload runs
    assert "cut now" in line, line


def test_power_loss_then_offline_update_with_bound_image_refused(
    vm: VM, edge: dict[str, str], steps_disk: Path
) -> None:
    r = boot(vm, network=False, disks=(steps_disk,))
    # What the cut left: the old image, nothing staged, the edits, a store that passes fsck.
    assert_serving(r, 1, edge)
    assert (r["etc"], r["var"], r["fsck"]) == ("edited before the cut", "kept", "ok"), r
    st = json.loads(r["status"])
    jsonschema.validate(st, SCHEMA)
    assert st["status"]["booted"]["image"]["imageDigest"] == edge["v1"] and st["status"]["staged"] is None
    vm.wait_down(900)
    r = report(vm)
    assert r["bad rc"] != "0" and f"bound image {MISSING}" in r["bad err"], r
    assert "nothing was staged" in r["bad err"], r
    assert r["after-bad staged"] == "None", r
    assert r["v2 rc"] == "0" and r["v2 outcome"] == "staged", r  # the update completes after the cut
    assert r["work"] == "0", r  # and the dead run's work directory is gone


def test_offline_update_runs_the_new_workload_then_rolls_back(
    vm: VM, edge: dict[str, str], steps_disk: Path
) -> None:
    r = boot(vm, network=False, disks=(steps_disk,))
    assert_serving(r, 2, edge)
    vm.wait_down(900)
    assert report(vm)["rollback rc"] == "0"


def test_rollback_brings_the_old_workload_back(vm: VM, edge: dict[str, str]) -> None:
    assert_serving(boot(vm, network=True), 1, edge)


def test_bound_images_are_pulled_before_staging_and_collected(vm: VM) -> None:
    vm.wait_ssh(600)
    vm.exec(
        "mkdir -p /etc/containers/registries.conf.d && cat >"
        f" /etc/containers/registries.conf.d/50-edge.conf <<'EOF'\n{mirror(GUEST_REGISTRY)}EOF"
    )
    bad = vm.exec(f"imagemode switch {GUEST['bad']}", check=False)
    assert bad.returncode != 0, bad.stdout
    assert f"bound image {MISSING}" in bad.stderr and "nothing was staged" in bad.stderr, bad.stderr
    status = json.loads(vm.exec("imagemode status --json").stdout)
    assert status["status"]["staged"] is None, status
    assert vm.exec(f"podman image exists {TOOL}", check=False).returncode != 0
    good = json.loads(vm.exec(f"imagemode switch {GUEST['v3']} --json").stdout)
    assert good["outcome"] == "staged", good
    assert vm.exec(f"podman image exists {TOOL}", check=False).returncode == 0
    # Back to the booted image: the staged v3 is dropped, and nothing names the tool image any more.
    back = json.loads(vm.exec(f"imagemode switch {GUEST['v1']} --json").stdout)
    assert back["outcome"] in ("no-update", "retargeted"), back
    pruned = json.loads(vm.exec("imagemode prune --json").stdout)
    assert pruned["bound_images_removed"] == [TOOL], pruned
    assert vm.exec(f"podman image exists {TOOL}", check=False).returncode != 0


def test_power_cut_mid_finalization_boots_the_old_image_or_the_new(vm: VM, edge: dict[str, str]) -> None:
    """A cut while ostree-finalize-staged writes the staged v2 at shutdown (bench/powercut.py's
    checks): the next boot is v1 or v2, whole, and an upgrade runs to completion."""
    powercut.prepare(vm, 2)
    staged = json.loads(vm.exec(f"imagemode switch {GUEST['v2']} --json").stdout)
    assert staged["outcome"] == "staged", staged
    vm.exec("systemctl --no-block poweroff")
    t = powercut.Trial(2, "finalize", 0)
    powercut.cut_on_console(vm, t, random.Random(0), r"Stopping .*ostree-finalize", 0.0)
    powercut.check(vm, t, {edge["v1"]: "v1", edge["v2"]: "v2"})
    assert t.booted in ("v1", "v2") and all(v.startswith("ok") for v in t.checks.values()), t
