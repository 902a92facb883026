"""Real signing for the tests: GPG keys made on the spot, a lookaside served over HTTP on 127.0.0.1,
and the registries.d and policy.json a device reads. Nothing here signs or verifies by itself: skopeo
and gpg do, as on a build host."""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import json
import os
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from imagemode.oci import archive, signature


@dataclass(frozen=True)
class Key:
    home: Path  # a GNUPGHOME holding the secret key
    fingerprint: str
    public: Path  # the public key, as policy.json's keyPath names it

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """skopeo (and `imagemode bundle --sign-by`) sign from GNUPGHOME, like a build host's keyring."""
        old = os.environ.get("GNUPGHOME")
        os.environ["GNUPGHOME"] = str(self.home)
        try:
            yield
        finally:
            if old is None:
                del os.environ["GNUPGHOME"]
            else:
                os.environ["GNUPGHOME"] = old

    @property
    def env(self) -> dict[str, str]:
        return {"GNUPGHOME": str(self.home)}


def make_key(d: Path, name: str) -> Key:
    """An ed25519 signing key without a passphrase (a second or so)."""
    home = d / f"gnupg-{name}"
    home.mkdir(mode=0o700, parents=True)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
    subprocess.run([*gpg, "--quick-gen-key", f"{name} <{name}@example.com>", "ed25519", "sign", "never"],
                   check=True, capture_output=True)  # fmt: skip
    out = subprocess.run([*gpg, "--with-colons", "--list-secret-keys"], check=True, capture_output=True,
                         text=True).stdout  # fmt: skip
    fpr = next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))
    public = d / f"{name}.gpg"
    public.write_bytes(subprocess.run([*gpg, "--export", fpr], check=True, capture_output=True).stdout)
    return Key(home, fpr, public)


class Lookaside:
    """A directory of signatures (what `skopeo copy --sign-by` writes to lookaside-staging), served
    over HTTP on 127.0.0.1 as a web server beside a registry serves them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

        handler = functools.partial(Quiet, directory=str(root))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def registries_d(d: Path, registry: str, lookaside: str, staging: Path | None = None) -> Path:
    """registries.d: signatures of `registry`'s images are read from `lookaside` (a URL) and, when
    `staging` is given, written there by skopeo --sign-by."""
    d.mkdir(parents=True, exist_ok=True)
    lines = f"docker:\n  {registry}:\n    lookaside: {lookaside}\n"
    if staging is not None:
        lines += f"    lookaside-staging: file://{staging}\n"
    (d / "imagemode-test.yaml").write_text(lines)
    return d


def policy(scopes: dict[str, list[str]], default: str = "reject") -> str:
    """policy.json: each docker scope requires a signature by one of its key files; everything else
    gets `default`. Local sources (containers-storage, oci) are accepted: they carry no signatures."""
    docker = {
        scope: [{"type": "signedBy", "keyType": "GPGKeys", "keyPaths": keys}]
        for scope, keys in scopes.items()
    }
    accept = [{"type": "insecureAcceptAnything"}]
    return json.dumps(
        {
            "default": [{"type": default}],
            "transports": {"docker": docker, "containers-storage": {"": accept}, "oci": {"": accept}},
        },
        indent=2,
    )


def sign_archive(path: Path, key: Key, identity: str) -> Path:
    """Sign an oci-archive as `imagemode bundle --sign-by` does (the same two calls)."""
    contents = archive.read(path)
    with key.active():
        sig = signature.sign(contents.manifest, identity, key.fingerprint)
    archive.add_signatures(path, contents.manifest_digest, identity, [sig])
    return path


def replace_member(path: Path, name: str, data: bytes, out: Path) -> Path:
    """A copy of the archive with one member's bytes replaced (its name kept)."""
    with tarfile.open(path) as src, tarfile.open(out, "w") as dst:
        for m in src.getmembers():
            f = src.extractfile(m) if m.isreg() else None
            body = data if m.name == name else (f.read() if f else None)
            if body is not None:
                m.size = len(body)
            dst.addfile(m, io.BytesIO(body) if body is not None else None)
    return out


def graft_signatures(signed: Path, onto: Path) -> Path:
    """`onto` with the signatures of `signed`: another image under the same signature."""
    with tarfile.open(signed) as t:
        f = t.extractfile(archive.SIGNATURES)
        assert f is not None
        sigs = f.read()
    info = tarfile.TarInfo(archive.SIGNATURES)
    info.size = len(sigs)
    with tarfile.open(onto, "a") as t:
        t.addfile(info, io.BytesIO(sigs))
    return onto


def config_blob(path: Path) -> tuple[str, bytes]:
    """The archive's config: its member name and bytes."""
    contents = archive.read(path)
    digest = json.loads(contents.manifest)["config"]["digest"]
    name = f"blobs/sha256/{digest[7:]}"
    with tarfile.open(path) as t:
        f = t.extractfile(name)
        assert f is not None
        return name, f.read()
