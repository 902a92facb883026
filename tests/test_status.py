"""status as bootc describes a host, validated against the published schema in every state."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jsonschema
import pytest

from imagemode.host.status import Deployment, host_status, human

SCHEMA = json.loads((Path(__file__).resolve().parent / "data/bootc-host-v1.schema.json").read_text())


def dep(version: str, serial: int = 0, image: str = "docker://127.0.0.1:5000/os:latest") -> Deployment:
    return Deployment(
        "default",
        f"{version:0>64}"[-64:],
        serial,
        image,
        "sha256:" + version * 64,
        version,
        1_700_000_000,
        "amd64",
    )


CACHED = {
    "image": {"image": "127.0.0.1:5000/os:latest", "transport": "registry", "signature": None},
    "version": "3",
    "timestamp": None,
    "imageDigest": "sha256:" + "3" * 64,
    "architecture": "amd64",
}
STATES = {
    "not-booted": host_status(None, None, None),
    "booted": host_status(dep("1"), None, None),
    "staged": host_status(dep("1"), dep("2"), None),
    "rollback": host_status(dep("2"), None, dep("1")),
    "rollback-queued": host_status(dep("2"), None, dep("1"), rollback_queued=True),
    "cached-update": host_status(dep("1"), None, None, cached_update=CACHED),
    "local-image": host_status(dep("1", image="containers-storage:localhost/imagemode/hello:1"), None, None),
}


@pytest.mark.parametrize("state", list(STATES))
def test_valid_against_bootc_schema(state: str) -> None:
    jsonschema.validate(STATES[state], SCHEMA)


def test_booted_fields() -> None:
    st = STATES["rollback"]
    assert st["apiVersion"] == "org.containers.bootc/v1" and st["kind"] == "BootcHost"
    booted = st["status"]["booted"]
    assert booted["image"]["imageDigest"] == "sha256:" + "2" * 64
    assert booted["image"]["image"] == {
        "image": "127.0.0.1:5000/os:latest",
        "transport": "registry",
        "signature": None,
    }
    assert booted["image"]["timestamp"] == "2023-11-14T22:13:20Z"
    assert st["status"]["rollback"]["ostree"]["checksum"].endswith("1")
    local = STATES["local-image"]["status"]["booted"]["image"]["image"]
    assert local == {
        "image": "localhost/imagemode/hello:1",
        "transport": "containers-storage",
        "signature": None,
    }


def test_human() -> None:
    text = human(STATES["staged"])
    assert "● Booted image: 127.0.0.1:5000/os:latest" in text
    assert "Staged image:" in text
    assert "Update available" in human(STATES["cached-update"])
    assert "not booted" in human(STATES["not-booted"])


def test_enforce_mode_is_the_schema_signature_field() -> None:
    signed = dataclasses.replace(dep("9"), signed=True)
    st = host_status(signed, None, None)
    jsonschema.validate(st, SCHEMA)
    assert st["spec"]["image"]["signature"] == "containerPolicy"
    assert st["status"]["booted"]["image"]["image"]["signature"] == "containerPolicy"
    assert "Signature: required by the policy" in human(st)
