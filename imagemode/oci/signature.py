"""GPG "simple signing" signatures over a manifest digest, made and checked by skopeo itself.

A signature says: the image whose manifest has this digest is IDENTITY (a docker reference), signed by
this key. skopeo writes the same signatures to a registry's lookaside with `copy --sign-by`, and the
policy checks them there. A bundle carries them inside the archive (imagemode.oci.archive), where
no transport looks, so imagemode checks them with `skopeo standalone-verify` against the keys the
device's policy names, in a keyring made for that one check and thrown away.
"""

from __future__ import annotations

import base64
import tempfile
from collections.abc import Iterable
from pathlib import Path

from imagemode.errors import ImagemodeError
from imagemode.run import RunError, run

MAX_SIGNATURE = 64 << 10  # a simple signature is a few hundred bytes


class SignatureError(ImagemodeError):
    pass


def sign(manifest: bytes, identity: str, key: str, passphrase_file: Path | None = None) -> bytes:
    """A signature by `key` (a fingerprint in the caller's GPG keyring) that `manifest` is `identity`."""
    with tempfile.TemporaryDirectory(prefix="imagemode-sign-") as d:
        m, out = Path(d) / "manifest.json", Path(d) / "signature"
        m.write_bytes(manifest)
        cmd: list[str | Path] = ["skopeo", "standalone-sign", m, identity, key, "-o", out]
        if passphrase_file is not None:
            cmd.append(f"--passphrase-file={passphrase_file}")
        try:
            run(cmd)
        except RunError as e:
            raise SignatureError(f"cannot sign with key {key}: {str(e).split(': ', 1)[-1]}") from None
        return out.read_bytes()


def _fingerprints(home: Path) -> list[str]:
    out = run(["gpg", "--homedir", home, "--batch", "--with-colons", "--list-keys"]).stdout
    return [line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:")]


def verify(manifest: bytes, identity: str, signatures: Iterable[bytes], keys: Iterable[bytes]) -> str:
    """The fingerprint of a key in `keys` that signed `manifest` as `identity`; SignatureError if none.
    `keys`: public keys, armored or binary, as policy.json's keyPath files hold them."""
    with tempfile.TemporaryDirectory(prefix="imagemode-verify-") as d:
        home = Path(d) / "gnupg"
        home.mkdir(mode=0o700)
        for i, key in enumerate(keys):
            kf = Path(d) / f"key-{i}"
            kf.write_bytes(key)
            try:
                run(["gpg", "--homedir", home, "--batch", "--quiet", "--import", kf])
            except RunError:
                raise SignatureError("a key the policy names is not an OpenPGP public key") from None
        fprs = _fingerprints(home)
        m = Path(d) / "manifest.json"
        m.write_bytes(manifest)
        why = "no signature"
        for n, sig in enumerate(signatures):
            sf = Path(d) / f"signature-{n}"
            sf.write_bytes(sig)
            for fpr in fprs:
                p = run(
                    ["skopeo", "standalone-verify", m, identity, fpr, sf],
                    env={"GNUPGHOME": str(home)}, check=False,
                )  # fmt: skip
                if p.returncode == 0:
                    return fpr
                why = _reason(p.stderr)
        raise SignatureError(why)


def _reason(stderr: str) -> str:
    text = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    if "does not match expected fingerprint" in text or "No public key" in text or "Invalid GPG" in text:
        return "signed by another key"
    if "Docker reference" in text and "does not match" in text:
        return "signed as another image"
    if "digest" in text.lower() and "does not match" in text:
        return "the signature is for another manifest"
    return "the signature does not verify"


def encode(sig: bytes) -> str:
    return base64.b64encode(sig).decode()


def decode(text: object, where: str) -> bytes:
    if not isinstance(text, str) or len(text) > MAX_SIGNATURE * 2:
        raise SignatureError(f"{where}: a signature is a base64 string of at most {MAX_SIGNATURE} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise SignatureError(f"{where}: a signature is not base64") from None
