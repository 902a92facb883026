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


def imagemode(*args: str, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would, in a child process."""
    p = subprocess.run([*IMAGEMODE, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
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
