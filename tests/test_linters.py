"""`the tests pass` includes `the code is clean`: ruff and strict mypy run as tests."""

import subprocess
import sys

from tests.conftest import ROOT


def _tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True)


def test_ruff_check() -> None:
    p = _tool("ruff", "check", "imagemode", "tests", "bench", "scripts")
    assert p.returncode == 0, p.stdout + p.stderr


def test_ruff_format() -> None:
    p = _tool("ruff", "format", "--check", "imagemode", "tests", "bench", "scripts")
    assert p.returncode == 0, p.stdout + p.stderr


def test_mypy_strict() -> None:
    p = _tool("mypy")
    assert p.returncode == 0, p.stdout + p.stderr
