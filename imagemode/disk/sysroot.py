"""A deployed ostree sysroot in a directory: what `mkfs.ext4 -d` turns into the root filesystem.

The same ostree calls a device makes, offline: init-fs, os-init, pull-local, deploy. Then the disk's
customizations: users, SSH keys, kernel arguments, and the GRUB menu.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from imagemode.boot import grub
from imagemode.disk.config import ConfigError, DiskConfig, User
from imagemode.host.origin import STATEROOT, origin
from imagemode.run import RunError, run
from imagemode.store.ostree import Repo


def deploy(
    sysroot: Path,
    source: Repo,
    commit: str,
    ref: str,
    image: str,
    kargs: list[str],
    layer_refs: Sequence[str] = (),
) -> Path:
    """Deploy `commit` from `source` into the empty directory `sysroot`. Returns the deployment dir.

    Kernel arguments are appended, not set: `--karg` replaces an argument of the same key, which would
    keep only the last of `console=tty0 console=ttyS0`.
    """
    run(["ostree", "admin", "init-fs", sysroot])
    run(["ostree", "admin", "os-init", STATEROOT, f"--sysroot={sysroot}"])
    repo = Repo(sysroot / "ostree/repo")
    run(["ostree", f"--repo={repo.path}", "config", "set", "sysroot.bootloader", "none"])
    run(["ostree", f"--repo={repo.path}", "pull-local", source.path, commit])
    run(["ostree", f"--repo={repo.path}", "refs", f"--create={ref}", commit])
    if layer_refs:
        # The device's store starts with the image's layers, so its first update fetches only new ones.
        run(["ostree", f"--repo={repo.path}", "pull-local", source.path, *layer_refs])
    origin_file = sysroot.parent / "origin"
    origin_file.write_text(origin(image))
    run(["ostree", "admin", "deploy", f"--sysroot={sysroot}", f"--os={STATEROOT}",
         f"--origin-file={origin_file}", *[f"--karg-append={k}" for k in kargs], commit])  # fmt: skip
    (dep,) = (sysroot / "ostree/deploy" / STATEROOT / "deploy").glob("*.0")
    return dep


def _passwd_entry(deployment: Path, name: str) -> tuple[int, int, str]:
    for line in (deployment / "etc/passwd").read_text().splitlines():
        f = line.split(":")
        if f[0] == name:
            return int(f[2]), int(f[3]), f[5]
    raise ConfigError(f"user {name} was not created")


def _state_path(sysroot: Path, home: str) -> Path:
    """Where a home directory lives on disk: /root and /home are links into the stateroot's /var."""
    home = home.rstrip("/")
    for prefix, var in (
        ("/root", "roothome"),
        ("/var/roothome", "roothome"),
        ("/home", "home"),
        ("/var/home", "home"),
    ):
        if home == prefix or home.startswith(prefix + "/"):
            return sysroot / "ostree/deploy" / STATEROOT / "var" / var / home[len(prefix) :].lstrip("/")
    raise ConfigError(f"home directory {home} is not under /home or /root")


def add_user(sysroot: Path, deployment: Path, user: User) -> None:
    exists = any(
        ln.split(":")[0] == user.name for ln in (deployment / "etc/passwd").read_text().splitlines()
    )
    try:
        if not exists:
            cmd = ["useradd", "--root", str(deployment), "--no-create-home", "--shell", "/bin/bash"]
            if user.groups:
                cmd += ["--groups", ",".join(user.groups)]
            run([*cmd, user.name])
        elif user.groups:
            run(
                [
                    "usermod",
                    "--root",
                    str(deployment),
                    "--append",
                    "--groups",
                    ",".join(user.groups),
                    user.name,
                ]
            )
        if user.password:
            run(["usermod", "--root", str(deployment), "--password", user.password, user.name])
    except RunError as e:
        raise ConfigError(f"cannot set up user {user.name}: {e}") from e
    uid, gid, home_path = _passwd_entry(deployment, user.name)
    home = _state_path(sysroot, home_path)
    if not home.exists():
        # A fresh home gets what the image would give it: /etc/skel, or root's factory copy.
        skel = deployment / ("usr/share/factory/roothome" if user.name == "root" else "etc/skel")
        if skel.is_dir():
            shutil.copytree(skel, home, symlinks=True)
        else:
            home.mkdir(parents=True)
        for p in [home, *home.rglob("*")]:
            os.lchown(p, uid, gid)
        home.chmod(0o700)
    if user.key:
        ssh = home / ".ssh"
        ssh.mkdir(mode=0o700, exist_ok=True)
        keys = ssh / "authorized_keys"
        keys.write_text(user.key.strip() + "\n")
        keys.chmod(0o600)
        for p in (ssh, keys):
            os.chown(p, uid, gid)


def customize(sysroot: Path, deployment: Path, config: DiskConfig) -> None:
    for user in config.users:
        add_user(sysroot, deployment, user)
    grub.update(sysroot)


def remove(sysroot: Path) -> None:
    """ostree marks deployment directories immutable; lift that before removing a sysroot."""
    for d in sysroot.glob("ostree/deploy/*/deploy/*.[0-9]*"):
        run(["chattr", "-i", d], check=False)
    shutil.rmtree(sysroot, ignore_errors=True)
