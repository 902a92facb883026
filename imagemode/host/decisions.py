"""What the device decides, as pure functions of what it has read: no libostree, no files, no clock.

`host/update.py` and `host/verdict.py` gather the facts (from libostree, grubenv, the health records),
call these, and carry out the answer. Each branch is unit-tested here (tests/test_decisions.py); the
VM stories test that the facts are read and the answers carried out on a real device.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Outcome(enum.StrEnum):
    NO_UPDATE = "no-update"  # the image is the booted one
    AVAILABLE = "update-available"  # --check found a new one
    ALREADY_STAGED = "already-staged"
    STAGED = "staged"
    DOWNLOADED = "downloaded"  # staged, but not to be finalized at shutdown
    RETARGETED = "retargeted"  # switch to the booted image under another name: its commit staged again
    FAILED_BEFORE = "failed-before"  # the image failed its health checks here: not staged again


@dataclass(frozen=True)
class UpdateFacts:
    """What an upgrade or switch knows once it has read the remote manifest and config."""

    booted_is_it: bool  # the booted deployment holds the remote image (same manifest, or same config)
    booted_follows_it: bool  # the booted origin names the target, with the same signature enforcement
    staged: bool  # a deployment is staged
    staged_is_it: bool  # the staged one holds the remote image, followed as asked (name, enforcement)
    failed_here: bool  # the remote image failed its health checks on this device
    check: bool = False  # --check: say whether there is an update, change nothing
    download_only: bool = False


@dataclass(frozen=True)
class UpdatePlan:
    outcome: Outcome
    drop_staged: bool = False  # discard the staged deployment: the device goes back to the booted image
    cached_update: bool | None = None  # write (True) or remove (False) cached-update.json; None: leave it
    unlock_download: bool = False  # a download-only deployment becomes a normal one (finalized at shutdown)


def plan_update(f: UpdateFacts) -> UpdatePlan:
    """The outcome of `upgrade`/`switch`, before anything is fetched. Only STAGED/DOWNLOADED import."""
    if f.failed_here and not f.booted_is_it:
        return UpdatePlan(Outcome.FAILED_BEFORE)
    if f.check:
        if f.booted_is_it:
            return UpdatePlan(Outcome.NO_UPDATE, cached_update=False)
        return UpdatePlan(Outcome.AVAILABLE, cached_update=True)
    if f.booted_is_it:
        if f.booted_follows_it:
            return UpdatePlan(Outcome.NO_UPDATE, drop_staged=f.staged, cached_update=False)
        if f.staged_is_it:  # the new name is staged already: an agent's `upgrade --apply` reboots into it
            return UpdatePlan(Outcome.ALREADY_STAGED, unlock_download=not f.download_only)
        # As bootc does: a deployment of the booted commit that follows the new name, so that the
        # switch is something to reboot into (an agent waits for that reboot) and status says it.
        return UpdatePlan(Outcome.RETARGETED, drop_staged=f.staged, cached_update=False)
    if f.staged_is_it:
        return UpdatePlan(Outcome.ALREADY_STAGED, unlock_download=not f.download_only)
    return UpdatePlan(Outcome.DOWNLOADED if f.download_only else Outcome.STAGED, cached_update=False)


class Fallback(enum.StrEnum):
    NONE = "none"  # no counted deployment, or it is booted, or its tries are not spent
    LOST = "lost"  # grubenv counts a deployment that no longer exists: clear the counter
    FELL_BACK = "fell-back"  # GRUB booted the previous deployment: make that permanent


@dataclass(frozen=True)
class BootFacts:
    """What `health --boot` reads at the start of a boot: grubenv and ostree's deployments, as
    checksum.serial ids."""

    booted: str
    deployments: tuple[str, ...]  # ostree's order, the staged one included
    staged: str | None = None
    tried: str | None = None  # grubenv: the deployment whose boots are counted
    tries_left: str | None = None  # grubenv, as GRUB wrote it
    fell_back_from: str | None = None  # grubenv: set by GRUB when it booted entry 1 instead


def fallback(f: BootFacts) -> Fallback:
    if not f.tried or f.tried == f.booted:
        return Fallback.NONE
    if f.tried not in f.deployments:  # staged and lost to a power cut, or removed meanwhile
        return Fallback.LOST
    if f.tried == f.staged:  # armed for a deployment that is not the default yet: not ours to touch
        return Fallback.NONE
    if f.tries_left == "0" or f.fell_back_from == f.tried:
        return Fallback.FELL_BACK
    return Fallback.NONE


@dataclass(frozen=True)
class Verdict:
    disarm: bool  # clear the boot counter: the deployment stays
    spend_tries: bool  # set its tries to 0, so that GRUB boots the previous deployment
    reboot: bool


def verdict(healthy: bool, counted: bool) -> Verdict:
    """After the checks. A required failure spends every remaining try at once: each check has had its
    timeout to wait for what it checks, and booting the same image again does not fix it. An uncounted
    boot (the deployment had passed before, or a manual run) only records the result."""
    if healthy:
        return Verdict(disarm=counted, spend_tries=False, reboot=False)
    return Verdict(disarm=False, spend_tries=counted, reboot=counted)
