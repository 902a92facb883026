"""Health checks and boot counting, on the host: real scripts in real processes, GRUB's own parser and
editor for grub.cfg and grubenv. The VM test (test_health_vm.py) proves the whole loop on a device."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from imagemode.boot import bls, grub, grubenv
from imagemode.errors import ImagemodeError
from imagemode.health import checks, config, state
from imagemode.health.state import health_of
from imagemode.host.status import Deployment, health_line, host_status, human


def script(path: Path, body: str, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(mode)
    return path


# ---- grubenv -----------------------------------------------------------------------------------------


def test_grubenv_round_trip_is_one_block(tmp_path: Path) -> None:
    grubenv.write(tmp_path, {"a": "1", "odd": "back\\slash\nnewline"})
    data = (tmp_path / grubenv.PATH).read_bytes()
    assert len(data) == grubenv.SIZE and data.startswith(grubenv.HEADER.encode())
    assert grubenv.read(tmp_path) == {"a": "1", "odd": "back\\slash\nnewline"}


def test_grubenv_is_what_grub_editenv_reads_and_writes(tmp_path: Path) -> None:
    grubenv.arm(tmp_path, "abc.0", 3)
    env = tmp_path / grubenv.PATH
    listed = subprocess.run(["grub-editenv", env, "list"], capture_output=True, text=True, check=True)
    assert listed.stdout.splitlines() == ["imagemode_try=abc.0", "imagemode_tries=3"]
    subprocess.run(["grub-editenv", env, "set", "imagemode_tries=2", "imagemode_fallback=abc.0"], check=True)
    assert grubenv.read(tmp_path) == {
        "imagemode_try": "abc.0", "imagemode_tries": "2", "imagemode_fallback": "abc.0"
    }  # fmt: skip
    grubenv.disarm(tmp_path)
    assert grubenv.read(tmp_path) == {}
    assert len(env.read_bytes()) == grubenv.SIZE


def test_grubenv_damaged_reads_empty_and_bad_tries_refused(tmp_path: Path) -> None:
    (tmp_path / "boot/grub").mkdir(parents=True)
    (tmp_path / grubenv.PATH).write_bytes(b"\x00garbage")
    assert grubenv.read(tmp_path) == {}
    for bad in (0, 10):
        with pytest.raises(grubenv.GrubenvError, match="tries must be 1 to 9"):
            grubenv.arm(tmp_path, "abc.0", bad)
    with pytest.raises(grubenv.GrubenvError, match="GRUB's block holds 1024"):
        grubenv.render({"x": "y" * 2000})


# ---- grub.cfg ----------------------------------------------------------------------------------------


def _sysroot_with_entries(tmp_path: Path, n: int) -> Path:
    entries = tmp_path / "boot/loader/entries"
    entries.mkdir(parents=True)
    for i in range(n):
        (entries / f"ostree-{n - i}-default.conf").write_text(
            f"title Debian (ostree:{i})\nversion {n - i}\nlinux /ostree/default-bc/vmlinuz\n"
            "initrd /ostree/default-bc/initramfs\n"
            f"options root=UUID=x rw ostree=/ostree/boot.1/default/bc/{i}\n"
        )
        link = tmp_path / f"ostree/boot.1/default/bc/{i}"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(f"../../../deploy/default/deploy/c{i}.{i}")
    return tmp_path


def test_menu_counts_boots_of_entry_zero_and_parses(tmp_path: Path) -> None:
    sysroot = _sysroot_with_entries(tmp_path, 2)
    cfg = grub.update(sysroot).read_text()
    assert 'if [ "${imagemode_try}" = "c0.0" ]; then' in cfg
    assert "set default=1" in cfg and "save_env --file /boot/grub/grubenv imagemode_fallback" in cfg
    for i in range(1, grubenv.MAX_TRIES + 1):
        assert f'elif [ "${{imagemode_tries}}" = "{i}" ]; then set imagemode_tries={i - 1};' in cfg
    assert (sysroot / grubenv.PATH).read_bytes().startswith(grubenv.HEADER.encode())  # created for GRUB
    subprocess.run(["grub-script-check", sysroot / "boot/grub/grub.cfg"], check=True)
    assert "loadenv" in grub.GRUB_MODULES.split()


def test_one_entry_has_nothing_to_fall_back_to(tmp_path: Path) -> None:
    sysroot = _sysroot_with_entries(tmp_path, 1)
    entries = bls.read(sysroot / "boot")
    assert grub.deployment_of(sysroot, entries[0]) == "c0.0"
    assert "imagemode_tries" not in grub.render(entries, 1, ["c0.0"])


# ---- config ------------------------------------------------------------------------------------------


def test_config_defaults_and_etc_wins(tmp_path: Path) -> None:
    assert config.load(tmp_path) == config.HealthConfig(3, 900.0, {})
    (tmp_path / "usr/lib/imagemode").mkdir(parents=True)
    (tmp_path / "etc/imagemode").mkdir(parents=True)
    (tmp_path / "usr/lib/imagemode/health.toml").write_text(
        'tries = 2\ntimeout = 20\n[timeouts]\n"a.sh" = 5\n'
    )
    (tmp_path / "etc/imagemode/health.toml").write_text("tries = 5\n")
    cfg = config.load(tmp_path)
    assert (cfg.tries, cfg.timeout, cfg.timeout_of("a.sh"), cfg.timeout_of("b.sh")) == (5, 20.0, 5.0, 20.0)


@pytest.mark.parametrize(
    "text, message",
    [
        ("tries = 0", "tries must be a whole number from 1 to 9, not 0"),
        ("tries = 2.5", "tries must be a whole number from 1 to 9, not 2.5"),
        ("tries = 12", "tries must be a whole number from 1 to 9, not 12"),
        ('timeout = "long"', "timeout must be a number from 1 to 86400, not 'long'"),
        ("retries = 3", "unknown key 'retries'"),
        ("tries = ", "health.toml: Invalid value"),
        ("timeouts = 3", "timeouts must be a table"),
    ],
)
def test_bad_config_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "etc/imagemode").mkdir(parents=True)
    (tmp_path / "etc/imagemode/health.toml").write_text(text + "\n")
    with pytest.raises(ImagemodeError, match=message.replace("(", r"\(").replace(".", r"\.")) as e:
        config.load(tmp_path)
    assert "\n" not in str(e.value)


# ---- discovering and running checks ------------------------------------------------------------------


def test_discover_etc_overrides_masks_and_greenboot(tmp_path: Path) -> None:
    script(tmp_path / "usr/lib/imagemode/check/required.d/10-a.sh", "exit 0")
    script(tmp_path / "usr/lib/imagemode/check/required.d/20-b.sh", "exit 0")
    script(tmp_path / "usr/lib/imagemode/check/required.d/.hidden", "exit 1")
    over = script(tmp_path / "etc/imagemode/check/required.d/10-a.sh", "exit 0")
    (tmp_path / "etc/imagemode/check/required.d/20-b.sh").symlink_to(os.devnull)
    gb = script(tmp_path / "etc/greenboot/check/required.d/30-greenboot.sh", "exit 0")
    (tmp_path / "usr/lib/imagemode/check/wanted.d/sub").mkdir(parents=True)
    found = checks.discover(checks.Kind.REQUIRED, tmp_path)
    assert [(c.name, c.path) for c in found] == [("10-a.sh", over), ("30-greenboot.sh", gb)]
    assert checks.discover(checks.Kind.WANTED, tmp_path) == []


def test_bad_scripts_fail_within_their_timeout(tmp_path: Path) -> None:
    d = tmp_path / "usr/lib/imagemode/check/required.d"
    script(d / "10-ok.sh", "echo fine")
    script(d / "20-fail.sh", "echo 'database not ready'; exit 1")
    script(d / "30-noexec", "exit 0", mode=0o644)  # not a .sh: nothing says what runs it
    script(d / "40-hang.sh", "sleep 600 & wait; sleep 600")  # a child that keeps the output pipe open
    script(d / "50-garbage.sh", "head -c 200000 /dev/urandom; printf '\\033[31mred\\001\\n'; exit 7")
    (d / "60-elf").write_bytes(os.urandom(512))
    (d / "60-elf").chmod(0o755)
    cfg = config.HealthConfig(timeout=3.0)
    t0 = time.monotonic()
    got = {r.name: r for r in checks.run_scripts(checks.discover(checks.Kind.REQUIRED, tmp_path), cfg)}
    assert time.monotonic() - t0 < 20  # 3 s for the hang, and 2 s of grace to stop it
    assert (got["10-ok.sh"].status, got["10-ok.sh"].output) == ("passed", "fine\n")
    assert (got["20-fail.sh"].status, got["20-fail.sh"].reason) == ("failed", "exit 1")
    assert got["20-fail.sh"].line() == "required 20-fail.sh: failed (exit 1): database not ready"
    assert (got["30-noexec"].status, got["30-noexec"].reason) == (
        "failed",
        "not executable (mode 0644)",
    )
    assert (got["40-hang.sh"].status, got["40-hang.sh"].reason) == ("failed", "timed out after 3s")
    garbage = got["50-garbage.sh"]
    assert (garbage.status, garbage.reason) == ("failed", "exit 7")
    assert len(garbage.output) <= checks.OUTPUT_KEEP and garbage.output.endswith("?[31mred?\n")
    assert all(c == "\n" or c == "\t" or c.isprintable() for c in garbage.output)
    assert (got["60-elf"].status, got["60-elf"].reason) == ("failed", "Exec format error")
    assert checks.verdict(got.values()) is got["20-fail.sh"]
    assert subprocess.run(["pgrep", "-f", "sleep 600"], capture_output=True).returncode == 1  # none left


def test_wanted_failures_warn_and_do_not_decide(tmp_path: Path) -> None:
    script(tmp_path / "usr/lib/imagemode/check/wanted.d/10-warn.sh", "echo 'disk 91% full'; exit 1")
    script(tmp_path / "usr/lib/imagemode/check/wanted.d/20-noexec", "exit 0", mode=0o600)
    results = checks.run_scripts(checks.discover(checks.Kind.WANTED, tmp_path), config.HealthConfig())
    assert [(r.status, r.reason) for r in results] == [
        ("warned", "exit 1"),
        ("warned", "not executable (mode 0600)"),
    ]
    assert checks.verdict(results) is None


def test_per_script_timeout_and_environment(tmp_path: Path) -> None:
    s = script(tmp_path / "x/10-env.sh", 'echo "$IMAGEMODE_CHECK $IMAGEMODE_HEALTH"; sleep 2')
    cfg = config.HealthConfig(timeout=1.0, timeouts={"10-env.sh": 10.0})
    r = checks.run_script(
        checks.Check(s.name, checks.Kind.RED, s), cfg.timeout_of(s.name), {"IMAGEMODE_HEALTH": "failed"}
    )
    assert (r.status, r.output) == ("passed", "red failed\n")


# ---- state and status --------------------------------------------------------------------------------


def test_failed_records_block_and_forget(tmp_path: Path) -> None:
    state.record("a.0", {"state": "failed", "digest": "sha256:bad", "reason": "x"}, tmp_path)
    state.record("b.0", {"state": "healthy", "digest": "sha256:good"}, tmp_path)
    assert state.failed_image("sha256:bad", tmp_path) == {
        "state": "failed",
        "digest": "sha256:bad",
        "reason": "x",
    }
    assert state.failed_image("sha256:good", tmp_path) is None
    assert state.forget("sha256:bad", tmp_path) == 1
    assert state.failed_image("sha256:bad", tmp_path) is None and list(state.records(tmp_path)) == ["b.0"]
    for i in range(state.KEEP + 5):
        state.record(f"n{i}.0", {"state": "healthy"}, tmp_path)
    assert len(state.records(tmp_path)) == state.KEEP and next(iter(state.records(tmp_path))) == "n24.0"


def test_status_shows_health(tmp_path: Path) -> None:
    env = {grubenv.TRY: "v2.0", grubenv.TRIES: "2"}
    failed = {"state": "failed", "at": "T3", "reason": "required check 10-db.sh failed (exit 1)"}
    recs = {"v1.0": {"state": "healthy", "at": "T1"}, "v3.0": failed}
    assert health_of("v2.0", env, recs) == {"state": "trying", "triesLeft": 2}
    assert health_of("v9.0", env, recs) == {"state": "unchecked"}
    dep = {n: Deployment("default", n[:2], 0, "docker://r/os:1", "sha256:" + n[:2], "1", 0, "amd64")
           for n in ("v1.0", "v3.0")}  # fmt: skip
    st = host_status(dep["v1.0"], None, dep["v3.0"], health={k: health_of(k, env, recs) for k in dep})
    assert st["status"]["rollback"]["health"]["state"] == "failed"
    text = human(st)
    assert "Health: healthy at T1" in text
    assert "Health: failed at T3: required check 10-db.sh failed (exit 1)" in text
    assert (
        health_line({"state": "trying", "triesLeft": 1})
        == "being tried, 1 boots left to pass the health checks"
    )


def test_only_a_mount_point_is_checkpointed(tmp_path: Path) -> None:
    from imagemode.boot.replace import live

    assert live(tmp_path) is None  # a sysroot being built into a disk: no freeze of the host's filesystem
    assert live(Path("/")) == Path("/")


def test_unit_checks_are_the_units_ordered_before_boot_complete(monkeypatch: pytest.MonkeyPatch) -> None:
    """What systemd says of boot-complete.target and its units (systemctl show), and what that makes."""
    shown = {
        checks.TARGET: {
            "Requires": "sysinit.target plc-link.service gone.service",
            "Wants": "imagemode-health.service ntp-check.service late.service",
            "After": "sysinit.target plc-link.service gone.service ntp-check.service",
        },
        "gone.service": {"LoadState": "not-found", "ActiveState": "inactive", "Result": "success"},
        "ntp-check.service": {"LoadState": "loaded", "ActiveState": "failed", "Result": "exit-code"},
        "plc-link.service": {"LoadState": "loaded", "ActiveState": "active", "Result": "success"},
    }
    monkeypatch.setattr(checks, "_show", lambda units, props: [shown[u] for u in units])
    got = [(r.name, r.kind, r.status, r.reason) for r in checks.unit_checks()]
    assert got == [
        ("gone.service", "required", "failed", "not found"),
        ("ntp-check.service", "wanted", "warned", "failed (exit-code)"),
        ("plc-link.service", "required", "passed", ""),
    ]  # sysinit.target (a target), late.service (not ordered before) and the health unit are not checks


# ---- greenboot's contract ----------------------------------------------------------------------------


def test_greenboot_conf_gives_tries_and_disabled_checks(tmp_path: Path) -> None:
    conf = tmp_path / "etc/greenboot/greenboot.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(
        "# flightctl rewrites this\nGREENBOOT_MAX_BOOT_ATTEMPTS=2\n"
        'DISABLED_HEALTHCHECKS=("01_repository_dns_check.sh" "02_watchdog.sh")\nOTHER=x\n'
    )
    cfg = config.load(tmp_path)
    assert cfg.tries == 2 and cfg.disabled == {"01_repository_dns_check.sh", "02_watchdog.sh"}
    (tmp_path / "etc/imagemode").mkdir(parents=True)
    (tmp_path / "etc/imagemode/health.toml").write_text("tries = 4\n")
    assert config.load(tmp_path).tries == 4  # health.toml, where present, still wins
    conf.write_text("GREENBOOT_MAX_BOOT_ATTEMPTS=many\n")
    with pytest.raises(ImagemodeError, match=r"GREENBOOT_MAX_BOOT_ATTEMPTS must be a number, not 'many'$"):
        config.load(tmp_path)


def test_sh_checks_run_with_bash_whatever_their_mode(tmp_path: Path) -> None:
    d = tmp_path / "etc/greenboot/check/required.d"
    script(d / "40_microshift_running_check.sh", "[[ -n bash ]] && echo bash ran it", mode=0o644)
    script(d / "50-plain", "exit 0", mode=0o644)
    got = checks.run_scripts(checks.discover(checks.Kind.REQUIRED, tmp_path), config.HealthConfig())
    assert [(r.name, r.status, r.reason, r.output) for r in got] == [
        ("40_microshift_running_check.sh", "passed", "", "bash ran it\n"),
        ("50-plain", "failed", "not executable (mode 0644)", ""),
    ]


def test_the_first_failed_required_check_ends_the_run_and_disabled_ones_never_run(tmp_path: Path) -> None:
    d = tmp_path / "usr/lib/imagemode/check/required.d"
    ran = tmp_path / "ran"
    script(d / "10-disabled.sh", f"echo x > {ran}; exit 1")
    script(d / "20-ok.sh", "exit 0")
    script(d / "30-fail.sh", "exit 3")
    script(d / "40-slow.sh", "sleep 600")
    cfg = config.HealthConfig(timeout=300.0, disabled=frozenset({"10-disabled.sh"}))
    t0 = time.monotonic()
    got = checks.run_scripts(checks.discover(checks.Kind.REQUIRED, tmp_path), cfg, stop_at_failure=True)
    assert time.monotonic() - t0 < 30  # 40-slow.sh did not run
    assert [(r.name, r.status) for r in got] == [("20-ok.sh", "passed"), ("30-fail.sh", "failed")]
    assert not ran.exists()


def test_grub2_editenv_says_boot_counter_0_exactly_when_a_rollback_follows(tmp_path: Path) -> None:
    from imagemode.boot import editenv

    me, other = "a" * 64 + ".0", "b" * 64 + ".1"
    trying = {grubenv.TRY: me, grubenv.TRIES: "2"}
    assert editenv.greenboot_view(trying, me) == {**trying, "boot_counter": "2", "boot_success": "0"}
    spent = {**trying, grubenv.TRIES: "0"}  # a failed verdict spends the tries before red.d runs
    assert editenv.greenboot_view(spent, me)["boot_counter"] == "0"
    # GRUB fell back (another deployment is booted), or nothing is being tried: nothing to roll back.
    assert "boot_counter" not in editenv.greenboot_view(spent, other)
    assert editenv.greenboot_view({}, me) == {"boot_success": "1"}
    deploy = tmp_path / "ostree/deploy/default/deploy" / me
    deploy.mkdir(parents=True)
    link = tmp_path / "ostree/boot.1/default/cafe/0"
    link.parent.mkdir(parents=True)
    link.symlink_to(f"../../../deploy/default/deploy/{me}")
    assert editenv.booted_id("root=UUID=x rw ostree=/ostree/boot.1/default/cafe/0 quiet", tmp_path) == me
    assert editenv.booted_id("root=UUID=x", tmp_path) is None
    assert editenv.main(["-", "set", "boot_success=1"]) == 1
