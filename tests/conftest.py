"""Shared fixtures and the suite's tiers.

Tiers (markers): `unit` (no VM, no real image: seconds), `host` (real images, podman, skopeo,
registries on 127.0.0.1; no VM) and `vm` (QEMU). A test without `host` or `vm` is `unit`.
scripts/test runs the unit tier first and stops there if it fails.

Power-ons are the suite's budget under TCG (each costs one to two minutes): every `vm` module declares
how many it makes in POWER_ONS, the total may not pass POWER_ON_BUDGET, and a module that makes more
than it declares fails. A module marked `incremental` is a story: after its first failure the rest
is reported as not run (xfail), at once, instead of each waiting for a guest that will not answer.

The real base image is built once per session and shared by every host and VM test.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from imagemode.vm import qemu

ROOT = Path(__file__).resolve().parent.parent
IMAGEMODE = [sys.executable, "-m", "imagemode"]
BASE_TAG = "localhost/imagemode/debian:12"
# The device every VM test starts from: hello v1 on a disk that follows DEVICE_TARGET (the guest reaches
# a registry there through guestfwd), built once per run; each test boots it on its own overlay.
HELLO_V1, HELLO_V2 = "localhost/imagemode/hello:lc-v1", "localhost/imagemode/hello:lc-v2"
GUEST_REGISTRY = "10.0.2.100:5000"
DEVICE_TARGET = f"{GUEST_REGISTRY}/imagemode/hello:latest"


POWER_ON_BUDGET = 17  # the whole suite's QEMU starts; raise it only for a boot that proves something new
VM_TEST_TIMEOUT = 1500  # seconds for one VM test, its module's disk build and first boot included

_power_ons: collections.Counter[str] = collections.Counter()
_running: list[str] = [""]  # the module whose test (or fixture) runs now
_story_failed: dict[str, str] = {}
_PLAN = pytest.StashKey[tuple[int, dict[str, int]]]()  # (total power-ons, declared per module)


_launch: list[Callable[[qemu.VM], qemu.VM]] = []  # the real VM.start (a test of the budget replaces it)


def _counted_start(vm: qemu.VM) -> qemu.VM:
    _power_ons[_running[0]] += 1
    return _launch[0](vm)


def pytest_configure(config: pytest.Config) -> None:
    if not _launch:
        _launch.append(qemu.VM.start)
        qemu.VM.start = _counted_start  # type: ignore[method-assign]


def _declared(module: object) -> int:
    n = getattr(module, "POWER_ONS", None)
    if not isinstance(n, int):
        raise pytest.UsageError(f"{getattr(module, '__name__', module)}: a vm module declares POWER_ONS = N")
    return n


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tiers and timeouts, before `-m` selects (so `-m unit` finds the unmarked tests)."""
    for item in items:
        if item.get_closest_marker("vm"):
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(VM_TEST_TIMEOUT))
        elif not item.get_closest_marker("host"):
            item.add_marker(pytest.mark.unit)


@pytest.hookimpl(tryfirst=True)  # before the terminal reporter prints it
def pytest_collection_finish(session: pytest.Session) -> None:
    """The power-on budget, over the tests that will run (`-m` has selected them by now)."""
    modules: dict[str, int] = {}
    for item in session.items:
        if item.get_closest_marker("vm"):
            modules.setdefault(item.module.__name__, _declared(item.module))  # type: ignore[attr-defined]
    total = sum(modules.values())
    session.config.stash[_PLAN] = (total, modules)
    if total > POWER_ON_BUDGET:
        shown = ", ".join(f"{m.split('.')[-1]} {n}" for m, n in modules.items())
        raise pytest.UsageError(f"{total} power-ons ({shown}): over the budget of {POWER_ON_BUDGET}")


def pytest_report_collectionfinish(config: pytest.Config) -> str:
    total, modules = config.stash.get(_PLAN, (0, {}))
    shown = ", ".join(f"{m.split('.')[-1]} {n}" for m, n in modules.items()) or "no vm module selected"
    return f"power-ons: {total} of a budget of {POWER_ON_BUDGET} ({shown})"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    module = item.module.__name__  # type: ignore[attr-defined]
    _running[0] = module
    if item.get_closest_marker("incremental") and module in _story_failed:
        pytest.xfail(f"not run: {_story_failed[module]} failed, and this story goes on from there")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and item.get_closest_marker("incremental"):
        _story_failed.setdefault(item.module.__name__, item.name)  # type: ignore[attr-defined]


@pytest.fixture(scope="module", autouse=True)
def _power_on_count(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    module = request.module.__name__
    if request.node.get_closest_marker("vm") is None:
        return
    made, declared = _power_ons[module], _declared(request.module)
    if made > declared:
        pytest.fail(f"{module} made {made} power-ons and declares POWER_ONS = {declared}")


def imagemode(
    *args: str, check: bool = True, timeout: float = 1800, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would, in a child process; `env` is added to the environment."""
    p = subprocess.run(
        [*IMAGEMODE, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    if check and p.returncode != 0:
        raise AssertionError(f"imagemode {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check)


def _need_root_tools() -> None:
    if os.geteuid() != 0:
        pytest.fail("host and vm tests build real images and need root (run scripts/test as root)")
    for tool in ("mmdebstrap", "podman", "skopeo"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing; scripts/setup installs it")


@pytest.fixture(scope="session")
def base_image() -> Iterator[dict[str, str]]:
    """The real base image, built (or taken from the OS layer cache) once for the whole session."""
    _need_root_tools()
    import json

    p = imagemode("build", "base", "--json")
    result = json.loads(p.stdout)
    result["stderr"] = p.stderr
    yield result


def digest_of(tag: str) -> str:
    import json

    digest: str = json.loads(podman("image", "inspect", tag).stdout)[0]["Digest"]
    return digest


@pytest.fixture(scope="session")
def hello_images(base_image: dict[str, str]) -> dict[str, str]:
    """hello v1 and v2 (`--build-arg VERSION=`), by tag: their digests."""
    for tag, version in ((HELLO_V1, "1"), (HELLO_V2, "2")):
        imagemode("build", "-t", tag, "--build-arg", f"VERSION={version}", str(ROOT / "examples/hello"))
    return {tag: digest_of(tag) for tag in (HELLO_V1, HELLO_V2)}


@pytest.fixture(scope="session")
def device_disk(hello_images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("device-disk")
    # Room for what a fleet agent does besides imagemode (the lifecycle story): podman pulls the next
    # OS image into /var first, and the switch copies it out of there. The qcow2 stays sparse.
    config = out / "config.toml"
    config.write_text('[[customizations.filesystem]]\nmountpoint = "/"\nminsize = "4 GiB"\n')
    imagemode(
        "disk", HELLO_V1, "--target-imgref", DEVICE_TARGET, "--config", str(config), "-o", str(out / "d")
    )
    return out / "d/disk.qcow2"
