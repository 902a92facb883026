"""The `io.imagemode.chunks` label: a chunked image's plan and package list, in its config.

The next build reads it with one inspect and no blob, to keep every component in its slot. A device
reads it before any layer is fetched, to say which packages an update changes (`upgrade --check`).
So it is written by imagemode and read as hostile: `parse()` checks the whole shape, every name and
every version, before a field is used, and a label that fails is no label.

    {"version": 1,
     "layers": ["own:linux-signed-amd64", ..., "bin:3", ..., "patch:perl", "initramfs", "volatile"],
     "bins": 16, "binned": ["acl", ...],
     "bases": {"perl": "<base64: 12 bytes per entry of the layer in perl's own slot>"},
     "packages": {"adduser": "3.134", ...},
     "prior": "sha256:..." or null}

`layers` names the image's bottom layers, in order: the slots this plan describes. Layers above them
(imagemode's own, or a Containerfile's) are not described. Standard library only: devices read it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from imagemode.errors import ImagemodeError

KEY = "io.imagemode.chunks"
VERSION = 1
MAX_TEXT = 2 << 20  # a label past this is refused unread
MAX_PACKAGES = 20_000
MAX_ENTRIES = 500_000  # fingerprints in all the bases
FINGERPRINT = 12  # bytes per entry: 6 of the path's hash, 6 of the content's

PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]{0,99}\Z")  # Debian policy 5.6.1 and 5.6.7
VERSION_TEXT = re.compile(r"[A-Za-z0-9.+~:-]{1,128}\Z")  # Debian policy 5.6.12
# A source package, or one of imagemode's own components (docs/chunking.md): @unowned, @imagemode,
# @file:PATH for a large file that no package owns.
COMPONENT = re.compile(r"(?:[a-z0-9][a-z0-9+.-]{0,99}|@[a-z]{1,20}(?::[A-Za-z0-9._+/@#-]{1,240})?)\Z")
SLOT = re.compile(r"(?:(?:own|patch):(?P<name>.+)|bin:(?P<bin>[0-9]{1,3})|initramfs|volatile|imagemode)\Z")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")


class LabelError(ImagemodeError):
    pass


@dataclass(frozen=True)
class ChunkLabel:
    layers: tuple[str, ...]  # slot of each described layer, bottom first
    bins: int
    binned: tuple[str, ...] = ()  # components in bins (sorted): with `layers`, every component there was
    bases: Mapping[str, bytes] = field(default_factory=dict)  # component -> fingerprints of its own slot
    packages: Mapping[str, str] = field(default_factory=dict)  # binary package -> version
    prior: str | None = None  # manifest digest of the build whose slots this one kept

    @property
    def own(self) -> tuple[str, ...]:
        return tuple(s[4:] for s in self.layers if s.startswith("own:"))

    @property
    def patched(self) -> tuple[str, ...]:
        return tuple(s[6:] for s in self.layers if s.startswith("patch:"))

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": VERSION,
                "layers": list(self.layers),
                "bins": self.bins,
                "binned": sorted(self.binned),
                "bases": {k: base64.b64encode(v).decode() for k, v in sorted(self.bases.items())},
                "packages": dict(sorted(self.packages.items())),
                "prior": self.prior,
            },
            separators=(",", ":"),
        )


def _fail(why: str) -> LabelError:
    return LabelError(f"label {KEY}: {why}")


def _strings(value: object, what: str, pattern: re.Pattern[str], limit: int) -> list[str]:
    if not isinstance(value, list) or len(value) > limit:
        raise _fail(f"{what} is not a list of at most {limit}")
    for v in value:
        if not isinstance(v, str) or not pattern.match(v):
            raise _fail(f"{what}: {str(v)[:60]!r} is not valid")
    return list(value)


def _component(name: str, what: str) -> str:
    if not COMPONENT.match(name):
        raise _fail(f"{what}: {name[:60]!r} is not a component name")
    return name


def parse(text: object) -> ChunkLabel:
    """The label, checked whole; anything else is a LabelError (one line)."""
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        raise _fail(f"not a text of at most {MAX_TEXT} bytes")
    try:
        d: Any = json.loads(text)
    except (ValueError, RecursionError):
        raise _fail("not JSON") from None
    if not isinstance(d, dict) or d.get("version") != VERSION:
        raise _fail(f"not a version {VERSION} object")
    bins = d.get("bins")
    if not isinstance(bins, int) or isinstance(bins, bool) or not 0 <= bins <= 256:
        raise _fail("bins is not a number from 0 to 256")
    layers = _strings(d.get("layers"), "layers", SLOT, 500)
    for s in layers:
        m = SLOT.match(s)
        assert m is not None
        if m["name"] is not None:
            _component(m["name"], "layers")
        if m["bin"] is not None and int(m["bin"]) >= bins:
            raise _fail(f"layers: {s} is past the {bins} bins")
    if len(set(layers)) != len(layers):
        raise _fail("layers: a slot is named twice")
    binned = _strings(d.get("binned", []), "binned", COMPONENT, MAX_PACKAGES)
    packages = d.get("packages")
    if not isinstance(packages, dict) or len(packages) > MAX_PACKAGES:
        raise _fail(f"packages is not an object of at most {MAX_PACKAGES}")
    for k, v in packages.items():
        if not PACKAGE.match(k) or not isinstance(v, str) or not VERSION_TEXT.match(v):
            raise _fail(f"packages: {k[:60]!r} {str(v)[:60]!r} is not a package and a version")
    raw_bases = d.get("bases", {})
    if not isinstance(raw_bases, dict):
        raise _fail("bases is not an object")
    bases: dict[str, bytes] = {}
    total = 0
    for k, v in raw_bases.items():
        _component(k, "bases")
        try:
            fp = base64.b64decode(v, validate=True) if isinstance(v, str) else b"?"
        except binascii.Error:
            fp = b"?"
        total += len(fp) // FINGERPRINT
        if len(fp) % FINGERPRINT or total > MAX_ENTRIES or f"own:{k}" not in layers:
            raise _fail(f"bases: {k!r} is not a set of fingerprints of a component with its own slot")
        bases[k] = fp
    prior = d.get("prior")
    if prior is not None and (not isinstance(prior, str) or not DIGEST.match(prior)):
        raise _fail("prior is not a sha256 digest")
    return ChunkLabel(tuple(layers), bins, tuple(binned), bases, dict(packages), prior)


def of_config(config: Mapping[str, Any]) -> ChunkLabel | None:
    """The label of an image config (checked), or None when it has none."""
    labels = (config.get("config") or {}).get("Labels") or {}
    text = labels.get(KEY) if isinstance(labels, dict) else None
    return None if text is None else parse(text)
