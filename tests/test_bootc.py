"""`bootc` on the device, as its callers spell it: the table parses their exact command lines into
imagemode's handlers, refuses what imagemode lacks in one line, and the progress it writes is
progress-v0. (The booted device plays a flightctl sequence in tests/test_lifecycle.py.)"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from pathlib import Path

import jsonschema
import pytest

from imagemode import bootc, cli
from imagemode.host import progress, status
from imagemode.host.update import with_tag
from imagemode.oci.reference import Transport, parse
from tests.conftest import ROOT

PROGRESS = json.loads((Path(__file__).resolve().parent / "data/bootc-progress-v0.schema.json").read_text())
# bootc's verbs that imagemode does not have (bootc 1.x's `bootc --help`, hidden ones too).
UNSUPPORTED = ["install", "edit", "image", "loader-entries", "state", "internals", "config-diff",
               "completion", "exec-in-host-mount-namespace", "composefs-finalize-staged",
               "delete-deployment", "container compute-composefs-digest", "container ukify"]  # fmt: skip


def ran(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = bootc.main(list(argv))
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 0
    return rc, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("verb", UNSUPPORTED)
def test_a_verb_imagemode_lacks_is_one_line_and_exit_2(verb: str) -> None:
    rc, out, err = ran(*verb.split(), "--some-flag")
    assert rc == 2 and out == ""
    assert err == f"bootc (imagemode): {verb!r} is not supported; see docs/bootc-differences.md\n"


def test_every_verb_has_help_and_a_row_in_the_differences_table() -> None:
    doc = (ROOT / "docs/bootc-differences.md").read_text()
    for verb in bootc.VERBS:
        rc, out, _ = ran(*verb.path, "--help")
        assert rc == 0 and out.startswith(f"usage: bootc {verb.name}"), verb.name
        assert f"| `bootc {verb.name}" in doc, verb.name
        for o in verb.options:
            if o.flags[0].startswith("--"):
                assert f"`{o.flags[0]}" in doc, (verb.name, o.flags[0])
    for verb in UNSUPPORTED:
        assert f"| `bootc {verb}`" in doc, verb
    assert ran("--help")[1].startswith("usage: bootc")


def test_flightctls_commands_parse_into_imagemodes_options() -> None:
    verb, args = cli.dispatch(
        ["switch", "--transport", "containers-storage", "--retain", "quay.io/x/os:2"], bootc.TABLE
    )
    assert verb.handler is bootc.switch and args.target == "quay.io/x/os:2" and args.retain
    assert args.transport == "containers-storage" and args.enforce_container_sigpolicy is False
    verb, args = cli.dispatch(["status", "--booted", "--json", "--format-version=1"], bootc.TABLE)
    assert (args.booted, args.json, args.format_version) == (True, True, 1)
    verb, args = cli.dispatch(["upgrade", "--apply", "--progress-fd", "3"], bootc.TABLE)
    assert args.apply and args.progress_fd == 3 and not hasattr(args, "json")
    rc, _, err = ran("status", "--format-version", "2")
    assert rc == 2 and "invalid choice: 2" in err and "\n" not in err.rstrip("\n")
    rc, _, err = ran("upgrade", "--check", "--apply")
    assert rc == 2 and err.startswith("bootc upgrade: error: --apply and --check contradict each other")


def test_switch_keeps_the_devices_enforcement_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """bootc's switch without the flag writes an unverified origin; imagemode's keeps what the device
    has (None), so an agent's plain switch never drops a signed device's policy."""
    seen: list[object] = []
    monkeypatch.setattr(bootc.c, "switch", lambda args: seen.append(args) or 0)
    for extra, want in (([], None), (["--enforce-container-sigpolicy"], True)):
        verb, args = cli.dispatch(["switch", *extra, "quay.io/x/os"], bootc.TABLE)
        assert verb.handler(args) == 0
        got = seen.pop()
        assert (got.image, got.enforce_container_sigpolicy, got.json, got.quiet) == (  # type: ignore[attr-defined]
            "quay.io/x/os", want, False, False)  # fmt: skip


def test_container_inspect_reads_kargs_and_the_kernel(tmp_path: Path) -> None:
    (tmp_path / "usr/lib/modules/6.1.0-28-amd64").mkdir(parents=True)
    (tmp_path / "usr/lib/modules/6.1.0-28-amd64/vmlinuz").write_bytes(b"k")
    (tmp_path / "usr/lib/bootc/kargs.d").mkdir(parents=True)
    (tmp_path / "usr/lib/bootc/kargs.d/10-console.toml").write_text('kargs = ["console=ttyS0", "quiet"]\n')
    rc, out, _ = ran("container", "inspect", "--rootfs", str(tmp_path), "--json")
    assert rc == 0
    assert json.loads(out) == {
        "kargs": ["console=ttyS0", "quiet"], "kernel": {"version": "6.1.0-28-amd64", "unified": False}
    }  # fmt: skip
    rc, out, _ = ran("container", "inspect", "--rootfs", str(tmp_path), "--format", "yaml")
    assert rc == 0 and "version: 6.1.0-28-amd64" in out
    rc, out, _ = ran("container", "inspect", "--rootfs", str(tmp_path))
    assert rc == 0 and out == "Kernel: 6.1.0-28-amd64\nKernel arguments: console=ttyS0 quiet\n"
    rc, _, err = ran("container", "inspect", "--rootfs", str(tmp_path / "none"))
    assert rc == 1 and err.startswith("bootc: error: --rootfs ") and err.count("\n") == 1


def test_container_lint_on_a_rootfs_skips_only_what_it_is_told(tmp_path: Path) -> None:
    (tmp_path / "usr/lib/modules").mkdir(parents=True)
    rc, out, _ = ran("container", "lint", "--rootfs", str(tmp_path))
    assert rc == 1 and "no kernel" in out and "bootc-label" not in out  # no labels in a RUN step
    rc, out, _ = ran("container", "lint", "--rootfs", str(tmp_path), "--skip", "kernel")
    assert rc == 0 and "no kernel" not in out
    rc, _, err = ran("container", "lint", "--rootfs", str(tmp_path), "--skip", "nope")
    assert rc == 1 and err == "bootc: error: unknown lint 'nope' (see bootc container lint --list)\n"


def test_progress_lines_validate_against_progress_v0() -> None:
    r, w = os.pipe()
    try:
        ev = progress.Events(w)
        ev.start()
        ev.step(0, "docker://quay.io/x/os:2")
        ev.layers({"sha256:" + "a" * 64: 100, "sha256:" + "b" * 64: 50})
        ev.bytes({}, 40, force=True)  # 40 bytes into a blob that has no digest yet
        ev.bytes({"sha256:" + "a" * 64: 100, "sha256:" + "b" * 64: 50}, force=True)
        ev.importing(1, 2)
        ev.importing(2, 2)
        for done in range(len(progress.STAGING) + 1):
            ev.staging(done)
    finally:
        os.close(w)
    with os.fdopen(r) as f:
        lines = [json.loads(ln) for ln in f.read().splitlines()]
    for line in lines:
        jsonschema.validate(line, PROGRESS)
    assert [x["type"] for x in lines[:3]] == ["Start", "ProgressSteps", "ProgressBytes"]
    writing = lines[2]
    assert (writing["bytes"], writing["steps"], [s["bytes"] for s in writing["subtasks"]]) == (40, 0, [0, 0])
    assert lines[3]["bytes"] == lines[3]["bytesTotal"] == 150 and lines[3]["steps"] == 2
    assert [x["task"] for x in lines[1:]] == ["pulling"] * 3 + ["importing"] * 2 + ["staging"] * 5
    assert all(s["completed"] for s in lines[-1]["subtasks"])  # progress-v0 has no end event


def test_a_bad_progress_fd_is_one_line() -> None:
    with pytest.raises(progress.ProgressFdError, match=r"^--progress-fd 987: not an open file descriptor$"):
        progress.Events(987)


def test_status_reports_the_image_as_it_was_given() -> None:
    """An agent compares the spec it gave with status, byte for byte."""
    for given, transport in (("quay.io/x/os", "registry"), ("os", "containers-storage"),
                             ("quay.io/x/os@sha256:" + "c" * 64, "registry")):  # fmt: skip
        ref = parse(given, transport)
        assert status.image_reference(ref.spec)["image"] == given
        assert parse(ref.spec) == ref  # the origin's form reads back as the same image
    assert str(parse("quay.io/x/os")) == "quay.io/x/os:latest"  # what skopeo is given is still whole


def test_upgrade_tag_swaps_only_the_tag() -> None:
    assert with_tag(parse("quay.io/x/os:1"), "2").spec == "docker://quay.io/x/os:2"
    assert with_tag(parse("quay.io/x/os@sha256:" + "d" * 64), "2").spec == "docker://quay.io/x/os:2"
    assert with_tag(parse("oci:/srv/os:1"), "2").spec == "oci:/srv/os:2"
    assert with_tag(parse("os", Transport.CONTAINERS_STORAGE), "2").name == "localhost/os"
    with pytest.raises(Exception, match=re.escape("bad tag 'no!'")):
        with_tag(parse("quay.io/x/os:1"), "no!")
