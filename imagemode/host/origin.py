"""A deployment's origin file: which image the device follows, and whether it must be signed. Written
at install and on every update."""

from __future__ import annotations

import configparser
from dataclasses import dataclass

STATEROOT = "default"  # bootc's name for the stateroot
ORIGIN_KEY = "container-image-reference"
UNVERIFIED = "ostree-unverified-image:"
# bootc's enforce mode: every update of this deployment must pass a policy that requires signatures.
SIGNED = "ostree-image-signed:"


def origin(image: str, signed: bool = False) -> str:
    """bootc's origin key, so that tools reading origins understand ours; `image` in skopeo's form."""
    mode = SIGNED if signed else UNVERIFIED
    return f"[origin]\n{ORIGIN_KEY}={mode}{image}\n\n[imagemode]\nimage={image}\n"


@dataclass(frozen=True)
class Origin:
    """What an origin file says: the image followed (skopeo's form), and whether its updates must be
    signed (bootc's ostree-image-signed:)."""

    image: str | None = None
    signed: bool = False


def read(text: str | None) -> Origin:
    """The one reader of origin files: ours, and bootc's (ostree-unverified-registry:NAME,
    ostree-unverified-image:TRANSPORT:NAME, ostree-image-signed:TRANSPORT:NAME)."""
    cp = configparser.ConfigParser(interpolation=None)
    try:
        cp.read_string(text or "")
    except configparser.Error:
        return Origin()
    ref = cp.get("origin", ORIGIN_KEY, fallback=None)
    signed = ref is not None and ref.startswith(SIGNED)
    if cp.has_option("imagemode", "image"):
        return Origin(cp.get("imagemode", "image"), signed)
    if ref is None:
        return Origin()
    for prefix, transport in ((UNVERIFIED, ""), (SIGNED, ""), ("ostree-unverified-registry:", "docker://")):
        if ref.startswith(prefix):
            return Origin(transport + ref[len(prefix) :], signed)
    return Origin(ref, signed)
