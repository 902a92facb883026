"""The CLI as a user meets it: --help everywhere, one-line usage errors, --version.

main() runs in this process (a child process costs a Python start per case); the first test runs the
installed entry point as a user would, so the two cannot drift apart.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import pytest

import imagemode
from imagemode.cli import main
from tests.conftest import imagemode as child


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def cli(*args: str, check: bool = True) -> Ran:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(args))
        except SystemExit as e:  # argparse: --help, --version and usage errors
            rc = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    ran = Ran(rc, out.getvalue(), err.getvalue())
    if check and rc != 0:
        raise AssertionError(f"imagemode {' '.join(args)} exited {rc}:\n{ran.stdout}\n{ran.stderr}")
    return ran


VERBS = [
    ["build", "base"],
    ["build"],
    ["container"],
    ["container", "lint"],
    ["lint"],
    ["disk"],
    ["vm"],
    ["status"],
    ["boot"],
    ["boot", "update"],
    ["upgrade"],
    ["switch"],
    ["rollback"],
    ["prune"],
    ["health"],
    ["bundle"],
]


def test_version_from_the_entry_point() -> None:
    assert child("--version").stdout.strip() == f"imagemode {imagemode.__version__}"
    assert cli("--version").stdout.strip() == f"imagemode {imagemode.__version__}"


def test_top_help_names_every_verb() -> None:
    out = cli("--help").stdout
    verbs = ("build base", "build", "container lint", "lint", "disk", "vm", "status", "boot update")
    for verb in (*verbs, "upgrade", "switch", "rollback", "prune", "health"):
        assert verb in out


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_help_for_every_verb(verb: list[str]) -> None:
    p = cli(*verb, "--help")
    assert p.returncode == 0
    assert p.stdout.startswith("usage: imagemode " + " ".join(verb))
    assert "--verbose" in p.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["build", "base", "--frob"], "unrecognized arguments: --frob"),
        (["lint", "--bogus"], "unrecognized arguments: --bogus"),
        (["build", "-f", "x"], "the following arguments are required: -t/--tag"),
    ],
)
def test_usage_errors_are_one_line(args: list[str], fragment: str) -> None:
    p = cli(*args, check=False)
    assert p.returncode == 2
    assert p.stdout == ""
    assert len(p.stderr.splitlines()) == 1, p.stderr
    assert fragment in p.stderr


def test_no_verb_prints_help() -> None:
    p = cli(check=False)
    assert p.returncode == 2
    assert "usage: imagemode" in p.stdout


def test_bad_tag_is_one_line() -> None:
    p = cli("build", "base", "-t", "Not A Name", "--plan", check=False)
    assert p.returncode == 1
    assert p.stderr.strip().startswith("imagemode: error: invalid image reference 'Not A Name'")
    assert len(p.stderr.splitlines()) == 1


def test_missing_containerfile(tmp_path: object) -> None:
    p = cli("build", "-t", "localhost/x:1", "-f", "/nonexistent/Containerfile", "/tmp", check=False)
    assert p.returncode == 1
    assert p.stderr == "imagemode: error: Containerfile not found: /nonexistent/Containerfile\n"


def test_lint_list() -> None:
    out = cli("lint", "--list").stdout
    for rule in (
        "kernel",
        "bootc-label",
        "run-tmp-empty",
        "var-content",
        "fstab-root",
        "kargs-toml",
        "utf8-names",
    ):
        assert rule in out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["upgrade"], "this system was not booted from an ostree deployment"),
        (["rollback"], "this system was not booted from an ostree deployment"),
        (["prune"], "this system was not booted from an ostree deployment"),
        (["health"], "this system was not booted from an ostree deployment"),
        (["health", "--forget", "all"], "this system was not booted from an ostree deployment"),
        (["switch", "--transport", "ftp", "x/y"], "unknown transport 'ftp'"),
        (["switch", "Not A/Ref!!"], "invalid image reference"),
        (["upgrade", "--apply", "--download-only"], "--apply and --download-only contradict each other"),
        (["switch", "--enforce-container-sigpolicy", "x/y"], "not booted from an ostree deployment"),
        (
            ["bundle", "x", "-o", "/tmp/x.tar", "--sign-identity", "r.example.com/x:1"],
            "--sign-identity and --sign-passphrase-file go with --sign-by",
        ),
    ],
)
def test_device_verbs_fail_in_one_line_off_a_device(args: list[str], expected: str) -> None:
    """On the build host (no /run/ostree-booted) the device verbs refuse, and touch nothing."""
    p = cli(*args, check=False)
    assert p.returncode == 1, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imagemode: error: ") and expected in lines[0], p.stderr
