"""The health verdict of a boot, and what follows from it (docs/health.md).

At every boot `imagemode-health.service` runs `imagemode health --boot`:

0. Bring the GRUB menu in step with ostree's boot entries, should a power cut have come between an
   update's swap of /boot/loader and the menu's rewrite (docs/boot.md). This runs here, after
   multi-user.target, rather than in a unit of its own on the way there: one Python start less.
1. If GRUB fell back (grubenv names a tried deployment with no tries left, and another one is booted),
   make the fallback permanent: the tried deployment is marked failed, the booted one goes first in
   ostree's order, the counter is cleared and red.d runs.
2. Run the required checks, until one fails (as greenboot does), then the wanted ones, and read the
   units that boot-complete.target requires or wants.
3. Healthy: on a counted boot (the booted deployment is the one being tried) clear the counter; green.d.
   Failed: mark the deployment failed and run red.d; on a counted boot also set its tries to 0 and
   reboot, so that GRUB boots the previous deployment.

A required failure spends all the remaining tries at once: each check has had its timeout to wait for
what it checks, and rebooting into the same image does not fix it. The tries are for what the checks
cannot report: a kernel panic, a hang, a power cut before the verdict.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagemode import atomic
from imagemode.boot import grub, grubenv
from imagemode.health import checks, config, state
from imagemode.health.checks import Result
from imagemode.host import decisions
from imagemode.host import ostree_api as api
from imagemode.host import sysroot as sr
from imagemode.host.rollback import reorder
from imagemode.host.status import Deployment


@dataclass(frozen=True)
class Report:
    deployment: str  # checksum.serial of the booted deployment
    image: str
    digest: str
    healthy: bool
    results: list[Result]
    at: str
    counted: bool = False  # this boot was one of the deployment's tries
    actions: list[str] = field(default_factory=list)
    reboot: bool = False  # a counted boot failed: reboot into the previous deployment

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "results"}
        d["results"] = [r.to_dict() for r in self.results]
        return d


def _hooks(
    kind: checks.Kind, cfg: config.HealthConfig, env: dict[str, str], say: Callable[[Result], None]
) -> None:
    checks.run_scripts(checks.discover(kind), cfg, env, say)


def _sync_menu() -> list[str]:
    """Step 0. Returns what was done."""
    menu = grubenv.PHYSICAL / "boot" / grub.GRUB_CFG
    before = menu.read_bytes() if menu.exists() else b""
    grub.update(grubenv.PHYSICAL)
    if menu.read_bytes() == before:
        return []
    return ["rewrote the GRUB menu, which was behind ostree's boot entries"]


def _finish_fallback(
    env: dict[str, str], booted: api.Deployment, cfg: config.HealthConfig, say: Callable[[Result], None]
) -> list[str]:
    """Step 1. Returns what was done."""
    tried = env.get(grubenv.TRY)
    if not tried or tried == api.dep_id(booted):
        return []  # the common boot: nothing counted, or the counted one is booted (no lock needed)
    with sr.locked() as sysroot:
        staged = sysroot.get_staged_deployment()
        by_id = {api.dep_id(d): d for d in sysroot.get_deployments()}
        facts = decisions.BootFacts(
            booted=api.dep_id(booted), deployments=tuple(by_id),
            staged=api.dep_id(staged) if staged else None,
            tried=tried, tries_left=env.get(grubenv.TRIES), fell_back_from=env.get(grubenv.FALLBACK),
        )  # fmt: skip
        what = decisions.fallback(facts)
        if what is decisions.Fallback.LOST:
            grubenv.disarm(grubenv.PHYSICAL)
            return ["cleared the counter of a deployment that no longer exists"]
        if what is decisions.Fallback.NONE:
            return []
        old = state.records().get(tried, {})
        d = sr.describe(sysroot, by_id[tried])
        reason = old.get("reason") if old.get("state") == state.State.FAILED else None
        state.record(tried, {
            "state": state.State.FAILED, "at": state.now(), "image": d.image, "digest": d.digest,
            "reason": reason or "no healthy boot in its tries: it panicked, hung or lost power before "
                                "its checks passed",
            "check": old.get("check"), "failed": old.get("failed", []), "fellBack": True,
        })  # fmt: skip
        deps = [d for d in sysroot.get_deployments() if not sr.same(d, staged)]
        if not sr.same(deps[0], booted):
            sysroot.write_deployments(reorder(deps, booted), None)
            sysroot.load(None)
        grub.update(grubenv.PHYSICAL)
        grubenv.disarm(grubenv.PHYSICAL)
    _hooks(checks.Kind.RED, cfg, {"IMAGEMODE_HEALTH": "fallback", "IMAGEMODE_FAILED_DEPLOYMENT": tried}, say)
    return [f"fell back from {tried}: marked it failed and made the booted deployment the default"]


def run(boot: bool = False, say: Callable[[Result], None] = lambda r: None) -> Report:
    """Run the checks now. `boot`: this is the boot's verdict (steps 1 and 3 above)."""
    sr.require_booted()
    cfg = config.load()
    sysroot = sr.load()
    booted = sr.booted(sysroot)
    me = api.dep_id(booted)
    env = grubenv.read(grubenv.PHYSICAL)
    actions = [*_sync_menu(), *_finish_fallback(env, booted, cfg, say)] if boot else []
    results = checks.run_scripts(checks.discover(checks.Kind.REQUIRED), cfg, None, say, stop_at_failure=True)
    if checks.verdict(results) is None:  # as greenboot: a failed required check ends the checks
        results += checks.run_scripts(checks.discover(checks.Kind.WANTED), cfg, None, say)
        for r in checks.unit_checks():
            say(r)
            results.append(r)
    failed = checks.verdict(results)
    d = sr.describe(sysroot, booted)
    counted = boot and env.get(grubenv.TRY) == me
    at, reboot = state.now(), False
    if boot:
        reboot = _verdict(me, d, results, failed, counted, at, actions)
    report = Report(me, d.image, d.digest, failed is None, results, at, counted, actions, reboot)
    state.save_last({**report.to_dict(), "boot": boot})
    if boot:
        _motd(report, failed)
    if boot:
        if failed is None:
            _hooks(checks.Kind.GREEN, cfg, {"IMAGEMODE_HEALTH": "healthy"}, say)
        else:
            _hooks(
                checks.Kind.RED, cfg, {"IMAGEMODE_HEALTH": "failed", "IMAGEMODE_FAILED_DEPLOYMENT": me}, say
            )
    return report


MOTD = Path("/run/motd.d/50-imagemode-health")  # pam_motd shows /run/motd.d/* at every login


def _motd(report: Report, failed: Result | None) -> None:
    """The boot's verdict in one line at login: a person at the console learns of a failed boot, or
    of a fallback, before anything else. Best effort: a login banner never fails a verdict."""
    what = "healthy" if failed is None else f"FAILED: {failed.line()}"
    fell = [a for a in report.actions if a.startswith("fell back")]
    line = f"imagemode: this boot is {what} ({report.at}; imagemode health --show)\n"
    if fell:
        line += f"imagemode: {fell[0]}\n"
    with contextlib.suppress(OSError):
        atomic.write(MOTD, line.encode(), mode=0o644, durable=False)


def _verdict(
    me: str,
    d: Deployment,
    results: list[Result],
    failed: Result | None,
    counted: bool,
    at: str,
    actions: list[str],
) -> bool:
    """Step 3: record the verdict and act on the counter. Returns whether to reboot."""
    warned = [r.name for r in results if r.status == checks.Status.WARNED]
    if failed is None:
        state.record(me, {"state": state.State.HEALTHY, "at": at, "image": d.image, "digest": d.digest,
                          "warned": warned})  # fmt: skip
    else:
        out = failed.output.strip().splitlines()
        state.record(me, {
            "state": state.State.FAILED, "at": at, "image": d.image, "digest": d.digest,
            "reason": f"{failed.kind} check {failed.name} failed ({failed.reason})"
                      + (f": {out[-1][:200]}" if out else ""),
            "check": failed.name, "warned": warned,
            "failed": [r.to_dict() for r in results if r.status == checks.Status.FAILED],
        })  # fmt: skip
    v = decisions.verdict(failed is None, counted)
    if v.disarm:
        grubenv.disarm(grubenv.PHYSICAL)
        actions.append("tries cleared: the deployment stays")
    if v.spend_tries:
        grubenv.update(grubenv.PHYSICAL, **{grubenv.TRIES: "0"})
        actions.append("no tries left: the next boot is the previous deployment")
    return v.reboot
