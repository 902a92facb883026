"""The hostile corpus (tests/hostile.py) through the code paths that meet it for real.

- The importer on a real ostree repo, fed from an oci-archive: the path `switch --transport
  oci-archive` takes with a USB bundle (imagemode.oci.archive reads the tar; `upgrade` from a
  registry meets the same importer through skopeo).
- Archives that lie about their own entries: links, sizes, missing blobs.
- `read_layout`, the boundary where a layout's own JSON is checked.
- `imagemode embed` and `imagemode disk`'s user set-up, on trees that carry hostile links.

For every case a sentinel tree outside the root is hashed before and after, and the store must hold no
new object, commit or ref. Each refusal is one line, which the test asserts.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from imagemode import confined
from imagemode.disk import sysroot as disk_sysroot
from imagemode.disk.config import ConfigError, User
from imagemode.embed import bound as bound_images
from imagemode.errors import ImagemodeError
from imagemode.oci.reference import ImageRef, Transport
from imagemode.store import importer, layers
from imagemode.store.ostree import Repo
from tests import hostile
from tests.conftest import IMAGEMODE
from tests.hostile import Image, Layer

pytestmark = pytest.mark.host


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Repo, Path, Path]]:
    """(repo, work dir, sentinel); afterwards the sentinel is unchanged and the repo holds only what
    the test let in."""
    sentinel = hostile.make_sentinel(tmp_path / "sentinel")
    before = hostile.tree_hash(sentinel)
    repo = Repo(tmp_path / "repo").ensure()
    work = tmp_path / "work"
    work.mkdir()
    yield repo, work, sentinel
    assert hostile.tree_hash(sentinel) == before, "a hostile image changed the sentinel outside the root"


def objects(repo: Repo) -> int:
    return sum(len(files) for _, _, files in os.walk(repo.path / "objects"))


def assert_clean(repo: Repo, refs: list[str], count: int) -> None:
    assert repo.refs() == refs, "a refused image left a ref"
    assert objects(repo) == count, "a refused image left objects in the store"
    subprocess.run(["ostree", f"--repo={repo.path}", "fsck", "--quiet"], check=True, capture_output=True)
    staging = [p for p in (repo.path / "tmp").iterdir() if p.name.startswith("staging-")]
    assert not any(any(p.iterdir()) for p in staging), "a refused layer left staged objects"


def import_archive(img: Image, tmp: Path, repo: Repo, work: Path) -> importer.ImportResult:
    """As `switch --transport oci-archive` does: the bundle's blobs are read, the importer commits them."""
    path = img.archive(tmp / f"bundle-{len(list(tmp.glob('bundle-*')))}.tar")
    return importer.import_image(
        repo, ImageRef(Transport.OCI_ARCHIVE, path=str(path)), work, check_bootable=True
    )


def one_line(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text and text, f"not one line: {text!r}"
    return text


# --- layers that try to write outside ----------------------------------------------------------------


ESCAPES = {
    "symlink-then-file": "goes through 'evil', which is not a directory",
    "symlink-then-dir": "replaces a file or symlink of the same layer",
    "symlink-then-hardlink": "is a hard link to 'evil/secret', which is not an earlier file",
    "hardlink-outside": "escapes the root",
    "dotdot-file": "escapes the root",
    "whiteout-escapes": "escapes the root",
    "whiteout-dotdot": "is not a valid whiteout",
    "nul-in-name": "NUL byte",
}


@pytest.mark.parametrize("absolute", [True, False], ids=["absolute", "relative"])
@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_layers_that_reach_outside_are_refused(
    store: tuple[Repo, Path, Path], tmp_path: Path, case: str, absolute: bool
) -> None:
    repo, work, sentinel = store
    target = str(sentinel) if absolute else "../" * 12 + str(sentinel).lstrip("/")
    tar = hostile.escape_layers(target)[case]
    refs, count = repo.refs(), objects(repo)
    with pytest.raises(ImagemodeError) as e:
        import_archive(Image([Layer.of(tar, gz=True)]), tmp_path, repo, work)
    assert ESCAPES[case] in one_line(e.value)
    assert_clean(repo, refs, count)


def test_a_lying_diff_id_does_not_poison_the_cache(store: tuple[Repo, Path, Path], tmp_path: Path) -> None:
    """The attacker's layer claims the diff_id of an honest layer; a later honest image naming that
    diff_id must be built from the honest bytes."""
    repo, work, _ = store
    honest = hostile.tar_bytes([("dir", "usr"), ("file", "usr/honest", b"the real bytes\n")])
    evil = hostile.tar_bytes([("dir", "usr"), ("file", "usr/honest", b"the attacker's bytes\n")])
    lying = Layer.of(evil, gz=True)
    lying.diff_id = hostile.sha(honest)
    refs, count = repo.refs(), objects(repo)
    with pytest.raises(layers.LayerError) as e:
        import_archive(Image([lying]), tmp_path, repo, work)
    assert f"not the diff_id {hostile.sha(honest)}" in one_line(e.value)
    assert_clean(repo, refs, count)
    assert repo.resolve(importer.layer_ref(hostile.sha(honest))) is None


# --- archives that lie about their own entries ---------------------------------------------------------


def rewrite_archive(
    path: Path,
    name: str,
    make: Callable[[tarfile.TarInfo, bytes], tuple[tarfile.TarInfo, bytes] | None],
    out: Path,
) -> Path:
    """A copy of the archive in which member `name` becomes what `make` returns (None: dropped)."""
    with tarfile.open(path) as src, tarfile.open(out, "w") as dst:
        for m in src.getmembers():
            f = src.extractfile(m) if m.isreg() else None
            body = f.read() if f else b""
            made = make(m, body) if m.name == name else (m, body)
            if made is not None:
                dst.addfile(made[0], io.BytesIO(made[1]) if made[0].isreg() else None)
    return out


def as_link(kind: bytes, target: str) -> Callable[[tarfile.TarInfo, bytes], tuple[tarfile.TarInfo, bytes]]:
    def make(m: tarfile.TarInfo, _: bytes) -> tuple[tarfile.TarInfo, bytes]:
        info = tarfile.TarInfo(m.name)
        info.type, info.linkname = kind, target
        return info, b""

    return make


def truncated(m: tarfile.TarInfo, body: bytes) -> tuple[tarfile.TarInfo, bytes]:
    m.size = len(body) - 1
    return m, body[:-1]


def test_archive_entries_that_lie_are_refused(store: tuple[Repo, Path, Path], tmp_path: Path) -> None:
    """A blob that is a symlink or a hard link (to the sentinel, outside), a blob shorter than its
    descriptor, a blob missing: each refused in one line, before the importer reads a byte of it."""
    repo, work, sentinel = store
    layer = Layer.of(hostile.tar_bytes([("dir", "usr"), ("file", "usr/a", b"a\n")]))
    plain = Image([layer]).archive(tmp_path / "plain.tar")
    name = f"blobs/sha256/{layer.digest[7:]}"
    cases = {
        "symlink": (as_link(tarfile.SYMTYPE, str(sentinel / "secret")), "is not a regular file"),
        "hardlink": (as_link(tarfile.LNKTYPE, "index.json"), "is not a regular file"),
        "short": (
            truncated,
            f"has {len(layer.blob) - 1} bytes, not the {len(layer.blob)} of its descriptor",
        ),
        "missing": (lambda m, b: None, f"the blob {layer.digest} is missing"),
    }
    refs, count = repo.refs(), objects(repo)
    for case, (make, message) in cases.items():
        bad = rewrite_archive(plain, name, make, tmp_path / f"{case}.tar")
        with pytest.raises(ImagemodeError) as e:
            importer.import_image(repo, ImageRef(Transport.OCI_ARCHIVE, path=str(bad)), work)
        assert message in one_line(e.value), case
        assert_clean(repo, refs, count)
    assert not any(work.iterdir()), "a refused bundle left its layout behind"


def test_a_bundle_is_read_for_its_missing_layers_only(
    store: tuple[Repo, Path, Path], tmp_path: Path
) -> None:
    """After v1, the v2 bundle's shared layer is never read: an archive without its bytes imports,
    and one image of several is picked by its tag."""
    repo, work, _ = store
    base = Layer.of(hostile.tar_bytes([("dir", "usr"), ("file", "usr/base", b"base\n")]))
    top = Layer.of(hostile.tar_bytes([("dir", "etc"), ("file", "etc/v2", b"v2\n")]))
    importer.import_image(
        repo, ImageRef(Transport.OCI_ARCHIVE, path=str(Image([base]).archive(tmp_path / "v1.tar"))), work
    )
    v2 = Image([base, top]).archive(tmp_path / "v2.tar", tag="v2")
    hollow = rewrite_archive(
        v2, f"blobs/sha256/{base.digest[7:]}", lambda m, b: None, tmp_path / "hollow.tar"
    )
    res = importer.import_image(repo, ImageRef(Transport.OCI_ARCHIVE, path=str(hollow), tag="v2"), work)
    assert (res.layers_total, res.layers_imported) == (2, 1)
    assert res.bytes_fetched == len(top.blob) + len(json.dumps(hostile.config([base.diff_id, top.diff_id])))
    with pytest.raises(ImagemodeError) as e:
        importer.import_image(repo, ImageRef(Transport.OCI_ARCHIVE, path=str(v2), tag="v3"), work)
    assert "expected one image tagged v3 in the archive, found 0" in one_line(e.value)


@pytest.mark.parametrize(
    "case,blob,message",
    [
        ("gzip-bomb", hostile.gzip_bomb(), "expands past"),
        ("sparse-bomb", hostile.sparse_bomb(), "expands past"),
        ("lying-size", hostile.lying_size_tar(), "expands past"),
    ],
    ids=["gzip-bomb", "sparse-bomb", "lying-size"],
)
def test_bombs_stop_at_the_cap(
    store: tuple[Repo, Path, Path], tmp_path: Path, case: str, blob: bytes, message: str
) -> None:
    repo, work, _ = store
    # The diff_id cannot be known without expanding the bomb; the cap must stop it first anyway.
    layer = Layer(blob, hostile.sha(b"unknown"), "application/vnd.oci.image.layer.v1.tar+gzip")
    if not blob.startswith(b"\x1f\x8b"):
        layer.media_type = "application/vnd.oci.image.layer.v1.tar"
    refs, count = repo.refs(), objects(repo)
    with pytest.raises(layers.LayerError) as e:
        import_archive(Image([layer]), tmp_path, repo, work)
    assert message in one_line(e.value)
    assert_clean(repo, refs, count)


@pytest.mark.parametrize(
    "case,breaker,message",
    list(hostile.malformed_manifests()),
    ids=[c for c, _, _ in hostile.malformed_manifests()],
)
def test_malformed_manifests_are_one_line(
    store: tuple[Repo, Path, Path], tmp_path: Path, case: str, breaker: object, message: str
) -> None:
    img = Image([Layer.of(hostile.tar_bytes([("file", "a", b"a")]))], break_manifest=breaker)  # type: ignore[arg-type]
    refused_at_both_doors(img, message, store, tmp_path)


def refused_at_both_doors(img: Image, message: str, store: tuple[Repo, Path, Path], tmp_path: Path) -> None:
    """At the boundary of a layout (read_layout), and as a bundle: `message`, one line, either way,
    and a clean store."""
    repo, work, _ = store
    img.write(tmp_path / "layout")
    with pytest.raises(ImagemodeError) as e:
        importer.read_layout(tmp_path / "layout")
    assert message in one_line(e.value)
    refs, count = repo.refs(), objects(repo)
    with pytest.raises(ImagemodeError) as e2:
        import_archive(img, tmp_path, repo, work)
    assert message in one_line(e2.value)
    assert_clean(repo, refs, count)


@pytest.mark.parametrize("case", [c for c, _, _ in hostile.malformed_configs("sha256:" + "0" * 64)])
def test_malformed_configs_are_one_line(store: tuple[Repo, Path, Path], tmp_path: Path, case: str) -> None:
    layer = Layer.of(hostile.tar_bytes([("file", "a", b"a")]))
    raw, message = next((r, m) for c, r, m in hostile.malformed_configs(layer.diff_id) if c == case)
    refused_at_both_doors(Image([layer], raw_config=raw), message, store, tmp_path)


def test_an_honest_layer_that_deletes_5000_files_imports(
    store: tuple[Repo, Path, Path], tmp_path: Path
) -> None:
    """The whiteout list travels in the commit's metadata, not on a command line."""
    repo, work, _ = store
    names = [f"usr/share/many/file-{i:05d}" for i in range(5000)]
    base = hostile.tar_bytes(
        [
            ("dir", "usr"),
            ("dir", "usr/share"),
            ("dir", "usr/share/many"),
            *[("file", n, b"x") for n in names],
            ("dir", "usr/lib/modules/6.1", 0o755),
            ("file", "usr/lib/modules/6.1/vmlinuz", b"kernel"),
        ]
    )
    deletes = hostile.tar_bytes([("file", n.replace("file-", ".wh.file-"), b"") for n in names])
    res = import_archive(Image([Layer.of(base), Layer.of(deletes, gz=True)]), tmp_path, repo, work)
    out = tmp_path / "co"
    subprocess.run(["ostree", f"--repo={repo.path}", "checkout", res.commit, str(out)], check=True)
    assert list((out / "usr/share/many").iterdir()) == []


def test_an_upper_layer_replaces_a_directory_with_a_link_and_a_file_with_a_directory(
    store: tuple[Repo, Path, Path], tmp_path: Path
) -> None:
    """Honest layers, as a Containerfile makes them: `rm -rf d && ln -s x d` leaves only the link in the
    diff, with no whiteout for the directory it replaces."""
    repo, work, _ = store
    kernel = [("dir", "usr/lib/modules/6.1"), ("file", "usr/lib/modules/6.1/vmlinuz", b"k")]
    lower = hostile.tar_bytes([*kernel, ("dir", "usr/share/d"), ("file", "usr/share/d/f", b"x"),
                               ("file", "usr/share/f", b"file")])  # fmt: skip
    upper = hostile.tar_bytes([("sym", "usr/share/d", "/elsewhere"), ("dir", "usr/share/f"),
                               ("file", "usr/share/f/inside", b"y")])  # fmt: skip
    res = import_archive(Image([Layer.of(lower), Layer.of(upper)]), tmp_path, repo, work)
    out = tmp_path / "co"
    subprocess.run(["ostree", f"--repo={repo.path}", "checkout", res.commit, str(out)], check=True)
    assert os.readlink(out / "usr/share/d") == "/elsewhere"
    assert (out / "usr/share/f/inside").read_text() == "y"


def test_var_names_with_spaces_reach_tmpfiles_escaped(
    store: tuple[Repo, Path, Path], tmp_path: Path
) -> None:
    repo, work, _ = store
    tar = hostile.tar_bytes(
        [
            ("dir", "var"),
            ("dir", "var/lib"),
            ("dir", "var/lib/my app"),
            ("file", "var/lib/my app/100%", b"state"),
            ("dir", "usr/lib/modules/6.1"),
            ("file", "usr/lib/modules/6.1/vmlinuz", b"k"),
        ]
    )
    res = import_archive(Image([Layer.of(tar)]), tmp_path, repo, work)
    out = tmp_path / "co"
    subprocess.run(["ostree", f"--repo={repo.path}", "checkout", res.commit, str(out)], check=True)
    conf = (out / "usr/lib/tmpfiles.d/imagemode-factory-var.conf").read_text()
    assert r'C "/var/lib/my app" - - - - /usr/share/factory/var/lib/my\x20app' in conf
    bad = hostile.tar_bytes(
        [
            ("dir", "var/lib/evil\nL+ /etc/shadow - - - - /tmp/x"),
            ("file", "usr/lib/modules/6.1/vmlinuz", b"k"),
        ]
    )
    refs, count = repo.refs(), objects(repo)
    with pytest.raises(ImagemodeError) as e:
        import_archive(Image([Layer.of(bad)]), tmp_path, repo, work)
    assert "control character" in one_line(e.value)
    assert repo.refs() == refs and objects(repo) >= count  # the layer itself is honest and stays cached


def test_systemd_tmpfiles_reads_the_escaped_names_back(tmp_path: Path) -> None:
    """The real systemd-tmpfiles, on the lines the importer writes for awkward but honest names."""
    from imagemode.store.compose import tmpfiles_argument, tmpfiles_path

    names = ["my app", 'quo"te', "back\\slash", "100%", "it's", "\u00fc wide"]
    lines = []
    for n in names:
        src = tmp_path / "usr/share/factory/var/lib" / n
        src.mkdir(parents=True)
        (src / "state").write_text(n)
        factory = tmpfiles_argument(f"/usr/share/factory/var/lib/{n}")
        lines.append(f"C {tmpfiles_path(f'/var/lib/{n}')} - - - - {factory}")
    (tmp_path / "var/lib").mkdir(parents=True)
    (tmp_path / "t.conf").write_text("\n".join(lines) + "\n")
    subprocess.run(
        ["systemd-tmpfiles", "--create", f"--root={tmp_path}", str(tmp_path / "t.conf")], check=True
    )
    assert {n: (tmp_path / "var/lib" / n / "state").read_text() for n in names} == {n: n for n in names}


# --- embed: a lower layer's symlink under an upper layer's directory ---------------------------------


def test_embed_does_not_write_through_a_lower_symlink(tmp_path: Path) -> None:
    from imagemode.embed import store as embed_store
    from imagemode.embed.sources import Wanted, qualify
    from imagemode.oci import storage
    from imagemode.vm.registry import Registry

    sentinel = hostile.make_sentinel(tmp_path / "sentinel")
    before = hostile.tree_hash(sentinel)
    lower = hostile.tar_bytes(
        [
            ("sym", "d", str(sentinel)),
            ("sym", "rel", "../../../../../../" + str(sentinel)),
            ("file", "gone", b""),
        ]
    )
    upper = hostile.tar_bytes(
        [
            ("dir", "d", 0o777),
            ("file", "d/secret", b"overwritten", 0o4777),
            ("dir", "rel", 0o777),
            ("file", "rel/dir", b"x"),
            ("file", ".wh.gone", b""),
        ]
    )
    img = Image([Layer.of(lower), Layer.of(upper)])
    img.cfg = hostile.config([Layer.of(lower).diff_id, Layer.of(upper).diff_id])
    img.write(tmp_path / "layout")
    root = tmp_path / "root"
    with Registry() as reg:
        storage.copy(
            f"oci:{tmp_path / 'layout'}:latest",
            f"docker://{reg.address}/hostile/embed:1",
            dest_tls_verify=False,
        )
        embed_store.embed(
            [Wanted(qualify(f"{reg.address}/hostile/embed:1", "t"), "t")], root, tls_verify=False
        )
    assert hostile.tree_hash(sentinel) == before
    # The flattened layer holds what overlayfs would show: directories where the upper layer has them.
    diffs = list((root / embed_store.STORE / "overlay").glob("*/diff/d"))
    # The lower layer keeps its link as content; the flattened upper layer has a directory there.
    links = [p for p in diffs if p.is_symlink()]
    dirs = [p for p in diffs if p.is_dir() and not p.is_symlink()]
    assert len(links) == 1 and os.readlink(links[0]) == str(sentinel)
    assert len(dirs) == 1 and (dirs[0] / "secret").read_bytes() == b"overwritten"


def test_embed_refuses_a_tree_whose_store_path_is_a_link(tmp_path: Path) -> None:
    sentinel = hostile.make_sentinel(tmp_path / "sentinel")
    before = hostile.tree_hash(sentinel)
    root = tmp_path / "root"
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/imagemode").symlink_to(sentinel)
    list_file = tmp_path / "images.txt"
    list_file.write_text("127.0.0.1:1/never/reached:1\n")
    p = subprocess.run(
        [*IMAGEMODE, "embed", "--root", str(root), str(list_file)], capture_output=True, text=True
    )
    assert p.returncode == 1
    assert (
        p.stderr.count("\n") == 1 and "is a symlink in the image; refusing to write through it" in p.stderr
    )
    assert hostile.tree_hash(sentinel) == before


def test_yaml_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    f = tmp_path / "bomb.yaml"
    f.write_text(hostile.YAML_BOMB)
    p = subprocess.run(
        [*IMAGEMODE, "embed", "--dry-run", str(f)], capture_output=True, text=True, timeout=30
    )
    assert p.returncode == 1
    assert p.stderr.count("\n") == 1 and "YAML alias *a at line 2; aliases are refused" in p.stderr


# --- disk: users, keys and homes through the image's links -------------------------------------------


def deployment(tmp_path: Path, passwd_home: str = "/root") -> tuple[Path, Path]:
    sysroot = tmp_path / "sysroot"
    dep = sysroot / "ostree/deploy/default/deploy/abc.0"
    (dep / "etc").mkdir(parents=True)
    (dep / "etc/passwd").write_text(f"root:x:0:0:root:{passwd_home}:/bin/bash\n")
    (dep / "etc/group").write_text("root:x:0:\n")
    (dep / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (dep / "usr/share/factory/roothome").mkdir(parents=True)
    (dep / "etc/skel").mkdir()
    (sysroot / "ostree/deploy/default/var").mkdir(parents=True)
    return sysroot, dep


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE7xUzYV7uZq3PXyTn9N7pF8+VtWdGq7oI3M5lX6KmX2 test"


@pytest.mark.parametrize(
    "case", ["factory-ssh-link", "factory-keys-link", "skel-ssh-link", "passwd-home-dotdot", "passwd-link"]
)
def test_disk_users_do_not_follow_the_images_links(tmp_path: Path, case: str) -> None:
    sentinel = hostile.make_sentinel(tmp_path / "sentinel")
    before = hostile.tree_hash(sentinel)
    user = User("root", key=KEY)
    if case == "passwd-home-dotdot":
        sysroot, dep = deployment(tmp_path, "/root/../../../../" + str(sentinel).lstrip("/"))
        message = "leaves /home or /root; refusing it"
    else:
        sysroot, dep = deployment(tmp_path)
    if case == "factory-ssh-link":
        (dep / "usr/share/factory/roothome/.ssh").symlink_to(sentinel / "ssh")
        message = "roothome/.ssh is a symlink in the image; refusing to write through it"
    elif case == "factory-keys-link":
        # A link of the key file's own name is replaced, never written through.
        (dep / "usr/share/factory/roothome/.ssh").mkdir()
        (dep / "usr/share/factory/roothome/.ssh/authorized_keys").symlink_to(
            sentinel / "ssh/authorized_keys"
        )
        message = ""
    elif case == "skel-ssh-link":
        user = User("admin", key=KEY)
        (dep / "etc/passwd").write_text(
            "root:x:0:0:root:/root:/bin/bash\nadmin:x:1000:1000::/home/admin:/bin/sh\n"
        )
        (dep / "etc/skel/.ssh").symlink_to(sentinel / "ssh")
        message = "home/admin/.ssh is a symlink in the image; refusing to write through it"
    elif case == "passwd-link":
        (dep / "etc/passwd").unlink()
        (dep / "etc/passwd").symlink_to(sentinel / "secret")  # absolute: read inside the image, not here
        message = "/etc/passwd is missing from the image"
    if message:
        with pytest.raises(ConfigError) as e:
            disk_sysroot.add_user(sysroot, dep, user)
        assert message in one_line(e.value)
    else:
        disk_sysroot.add_user(sysroot, dep, user)
        keys = sysroot / "ostree/deploy/default/var/roothome/.ssh/authorized_keys"
        assert not keys.is_symlink() and keys.read_text() == KEY + "\n"
    assert hostile.tree_hash(sentinel) == before


def test_bound_image_links_with_dotdot_stay_in_the_commit(tmp_path: Path) -> None:
    sentinel = hostile.make_sentinel(tmp_path / "sentinel")
    before = hostile.tree_hash(sentinel)
    tree = tmp_path / "tree"
    d = tree / bound_images.BOUND_D
    d.mkdir(parents=True)
    (d / "x.image").symlink_to("../../../../../../../../" + str(sentinel).lstrip("/") + "/new/x.image")
    repo = Repo(tmp_path / "repo").ensure()
    commit = repo.commit(tree, "t")
    with pytest.raises(bound_images.BoundImageError) as e:
        bound_images.in_commit(repo, commit)
    assert "which the image lacks" in one_line(e.value)
    assert hostile.tree_hash(sentinel) == before
    with pytest.raises(bound_images.BoundImageError):
        bound_images.in_tree(confined.Tree(tree))


def test_hostile_json_does_not_reach_the_placeholders(tmp_path: Path) -> None:
    """fetch makes sparse files named by layer digests: only checked digests get that far."""
    from imagemode.oci import manifest

    raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": manifest.MEDIA_OCI_MANIFEST,
            "config": {"mediaType": manifest.CONFIG_TYPES[0], "digest": "sha256:" + "a" * 64, "size": 2},
            "layers": [{"mediaType": manifest.LAYER_TYPES[0], "digest": "sha256:../../x", "size": 9}],
        }
    )
    with pytest.raises(manifest.ManifestError, match="is not a sha256 digest"):
        manifest.manifest(raw)


HOME_SSH = "/usr/share/factory/roothome/.ssh"  # the base image ships it as a directory


def test_imagemode_disk_does_not_write_root_keys_through_a_link(
    base_image: dict[str, str], tmp_path: Path
) -> None:
    """The whole `imagemode disk`, on an image built FROM the real base whose root home has a link."""
    from tests.conftest import BASE_TAG, imagemode, podman

    sentinel = hostile.make_sentinel(tmp_path / "sentinel")
    before = hostile.tree_hash(sentinel)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Containerfile").write_text(
        f"FROM {BASE_TAG}\nRUN rm -rf {HOME_SSH} && ln -s {sentinel}/ssh {HOME_SSH}\n"
    )
    tag = "localhost/imagemode-test/hostile-roothome:1"
    imagemode("build", "-t", tag, str(ctx))
    (tmp_path / "config.toml").write_text(f'[[customizations.user]]\nname = "root"\nkey = "{KEY}"\n')
    try:
        p = imagemode("disk", tag, "--config", str(tmp_path / "config.toml"), "-o", str(tmp_path / "out"),
                      check=False)  # fmt: skip
        assert p.returncode == 1, p.stdout + p.stderr
        [line] = [ln for ln in p.stderr.splitlines() if ln.startswith("imagemode: error:")]
        assert "roothome/.ssh is a symlink in the image; refusing to write through it" in line
        assert not (tmp_path / "out/disk.qcow2").exists()
        assert hostile.tree_hash(sentinel) == before
    finally:
        podman("rmi", tag, check=False)


def test_a_password_hash_is_set_on_stdin_never_on_a_command_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    sysroot, dep = deployment(tmp_path)
    secret = "$6$salt$0nlyInTheShadowFile"
    with caplog.at_level(logging.DEBUG, logger="imagemode.run"):
        disk_sysroot.add_user(sysroot, dep, User("root", password=secret, key=KEY))
    assert f"root:{secret}:" in (dep / "etc/shadow").read_text()
    assert "chpasswd" in caplog.text and secret not in caplog.text
