"""The device's trust policy: containers-policy.json(5), read the way containers/image reads it.

skopeo enforces the policy on every copy imagemode makes (imagemode.store.fetch). This module reads
the same file for the three things skopeo does not do for us:

- enforce mode (`switch --enforce-container-sigpolicy`, bootc's `ostree-image-signed:`) refuses a
  policy that would accept an image without a signature, before anything is fetched;
- a signed bundle (an oci-archive, a transport with no signatures of its own) is checked against the
  keys the policy names for the image the bundle claims to be (imagemode.oci.archive);
- `imagemode lint` and `disk` look at the policy an image ships.

A policy file is the administrator's, or an image's: its shape is checked before a field is used.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagemode import confined
from imagemode.errors import ImagemodeError
from imagemode.oci.reference import ImageRef, Transport, has_domain

POLICY = Path("/etc/containers/policy.json")  # what skopeo and podman read as root
MAX_POLICY = 1 << 20

ACCEPT = "insecureAcceptAnything"
REJECT = "reject"
SIGNED_BY = "signedBy"
SIGSTORE = "sigstoreSigned"
TYPES = (ACCEPT, REJECT, SIGNED_BY, SIGSTORE)
# containers/image's transport names, as policy.json spells them.
TRANSPORT_NAMES = {
    Transport.REGISTRY: "docker",
    Transport.OCI: "oci",
    Transport.OCI_ARCHIVE: "oci-archive",
    Transport.CONTAINERS_STORAGE: "containers-storage",
}


class PolicyError(ImagemodeError):
    pass


@dataclass(frozen=True)
class Trust:
    """What a copy is checked against. `registries_d`: where signature lookaside and sigstore settings
    live (None: skopeo's default, /etc/containers/registries.d). `enforce`: bootc's signed mode."""

    policy: Path = POLICY
    registries_d: Path | None = None
    enforce: bool = False

    def skopeo_flags(self) -> list[str]:
        """skopeo's global flags for this trust (they go before the verb)."""
        flags = [f"--policy={self.policy}"]
        if self.registries_d is not None:
            flags.append(f"--registries.d={self.registries_d}")
        return flags


@dataclass(frozen=True)
class Policy:
    path: str  # for messages
    data: dict[str, Any]

    def requirements(self, ref: ImageRef) -> tuple[str, list[dict[str, Any]]]:
        """The requirements that apply to `ref`, and the scope they came from ("" for the transport's
        default, "default" for the global one). The most specific scope wins, as in containers/image."""
        transports = self.data.get("transports", {})
        scopes = transports.get(TRANSPORT_NAMES[ref.transport], {})
        for scope in candidate_scopes(ref):
            if scope in scopes:
                return scope, scopes[scope]
        return "default", self.data["default"]

    def every_requirement(self) -> list[dict[str, Any]]:
        scopes = [s for t in self.data.get("transports", {}).values() for s in t.values()]
        return [r for reqs in [self.data["default"], *scopes] for r in reqs]

    @property
    def default_accepts_anything(self) -> bool:
        return all(r["type"] == ACCEPT for r in self.data["default"])

    def accepts_anything(self, ref: ImageRef) -> str | None:
        """Where the policy would take `ref` unsigned (a short phrase naming the scope), else None."""
        if self.default_accepts_anything:
            return "its default accepts any image"
        scope, reqs = self.requirements(ref)
        if all(r["type"] == ACCEPT for r in reqs):
            shown = f"{TRANSPORT_NAMES[ref.transport]} {scope!r}" if scope != "default" else "default"
            return f"its {shown} scope accepts any image"
        return None


def normalized_name(name: str) -> str:
    """A registry name as containers/image matches it: docker.io/library/NAME for a bare NAME."""
    if has_domain(name):
        return name
    return f"docker.io/{name}" if "/" in name else f"docker.io/library/{name}"


def candidate_scopes(ref: ImageRef) -> list[str]:
    """Scopes from the most specific to the least, as containers-policy.json(5) lists them."""
    if ref.transport is Transport.REGISTRY:
        name = normalized_name(ref.name)
        out = []
        if ref.digest:
            out.append(f"{name}@{ref.digest}")
        elif ref.tag:
            out.append(f"{name}:{ref.tag}")
        parts = name.split("/")
        out += ["/".join(parts[:i]) for i in range(len(parts), 0, -1)]
        host = parts[0].split(":", 1)[0]
        labels = host.split(".")
        out += ["*." + ".".join(labels[i:]) for i in range(1, len(labels))]
        return [*out, ""]
    if ref.transport in (Transport.OCI, Transport.OCI_ARCHIVE):
        path = os.path.abspath(ref.path)
        out = [f"{path}:{ref.tag}"] if ref.tag else []
        while True:
            out.append(path)
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
        return [*out, ""]
    return [str(ref), ""]


def _requirements(value: object, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise PolicyError(f"{where}: must be a non-empty list of requirements")
    for r in value:
        if not isinstance(r, dict) or r.get("type") not in TYPES:
            kind = r.get("type") if isinstance(r, dict) else r
            raise PolicyError(f"{where}: unknown requirement {kind!r} (known: {', '.join(TYPES)})")
        for key in ("keyPath", "keyData"):
            if key in r and not isinstance(r[key], str):
                raise PolicyError(f"{where}: {key} must be a string")
        if "keyPaths" in r and not (
            isinstance(r["keyPaths"], list) and all(isinstance(p, str) for p in r["keyPaths"])
        ):
            raise PolicyError(f"{where}: keyPaths must be a list of strings")
        if r["type"] == SIGNED_BY and not (r.get("keyPath") or r.get("keyPaths") or r.get("keyData")):
            raise PolicyError(f"{where}: signedBy names no key (keyPath, keyPaths or keyData)")
    return value


def parse(text: bytes | str, where: str) -> Policy:
    if len(text) > MAX_POLICY:
        raise PolicyError(f"{where}: more than {MAX_POLICY} bytes")
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise PolicyError(f"{where}: not JSON ({e})") from None
    if not isinstance(data, dict) or "default" not in data:
        raise PolicyError(f'{where}: a policy is an object with a "default" list')
    _requirements(data["default"], f"{where}: default")
    transports = data.get("transports", {})
    if not isinstance(transports, dict):
        raise PolicyError(f"{where}: transports must be an object")
    for name, scopes in transports.items():
        if not isinstance(scopes, dict):
            raise PolicyError(f"{where}: transports.{name} must be an object of scopes")
        for scope, reqs in scopes.items():
            _requirements(reqs, f"{where}: transports.{name}[{scope!r}]")
    return Policy(where, data)


def load(path: Path = POLICY) -> Policy:
    try:
        with open(path, "rb") as f:
            return parse(f.read(MAX_POLICY + 1), str(path))
    except FileNotFoundError:
        raise PolicyError(f"{path}: missing (skopeo and podman refuse every image without it)") from None
    except OSError as e:
        raise PolicyError(f"{path}: cannot be read ({e.strerror})") from None


def require_signatures(policy: Policy, ref: ImageRef) -> None:
    """Enforce mode: refuse a policy that would let `ref`, or any image by default, in unsigned."""
    loose = policy.accepts_anything(ref)
    if loose is not None:
        raise PolicyError(
            f"{policy.path}: {loose}, and signature enforcement is on for {ref}; give it"
            f' "default": [{{"type": "{REJECT}"}}] and a {SIGNED_BY} requirement for the image'
            " (docs/signing.md)"
        )


def key_paths(reqs: list[dict[str, Any]]) -> list[str]:
    """Key files the requirements name (keyPath and keyPaths)."""
    out: list[str] = []
    for r in reqs:
        if "keyPath" in r:
            out.append(r["keyPath"])
        out.extend(r.get("keyPaths", []))
    return out


# ---- the policy an image ships ------------------------------------------------------------------------

INSTALL_D = "usr/lib/bootc/install"
ENFORCE_KEY = "enforce-container-sigpolicy"


def in_image(path: str, etc: str) -> str:
    """Where a device path is in an image's tree, whose /etc is at `etc`."""
    rel = path.lstrip("/")
    return etc + rel[len("etc") :] if rel.startswith("etc/") else rel


def image_policy(tree: confined.Reader, etc: str = "usr/etc") -> Policy | None:
    """The policy.json an image ships, or None. `etc`: where the tree keeps /etc ("etc" in a
    container's own root, "usr/etc" in an imported commit)."""
    rel = confined.resolve(tree, f"{etc}/containers/policy.json")
    if rel is None or tree.kind(rel) is not confined.Kind.FILE:
        return None
    return parse(tree.read_bytes(rel, MAX_POLICY + 1), "/etc/containers/policy.json in the image")


def enforce_requested(tree: confined.Reader) -> bool | None:
    """`[install] enforce-container-sigpolicy` from the image's /usr/lib/bootc/install/*.toml, the last
    file in name order that sets it winning, as bootc merges them; None if none does."""
    d = confined.resolve(tree, INSTALL_D)
    if d is None or tree.kind(d) is not confined.Kind.DIR:
        return None
    found = None
    for name in tree.listdir(d):
        text = confined.read_text(tree, f"{d}/{name}") if name.endswith(".toml") else None
        if text is None:
            continue
        try:
            value = tomllib.loads(text).get("install", {}).get(ENFORCE_KEY)
        except (tomllib.TOMLDecodeError, AttributeError):
            raise PolicyError(f"/{INSTALL_D}/{name}: not TOML with an [install] table") from None
        if value is not None and not isinstance(value, bool):
            raise PolicyError(f"/{INSTALL_D}/{name}: {ENFORCE_KEY} must be true or false")
        if value is not None:
            found = value
    return found


def missing_keys(pol: Policy, ref: ImageRef, tree: confined.Reader, etc: str = "usr/etc") -> list[str]:
    """Key files the policy names for `ref` that are not in the image (nothing can verify with them)."""
    return missing_key_files(key_paths(pol.requirements(ref)[1]), tree, etc)


def missing_key_files(paths: list[str], tree: confined.Reader, etc: str) -> list[str]:
    out = []
    for p in paths:
        found = confined.resolve(tree, in_image(p, etc))
        if found is None or tree.kind(found) is not confined.Kind.FILE:
            out.append(p)
    return out


def has_keys(reqs: list[dict[str, Any]]) -> bool:
    return any(r["type"] in (SIGNED_BY, SIGSTORE) for r in reqs)
