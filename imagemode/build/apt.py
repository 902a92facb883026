"""Package resolution by apt's own solver, against a private apt state that the host's apt never sees.

`apt-get install --simulate` on an empty dpkg status answers the question mmdebstrap will ask: which
packages, at which versions, make up the base. Nothing here solves dependencies itself.
"""

from __future__ import annotations

import email.utils
import re
from pathlib import Path

from imagemode.build.spec import BaseSpec, Lock, LockedPackage
from imagemode.errors import ImagemodeError
from imagemode.run import RunError, disk_watchdog, run


class ResolveError(ImagemodeError):
    pass


_INST_RE = re.compile(r"^Inst (?P<name>\S+) (?:\[\S+\] )?\((?P<version>\S+) .*\[(?P<arch>[^\]]+)\]\)")


class AptState:
    """A private apt configuration and package lists for one spec, under `root`."""

    def __init__(self, spec: BaseSpec, root: Path) -> None:
        self.spec = spec
        self.root = root
        self.conf = root / "apt.conf"

    def _write_config(self) -> None:
        r = self.root
        for d in (
            "etc/apt/apt.conf.d",
            "etc/apt/preferences.d",
            "etc/apt/sources.list.d",
            "var/lib/apt/lists/partial",
            "var/cache/apt/archives/partial",
            "var/lib/dpkg",
        ):
            (r / d).mkdir(parents=True, exist_ok=True)
        status = r / "var/lib/dpkg/status"
        if not status.exists():
            status.write_text("")
        (r / "etc/apt/sources.list").write_text("\n".join(self.spec.sources) + "\n")
        self.conf.write_text(
            f'Dir "{r}/";\n'
            f'Dir::State::status "{status}";\n'
            'Dir::Etc::trustedparts "/usr/share/keyrings/";\n'
            'Dir::Etc::trusted "/nonexistent";\n'
            f'APT::Architecture "{self.spec.architecture}";\n'
            f'APT::Architectures {{ "{self.spec.architecture}"; }};\n'
            'APT::Install-Recommends "false";\n'
            'Acquire::Languages "none";\n'
            'Acquire::Retries "2";\n'
            'Acquire::http::Timeout "20";\n'
        )

    def _apt(self, *args: str) -> str:
        return run(list(args), env={"APT_CONFIG": str(self.conf), "LC_ALL": "C.UTF-8"}).stdout

    def update(self) -> None:
        self._write_config()
        try:
            out = run(
                ["apt-get", "update", "-q"],
                env={"APT_CONFIG": str(self.conf), "LC_ALL": "C.UTF-8"},
                watchdog=disk_watchdog(self.root),
                timeout=900,
            )
        except RunError as e:
            if "No space left on device" in e.stderr_tail:
                raise ResolveError(f"no space left on device in {self.root} (the --cache-dir)") from e
            raise ResolveError(f"cannot read the package mirror {self.spec.mirror}: {e}") from e
        # apt-get update exits 0 when a mirror is unreachable, with "W: Failed to fetch" on stderr.
        bad = [ln for ln in out.stderr.splitlines() if ln.startswith(("W: Failed to fetch", "E: "))]
        if any("No space left on device" in ln for ln in bad):
            raise ResolveError(f"no space left on device in {self.root} (the --cache-dir)")
        lists = list((self.root / "var/lib/apt/lists").glob("*_Packages*"))
        if bad or not lists:
            why = bad[0] if bad else "no package lists were downloaded"
            raise ResolveError(f"cannot read the package mirror {self.spec.mirror}: {why}")

    def release_epoch(self) -> int:
        """The newest `Date:` of the suites' Release files: a build date that only the mirror decides."""
        newest = 0
        for f in (self.root / "var/lib/apt/lists").glob("*Release"):
            for line in f.read_text(errors="replace").splitlines():
                if line.startswith("Date:"):
                    newest = max(
                        newest, int(email.utils.parsedate_to_datetime(line[5:].strip()).timestamp())
                    )
                    break
        if not newest:
            raise ResolveError("the mirror's Release files carry no Date")
        return newest

    def minbase(self) -> list[str]:
        """What mmdebstrap's minbase variant installs besides apt: Essential and Priority: required."""
        names = set()
        current = ""
        for line in self._apt("apt-cache", "dumpavail").splitlines():
            if line.startswith("Package: "):
                current = line[9:].strip()
            elif line in ("Essential: yes", "Priority: required"):
                names.add(current)
        return sorted(names)

    def simulate(self, packages: list[str]) -> list[tuple[str, str, str]]:
        """(name, version, arch) of every package apt would install for `packages` on an empty system."""
        try:
            out = self._apt("apt-get", "install", "--simulate", "-q", "-y", *packages)
        except RunError as e:
            missing = re.search(r"Unable to locate package (\S+)", e.stderr_tail)
            if missing:
                raise ResolveError(
                    f"package {missing.group(1)!r} does not exist in {self.spec.release}"
                ) from e
            version = re.search(r"Version '([^']+)' for '([^']+)' was not found", e.stderr_tail)
            if version:
                raise ResolveError(
                    f"package {version.group(2)} {version.group(1)} from the lock list is no longer on the"
                    " mirror; resolve again without --lock"
                ) from e
            raise ResolveError(f"apt cannot resolve the package set: {e}") from e
        found = []
        for line in out.splitlines():
            m = _INST_RE.match(line)
            if m:
                found.append((m["name"], m["version"], m["arch"]))
        if not found:
            raise ResolveError("apt resolved an empty package set")
        return found

    def installed_sizes(self, pins: list[str]) -> dict[str, int]:
        """Installed-Size (KiB) of each `name=version`."""
        sizes: dict[str, int] = {}
        name = ""
        for line in self._apt("apt-cache", "show", "--no-all-versions", *pins).splitlines():
            if line.startswith("Package: "):
                name = line[9:].strip()
            elif line.startswith("Installed-Size: ") and name not in sizes:
                sizes[name] = int(line[16:].strip())
        return sizes


def resolve(
    spec: BaseSpec, state_dir: Path, *, locked: Lock | None = None, source_date_epoch: int | None = None
) -> Lock:
    """Resolve the spec (or re-check a lock) into a Lock, with apt's solver."""
    apt = AptState(spec, state_dir)
    apt.update()
    if locked is not None:
        if locked.release != spec.release or locked.architecture != spec.architecture:
            raise ResolveError(
                f"the lock list is for {locked.release}/{locked.architecture}, not"
                f" {spec.release}/{spec.architecture}"
            )
        request = locked.pins()
        epoch = locked.source_date_epoch
    else:
        request = [*apt.minbase(), "apt", *spec.all_packages]
        epoch = source_date_epoch if source_date_epoch is not None else apt.release_epoch()
    found = apt.simulate(request)
    pins = [f"{n}={v}" for n, v, _ in found]
    sizes = apt.installed_sizes(pins)
    packages = tuple(
        sorted((LockedPackage(n, v, a, sizes.get(n, 0)) for n, v, a in found), key=lambda p: p.name)
    )
    if locked is not None:
        want = {p.name: p.version for p in locked.packages}
        got = {p.name: p.version for p in packages}
        if want != got:
            diff = sorted(set(want.items()) ^ set(got.items()))
            raise ResolveError(f"the lock list does not resolve to itself; first difference: {diff[0]}")
    return Lock(
        release=spec.release, architecture=spec.architecture, source_date_epoch=epoch, packages=packages
    )
