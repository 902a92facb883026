"""`imagemode status`: the host as bootc describes it (org.containers.bootc/v1, kind BootcHost).

`host_status()` is a pure function of what the sysroot holds, so tests validate it against the schema
without a device. `imagemode.host.sysroot` reads the real sysroot through libostree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from imagemode.host.ostree_api import deployment_id
from imagemode.oci.reference import ImageRefError, Transport, parse

API_VERSION = "org.containers.bootc/v1"
KIND = "BootcHost"


@dataclass(frozen=True)
class Deployment:
    """One ostree deployment and the image it came from (read from its commit's metadata)."""

    stateroot: str
    checksum: str
    serial: int
    image: str  # as recorded by the importer, e.g. "docker://127.0.0.1:5000/os:v2"
    digest: str
    version: str | None
    timestamp: int | None
    architecture: str
    pinned: bool = False
    download_only: bool = False
    signed: bool = False  # its updates must pass a policy that requires signatures (enforce mode)

    @property
    def id(self) -> str:
        return deployment_id(self.checksum, self.serial)


# libostree's unlocked states (OSTree.DeploymentUnlockedState: development, hotfix, transient) as bootc
# reports them: `ostree admin unlock` is read/write until the next boot, --hotfix keeps it, and
# --transient (bootc's `usr-overlay --read-only`) mounts it read-only.
USR_OVERLAY = {
    1: {"accessMode": "readWrite", "persistence": "transient"},
    2: {"accessMode": "readWrite", "persistence": "persistent"},
    3: {"accessMode": "readOnly", "persistence": "transient"},
}


def image_reference(image: str, signed: bool = False) -> dict[str, Any]:
    """bootc's ImageReference: transport names as bootc spells them ("registry", "oci", ...), and the
    signature mode: "containerPolicy" in enforce mode; null otherwise, as bootc says for
    ostree-unverified-image (the policy still applies to every fetch: docs/signing.md)."""
    sig = "containerPolicy" if signed else None
    try:
        ref = parse(image)
    except ImageRefError:
        return {"image": image, "transport": "registry", "signature": sig}
    return {
        "image": ref.given or str(ref),  # as it was given: agents compare this string with their own
        "transport": ref.transport.value if ref.transport is not Transport.REGISTRY else "registry",
        "signature": sig,
    }


def boot_entry(
    d: Deployment, cached_update: dict[str, Any] | None = None, health: dict[str, Any] | None = None
) -> dict[str, Any]:
    """bootc's BootEntry, plus `health` (imagemode's: docs/health.md)."""
    ts = datetime.fromtimestamp(d.timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if d.timestamp else None
    return {
        "image": {
            "image": image_reference(d.image, d.signed),
            "version": d.version,
            "timestamp": ts,
            "imageDigest": d.digest,
            "architecture": d.architecture,
        } if d.digest else None,
        "cachedUpdate": cached_update,
        "incompatible": False,
        "pinned": d.pinned,
        "downloadOnly": d.download_only,
        "store": "ostreeContainer",
        "ostree": {"checksum": d.checksum, "deploySerial": d.serial, "stateroot": d.stateroot},
        "health": health,
    }  # fmt: skip


def host_status(
    booted: Deployment | None,
    staged: Deployment | None,
    rollback: Deployment | None,
    *,
    rollback_queued: bool = False,
    cached_update: dict[str, Any] | None = None,
    other: list[Deployment] | None = None,
    health: dict[str, dict[str, Any]] | None = None,
    usr_overlay: dict[str, str] | None = None,
) -> dict[str, Any]:
    """`health`: by deployment id (checksum.serial), what the health checks concluded. `usr_overlay`:
    bootc's FilesystemOverlay for a booted deployment that `usr-overlay` unlocked (see USR_OVERLAY)."""
    health = health or {}

    def entry(d: Deployment, cached: dict[str, Any] | None = None) -> dict[str, Any]:
        return boot_entry(d, cached, health.get(d.id))

    spec_image = None
    source = staged or booted
    if source is not None and source.digest:
        spec_image = image_reference(source.image, source.signed)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": "host"},
        "spec": {"image": spec_image, "bootOrder": "rollback" if rollback_queued else "default"},
        "status": {
            "staged": entry(staged) if staged else None,
            "booted": entry(booted, cached_update) if booted else None,
            "rollback": entry(rollback) if rollback else None,
            "otherDeployments": [entry(d) for d in other or []],
            "rollbackQueued": rollback_queued,
            "type": "bootcHost" if booted else None,
            "usrOverlay": usr_overlay if booted else None,
        },
    }


def health_line(h: dict[str, Any]) -> str:
    st = str(h.get("state", "unchecked"))
    if st == "trying":
        return f"being tried, {h.get('triesLeft', 0)} boots left to pass the health checks"
    text = st + (f" at {h['at']}" if h.get("at") else "")
    if h.get("reason"):
        text += f": {h['reason']}"
    if h.get("warned"):
        text += f" ({len(h['warned'])} wanted checks warned: {', '.join(h['warned'])})"
    return text


def human(status: dict[str, Any]) -> str:
    """The status as a person at the device reads it."""
    st = status["status"]
    if st["booted"] is None:
        return "This system is not booted from an imagemode (ostree) deployment.\n"
    lines: list[str] = []

    def entry(label: str, e: dict[str, Any] | None, mark: str) -> None:
        if e is None:
            return
        img = e["image"]
        name = img["image"]["image"] if img else "(not from an image)"
        lines.append(f"{mark} {label} image: {name}")
        if img:
            lines.append(f"{'':>8}Digest: {img['imageDigest']}")
            ver = img["version"] or "-"
            lines.append(f"{'':>7}Version: {ver} ({img['timestamp'] or 'no timestamp'})")
        lines.append(f"{'':>8}Commit: {e['ostree']['checksum']}.{e['ostree']['deploySerial']}")
        if img and img["image"].get("signature"):
            lines.append(f"{'':>5}Signature: required by the policy (enforced on every update)")
        if e.get("downloadOnly"):
            lines.append(f"{'':>8}Download only: not applied at shutdown")
        if e.get("health"):
            lines.append(f"{'':>8}Health: {health_line(e['health'])}")
        lines.append("")

    entry("Staged", st["staged"], " ")
    entry("Booted", st["booted"], "●")
    entry("Rollback", st["rollback"], " ")
    overlay = st.get("usrOverlay")
    if overlay:
        lines.append(f"  /usr overlay: {overlay['persistence']}, {overlay['accessMode']}")
    cu = st["booted"].get("cachedUpdate")
    if cu:
        lines.append(
            f"  Update available: {cu['image']['image']} {cu['imageDigest']}"
            f" (version {cu.get('version') or '-'})"
        )
        pv = cu.get("preview")
        if isinstance(pv, dict):
            changes = pv.get("packages")
            what = (f"{sum(len(v) for v in changes.values())} package changes" if isinstance(changes, dict)
                    else "package changes not known")  # fmt: skip
            lines.append(f"{'':>4}{int(pv.get('downloadBytes') or 0) / 1e6:.1f} MB to download; {what}"
                         " (imagemode upgrade --check lists them)")  # fmt: skip
    if st["rollbackQueued"]:
        lines.append("  Rollback queued: the rollback deployment boots next.")
    return "\n".join(lines).rstrip() + "\n"


def to_yaml(status: dict[str, Any]) -> str:
    try:
        import yaml
    except ImportError:  # python3-yaml is in the base image; JSON is valid YAML otherwise
        return json.dumps(status, indent=2) + "\n"
    text: str = yaml.safe_dump(status, sort_keys=False)
    return text
