import pytest

from imagemode.oci.reference import ImageRefError, Transport, local_tag, parse, parse_local


@pytest.mark.parametrize(
    ("text", "transport", "name", "tag", "digest"),
    [
        ("quay.io/fedora/fedora-bootc:41", Transport.REGISTRY, "quay.io/fedora/fedora-bootc", "41", None),
        ("docker://127.0.0.1:5000/os:v2", Transport.REGISTRY, "127.0.0.1:5000/os", "v2", None),
        ("registry:localhost:5000/a/b", Transport.REGISTRY, "localhost:5000/a/b", "latest", None),
        (
            "containers-storage:imagemode/debian:12",
            Transport.CONTAINERS_STORAGE,
            "localhost/imagemode/debian",
            "12",
            None,
        ),
        ("debian", Transport.REGISTRY, "debian", "latest", None),
        (
            "example.com/os@sha256:" + "a" * 64,
            Transport.REGISTRY,
            "example.com/os",
            None,
            "sha256:" + "a" * 64,
        ),
    ],
)
def test_parse(text: str, transport: Transport, name: str, tag: str | None, digest: str | None) -> None:
    ref = parse(text)
    assert (ref.transport, ref.name, ref.tag, ref.digest) == (transport, name, tag, digest)


def test_paths() -> None:
    ref = parse("oci:/var/tmp/x:v1")
    assert (ref.transport, ref.path, ref.tag) == (Transport.OCI, "/var/tmp/x", "v1")
    assert ref.skopeo == "oci:/var/tmp/x:v1"
    assert parse("oci-archive:/m/update.tar").skopeo == "oci-archive:/m/update.tar"


def test_local() -> None:
    assert str(local_tag("imagemode/hello:1")) == "localhost/imagemode/hello:1"
    assert str(local_tag("localhost/x")) == "localhost/x:latest"
    assert str(local_tag("quay.io/x/y:1")) == "quay.io/x/y:1"
    assert parse_local("oci:/d").transport is Transport.OCI
    assert parse_local("foo:1").transport is Transport.CONTAINERS_STORAGE


@pytest.mark.parametrize(
    "bad",
    ["", " x", "UPPER/case", "a//b", "name:", "name:bad tag", "x@sha256:abc", "-lead", "a/b:c:d", "oci:"],
)
def test_bad_references_are_one_line(bad: str) -> None:
    with pytest.raises(ImageRefError) as e:
        parse(bad)
    assert "\n" not in str(e.value)


def test_unknown_transport() -> None:
    with pytest.raises(ImageRefError, match="unknown transport 'ftp'"):
        parse("x", "ftp")
