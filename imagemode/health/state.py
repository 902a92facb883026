"""What the health checks concluded, kept in /var (shared by every deployment, so a verdict written by a
failing deployment is read by the one that takes over).

    /var/lib/imagemode/health/last.json          the last run: every check's result
    /var/lib/imagemode/health/deployments.json   per deployment (checksum.serial): healthy or failed,
                                                 when, why, and the image digest
"""

from __future__ import annotations

import enum
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imagemode import atomic
from imagemode.boot import grubenv

DIR = Path("/var/lib/imagemode/health")


class State(enum.StrEnum):
    """What a deployment's record says of it."""

    HEALTHY = "healthy"
    FAILED = "failed"


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
    atomic.write(path, (json.dumps(data, indent=2) + "\n").encode())


@dataclass(frozen=True)
class Run:
    """A run of the checks as it is recorded (last.json) and shown: in full, or, at boot, the end of
    the journal's account, whose results were printed as they came."""

    record: dict[str, Any]
    boot: bool = False

    @property
    def exit_code(self) -> int:
        return 0 if self.record.get("healthy") else 1

    def to_dict(self) -> dict[str, Any]:
        return self.record

    def verdict(self) -> str:
        from imagemode.health import checks  # not at the top: `health --show --json` runs no check

        results = self.record["results"]
        warned = sum(r["status"] == checks.Status.WARNED for r in results)
        verdict = "healthy" if self.record["healthy"] else "FAILED"
        return f"{verdict} at {self.record['at']}: {len(results)} checks, {warned} warned"

    def human(self) -> str:
        actions = list(self.record.get("actions", []))
        if self.boot:
            return "\n".join([*actions, self.verdict()])
        from imagemode.health import checks

        rec = self.record
        lines = [f"deployment {rec['deployment']}: {rec['image']} {rec['digest']}"]
        lines += [f"  {checks.Result(**r).line()}  [{r['seconds']:.1f}s]" for r in rec["results"]]
        return "\n".join([*lines, self.verdict(), *(f"  {a}" for a in actions)])


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
        (
            r
            for r in records(state_dir).values()
            if r.get("state") == State.FAILED and r.get("digest") == digest
        ),
        None,
    )


def forget(digest: str, state_dir: Path = DIR) -> int:
    """Drop failure records of `digest` ("all": every one), so that upgrade may stage it again."""
    recs = records(state_dir)
    keep = {
        k: v for k, v in recs.items()
        if not (v.get("state") == State.FAILED and digest in ("all", v.get("digest")))
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
        if rec["state"] != State.FAILED:
            rec["state"] = "trying"
    return rec


def statuses(ids: list[str]) -> dict[str, dict[str, Any]]:
    env = grubenv.read(grubenv.PHYSICAL) if os.access(grubenv.PHYSICAL, os.R_OK) else {}
    recs = records()
    return {i: health_of(i, env, recs) for i in ids}
