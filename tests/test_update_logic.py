"""The pure parts of the device's update verbs: kernel arguments, pruning, rollback order, errors."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import pytest

from imagemode.boot.kargs import replace_image_kargs
from imagemode.errors import ImagemodeError
from imagemode.host import rollback
from imagemode.host.origin import Origin, origin, read
from imagemode.host.prune import refs_to_delete
from imagemode.oci.reference import parse
from imagemode.run import RunError
from imagemode.store.fetch import explain
from imagemode.store.importer import layer_ref
from imagemode.ui import Transfer


def test_image_kargs_replaced_in_place_machine_kargs_kept() -> None:
    current = [
        "root=UUID=x",
        "rw",
        "console=tty0",
        "hello.version=1",
        "quiet",
        "ostree=/ostree/boot.1/a/b/0",
    ]
    out = replace_image_kargs(
        current, ["console=tty0", "hello.version=1"], ["console=ttyS0", "hello.version=2"]
    )
    assert out == ["root=UUID=x", "rw", "console=ttyS0", "hello.version=2", "quiet"]


def test_karg_the_machine_also_set_survives() -> None:
    out = replace_image_kargs(["quiet", "a=1", "quiet"], ["quiet"], [])
    assert out == ["a=1", "quiet"]


def test_new_image_kargs_go_last_when_the_old_image_had_none() -> None:
    assert replace_image_kargs(["root=x", "rw"], [], ["b=2"]) == ["root=x", "rw", "b=2"]


def test_prune_keeps_deployed_images_and_their_layers() -> None:
    d1, d2, d3, d9 = (f"sha256:{c * 64}" for c in "1239")
    images = {"imagemode/image/a": "c1", "imagemode/image/b": "c2", "imagemode/image/old": "c3"}
    layers = [layer_ref(d) for d in (d1, d2, d3, d9)]
    diff_ids = {"c1": [d1], "c2": [d1, d2], "c3": [d3], "c4": [d9]}
    doomed = refs_to_delete(images, layers, {"c1", "c2", "c4"}, diff_ids)
    # c4 is deployed without an image ref of its own (a disk's first deployment): its layer stays.
    assert doomed == ["imagemode/image/old", layer_ref(d3)]


def test_prune_keeps_the_merged_runs_of_kept_images_only() -> None:
    """imagemode/merged/KEY (a chunked base's layers, merged once) lives as long as an image that
    names it."""
    merged = {"c1": "k1", "c2": "k1", "c3": "k3", "c4": ""}
    refs = ["imagemode/merged/k1", "imagemode/merged/k3", "imagemode/merged/orphan"]
    images = {"imagemode/image/a": "c1", "imagemode/image/old": "c3"}
    doomed = refs_to_delete(images, [], {"c1", "c2"}, {}, refs, merged)
    assert doomed == ["imagemode/image/old", "imagemode/merged/k3", "imagemode/merged/orphan"]


def test_what_was_downloaded_is_kept_after_its_deployment_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reboot drops a held deployment; its commit is still what prune keeps (sysroot.downloaded)."""
    from imagemode.host import sysroot as sr

    record = tmp_path / "downloaded"
    monkeypatch.setattr(sr, "DOWNLOADED", record)
    assert sr.downloaded() == set()
    record.write_text("c" * 64 + "\n")
    assert sr.downloaded() == {"c" * 64}
    d1, d2 = (f"sha256:{c * 64}" for c in "12")
    images = {"imagemode/image/next": "c" * 64}
    diff_ids = {"c" * 64: [d1]}
    assert refs_to_delete(images, [layer_ref(d1), layer_ref(d2)], sr.downloaded(), diff_ids) == [
        layer_ref(d2)
    ]
    record.write_text("../../etc/passwd\n")  # a record is read as what it must be, or not at all
    assert sr.downloaded() == set()


@dataclass
class Dep:
    csum: str
    serial: int = 0

    def get_csum(self) -> str:
        return self.csum

    def get_deployserial(self) -> int:
        return self.serial


def test_rollback_moves_the_rollback_first_and_a_second_one_undoes_it() -> None:
    v2, v1 = Dep("v2"), Dep("v1")
    once = rollback.reorder([v2, v1], booted=v2)
    assert once == [v1, v2]
    assert rollback.reorder(once, booted=v2) == [v2, v1]


def test_rollback_without_a_second_deployment() -> None:
    with pytest.raises(ImagemodeError, match="no rollback deployment"):
        rollback.reorder([Dep("v1")], booted=Dep("v1"))


def test_origin_round_trip_and_bootc_forms() -> None:
    assert read(origin("docker://r.example/os:1")) == Origin("docker://r.example/os:1", signed=False)
    assert read(origin("docker://r.example/os:1", signed=True)) == Origin(
        "docker://r.example/os:1", signed=True
    )
    bootc = "[origin]\ncontainer-image-reference=ostree-unverified-registry:r.example/os:1\n"
    assert read(bootc) == Origin("docker://r.example/os:1")
    signed = "[origin]\ncontainer-image-reference=ostree-image-signed:docker://r.example/os:1\n"
    assert read(signed) == Origin("docker://r.example/os:1", signed=True)
    assert read("[origin]\nrefspec=debian:main\n") == Origin()
    assert read("not an ini file [") == read(None) == Origin()


@pytest.mark.parametrize(
    ("stderr", "cause"),
    [
        ('time="t" level=fatal msg="reading manifest v9 in r/x: manifest unknown"', "image not found"),
        ('time="t" level=fatal msg="r/x: unauthorized: authentication required"', "401 unauthorized"),
        ('pinging container registry r: Get "http://r/v2/": dial tcp: connection refused', "unreachable"),
        ('Get "https://r/v2/": http: server gave HTTP response to HTTPS client', "plain HTTP"),
    ],
)
def test_skopeo_errors_are_named(stderr: str, cause: str) -> None:
    msg = str(explain(parse("r.example/x:v9"), RunError(["skopeo"], 1, stderr)))
    assert msg.startswith("cannot read docker://r.example/x:v9: ") and cause in msg
    assert "level=fatal" not in msg and "\n" not in msg


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_transfer_bar_has_bytes_rate_and_eta() -> None:
    out = Tty()
    t = Transfer("fetching", stream=out)
    t(1024 * 1024, 4 * 1024 * 1024, 2.0)
    assert "1.0 MiB / 4.0 MiB" in out.getvalue() and "512.0 KiB/s" in out.getvalue()
    assert "ETA 0:06" in out.getvalue()
    t(4 * 1024 * 1024, 4 * 1024 * 1024, 8.0)
    assert out.getvalue().endswith("\n")


class Locks:
    """A sysroot whose lock another holder gives up after `busy` tries."""

    def __init__(self, busy: int) -> None:
        self.busy, self.tries, self.held = busy, 0, False

    def try_lock(self) -> tuple[bool, bool]:
        self.tries += 1
        self.held = self.tries > self.busy
        return True, self.held

    def unlock(self) -> None:
        self.held = False

    def load(self, _: object) -> None:
        pass


def test_sysroot_lock_is_waited_for_then_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from imagemode.host import sysroot

    brief = Locks(busy=2)  # the boot's verdict, done in a second
    monkeypatch.setattr(sysroot, "load", lambda path: brief)
    with sysroot.locked(wait=5) as held:
        assert held is brief and brief.held and brief.tries == 3
    assert not brief.held
    assert "waiting for the sysroot lock" in caplog.text

    never = Locks(busy=10**6)  # a download that outlasts the wait
    monkeypatch.setattr(sysroot, "load", lambda path: never)
    refused = r"^another update holds the sysroot lock .* after 1s; try again later$"
    with pytest.raises(ImagemodeError, match=refused), sysroot.locked(wait=1):
        raise AssertionError("the body ran without the lock")
    assert 2 <= never.tries <= 4


def test_the_work_of_an_update_that_died_is_removed_by_the_next(tmp_path: Path) -> None:
    """A power cut mid-import left its layout under /sysroot/ostree/imagemode (bench/powercut.py)."""
    from imagemode.host.update import clear_stale_work

    (tmp_path / "update-abc123/oci-x/blobs").mkdir(parents=True)
    (tmp_path / "update-abc123/oci-x/blobs/layer").write_bytes(b"x" * 4096)
    (tmp_path / "prune-pending").write_text("")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "update-link").symlink_to(tmp_path / "elsewhere")  # a link is never followed out
    assert clear_stale_work(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "prune-pending", "update-link"]


def test_bytes_still_in_flight_count_before_their_layer_is_named(tmp_path: Path) -> None:
    """skopeo writes a blob into a temporary file at the layout's top and names it by its digest when
    it is whole: a one-layer update would otherwise read 0 bytes until its very end."""
    from imagemode.store.fetch import _blob_bytes

    whole, writing = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    (tmp_path / "blobs/sha256").mkdir(parents=True)
    (tmp_path / "blobs/sha256" / ("a" * 64)).write_bytes(b"x" * 8192)
    (tmp_path / "oci-layout").write_text("{}")
    (tmp_path / "index.json").write_text("{}")
    (tmp_path / "oci-put-blob123").write_bytes(b"y" * 16384)
    assert _blob_bytes(tmp_path, [whole, writing]) == ({whole: 8192, writing: 0}, 16384)
