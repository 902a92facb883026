"""A deployment's origin file: which image the device follows. Written at install and on every update."""

from __future__ import annotations

import configparser

STATEROOT = "default"  # bootc's name for the stateroot
ORIGIN_KEY = "container-image-reference"
UNVERIFIED = "ostree-unverified-image:"


def origin(image: str) -> str:
    """bootc's origin key, so that tools reading origins understand ours; `image` in skopeo's form."""
    return f"[origin]\n{ORIGIN_KEY}={UNVERIFIED}{image}\n\n[imagemode]\nimage={image}\n"


def image_of(text: str) -> str | None:
    """The image an origin file follows, or None."""
    cp = configparser.ConfigParser(interpolation=None)
    try:
        cp.read_string(text)
    except configparser.Error:
        return None
    if cp.has_option("imagemode", "image"):
        return cp.get("imagemode", "image")
    ref = cp.get("origin", ORIGIN_KEY, fallback=None)
    if ref is None:
        return None
    # bootc writes ostree-unverified-registry:NAME and ostree-unverified-image:TRANSPORT:NAME.
    for prefix, transport in ((UNVERIFIED, ""), ("ostree-unverified-registry:", "docker://")):
        if ref.startswith(prefix):
            return transport + ref[len(prefix) :]
    return ref
