"""The CLI as a user meets it: --help everywhere, one-line usage errors, --version.

main() runs in this process (a child process costs a Python start per case); the first test runs the
installed entry point as a user would, so the two cannot drift apart.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
from dataclasses import dataclass

import pytest

import imagemode
from imagemode import cli as cli_table
from imagemode.cli import main
from tests.conftest import ROOT
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


# Every verb of the table, and the groups (`container`, `boot`) whose help lists their sub-verbs.
VERBS = [list(v.path) for v in cli_table.VERBS] + [[g] for g in cli_table.GROUPS]


def test_version_from_the_entry_point() -> None:
    assert child("--version").stdout.strip() == f"imagemode {imagemode.__version__}"
    assert cli("--version").stdout.strip() == f"imagemode {imagemode.__version__}"


def test_top_help_names_every_verb() -> None:
    out = cli("--help").stdout
    for verb in cli_table.VERBS:
        assert f"  {verb.name} " in out, verb.name
        assert verb.help in out


def test_the_readme_lists_every_verb() -> None:
    readme = (ROOT / "README.md").read_text()
    for verb in cli_table.VERBS:
        assert f"`imagemode {verb.name}" in readme or f"(`imagemode {verb.name}`)" in readme, verb.name


def test_global_verbose_goes_before_any_verb() -> None:
    """`imagemode -v build base --plan`: -v before the verb, and `build base` is not `build BASE`."""
    verb, args = cli_table.dispatch(["-v", "build", "base", "--plan"])
    assert verb.path == ("build", "base") and args.plan and args.verbose
    verb, args = cli_table.dispatch(["build", "-t", "x:1", "base"])
    assert verb.path == ("build",) and args.context == "base" and not args.verbose


def _argv(verb: cli_table.Verb, dests: tuple[str, ...]) -> list[str]:
    """The verb's required arguments, then each option of `dests` given."""
    out = list(verb.path)
    for o in verb.options:
        positional = not o.flags[0].startswith("-")
        if (positional and o.kw.get("nargs") != "?") or o.kw.get("required"):
            out += [o.flags[-1]] if not positional else []
            out.append("x")
    for dest in dests:
        o = next(o for o in verb.options if o.dest == dest)
        if not o.flags[0].startswith("-"):
            out.append("x")
            continue
        out.append(max(o.flags, key=len))
        if o.kw.get("action") not in ("store_true", argparse.BooleanOptionalAction):
            out.append(o.kw["choices"][0] if "choices" in o.kw else "x")
    return out


PAIRS = [
    (verb, (a, b))
    for verb in cli_table.VERBS
    for group in verb.exclusive
    for a, b in itertools.combinations(group, 2)
]


@pytest.mark.parametrize(("verb", "pair"), PAIRS, ids=[f"{v.name}:{a}+{b}" for v, (a, b) in PAIRS])
def test_contradictory_flags_are_usage_errors(verb: cli_table.Verb, pair: tuple[str, str]) -> None:
    p = cli(*_argv(verb, pair), check=False)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and "contradict each other" in p.stderr, p.stderr


def test_flags_without_the_one_they_go_with_are_usage_errors() -> None:
    for verb in cli_table.VERBS:
        for dest, needs in verb.requires:
            p = cli(*_argv(verb, (dest,)), check=False)
            assert p.returncode == 2, p.stderr
            assert p.stderr.count("\n") == 1 and "goes with --" + needs.replace("_", "-") in p.stderr


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_help_for_every_verb(verb: list[str]) -> None:
    p = cli(*verb, "--help")
    assert p.returncode == 0
    assert p.stdout.startswith("usage: imagemode " + " ".join(verb))
    assert "--verbose" in p.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["frobnicate"], "unknown verb 'frobnicate'"),
        (["container"], "a verb is required (one of: lint)"),
        (["boot", "frob"], "unknown verb 'frob' (one of: update)"),
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
        (["switch", "--enforce-container-sigpolicy", "x/y"], "not booted from an ostree deployment"),
    ],
)
def test_device_verbs_fail_in_one_line_off_a_device(args: list[str], expected: str) -> None:
    """On the build host (no /run/ostree-booted) the device verbs refuse, and touch nothing."""
    p = cli(*args, check=False)
    assert p.returncode == 1, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imagemode: error: ") and expected in lines[0], p.stderr
