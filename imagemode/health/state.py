"""What the health checks concluded, kept in /var (shared by every deployment, so a verdict written by a
failing deployment is read by the one that takes over).

    /var/lib/imagemode/health/last.json          the last run: every check's result
    /var/lib/imagemode/health/deployments.json   per deployment (checksum.serial): healthy or failed,
                                                 when, why, and the image digest
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imagemode.boot import grubenv, replace

DIR = Path("/var/lib/imagemode/health")
HEALTHY, FAILED = "healthy", "failed"
KEEP = 20  # deployment records kept, newest first: a long-lived device upgrades many times


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, data: dict[str, Any]) -> None:
    """Replaced atomically and fsynced: the verdict must survive the reboot that usually follows it."""
    replace.replace(path, (json.dumps(data, indent=2) + "\n").encode())


def last(state_dir: Path = DIR) -> dict[str, Any]:
    return _read(state_dir / "last.json")


def save_last(run: dict[str, Any], state_dir: Path = DIR) -> None:
    _write(state_dir / "last.json", run)


def records(state_dir: Path = DIR) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in _read(state_dir / "deployments.json").items() if isinstance(v, dict)}


def record(deployment: str, rec: dict[str, Any], state_dir: Path = DIR) -> None:
    recs = records(state_dir)
    recs.pop(deployment, None)
    recs = {deployment: rec, **recs}
    _write(state_dir / "deployments.json", dict(list(recs.items())[:KEEP]))


def failed_image(digest: str, state_dir: Path = DIR) -> dict[str, Any] | None:
    """The record of a deployment of this image digest that failed its health checks, if any."""
    return next(
        (r for r in records(state_dir).values() if r.get("state") == FAILED and r.get("digest") == digest),
        None,
    )


def forget(digest: str, state_dir: Path = DIR) -> int:
    """Drop failure records of `digest` ("all": every one), so that upgrade may stage it again."""
    recs = records(state_dir)
    keep = {
        k: v for k, v in recs.items()
        if not (v.get("state") == FAILED and digest in ("all", v.get("digest")))
    }  # fmt: skip
    if len(keep) != len(recs):
        _write(state_dir / "deployments.json", keep)
    return len(recs) - len(keep)


def health_of(deployment: str, env: dict[str, str], recs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What status shows of a deployment's health."""
    rec = dict(recs.get(deployment) or {"state": "unchecked"})
    if env.get(grubenv.TRY) == deployment:
        tries = env.get(grubenv.TRIES, "")
        rec["triesLeft"] = int(tries) if tries.isdigit() else 0
        if rec["state"] != FAILED:
            rec["state"] = "trying"
    return rec


def statuses(ids: list[str]) -> dict[str, dict[str, Any]]:
    env = grubenv.read(grubenv.PHYSICAL) if os.access(grubenv.PHYSICAL, os.R_OK) else {}
    recs = records()
    return {i: health_of(i, env, recs) for i in ids}
