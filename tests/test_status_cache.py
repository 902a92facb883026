"""imagemode.host.status_cache: the answer is kept only while none of the files it was read from change."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest

from imagemode.host import status_cache as sc
from imagemode.host.status import host_status
from tests.test_status import SCHEMA


@pytest.fixture()
def device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The watched files under tmp_path, and the cache beside them."""
    watched = [
        str(tmp_path / "run/ostree-booted"),
        str(tmp_path / "boot/loader"),
        str(tmp_path / "health.json"),
    ]
    for w in watched[::2]:
        Path(w).parent.mkdir(parents=True, exist_ok=True)
        Path(w).write_text("x")
    (tmp_path / "boot/loader.0").mkdir(parents=True)
    (tmp_path / "boot/loader").symlink_to("loader.0")
    (tmp_path / "ostree/deploy/default/deploy").mkdir(parents=True)
    (tmp_path / "ostree/deploy/default/deploy/old.0.origin").write_text("o")
    monkeypatch.setattr(sc, "WATCHED", tuple(watched))
    monkeypatch.setattr(sc, "STATEROOTS", str(tmp_path / "ostree/deploy"))
    monkeypatch.setattr(sc, "CACHE", str(tmp_path / "run/imagemode/status.json"))
    return tmp_path


STATUS = host_status(None, None, None)


def replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_a_status_is_answered_while_nothing_changed(device: Path) -> None:
    fp = sc.fingerprint()
    sc.save(fp, STATUS)
    assert sc.load(sc.fingerprint()) == STATUS
    assert os.stat(sc.CACHE).st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "change",
    [
        lambda d: (d / "boot/loader").unlink() or (d / "boot/loader").symlink_to("loader.1"),  # new order
        lambda d: replace(d / "health.json", "y"),  # a health record, replaced by rename
        lambda d: (d / "health.json").unlink(),
        lambda d: (d / "ostree/deploy/default/deploy/abc.0.origin").write_text("o"),  # a new deployment
        lambda d: replace(d / "ostree/deploy/default/deploy/old.0.origin", "pinned"),  # an origin rewritten
        lambda d: (d / "ostree/deploy/other/deploy").mkdir(parents=True),  # another stateroot
        lambda d: replace(d / "run/ostree-booted", "x"),
    ],
    ids=["loader", "health", "health-gone", "new-origin", "origin", "stateroot", "booted"],
)
def test_any_change_of_a_watched_file_reads_again(device: Path, change: object) -> None:
    fp = sc.fingerprint()
    sc.save(fp, STATUS)
    change(device)  # type: ignore[operator]
    assert sc.load(sc.fingerprint()) is None


def test_a_change_during_the_read_is_seen_next_time(device: Path) -> None:
    fp = sc.fingerprint()  # taken before the read, as cmd_status does
    replace(device / "health.json", "written while status read the sysroot")
    sc.save(fp, STATUS)
    assert sc.load(sc.fingerprint()) is None


def test_a_broken_or_foreign_cache_is_ignored(device: Path) -> None:
    Path(sc.CACHE).parent.mkdir(parents=True, exist_ok=True)
    fp = sc.fingerprint()
    for text in ("{", f"{sc.MAGIC}\n{fp}\n[]", f"another format\n{fp}\n{{}}", f"{sc.MAGIC}\n{fp}\n{{"):
        Path(sc.CACHE).write_text(text)
        assert sc.load(fp) is None


def test_the_json_form_is_kept_as_printed(device: Path) -> None:
    """`status --json` is answered with the kept text itself, byte for byte what the CLI prints."""
    fp = sc.fingerprint()
    sc.save(fp, STATUS)
    assert sc.load_text(fp) == json.dumps(STATUS, indent=2) + "\n"


def test_an_unwritable_cache_is_not_an_error(device: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sc, "CACHE", "/proc/imagemode-status.json")
    sc.save(sc.fingerprint(), STATUS)
    assert sc.load(sc.fingerprint()) is None


@pytest.mark.parametrize(
    ("argv", "parsed"),
    [
        ([], (None, False)),
        (["--json"], ("json", False)),
        (["--format", "yaml", "--booted"], ("yaml", True)),
        (["--format=humanreadable"], ("humanreadable", False)),
        (["--format", "xml"], None),  # the CLI says what is wrong
        (["--help"], None),
        (["--jso"], None),  # argparse's abbreviations are argparse's
        (["--booted", "--json", "--format-version", "1"], ("json", True)),  # bootc's API guide's form
        (["--format-version=0"], (None, False)),
        (["--format-version", "2"], None),  # the CLI refuses it
    ],
)
def test_only_the_plain_forms_are_answered_early(argv: list[str], parsed: object) -> None:
    assert sc.parse(argv) == parsed


def test_off_a_device_nothing_is_answered_early() -> None:
    assert not os.path.exists("/run/ostree-booted")
    assert sc.answer(["--json"], tty=False) is None


def test_rendered_as_the_cli_renders_it() -> None:
    from tests.test_status import STATES

    st = STATES["rollback"]
    assert json.loads(sc.render(st, "json", False, tty=False)) == st
    booted = json.loads(sc.render(st, "json", True, tty=False))
    assert booted["status"]["booted"] == st["status"]["booted"] and booted["status"]["type"] == "bootcHost"
    assert booted["status"]["staged"] is None and booted["status"]["rollback"] is None  # as bootc: null
    jsonschema.validate(booted, SCHEMA)
    for fmt in sc.FORMATS:  # every format, at a terminal too (the human one used to fail with --booted)
        for tty in (False, True):
            assert "Rollback" not in sc.render(st, fmt, True, tty=tty)
    assert sc.render(st, None, False, tty=True).startswith(sc.render(st, "humanreadable", False, tty=False))
    assert "apiVersion: org.containers.bootc/v1" in sc.render(st, None, False, tty=False)  # yaml off a tty
