"""A deployment's origin file: which image the device follows, and whether it must be signed. Written
at install and on every update."""

from __future__ import annotations

import configparser

STATEROOT = "default"  # bootc's name for the stateroot
ORIGIN_KEY = "container-image-reference"
UNVERIFIED = "ostree-unverified-image:"
# bootc's enforce mode: every update of this deployment must pass a policy that requires signatures.
SIGNED = "ostree-image-signed:"


def origin(image: str, signed: bool = False) -> str:
    """bootc's origin key, so that tools reading origins understand ours; `image` in skopeo's form."""
    mode = SIGNED if signed else UNVERIFIED
    return f"[origin]\n{ORIGIN_KEY}={mode}{image}\n\n[imagemode]\nimage={image}\n"


def _parse(text: str) -> configparser.ConfigParser | None:
    cp = configparser.ConfigParser(interpolation=None)
    try:
        cp.read_string(text)
    except configparser.Error:
        return None
    return cp


def image_of(text: str) -> str | None:
    """The image an origin file follows, or None."""
    cp = _parse(text)
    if cp is None:
        return None
    if cp.has_option("imagemode", "image"):
        return cp.get("imagemode", "image")
    ref = cp.get("origin", ORIGIN_KEY, fallback=None)
    if ref is None:
        return None
    # bootc writes ostree-unverified-registry:NAME, ostree-unverified-image:TRANSPORT:NAME and
    # ostree-image-signed:TRANSPORT:NAME.
    for prefix, transport in ((UNVERIFIED, ""), (SIGNED, ""), ("ostree-unverified-registry:", "docker://")):
        if ref.startswith(prefix):
            return transport + ref[len(prefix) :]
    return ref


def is_signed(text: str) -> bool:
    """Whether the origin asks for signature enforcement (bootc's ostree-image-signed:)."""
    cp = _parse(text)
    return cp is not None and cp.get("origin", ORIGIN_KEY, fallback="").startswith(SIGNED)
