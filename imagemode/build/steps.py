"""The steps that turn a package set into a bootable OS tree, each small and alone.

`STEPS` is the ordered plan that `imagemode build base --plan` prints and `build base` runs.
Each step takes the build context and changes the tree in one well-defined way.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from imagemode.build.spec import (
    DPKG_EXCLUDES,
    DPKG_INCLUDES,
    INITRAMFS_DRIVERS,
    INITRAMFS_OMIT,
    BaseSpec,
    Lock,
)
from imagemode.errors import ImagemodeError
from imagemode.run import disk_watchdog, run

LOCK_PATH = "usr/lib/imagemode/packages.lock.json"
DPKG_DB = "usr/lib/sysimage/dpkg"
# bootc's layout: these top-level directories are state, so they live in /var and the tree links there.
STATE_LINKS = {
    "home": "var/home",
    "root": "var/roothome",
    "opt": "var/opt",
    "srv": "var/srv",
    "mnt": "var/mnt",
    "media": "run/media",
    "usr/local": "../var/usrlocal",
}
# Units Debian enables that make no sense on an image-mode device: the OS is not updated by apt.
DISABLED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer")
ENABLED_UNITS = ("systemd-networkd.service",)


class StepError(ImagemodeError):
    pass


@dataclass
class BuildContext:
    spec: BaseSpec
    lock: Lock
    tree: Path
    deb_cache: Path
    log: Callable[[str], None]

    @property
    def epoch_env(self) -> dict[str, str]:
        return {"SOURCE_DATE_EPOCH": str(self.lock.source_date_epoch), "LC_ALL": "C.UTF-8"}


@dataclass(frozen=True)
class Step:
    name: str
    summary: str
    func: Callable[[BuildContext], None]


def _data(name: str) -> str:
    return resources.files("imagemode.data.base").joinpath(name).read_text()


def _chroot(ctx: BuildContext, *cmd: str) -> None:
    run(["chroot", ctx.tree, *cmd], env=ctx.epoch_env, on_line=ctx.log)


def bootstrap(ctx: BuildContext) -> None:
    """mmdebstrap the locked package set. The kernel's postinst builds our initramfs (dracut conf first)."""
    conf = ctx.tree.parent / "dracut-imagemode.conf"
    conf.write_text(
        _data("dracut-imagemode.conf")
        .replace("@DRIVERS@", INITRAMFS_DRIVERS)
        .replace("@OMIT@", INITRAMFS_OMIT)
    )
    ctx.deb_cache.mkdir(parents=True, exist_ok=True)
    cmd: list[str | os.PathLike[str]] = [
        "mmdebstrap", "--mode=root", "--variant=minbase", f"--architectures={ctx.spec.architecture}",
        "--format=directory", "--aptopt=Acquire::Retries \"2\"",
        # mmdebstrap's essential phase takes the newest candidates; a lock pinning an older one of them
        # (libsystemd0 for systemd one security update back) is a downgrade. The verify step still
        # checks every version against the lock list.
        "--aptopt=APT::Get::allow-downgrades \"true\"",
        f"--include={','.join(ctx.lock.pins())}",
        *[f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES],
        *[f"--dpkgopt=path-include={p}" for p in DPKG_INCLUDES],
        # Reuse downloaded .debs between builds: the lock pins versions, so a cached file is the right one.
        '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
        f"--setup-hook=sync-in {ctx.deb_cache} /var/cache/apt/archives/",
        '--essential-hook=mkdir -p "$1"/etc/dracut.conf.d',
        f"--essential-hook=copy-in {conf} /etc/dracut.conf.d/",
        f"--customize-hook=sync-out /var/cache/apt/archives {ctx.deb_cache}",
        ctx.spec.release, ctx.tree, *ctx.spec.sources,
    ]  # fmt: skip
    run(cmd, env=ctx.epoch_env, on_line=ctx.log, watchdog=disk_watchdog(ctx.tree.parent))


def verify(ctx: BuildContext) -> None:
    """The tree holds exactly the locked versions: a mirror that moved on is caught here, not on a device."""
    out = run(["dpkg-query", f"--admindir={ctx.tree}/var/lib/dpkg", "-W", "-f", "${Package} ${Version}\\n"])
    got = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line)
    want = {p.name: p.version for p in ctx.lock.packages}
    wrong = sorted((n, v, got.get(n, "missing")) for n, v in want.items() if got.get(n) != v)
    extra = sorted(set(got) - set(want))
    if wrong:
        n, v, g = wrong[0]
        raise StepError(f"package {n} should be {v} by the lock list but is {g} ({len(wrong)} differ)")
    if extra:
        raise StepError(f"packages not in the lock list were installed: {', '.join(extra[:5])}")


def kernel(ctx: BuildContext) -> None:
    """Kernel and initramfs move to /usr/lib/modules/$kver, where bootc and ostree look; /boot is emptied."""
    boot = ctx.tree / "boot"
    kvers = sorted(p.name.removeprefix("vmlinuz-") for p in boot.glob("vmlinuz-*"))
    if len(kvers) != 1:
        raise StepError(f"expected exactly one kernel in /boot, found {len(kvers)}: {', '.join(kvers)}")
    kver = kvers[0]
    moddir = ctx.tree / "usr/lib/modules" / kver
    initrd = boot / f"initrd.img-{kver}"
    if not initrd.exists():
        raise StepError(f"the kernel's postinst built no initramfs ({initrd.name} missing)")
    shutil.move(boot / f"vmlinuz-{kver}", moddir / "vmlinuz")
    shutil.move(initrd, moddir / "initramfs.img")
    os.chmod(moddir / "initramfs.img", 0o644)
    for p in boot.iterdir():
        _remove(p)
    for p in ctx.tree.glob("vmlinuz*"):
        p.unlink()
    for p in ctx.tree.glob("initrd.img*"):
        p.unlink()


def configure(ctx: BuildContext) -> None:
    """Network by DHCP, SSH host keys made per device, no apt timers, no host identity baked in."""
    t = ctx.tree
    (t / "etc/systemd/network").mkdir(parents=True, exist_ok=True)
    (t / "etc/systemd/network/20-wired.network").write_text(_data("20-wired.network"))
    unit = t / "usr/lib/systemd/system/imagemode-ssh-hostkeys.service"
    unit.write_text(_data("imagemode-ssh-hostkeys.service"))
    wants = t / "usr/lib/systemd/system/ssh.service.wants"
    wants.mkdir(exist_ok=True)
    (wants / unit.name).symlink_to(f"../{unit.name}")
    for key in (t / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (t / "etc/ssh/sshd_config.d/10-imagemode-hostkeys.conf").write_text(_data("10-imagemode-hostkeys.conf"))
    (t / "usr/lib/tmpfiles.d/imagemode-base.conf").write_text(_data("imagemode-base.tmpfiles.conf"))
    kargs = t / "usr/lib/bootc/kargs.d"
    kargs.mkdir(parents=True, exist_ok=True)
    (kargs / "10-imagemode-console.toml").write_text(_data("10-imagemode-console.toml"))
    _chroot(ctx, "systemctl", "enable", *ENABLED_UNITS)
    _chroot(ctx, "systemctl", "disable", *DISABLED_UNITS)
    # mmdebstrap copies the build host's hostname and resolv.conf; a device takes its own from DHCP.
    for f in ("etc/hostname", "etc/resolv.conf"):
        (t / f).unlink(missing_ok=True)
    (t / "etc/machine-id").write_text("")
    (t / "etc/fstab").write_text(
        "# The root is mounted by the initramfs (ostree= and root= kernel arguments).\n"
    )


def prune(ctx: BuildContext) -> None:
    """Drop driver trees an edge node does not use, caches, logs and apt lists; rebuild module indexes."""
    t = ctx.tree
    (kver,) = [p.name for p in (t / "usr/lib/modules").iterdir()]
    for d in ctx.spec.pruned_module_dirs:
        _remove(t / "usr/lib/modules" / kver / d)
    _chroot(ctx, "depmod", "-a", kver)
    for d in ("var/cache/apt", "var/lib/apt/lists", "var/log", "var/cache/debconf", "var/cache/ldconfig"):
        for p in (t / d).glob("*"):
            _remove(p)
    (t / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
    (t / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    for rel in (
        "var/lib/dpkg/status-old",
        "var/lib/dpkg/diversions-old",
        "var/lib/dpkg/stat-override-old",
        "etc/shadow-",
        "etc/gshadow-",
        "etc/passwd-",
        "etc/group-",
        "etc/subuid-",
        "etc/subgid-",
    ):
        (t / rel).unlink(missing_ok=True)


def layout(ctx: BuildContext) -> None:
    """The bootc filesystem layout: state links into /var, empty API dirs, the dpkg DB under /usr."""
    t = ctx.tree
    # The package database describes /usr, so it lives and is replaced with /usr (as rpmdb does on bootc
    # images); /var/lib/dpkg links there, and dpkg on a booted device meets a read-only /usr.
    (t / DPKG_DB).parent.mkdir(parents=True, exist_ok=True)
    shutil.move(t / "var/lib/dpkg", t / DPKG_DB)
    (t / "var/lib/dpkg").symlink_to("../../" + DPKG_DB)
    factory_root = t / "usr/share/factory/roothome"
    factory_root.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(t / "root", factory_root)
    (t / "var/roothome").mkdir(mode=0o700)
    for name, target in STATE_LINKS.items():
        link = t / name
        if link.is_dir() and not link.is_symlink():
            # Their content (Debian ships them empty, /usr/local with empty subdirectories) moves along.
            dest = (link.parent / target).resolve() if name == "usr/local" else t / target
            if not dest.is_relative_to(t / "run"):
                dest.mkdir(parents=True, exist_ok=True)
                for child in link.iterdir():
                    shutil.move(child, dest / child.name)
            link.rmdir()
        link.symlink_to(target)
    for d in ("dev", "proc", "sys", "run", "tmp", "var/tmp"):
        p = t / d
        if p.exists():
            for child in p.iterdir():
                _remove(child)
    os.chmod(t / "tmp", 0o1777)
    os.chmod(t / "var/tmp", 0o1777)
    for d in ("sysroot", "efi", "boot"):
        (t / d).mkdir(exist_ok=True)
    (t / "ostree").symlink_to("sysroot/ostree")


def write_lock(ctx: BuildContext) -> None:
    """The lock list goes into the image: `build base --lock` on it reproduces this tree."""
    p = ctx.tree / LOCK_PATH
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(ctx.lock.to_json())


def _remove(p: Path) -> None:
    if p.is_symlink() or not p.is_dir():
        p.unlink(missing_ok=True)
    else:
        shutil.rmtree(p, onerror=_rm_error)


def _rm_error(func: Callable[..., object], path: str, exc: object) -> None:
    # Read-only directories inside a tree (some packages ship 0555 dirs) block removal of their content.
    os.chmod(os.path.dirname(path), stat.S_IRWXU)
    func(path)


TREE_STEPS = (
    Step(
        "bootstrap", "install the locked package set with mmdebstrap (initramfs built by dracut)", bootstrap
    ),
    Step("verify", "check every installed version against the lock list", verify),
    Step("kernel", "move vmlinuz and initramfs.img to /usr/lib/modules/$kver, empty /boot", kernel),
    Step(
        "configure", "DHCP networking, per-device SSH host keys, no apt timers, no host identity", configure
    ),
    Step("prune", "drop unused driver trees, caches, logs and apt lists; depmod", prune),
    Step("layout", "bootc layout: dpkg DB under /usr, state links into /var, empty API dirs", layout),
    Step("lock", f"write the lock list to /{LOCK_PATH}", write_lock),
)
