"""The chunked OS layer (imagemode.chunk), on small trees made here: which component owns each entry,
which slot each component gets and keeps, patches, the layers' bytes, and that the layers compose into
the very tree of the flat layer (with the real libostree). The real base is in tests/test_base_image.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagemode.chunk import components, write
from imagemode.chunk import label as chunk_label
from imagemode.chunk import plan as chunk_plan
from imagemode.chunk.components import INITRAMFS, UNOWNED, VOLATILE
from imagemode.oci.layout import MEDIA_LAYER_TAR, Blob, Layout, write_layer
from imagemode.store import importer
from imagemode.store.ostree import Repo

EPOCH = 1_790_000_000
DEB = 1_700_000_000  # the mtime of files from .debs
BUILT = EPOCH + 864_000  # the mtime of files the build made: after the epoch, which clamps them
DB = "usr/lib/sysimage/dpkg"
KVER = "6.1.0-9-amd64"


# ---- a small Debian tree with its dpkg database --------------------------------------------------


def _file(root: Path, rel: str, data: bytes = b"x", mtime: int = DEB, mode: int = 0o644) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    p.chmod(mode)
    os.utime(p, (mtime, mtime))


PACKAGES: dict[str, tuple[str, str, list[tuple[str, bytes]]]] = {
    # binary: (source, version, files)
    "bash": ("bash", "5.2.15-2+b7", [("usr/bin/bash", b"B" * 3000)]),
    "perl-base": ("perl", "5.36.0-7+deb12u3", [("usr/bin/perl", b"P" * 5000), *[
        (f"usr/lib/x86_64-linux-gnu/perl-base/M{i}.pm", f"module {i}\n".encode() * 200)
        for i in range(40)]]),
    "perl-modules-5.36": ("perl", "5.36.0-7+deb12u3", [("usr/share/perl/5.36/Big.pm", b"big\n" * 2000)]),
    "libpython3.11-stdlib": ("python3.11", "3.11.2-6+deb12u8", [("usr/lib/python3.11/json.py", b"J" * 900)]),
    "udev": ("systemd", "252.38-1~deb12u1", [("usr/bin/udevadm", b"U" * 2000)]),
    "base-files": ("base-files", "12.4+deb12u5", [("usr/share/base-files/dot.bashrc", b"# bashrc\n")]),
    "linux-image-6.1.0-9-amd64": ("linux-signed-amd64", "6.1.27-1", [
        (f"lib/modules/{KVER}/kernel/fs/ext4.ko", b"K" * 4000),
        (f"lib/modules/{KVER}/modules.order", b"o")]),
    "dash": ("dash", "0.5.12-2", [("bin/dash", b"D" * 700), ("bin/sh", b"dash")]),
}  # fmt: skip


def debian_tree(
    root: Path, packages: dict[str, tuple[str, str, list[tuple[str, bytes]]]] = PACKAGES
) -> None:
    """A merged-/usr tree with the files of `packages`, their dpkg database, and what package scripts
    and the build leave behind."""
    for d in ("bin", "lib", "sbin"):
        (root / "usr" / d).mkdir(parents=True, exist_ok=True)
        (root / d).symlink_to(f"usr/{d}")
    status = []
    for name, (source, version, files) in packages.items():
        status.append(
            f"Package: {name}\nStatus: install ok installed\nSource: {source}\nVersion: {version}\n"
        )
        listed = []
        md5 = []
        for rel, data in files:
            real = rel if rel.startswith("usr/") else f"usr/{rel}"
            _file(root, real, data)
            listed.append(f"/{rel}")
            md5.append(f"{hashlib.md5(data).hexdigest()}  {rel}")
        _file(root, f"{DB}/info/{name}.list", ("\n".join(listed) + "\n").encode(), mtime=BUILT)
        _file(root, f"{DB}/info/{name}.md5sums", ("\n".join(md5) + "\n").encode(), mtime=BUILT)
    _file(root, f"{DB}/status", "\n".join(status).encode(), mtime=BUILT)
    # dash diverts /bin/sh: bash's shell is /bin/sh.distrib (here, only the dash package ships /bin/sh)
    _file(root, f"{DB}/diversions", b"/bin/sh\n/bin/sh.distrib\ndash\n", mtime=BUILT)
    _file(root, "etc/passwd", b"root:x:0:0::/root:/bin/bash\n", mtime=BUILT)
    _file(root, "etc/ld.so.cache", b"cache", mtime=BUILT)
    _file(root, "usr/lib/imagemode/packages.lock.json", b"{}", mtime=BUILT)
    _file(root, "usr/lib/python3.11/__pycache__/json.cpython-311.pyc", b"pyc", mtime=BUILT)
    _file(root, f"usr/lib/modules/{KVER}/modules.dep", b"dep", mtime=BUILT)
    _file(root, f"usr/lib/modules/{KVER}/vmlinuz", b"V" * 3000, mtime=BUILT)
    _file(root, f"usr/lib/modules/{KVER}/initramfs.img", b"I" * 2500, mtime=BUILT)
    _file(root, "usr/lib/udev/hwdb.bin", b"H" * 1500, mtime=BUILT)
    _file(root, "usr/share/factory/roothome/.bashrc", b"# bashrc\n", mtime=BUILT)  # a copy: by md5sums
    _file(root, "usr/share/blob.bin", b"\0" * (components.LARGE + 1), mtime=BUILT)
    _file(root, "etc/hostname.local", b"h", mtime=BUILT)
    (root / "usr/bin/awk").symlink_to("/etc/alternatives/awk")
    (root / "tmp").mkdir()


def flat_layer(tmp_path: Path, name: str = "tree", **kw: object) -> Path:
    root = tmp_path / name
    root.mkdir()
    debian_tree(root, **kw)  # type: ignore[arg-type]
    dest = tmp_path / f"{name}.tar"
    write_layer(root, dest, EPOCH)
    return dest


@pytest.fixture
def scanned(tmp_path: Path) -> Iterator[tuple[tarfile.TarFile, components.Scan]]:
    with tarfile.open(flat_layer(tmp_path), "r:") as tar:
        yield tar, components.scan(tar)


def owner(scan: components.Scan, name: str) -> str:
    return scan.by_name[name].component


# ---- components --------------------------------------------------------------------------------


def test_every_rule_names_the_right_component(scanned: tuple[tarfile.TarFile, components.Scan]) -> None:
    _, scan = scanned
    assert owner(scan, "usr/bin/bash") == "bash"
    assert owner(scan, "usr/bin/perl") == "perl"  # the source, not the binary package
    assert owner(scan, "usr/share/perl/5.36/Big.pm") == "perl"
    assert owner(scan, "usr/bin/dash") == "dash"  # /bin/dash through usrmerge's /bin -> usr/bin
    assert owner(scan, f"{DB}/info/bash.list") == "bash"
    assert owner(scan, "usr/lib/python3.11/__pycache__/json.cpython-311.pyc") == "python3.11"
    assert owner(scan, f"usr/lib/modules/{KVER}/modules.dep") == "linux-signed-amd64"
    assert owner(scan, f"usr/lib/modules/{KVER}/vmlinuz") == "linux-signed-amd64"
    assert owner(scan, f"usr/lib/modules/{KVER}/initramfs.img") == INITRAMFS
    assert owner(scan, "usr/lib/udev/hwdb.bin") == "systemd"
    assert owner(scan, "usr/share/factory/roothome/.bashrc") == "base-files"  # by its md5
    assert owner(scan, "usr/share/blob.bin") == "@file:usr/share/blob.bin"
    assert owner(scan, "etc/hostname.local") == UNOWNED
    for volatile in ("etc/passwd", "etc/ld.so.cache", f"{DB}/status", f"{DB}/diversions",
                     "usr/lib/imagemode/packages.lock.json", "usr/bin/awk"):  # fmt: skip
        assert owner(scan, volatile) == VOLATILE, volatile
    assert owner(scan, "usr") == "" and owner(scan, "tmp") == UNOWNED  # a parent; an empty directory
    assert scan.kernel == "linux-signed-amd64"
    assert scan.packages["perl-base"] == "5.36.0-7+deb12u3"
    # .deb files keep their mtime, and they alone date a component
    assert scan.components["perl"].packaged_mtime == DEB
    assert scan.components[VOLATILE].packaged_mtime == 0


def test_diversions_give_the_diverted_file_to_its_package(tmp_path: Path) -> None:
    pkgs = dict(PACKAGES)
    pkgs["bash"] = ("bash", "5.2", [("usr/bin/bash", b"B"), ("bin/sh", b"bash's sh")])
    root = tmp_path / "t"
    root.mkdir()
    debian_tree(root, pkgs)
    os.rename(root / "usr/bin/sh", root / "usr/bin/sh.distrib")  # what dpkg did with bash's /bin/sh
    _file(root, "usr/bin/sh", b"dash")
    write_layer(root, tmp_path / "t.tar", EPOCH)
    with tarfile.open(tmp_path / "t.tar", "r:") as tar:
        scan = components.scan(tar)
    assert owner(scan, "usr/bin/sh.distrib") == "bash"
    assert owner(scan, "usr/bin/sh") == "dash"


def test_hostile_dpkg_lines_claim_nothing(tmp_path: Path) -> None:
    """A `..`, a NUL, a link that climbs out of the tree, a name that is no Debian name: none of them is an
    ownership claim, and nothing outside the tar is ever read. (A link inside the tree is the image's
    own view, as usrmerge's /bin is: a claim through it is a claim of its target in the tree.)"""
    root = tmp_path / "t"
    root.mkdir()
    debian_tree(root)
    with open(root / f"{DB}/info/bash.list", "a") as f:
        f.write("/../../usr/share/blob.bin\n/usr/bin/\0x\n/evil/blob.bin\n/etc/hostname.local\n")
    (root / "evil").symlink_to("../../usr/share")
    status = (root / f"{DB}/status").read_text()
    (root / f"{DB}/status").write_text(
        status + "\nPackage: ../x\nStatus: install ok installed\nVersion: 1\n"
    )
    _file(root, f"{DB}/info/../x.list", b"/usr/bin/bash\n")
    write_layer(root, tmp_path / "t.tar", EPOCH)
    with tarfile.open(tmp_path / "t.tar", "r:") as tar:
        scan = components.scan(tar)
    assert owner(scan, "usr/share/blob.bin") == "@file:usr/share/blob.bin"
    assert owner(scan, "etc/hostname.local") == "bash"
    assert owner(scan, "usr/bin/bash") == "bash"
    assert "../x" not in scan.packages
    assert components.normalize("a/../../b") is None and components.normalize("a\0b") is None


def test_a_tagged_file_goes_to_its_component(tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    debian_tree(root)
    _file(root, "usr/lib/python3/dist-packages/imagemode/cli.py", b"code")
    write_layer(
        root / "usr/lib/python3/dist-packages/imagemode", tmp_path / "im.tar", EPOCH, component="imagemode"
    )
    with tarfile.open(tmp_path / "im.tar") as tar:
        (m,) = tar.getmembers()
        assert m.pax_headers["SCHILY.xattr.user.component"] == "imagemode"


# ---- the label --------------------------------------------------------------------------------------


def good_label() -> chunk_label.ChunkLabel:
    return chunk_label.ChunkLabel(
        layers=("own:perl", "bin:3", "patch:perl", "initramfs", "volatile"),
        bins=16,
        binned=("bash", "dash"),
        bases={"perl": b"\1" * 24},
        packages={"perl-base": "5.36.0-7+deb12u3", "bash": "5.2.15-2+b7"},
        prior="sha256:" + "a" * 64,
    )


def test_label_round_trip() -> None:
    lab = good_label()
    assert chunk_label.parse(lab.to_json()) == lab
    assert lab.own == ("perl",) and lab.patched == ("perl",)
    cfg = {"config": {"Labels": {chunk_label.KEY: lab.to_json()}}}
    assert chunk_label.of_config(cfg) == lab
    assert chunk_label.of_config({"config": {}}) is None


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"version": 2}, "not a version 1 object"),
        ({"bins": True}, "bins"),
        ({"bins": 1}, "past the 1 bins"),
        ({"layers": ["own:../etc"]}, "not a component name"),
        ({"layers": ["own:perl", "own:perl"]}, "named twice"),
        ({"layers": "own:perl"}, "not a list"),
        ({"packages": {"perl": "1 2"}}, "is not a package and a version"),
        ({"packages": {"Perl": "1"}}, "is not a package and a version"),
        ({"bases": {"perl": base64.b64encode(b"12345").decode()}}, "not a set of fingerprints"),
        ({"bases": {"bash": base64.b64encode(b"\0" * 12).decode()}}, "not a set of fingerprints"),
        ({"bases": {"perl": "!!!"}}, "not a set of fingerprints"),
        ({"prior": "/etc/passwd"}, "prior is not a sha256 digest"),
        ({"binned": ["ok", 3]}, "binned"),
    ],
)
def test_a_hostile_label_is_refused_in_one_line(change: dict[str, object], why: str) -> None:
    d = json.loads(good_label().to_json())
    d.update(change)
    with pytest.raises(chunk_label.LabelError) as e:
        chunk_label.parse(json.dumps(d))
    assert why in str(e.value) and "\n" not in str(e.value)


def test_labels_that_are_no_json_object_are_refused() -> None:
    for text in ("[]", "{", "x" * (chunk_label.MAX_TEXT + 1), 7, "[" * 100_000):
        with pytest.raises(chunk_label.LabelError):
            chunk_label.parse(text)


# ---- slots -------------------------------------------------------------------------------------------


def sizes(**kw: int) -> list[chunk_plan.Size]:
    return [chunk_plan.Size(n.replace("_", "-"), s) for n, s in kw.items()]


def test_the_largest_components_get_slots_the_rest_bins() -> None:
    many = [chunk_plan.Size(f"pkg{i}", (i + 1) << 20) for i in range(200)]
    slots = chunk_plan.assign([*many, chunk_plan.Size("tiny", 10)], None)
    assert len(slots.own) == chunk_plan.OWN_MAX
    assert slots.own[0] == "pkg199" and "tiny" in slots.binned
    plan = chunk_plan.make(many, None, None, lambda n: {}, lambda: pytest.fail("no prior, no tree"))
    assert len(plan.layers) + chunk_plan.TOP <= chunk_plan.MAX_LAYERS


def test_slots_are_kept_from_the_prior_build() -> None:
    first = chunk_plan.assign(sizes(big=10 << 20, mid=1 << 20, small=1000, gone=2 << 20), None)
    assert first.own == ("big", "gone", "mid") and first.binned == ("small",)
    prior = chunk_label.ChunkLabel(tuple(f"own:{n}" for n in first.own), chunk_plan.BINS, first.binned)
    # `mid` shrank, `small` grew a little, `gone` went, `new` came: only `new` takes a free slot
    again = chunk_plan.assign(sizes(big=10 << 20, mid=1000, small=2 << 20, new=3 << 20), prior)
    assert again.own == ("big", "mid", "new")
    assert again.binned == ("small",)
    # a binned component that grew large takes a free slot: one move, once
    grown = chunk_plan.assign(sizes(big=1, mid=1, small=chunk_plan.PROMOTE_MIN), prior)
    assert grown.own == ("big", "mid", "small")


def test_bins_are_stable_by_name() -> None:
    assert chunk_plan.bin_of("bash") == chunk_plan.bin_of("bash")
    assert len({chunk_plan.bin_of(f"p{i}") for i in range(500)}) == chunk_plan.BINS


# ---- patch decisions --------------------------------------------------------------------------------


def fp(*pairs: tuple[int, int]) -> chunk_plan.Fingerprints:
    return {bytes([p]) * 6: bytes([c]) * 6 for p, c in pairs}


def tree_of(current: chunk_plan.Fingerprints, **elsewhere: tuple[int, str, bool]) -> chunk_plan.Tree:
    where = {
        bytes([int(k[1:])]) * 6: (bytes([c]) * 6, comp, is_dir) for k, (c, comp, is_dir) in elsewhere.items()
    }
    return chunk_plan.Tree(
        {"perl": current}.__getitem__, {"perl": dict.fromkeys(current, 100)}.__getitem__, where.get
    )


def test_a_small_change_is_a_patch() -> None:
    base = chunk_plan.pack(fp((1, 1), (2, 2), (3, 3), (4, 4)))
    p = chunk_plan.decide_patch(
        "perl", 10_000, base, "sha256:b", tree_of(fp((1, 1), (2, 9), (3, 3), (4, 4)))
    )
    assert p is not None and p.changed == {b"\2" * 6} and p.changed_bytes == 100 and p.base == "sha256:b"


def test_no_change_and_big_changes_are_shipped_whole() -> None:
    base = chunk_plan.pack(fp((1, 1), (2, 2)))
    assert chunk_plan.decide_patch("perl", 10_000, base, "b", tree_of(fp((1, 1), (2, 2)))) is None
    assert (
        chunk_plan.decide_patch("perl", 500, base, "b", tree_of(fp((1, 7), (2, 8)))) is None
    )  # past the cap


def test_a_base_holding_what_the_tree_lost_or_moved_is_rebased() -> None:
    base = chunk_plan.pack(fp((1, 1), (2, 2), (3, 3)))
    now = fp((1, 1), (2, 9))
    assert chunk_plan.decide_patch("perl", 10_000, base, "b", tree_of(now)) is None  # 3 was deleted
    moved = tree_of(now, p3=(3, "bash", False))  # 3 now belongs to bash, maybe in a layer below
    assert chunk_plan.decide_patch("perl", 10_000, base, "b", moved) is None
    same_dir = tree_of(now, p3=(3, "", True))  # 3 is a directory the tree still has, as it was
    assert chunk_plan.decide_patch("perl", 10_000, base, "b", same_dir) is not None


# ---- layers: bytes, equivalence, stability and patches, end to end -----------------------------------


def chunked(
    flat: Path, out: Path, prior: chunk_plan.Prior | None = None, epoch: int = EPOCH, patches: bool = True
) -> tuple[list[write.Written], chunk_label.ChunkLabel]:
    out.mkdir(exist_ok=True)
    with tarfile.open(flat, "r:") as tar:
        scan = components.scan(tar)
        contents = write.Contents(tar, scan)
        plan = chunk_plan.make([chunk_plan.Size(c.name, c.size) for c in scan.components.values()], prior,
                               scan.kernel, contents.fingerprints, contents.tree, patches)  # fmt: skip
        ws = write.write(tar, scan, plan, out, epoch, contents)
    return ws, plan.label(scan.packages, prior)


def tree_checksum(tmp_path: Path, name: str, layers: list[tuple[Path, Blob]]) -> str:
    """The ostree tree the importer composes of these layers."""
    layout = Layout(tmp_path / f"layout-{name}")
    for path, blob in layers:
        layout.add_file(path, blob)
    layout.write_image([(b, b.digest) for _, b in layers], {"architecture": "amd64", "os": "linux"}, "x")
    repo = Repo(tmp_path / f"repo-{name}").ensure()
    res = importer.import_oci(repo, importer.read_layout(layout.path, "x"), name, tmp_path)
    _, root, _ = repo.handle.read_commit(res.commit, None)
    return f"{root.tree_get_contents_checksum()}/{root.tree_get_metadata_checksum()}"


def whole(path: Path) -> tuple[Path, Blob]:
    return path, Blob(
        "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size, MEDIA_LAYER_TAR
    )


def layers_of(ws: list[write.Written], reused: dict[str, Path] | None = None) -> list[tuple[Path, Blob]]:
    out = []
    for w in ws:
        if w.plan.reuse is not None:
            out.append(whole((reused or {})[w.plan.reuse]))
        else:
            assert w.path is not None and w.blob is not None
            out.append((w.path, w.blob))
    return out


@pytest.fixture
def small_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunk_plan, "OWN_MIN", 1000)
    monkeypatch.setattr(chunk_plan, "PATCH_MIN", 20_000)


def test_the_layers_compose_into_the_flat_tree(tmp_path: Path, small_thresholds: None) -> None:
    flat = flat_layer(tmp_path)
    ws, lab = chunked(flat, tmp_path / "out")
    slots = [w.plan.slot for w in ws]
    assert {"own:perl", "initramfs", "volatile"} <= set(slots) and any(s.startswith("bin:") for s in slots)
    assert tree_checksum(tmp_path, "chunked", layers_of(ws)) == tree_checksum(
        tmp_path, "flat", [whole(flat)]
    )
    assert chunk_label.parse(lab.to_json()) == lab and "perl" in lab.bases and "bash" not in lab.bases
    with tarfile.open(ws[slots.index("own:perl")].path) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["usr/bin/perl"].mtime == DEB  # a .deb's file keeps its mtime
    assert members["usr"].mtime == DEB  # a directory takes the layer's newest .deb time, not the epoch
    assert set(members["usr/bin/perl"].pax_headers) <= {"SCHILY.xattr.user.x"}


def test_same_input_same_bytes_and_one_package_changes_one_slot(
    tmp_path: Path, small_thresholds: None
) -> None:
    flat = flat_layer(tmp_path, "v1")
    ws1, lab1 = chunked(flat, tmp_path / "a")
    again, _ = chunked(flat, tmp_path / "b")
    assert [w.blob for w in again] == [w.blob for w in ws1]
    prior = chunk_plan.Prior(lab1, tuple(w.blob.digest for w in ws1 if w.blob), "sha256:" + "1" * 64)
    pkgs = dict(PACKAGES)
    pkgs["bash"] = ("bash", "5.2.15-2+b8", [("usr/bin/bash", b"C" * 3000)])
    ws2, lab2 = chunked(flat_layer(tmp_path, "v2", packages=pkgs), tmp_path / "c", prior)
    changed = {w.plan.slot for w, old in zip(ws2, ws1, strict=True) if w.blob != old.blob}
    assert changed == {"own:bash", "volatile"}
    assert lab2.prior == prior.digest and lab2.packages["bash"] == "5.2.15-2+b8"


def test_a_new_epoch_changes_only_the_volatile_layer(tmp_path: Path, small_thresholds: None) -> None:
    root = tmp_path / "t"
    root.mkdir()
    debian_tree(root)
    write_layer(root, tmp_path / "a.tar", EPOCH)
    write_layer(root, tmp_path / "b.tar", EPOCH + 86400)
    ws1, _ = chunked(tmp_path / "a.tar", tmp_path / "a")
    ws2, _ = chunked(tmp_path / "b.tar", tmp_path / "b", epoch=EPOCH + 86400)
    changed = {w.plan.slot for w, old in zip(ws2, ws1, strict=True) if w.blob != old.blob}
    assert changed == set()  # the real lock list names its epoch: there, the volatile layer changes too


def test_a_patch_ships_the_changed_files_over_the_kept_base(tmp_path: Path, small_thresholds: None) -> None:
    flat1 = flat_layer(tmp_path, "v1")
    ws1, lab1 = chunked(flat1, tmp_path / "a")
    prior = chunk_plan.Prior(lab1, tuple(w.blob.digest for w in ws1 if w.blob), "sha256:" + "1" * 64)
    base = {w.blob.digest: w.path for w in ws1 if w.blob and w.path}
    pkgs = dict(PACKAGES)
    source, _, files = pkgs["perl-base"]
    files = [(n, b"fixed" if n.endswith("M7.pm") else d) for n, d in files]
    pkgs["perl-base"] = (source, "5.36.0-7+deb12u4", files)
    flat2 = flat_layer(tmp_path, "v2", packages=pkgs)
    ws2, lab2 = chunked(flat2, tmp_path / "b", prior)
    slots = [w.plan.slot for w in ws2]
    assert "patch:perl" in slots and lab2.patched == ("perl",)
    own = ws2[slots.index("own:perl")]
    assert own.plan.reuse == ws1[[w.plan.slot for w in ws1].index("own:perl")].blob.digest  # type: ignore[union-attr]
    with tarfile.open(ws2[slots.index("patch:perl")].path) as tar:
        names = [m.name for m in tar.getmembers() if not m.isdir()]
    assert names == [f"{DB}/info/perl-base.md5sums", "usr/lib/x86_64-linux-gnu/perl-base/M7.pm"]
    assert lab2.bases["perl"] == lab1.bases["perl"]  # the patch is over the same base, cumulatively
    # the device composes the same tree as the flat layer's
    assert tree_checksum(tmp_path, "patched", layers_of(ws2, base)) == tree_checksum(
        tmp_path, "v2", [whole(flat2)]
    )
    # a rebase ships perl whole instead, and its fingerprints become the next base
    ws4, lab4 = chunked(flat2, tmp_path / "d", prior, patches=False)
    assert not [w for w in ws4 if w.plan.slot.startswith("patch:") or w.plan.reuse] and not lab4.patched
    assert lab4.bases["perl"] != lab1.bases["perl"]
    # built again over the patched build: the same layers (the patch is cumulative, not stacked)
    prior2 = chunk_plan.Prior(lab2, tuple(b.digest for _, b in layers_of(ws2, base)), "sha256:" + "2" * 64)
    ws3, _ = chunked(flat2, tmp_path / "c", prior2)
    assert [b.digest for _, b in layers_of(ws3, base)] == list(prior2.diff_ids)


# ---- package lists ----------------------------------------------------------------------------------

VERSIONS = [
    ("1:9.2p1-2+deb12u9", "1:9.2p1-2+deb12u10"),
    ("3.0.20-1~deb12u2", "3.0.22-1~deb12u2"),
    ("252.38-1~deb12u1", "252.39-1~deb12u2"),
    ("1.0~rc1", "1.0"),
    ("1.0", "1.0+b1"),
    ("2.9.14+dfsg-1.3~deb12u4", "2.9.14+dfsg-1.3~deb12u6"),
    ("9", "1:1"),
    ("1.2a", "1.2b"),
    ("1.10", "1.9.9"),
    ("5.2.15-2+b7", "5.2.15-2+b7"),
    ("20230311+deb12u1", "20250419~deb12u2"),
    ("1-1", "1-1.1"),
]


@pytest.mark.parametrize(("a", "b"), VERSIONS)
def test_versions_order_as_dpkg_orders_them(a: str, b: str) -> None:
    import subprocess

    from imagemode.chunk.packages import compare_versions

    want = 0 if subprocess.run(["dpkg", "--compare-versions", a, "eq", b]).returncode == 0 else (
        -1 if subprocess.run(["dpkg", "--compare-versions", a, "lt", b]).returncode == 0 else 1)  # fmt: skip
    assert compare_versions(a, b) == want
    assert compare_versions(b, a) == -want


def test_package_changes_between_two_lists() -> None:
    from imagemode.chunk import packages

    status = (
        "Package: openssh-server\nStatus: install ok installed\nVersion: 1:9.2p1-2+deb12u9\n\n"
        "Package: gone\nStatus: install ok installed\nVersion: 1.0\n\n"
        "Package: half\nStatus: deinstall ok config-files\nVersion: 1.0\n\n"
        "Package: Bad_Name\nStatus: install ok installed\nVersion: 1\n\n"
        "Package: jq\nStatus: install ok installed\nVersion: 1.6-2.1+deb12u3\n"
    )
    old = packages.installed(status)
    assert old == {"openssh-server": "1:9.2p1-2+deb12u9", "gone": "1.0", "jq": "1.6-2.1+deb12u3"}
    new = {"openssh-server": "1:9.2p1-2+deb12u10", "jq": "1.6-2.1+deb12u2", "tree": "2.1.0-1"}
    c = packages.compare(old, new)
    assert c.upgraded == (("openssh-server", "1:9.2p1-2+deb12u9", "1:9.2p1-2+deb12u10"),)
    assert c.downgraded == (("jq", "1.6-2.1+deb12u3", "1.6-2.1+deb12u2"),)
    assert c.added == (("tree", "2.1.0-1"),) and c.removed == (("gone", "1.0"),)
    assert c.summary() == "1 upgraded, 1 downgraded, 1 added, 1 removed"
    assert c.to_dict()["upgraded"] == [{"name": "openssh-server", "from": "1:9.2p1-2+deb12u9",
                                        "to": "1:9.2p1-2+deb12u10"}]  # fmt: skip


def test_fingerprints_keep_their_format(tmp_path: Path) -> None:
    """A build reads the fingerprints of its prior's label: the format is a contract between builds of
    different imagemode versions. These values are the ones the first chunked bases carry; a change
    here makes every patchable component of every prior look changed (a directory's fingerprint once
    took the sha256 of no bytes instead of none, and the base grew four needless patch layers)."""
    root = tmp_path / "t"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_bytes(b"tool\n")
    (root / "usr/bin/link").symlink_to("tool")
    os.link(root / "usr/bin/tool", root / "usr/bin/hard")
    for p in (root / "usr", root / "usr/bin", root / "usr/bin/tool"):
        p.chmod(0o755)
    write_layer(root, tmp_path / "t.tar", EPOCH)
    with tarfile.open(tmp_path / "t.tar", "r:") as tar:
        scan = components.scan(tar)
        contents = write.Contents(tar, scan)
        got = {n: (write.path_hash(n).hex(), contents.content_hash(scan.by_name[n]).hex())
               for n in ("usr/bin", "usr/bin/tool", "usr/bin/link", "usr/bin/hard")}  # fmt: skip
    assert got == {
        "usr/bin": ("51eb85985e2f", "4c2af45da850"),
        "usr/bin/tool": ("bb47f44a057a", "1d0d7511ffa9"),
        "usr/bin/link": ("a69ab9f81b9d", "55df54baa840"),
        "usr/bin/hard": ("85ea27866799", "1d0d7511ffa9"),  # a hard link is its target's bytes
    }
