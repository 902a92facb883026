"""Shared fixtures. The real base image is built once per session and shared by every integration test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IMAGEMODE = [sys.executable, "-m", "imagemode"]
BASE_TAG = "localhost/imagemode/debian:12"
# The device every VM test starts from: hello v1 on a disk that follows DEVICE_TARGET (the guest reaches
# a registry there through guestfwd), built once per run; each test boots it on its own overlay.
HELLO_V1, HELLO_V2 = "localhost/imagemode/hello:lc-v1", "localhost/imagemode/hello:lc-v2"
GUEST_REGISTRY = "10.0.2.100:5000"
DEVICE_TARGET = f"{GUEST_REGISTRY}/imagemode/hello:latest"


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
        pytest.fail("integration tests build real images and need root (run scripts/test as root)")
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
    imagemode("disk", HELLO_V1, "--target-imgref", DEVICE_TARGET, "-o", str(out))
    return out / "disk.qcow2"
