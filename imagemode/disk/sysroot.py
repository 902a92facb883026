"""A deployed ostree sysroot in a directory: what `mkfs.ext4 -d` turns into the root filesystem.

The same ostree calls a device makes, offline: init-fs, os-init, pull-local, deploy. Then the disk's
customizations: users, SSH keys, kernel arguments, and the GRUB menu.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from imagemode import confined
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
    store_refs: Sequence[str] = (),
    signed: bool = False,
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
    if store_refs:
        # The device's store starts with the image's layers (and their merge), so its first update
        # fetches only new ones.
        run(["ostree", f"--repo={repo.path}", "pull-local", source.path, *store_refs])
    origin_file = sysroot.parent / "origin"
    origin_file.write_text(origin(image, signed))
    run(["ostree", "admin", "deploy", f"--sysroot={sysroot}", f"--os={STATEROOT}",
         f"--origin-file={origin_file}", *[f"--karg-append={k}" for k in kargs], commit])  # fmt: skip
    (dep,) = (sysroot / "ostree/deploy" / STATEROOT / "deploy").glob("*.0")
    return dep


def _passwd_entry(deployment: confined.Tree, name: str) -> tuple[int, int, str]:
    for line in _read(deployment, "etc/passwd").splitlines():
        f = line.split(":")
        if f[0] == name and len(f) >= 7:
            try:
                return int(f[2]), int(f[3]), f[5]
            except ValueError:
                break
    raise ConfigError(f"user {name} was not created")


def _read(tree: confined.Tree, rel: str) -> str:
    """A text file of the image, its symlinks followed inside the image only."""
    path = confined.resolve(tree, rel)
    if path is None:
        raise ConfigError(f"/{rel} is missing from the image")
    return tree.read_bytes(path).decode(errors="replace")


STATE_HOMES = (
    ("/root", "roothome"),
    ("/var/roothome", "roothome"),
    ("/home", "home"),
    ("/var/home", "home"),
)


def _state_rel(home: str) -> str:
    """Where a home directory lives in the stateroot's /var: /root and /home are links into it. The
    path comes from the image's /etc/passwd, so `..` is refused, not resolved."""
    for prefix, var in STATE_HOMES:
        if home == prefix or home.startswith(prefix + "/"):
            rel = f"{var}/{home[len(prefix) :].strip('/')}".rstrip("/")
            try:
                confined.parts(rel)
            except confined.ConfinedError:
                raise ConfigError(f"home directory {home} leaves /home or /root; refusing it") from None
            return rel
    raise ConfigError(f"home directory {home} is not under /home or /root")


def _set_password(deployment: Path, user: User) -> None:
    """chpasswd -e reads `name:hash` on stdin, so the hash is never on a command line."""
    run(["chpasswd", "--encrypted", "--root", deployment], input=f"{user.name}:{user.password}\n")


def add_user(sysroot: Path, deployment: Path, user: User) -> None:
    with (
        confined.Tree(deployment) as dep,
        confined.Tree(sysroot / "ostree/deploy" / STATEROOT / "var") as var,
    ):
        try:
            _add_user(dep, var, deployment, user)
        except confined.ConfinedError as e:
            raise ConfigError(f"cannot set up user {user.name}: {e}") from None


def _add_user(dep: confined.Tree, var: confined.Tree, deployment: Path, user: User) -> None:
    exists = any(ln.split(":")[0] == user.name for ln in _read(dep, "etc/passwd").splitlines())
    try:
        # useradd and usermod --root chroot into the deployment before they touch a file.
        if not exists:
            cmd = ["useradd", "--root", str(deployment), "--no-create-home", "--shell", "/bin/bash"]
            if user.groups:
                cmd += ["--groups", ",".join(user.groups)]
            run([*cmd, user.name])
        elif user.groups:
            run(["usermod", "--root", str(deployment), "--append", "--groups", ",".join(user.groups),
                 user.name])  # fmt: skip
        if user.password:
            _set_password(deployment, user)
    except RunError as e:
        raise ConfigError(f"cannot set up user {user.name}: {e}") from e
    uid, gid, home_path = _passwd_entry(dep, user.name)
    home = _state_rel(home_path)
    if var.kind(home) is None:
        # A fresh home gets what the image would give it: /etc/skel, or root's factory copy.
        skel = confined.resolve(dep, "usr/share/factory/roothome" if user.name == "root" else "etc/skel")
        var.makedirs(str(Path(home).parent))
        if skel is not None and dep.kind(skel) is confined.Kind.DIR:
            var.copy_tree(dep, skel, home)
        else:
            var.mkdir(home, 0o700)
        confined.chown_tree(var, home, uid, gid)
        var.chmod(home, 0o700)
    if user.key:
        ssh = f"{home}/.ssh"
        if var.mkdir(ssh, 0o700, exist_ok=True):
            var.chmod(ssh, 0o700)
        keys = f"{ssh}/authorized_keys"
        var.write_bytes(keys, (user.key.strip() + "\n").encode(), 0o600)
        for p in (ssh, keys):
            var.chown(p, uid, gid)


def customize(sysroot: Path, deployment: Path, config: DiskConfig) -> None:
    for user in config.users:
        add_user(sysroot, deployment, user)
    grub.update(sysroot)


def remove(sysroot: Path) -> None:
    """ostree marks deployment directories immutable; lift that before removing a sysroot."""
    for d in sysroot.glob("ostree/deploy/*/deploy/*.[0-9]*"):
        run(["chattr", "-i", d], check=False)
    shutil.rmtree(sysroot, ignore_errors=True)
