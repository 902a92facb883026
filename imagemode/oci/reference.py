"""Image references: `[TRANSPORT:]NAME[:TAG][@DIGEST]`, parsed once and checked strictly.

The grammar of NAME, TAG and DIGEST is the one of the distribution project (docker/distribution
reference), which podman, skopeo and every registry share. Transports are the subset of containers/image
transports that imagemode uses.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from imagemode.errors import ImagemodeError


class Transport(enum.StrEnum):
    REGISTRY = "registry"
    CONTAINERS_STORAGE = "containers-storage"
    OCI = "oci"
    OCI_ARCHIVE = "oci-archive"

    @property
    def skopeo_prefix(self) -> str:
        return "docker://" if self is Transport.REGISTRY else f"{self.value}:"


class ImageRefError(ImagemodeError):
    pass


_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_NAME_RE = re.compile(rf"^(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$|^sha512:[a-f0-9]{128}$")


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference. For path transports (oci, oci-archive) `path` is set instead of `name`."""

    transport: Transport
    name: str = ""
    tag: str | None = None
    digest: str | None = None
    path: str = ""
    # The reference as it was written, without its transport: what status reports back (bootc's
    # agents compare strings, and `os` must not come back as `docker.io/library/os:latest`).
    given: str = field(default="", compare=False)

    def __str__(self) -> str:
        """The reference as podman and skopeo print it, without the transport."""
        if self.path:
            return self.path + (f":{self.tag}" if self.tag else "")
        s = self.name
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s

    @property
    def spec(self) -> str:
        """The reference as given (else as printed), in skopeo's `transport:details` form: what an
        origin records, and what status shows."""
        return f"{self.transport.skopeo_prefix}{self.given or self}"

    @property
    def skopeo(self) -> str:
        """The reference in skopeo's `transport:details` form."""
        return f"{self.transport.skopeo_prefix}{self}"

    @property
    def domain(self) -> str:
        return self.name.split("/", 1)[0] if "/" in self.name else ""


def _split_name(text: str, original: str) -> tuple[str, str | None, str | None]:
    digest = None
    if "@" in text:
        text, digest = text.rsplit("@", 1)
        if not _DIGEST_RE.match(digest):
            raise ImageRefError(f"invalid image reference {original!r}: bad digest {digest!r}")
    tag = None
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:
        text, tag = text[:colon], text[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise ImageRefError(f"invalid image reference {original!r}: bad tag {tag!r}")
    m = _NAME_RE.match(text)
    if m and m["domain"] and not has_domain(text):
        # Only a component with '.' or ':' or 'localhost' is a host; anything else is lowercase path.
        m = _NAME_RE.match("x/" + text)
    if not m or len(text) > 255:
        raise ImageRefError(
            f"invalid image reference {original!r}: a name is lowercase letters, digits and separators,"
            " optionally behind a registry host"
        )
    return text, tag, digest


def has_domain(name: str) -> bool:
    """The rule podman and docker share: a first component with '.' or ':', or 'localhost', is a host."""
    first, sep, _ = name.partition("/")
    return bool(sep) and ("." in first or ":" in first or first == "localhost")


def parse(text: str, transport: str | Transport | None = None) -> ImageRef:
    """Parse `text`. A transport given separately wins over one written in the text.

    Accepted forms: `NAME[:TAG][@DIGEST]` (registry), `docker://NAME`, `registry:NAME`,
    `containers-storage:NAME`, `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`.
    """
    original = text
    if not text or text != text.strip():
        raise ImageRefError(f"invalid image reference {original!r}: empty or surrounded by spaces")
    if transport is None:
        if text.startswith("docker://"):
            transport, text = Transport.REGISTRY, text[len("docker://") :]
        else:
            for t in Transport:
                if text.startswith(t.value + ":"):
                    transport, text = t, text[len(t.value) + 1 :]
                    break
            else:
                transport = Transport.REGISTRY
    else:
        try:
            transport = Transport(transport)
        except ValueError:
            choices = ", ".join(t.value for t in Transport)
            raise ImageRefError(f"unknown transport {transport!r}; use one of: {choices}") from None
    if transport in (Transport.OCI, Transport.OCI_ARCHIVE):
        path, _, path_tag = text.partition(":")
        if not path:
            raise ImageRefError(f"invalid image reference {original!r}: no path after {transport.value}:")
        return ImageRef(transport, tag=path_tag or None, path=path, given=text)
    if transport is Transport.CONTAINERS_STORAGE and text.startswith("["):
        raise ImageRefError(f"invalid image reference {original!r}: storage specifiers are not supported")
    name, tag, digest = _split_name(text, original)
    if transport is Transport.CONTAINERS_STORAGE and not has_domain(name):
        # podman stores unqualified local names under localhost/, so look them up the same way.
        name = f"localhost/{name}"
    if tag is None and digest is None:
        tag = "latest"
    return ImageRef(transport, name=name, tag=tag, digest=digest, given=text)


def parse_local(text: str) -> ImageRef:
    """Like podman: a bare name means local containers-storage; an explicit transport is kept."""
    explicit = text.startswith("docker://") or any(text.startswith(t.value + ":") for t in Transport)
    return parse(text) if explicit else parse(text, Transport.CONTAINERS_STORAGE)


def local_tag(text: str) -> ImageRef:
    """Parse a tag for an image that imagemode writes into local containers-storage."""
    return parse(text, Transport.CONTAINERS_STORAGE)
