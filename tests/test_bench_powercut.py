"""bench/powercut.py refuses what it cannot run in one line, before it builds an image or boots a VM: a
soak is hours long, and a typo must not cost the first trial."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def powercut(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "bench/powercut.py"), *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--trials", "0"], "argument --trials: '0' is not a whole number of at least 1"),
        (["--first", "0"], "argument --first: '0' is not a whole number of at least 1"),
        (["--layer-mb", "-5"], "argument --layer-mb: '-5' is not a whole number of at least 1"),
        (["--layer-mb", "big"], "argument --layer-mb: 'big' is not a whole number of at least 1"),
        (["--phase", "bogus"], "argument --phase: invalid choice: 'bogus'"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(args: list[str], said: str) -> None:
    p = powercut(*args)
    assert p.returncode == 2 and p.stdout == "", p.stdout
    assert p.stderr.splitlines()[-1].startswith(f"powercut.py: error: {said}"), p.stderr


def test_a_record_it_cannot_write_is_refused_before_any_trial(tmp_path: Path) -> None:
    p = powercut("--json", str(tmp_path / "missing/soak.json"), "--trials", "1")
    assert p.returncode == 2 and "seed" not in p.stdout, p.stdout
    assert p.stderr.splitlines()[-1] == (
        f"powercut.py: error: --json {tmp_path}/missing/soak.json: No such file or directory"
    )
