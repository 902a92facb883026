"""The device's decisions (imagemode.host.decisions), branch by branch: what an upgrade or switch does
once it has read the remote image, and what a boot's health verdict does with GRUB's counter."""

from __future__ import annotations

import pytest

from imagemode.host.decisions import (
    BootFacts,
    Fallback,
    Outcome,
    UpdateFacts,
    UpdatePlan,
    Verdict,
    fallback,
    plan_update,
    verdict,
)

NEW = {
    "booted_is_it": False,
    "booted_follows_it": True,
    "staged": False,
    "staged_is_it": False,
    "failed_here": False,
}


def facts(**kw: bool) -> UpdateFacts:
    return UpdateFacts(**{**NEW, **kw})


@pytest.mark.parametrize(
    ("kw", "plan"),
    [
        # a new image: stage it (or download it), and forget what --check cached
        ({}, UpdatePlan(Outcome.STAGED, cached_update=False)),
        ({"download_only": True}, UpdatePlan(Outcome.DOWNLOADED, cached_update=False)),
        # one is staged already, of another image: it is replaced by the new one
        ({"staged": True}, UpdatePlan(Outcome.STAGED, cached_update=False)),
        # the same image is staged: nothing to fetch; a plain upgrade releases a download-only one
        ({"staged": True, "staged_is_it": True}, UpdatePlan(Outcome.ALREADY_STAGED, unlock_download=True)),
        ({"staged": True, "staged_is_it": True, "download_only": True}, UpdatePlan(Outcome.ALREADY_STAGED)),
        # the booted image: nothing new; a staged other one is dropped (a switch back)
        ({"booted_is_it": True}, UpdatePlan(Outcome.NO_UPDATE, cached_update=False)),
        ({"booted_is_it": True, "staged": True},
         UpdatePlan(Outcome.NO_UPDATE, drop_staged=True, cached_update=False)),
        # the booted image under another name or signature mode: its commit is staged again, as
        # bootc does, once (a second switch to the same name finds it staged)
        ({"booted_is_it": True, "booted_follows_it": False},
         UpdatePlan(Outcome.RETARGETED, cached_update=False)),
        ({"booted_is_it": True, "booted_follows_it": False, "staged": True},
         UpdatePlan(Outcome.RETARGETED, drop_staged=True, cached_update=False)),
        ({"booted_is_it": True, "booted_follows_it": False, "staged": True, "staged_is_it": True},
         UpdatePlan(Outcome.ALREADY_STAGED, unlock_download=True)),
        # --check changes nothing but the cached answer
        ({"check": True}, UpdatePlan(Outcome.AVAILABLE, cached_update=True)),
        ({"check": True, "staged": True}, UpdatePlan(Outcome.AVAILABLE, cached_update=True)),
        ({"check": True, "booted_is_it": True}, UpdatePlan(Outcome.NO_UPDATE, cached_update=False)),
        # an image that failed its health checks here is not staged again, --check or not...
        ({"failed_here": True}, UpdatePlan(Outcome.FAILED_BEFORE)),
        ({"failed_here": True, "check": True}, UpdatePlan(Outcome.FAILED_BEFORE)),
        ({"failed_here": True, "staged": True, "staged_is_it": True}, UpdatePlan(Outcome.FAILED_BEFORE)),
        # ...unless it is the booted one (it failed once, then the device was switched back to it by hand)
        ({"failed_here": True, "booted_is_it": True}, UpdatePlan(Outcome.NO_UPDATE, cached_update=False)),
    ],
)  # fmt: skip
def test_update_plan(kw: dict[str, bool], plan: UpdatePlan) -> None:
    assert plan_update(facts(**kw)) == plan


def test_only_a_stage_imports() -> None:
    """Every combination of facts: the outcomes that fetch layers are exactly STAGED and DOWNLOADED."""
    import itertools

    names = [*NEW, "check", "download_only"]
    for values in itertools.product((False, True), repeat=len(names)):
        f = UpdateFacts(**dict(zip(names, values, strict=True)))
        plan = plan_update(f)
        fetches = plan.outcome in (Outcome.STAGED, Outcome.DOWNLOADED)
        assert fetches == (not f.check and not f.booted_is_it and not f.staged_is_it and not f.failed_here)
        assert not (plan.drop_staged and not f.staged)  # nothing to drop
        assert not (f.check and (plan.drop_staged or plan.unlock_download))  # --check changes nothing


V1, V2, V3 = "aaa.0", "bbb.0", "ccc.0"


@pytest.mark.parametrize(
    ("f", "want"),
    [
        (BootFacts(V1, (V1,)), Fallback.NONE),  # nothing counted
        (BootFacts(V2, (V2, V1), tried=V2, tries_left="2"), Fallback.NONE),  # the tried one booted
        (BootFacts(V2, (V2, V1), tried=V2, tries_left="0"), Fallback.NONE),  # booted on its last try
        # GRUB booted entry 1 (v1) after v2 spent its tries: made permanent
        (BootFacts(V1, (V2, V1), tried=V2, tries_left="0", fell_back_from=V2), Fallback.FELL_BACK),
        (BootFacts(V1, (V2, V1), tried=V2, tries_left="0"), Fallback.FELL_BACK),
        (BootFacts(V1, (V2, V1), tried=V2, tries_left="1", fell_back_from=V2), Fallback.FELL_BACK),
        # v1 booted by hand (the menu) while v2 still has tries: not a fallback
        (BootFacts(V1, (V2, V1), tried=V2, tries_left="2"), Fallback.NONE),
        # armed at staging, the staged one not finalized yet: not ours to touch
        (BootFacts(V1, (V2, V1), staged=V2, tried=V2, tries_left="3"), Fallback.NONE),
        (BootFacts(V1, (V2, V1), staged=V2, tried=V2, tries_left="0"), Fallback.NONE),
        # counted, then lost (a power cut before finalization, or removed since)
        (BootFacts(V1, (V1,), tried=V2, tries_left="3"), Fallback.LOST),
    ],
)
def test_fallback(f: BootFacts, want: Fallback) -> None:
    assert fallback(f) is want


@pytest.mark.parametrize(
    ("healthy", "counted", "want"),
    [
        (True, True, Verdict(disarm=True, spend_tries=False, reboot=False)),  # the deployment stays
        (True, False, Verdict(disarm=False, spend_tries=False, reboot=False)),
        (False, True, Verdict(disarm=False, spend_tries=True, reboot=True)),  # back to the previous one
        (False, False, Verdict(disarm=False, spend_tries=False, reboot=False)),  # recorded only
    ],
)
def test_verdict(healthy: bool, counted: bool, want: Verdict) -> None:
    assert verdict(healthy, counted) == want


@pytest.mark.host
def test_the_protocols_name_methods_libostree_has() -> None:
    """imagemode.host.ostree_api types the gi objects by hand: each method it names must exist on the
    real class, or strict mypy would be checking calls that fail on a device."""
    import inspect

    from imagemode.host import ostree_api
    from imagemode.store.libostree import gi

    g = gi()
    real = {
        "KeyFile": g.GLib.KeyFile, "BootConfig": g.OSTree.BootconfigParser, "Variant": g.GLib.Variant,
        "File": g.Gio.File, "Deployment": g.OSTree.Deployment, "Repo": g.OSTree.Repo,
        "Sysroot": g.OSTree.Sysroot,
    }  # fmt: skip
    for name, cls in real.items():
        proto = getattr(ostree_api, name)
        methods = [m for m, _ in inspect.getmembers(proto, inspect.isfunction) if not m.startswith("_")]
        assert methods, name
        missing = [m for m in methods if not callable(getattr(cls, m, None))]
        assert not missing, f"{name}: libostree's {cls.__name__} has no {missing}"
