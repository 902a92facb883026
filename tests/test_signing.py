"""Signatures on the host, on the real thing: GPG keys, skopeo signing into a lookaside served over HTTP
on 127.0.0.1, a real registry, and the importer that a device runs, through its trust policy.

The VM half (a disk that enforces, upgrades and bundles) is in test_disk_vm.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagemode.oci import archive
from imagemode.oci import policy as policies
from imagemode.oci.reference import ImageRef, Transport, parse
from imagemode.store import fetch, importer, meta
from imagemode.store.ostree import Repo
from imagemode.vm.registry import Registry
from tests import hostile, signing
from tests.hostile import Image, Layer

pytestmark = pytest.mark.host

REPO = "imagemode/os"


def layer(text: str) -> Layer:
    return Layer.of(hostile.tar_bytes([("file", f"usr/share/{text}", text.encode())]), gz=True)


BASE, FIX, V3 = layer("base"), layer("security-fix"), layer("v3")


class Site:
    """A fleet's registry with its lookaside, two keys, and a device's trust settings."""

    def __init__(self, d: Path) -> None:
        self.d = d
        self.owner = signing.make_key(d, "owner")
        self.other = signing.make_key(d, "other")
        self.lookaside = signing.Lookaside(d / "sigs")
        self.registry = Registry().start()
        self.regd = signing.registries_d(
            d / "registries.d", self.registry.address, f"http://127.0.0.1:{self.lookaside.port}",
            staging=self.lookaside.root,
        )  # fmt: skip
        self.scope = f"{self.registry.address}/{REPO}"

    def trust(self, text: str, enforce: bool = False) -> policies.Trust:
        path = self.d / f"policy-{abs(hash(text))}.json"
        path.write_text(text)
        return policies.Trust(path, self.regd, enforce)

    def push(self, img: Image, tag: str, key: signing.Key | None = None) -> ImageRef:
        name = f"{img.layers[-1].diff_id[7:19]}-{tag}"
        img.write(self.d / name)
        trust = policies.Trust(registries_d=self.regd)
        if key is None:
            return self.registry.push(f"oci:{self.d / name}:latest", f"{REPO}:{tag}", trust=trust)
        with key.active():
            return self.registry.push(
                f"oci:{self.d / name}:latest", f"{REPO}:{tag}", sign_by=key.fingerprint, trust=trust
            )

    def stop(self) -> None:
        self.registry.stop()
        self.lookaside.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = Site(tmp_path_factory.mktemp("signing"))
    yield s
    s.stop()


def import_(ref: ImageRef, trust: policies.Trust, tmp: Path) -> importer.ImportResult:
    repo = Repo(tmp / "repo").ensure()
    (tmp / "work").mkdir(exist_ok=True)
    remote = fetch.inspect(ref, tls_verify=False, trust=trust)
    return importer.import_image(repo, ref, tmp / "work", remote=remote, trust=trust)


def test_signed_image_is_imported_and_its_digest_recorded(site: Site, tmp_path: Path) -> None:
    ref = site.push(Image([BASE, FIX]), "v1", site.owner)
    trust = site.trust(signing.policy({site.scope: [str(site.owner.public)]}))
    result = import_(ref, trust, tmp_path)
    assert result.layers_imported == 2
    assert result.manifest_digest == site.registry.digest(f"{REPO}:v1")
    repo = Repo(tmp_path / "repo")
    assert repo.metadata(result.commit, meta.DIGEST) == result.manifest_digest


def test_cached_layers_do_not_skip_the_policy(site: Site, tmp_path: Path) -> None:
    """Whoever can push the tag, but holds no key, pushes manifests over layers the device has."""
    trust = site.trust(signing.policy({site.scope: [str(site.owner.public)]}))
    import_(site.push(Image([BASE, FIX]), "v1", site.owner), trust, tmp_path)
    repo = Repo(tmp_path / "repo")
    refs = repo.refs()
    # The security fix dropped; the layers reordered: every layer is cached, no byte is downloaded.
    for name, img in (("dropped", Image([BASE])), ("reordered", Image([FIX, BASE]))):
        ref = site.push(img, name)
        with pytest.raises(fetch.SignatureError) as e:
            import_(ref, trust, tmp_path)
        assert str(e.value) == (
            f"not signed by a key that {trust.policy} trusts for {site.scope} (signature missing)"
        )
        assert repo.refs() == refs, name


def test_policy_applies_without_enforce_mode(site: Site, tmp_path: Path) -> None:
    """The default accepts anything, the followed registry requires the owner's key: the policy wins."""
    trust = site.trust(
        signing.policy({site.scope: [str(site.owner.public)]}, default="insecureAcceptAnything")
    )
    assert not trust.enforce
    with pytest.raises(fetch.SignatureError, match=r"\(signature missing\)"):
        import_(site.push(Image([BASE, V3]), "unsigned"), trust, tmp_path)
    with pytest.raises(fetch.SignatureError, match="signed by a key it does not trust"):
        import_(site.push(Image([BASE, V3, FIX]), "other-key", site.other), trust, tmp_path)
    # A tag pushed by another key later: the device copies the digest it read, not the tag.
    assert import_(site.push(Image([BASE, FIX]), "v1", site.owner), trust, tmp_path).layers_total == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (json.dumps({"default": [{"type": "insecureAcceptAnything"}]}), "its default accepts any image"),
        (json.dumps({"default": [{"type": "reject"}], "transports": {"docker": {
            "127.0.0.1:5000/imagemode": [{"type": "trustMe"}]}}}), "unknown requirement 'trustMe'"),
        (signing.policy({"127.0.0.1:5000/imagemode": []}), "signedBy names no key"),
        (
            json.dumps({"default": [{"type": "reject"}], "transports": {"docker": {
                "127.0.0.1:5000": [{"type": "insecureAcceptAnything"}]}}}),
            "its docker '127.0.0.1:5000' scope accepts any image",
        ),
    ],
)  # fmt: skip
def test_enforce_mode_refuses_a_policy_that_accepts_anything(
    tmp_path: Path, text: str, expected: str
) -> None:
    (tmp_path / "policy.json").write_text(text)
    ref = parse(f"127.0.0.1:5000/{REPO}:v1")
    with pytest.raises(policies.PolicyError) as e:
        policies.require_signatures(policies.load(tmp_path / "policy.json"), ref)
    assert expected in str(e.value) and str(tmp_path / "policy.json") in str(e.value)
    assert "\n" not in str(e.value)


def test_enforce_mode_takes_a_signed_policy(site: Site) -> None:
    trust = site.trust(signing.policy({site.scope: [str(site.owner.public)]}))
    policies.require_signatures(policies.load(trust.policy), parse(f"{site.scope}:v1"))


def test_scopes_match_as_containers_image_does() -> None:
    assert policies.candidate_scopes(parse("registry.example.com:5000/fleet/os:2")) == [
        "registry.example.com:5000/fleet/os:2", "registry.example.com:5000/fleet/os",
        "registry.example.com:5000/fleet", "registry.example.com:5000", "*.example.com", "*.com", "",
    ]  # fmt: skip
    assert policies.candidate_scopes(parse("debian"))[:2] == ["docker.io/library/debian:latest",
                                                              "docker.io/library/debian"]  # fmt: skip


# ---- bundles ------------------------------------------------------------------------------------------

IDENTITY = "registry.example.com/fleet/os:2"


def signed_bundle(d: Path, img: Image, key: signing.Key, identity: str = IDENTITY) -> Path:
    return signing.sign_archive(
        img.archive(d / f"bundle-{len(list(d.glob('bundle-*')))}.tar"), key, identity
    )


def bundle_trust(site: Site, enforce: bool = True) -> policies.Trust:
    return site.trust(signing.policy({"registry.example.com/fleet": [str(site.owner.public)]}), enforce)


def test_signed_bundle_is_verified_then_imported(site: Site, tmp_path: Path) -> None:
    path = signed_bundle(tmp_path, Image([BASE, FIX]), site.owner)
    result = import_(ImageRef(Transport.OCI_ARCHIVE, path=str(path)), bundle_trust(site), tmp_path)
    assert result.manifest_digest == archive.read(path).manifest_digest


def test_tampered_bundles_are_refused_before_anything_is_imported(site: Site, tmp_path: Path) -> None:
    trust = bundle_trust(site)
    good = signed_bundle(tmp_path, Image([BASE, FIX]), site.owner)
    # One byte of the config changed: the manifest, and so the signature, still match; the config not.
    name, cfg = signing.config_blob(good)
    byte = signing.replace_member(good, name, cfg.replace(b"amd64", b"amd65"), tmp_path / "byte.tar")
    other = signing.graft_signatures(good, Image([BASE, V3]).archive(tmp_path / "other.tar"))
    img = Image([BASE, FIX])
    unsigned = img.archive(tmp_path / "unsigned.tar")
    by_other = signed_bundle(tmp_path, Image([BASE, V3]), site.other)
    as_other = signed_bundle(tmp_path, Image([V3]), site.owner, identity="registry.example.com/elsewhere:1")
    cases = {
        byte: "is missing or does not match its digest",
        other: "the bundle's signatures are for sha256:",
        unsigned: "the bundle is not signed, and this device only takes signed images",
        by_other: f"not signed by a key that {trust.policy} trusts for registry.example.com/fleet/os"
        " (signed by another key); nothing was staged",
        as_other: "rejects registry.example.com/elsewhere ('default')",  # the default scope
    }
    repo = Repo(tmp_path / "repo").ensure()
    for path, expected in cases.items():
        with pytest.raises((fetch.FetchError, importer.ImageImportError)) as e:
            import_(ImageRef(Transport.OCI_ARCHIVE, path=str(path)), trust, tmp_path)
        assert expected in str(e.value), (path.name, str(e.value))
        assert "\n" not in str(e.value)
        assert repo.refs() == [], path.name


def test_unsigned_bundle_without_enforce_follows_the_oci_archive_scope(site: Site, tmp_path: Path) -> None:
    path = Image([BASE]).archive(tmp_path / "plain.tar")
    trust = site.trust(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    assert import_(ImageRef(Transport.OCI_ARCHIVE, path=str(path)), trust, tmp_path).layers_total == 1
    strict = site.trust(signing.policy({}))  # default reject, no oci-archive scope
    with pytest.raises(fetch.SignatureError, match="rejects every image"):
        import_(ImageRef(Transport.OCI_ARCHIVE, path=str(path)), strict, tmp_path)
    keyed = site.trust(
        json.dumps(
            {
                "default": [{"type": "reject"}],
                "transports": {
                    "oci-archive": {
                        str(tmp_path): [
                            {"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(site.owner.public)}
                        ]
                    }
                },
            }
        )
    )
    with pytest.raises(fetch.SignatureError, match=r"trusts for .*plain.tar \(signature missing"):
        import_(ImageRef(Transport.OCI_ARCHIVE, path=str(path)), keyed, tmp_path)


def test_a_missing_policy_is_named(site: Site, tmp_path: Path) -> None:
    ref = site.push(Image([BASE]), "no-policy")
    trust = policies.Trust(tmp_path / "absent.json", site.regd)
    with pytest.raises(fetch.SignatureError, match=r"absent.json is missing: skopeo refuses every image"):
        import_(ref, trust, tmp_path)
