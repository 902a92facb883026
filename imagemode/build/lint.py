"""`imagemode container lint`: checks that an image will install, boot and update as image mode expects.

Each rule is one function over the image's root filesystem and labels. Rules at level ERROR make an image
unusable (it would not boot or not import); WARNING rules flag what works but surprises on a device.
"""

from __future__ import annotations

import enum
import os
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from imagemode import tmpfiles
from imagemode.errors import ImagemodeError

MAX_LISTED = 5
POLICY_JSON = "/etc/containers/policy.json"


class Level(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"


Labels = Mapping[str, str]
Check = Callable[[Path, Labels], list[str]]


@dataclass(frozen=True)
class Rule:
    name: str
    level: Level
    description: str
    check: Check


@dataclass(frozen=True)
class Rules:
    """What `lint --list` prints."""

    rules: tuple[Rule, ...]

    def to_dict(self) -> list[dict[str, str]]:
        return [{"name": r.name, "level": r.level.value, "description": r.description} for r in self.rules]

    def human(self) -> str:
        return "\n".join(f"{r.name:<14} {r.level.value:<8} {r.description}" for r in self.rules)


@dataclass(frozen=True)
class Finding:
    rule: str
    level: Level
    message: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.message}"


@dataclass
class Report:
    image: str
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        def f(x: Finding) -> dict[str, str]:
            return {"rule": x.rule, "message": x.message}

        return {
            "image": self.image,
            "errors": [f(e) for e in self.errors],
            "warnings": [f(w) for w in self.warnings],
            "passed": self.passed,
        }

    def human(self) -> str:
        lines = [f"error: {e}" for e in self.errors] + [f"warning: {w}" for w in self.warnings]
        lines.append(f"{self.image}: {len(self.errors)} errors, {len(self.warnings)} warnings,"
                     f" {len(self.passed)} checks passed")  # fmt: skip
        return "\n".join(lines)


def _listed(paths: list[str]) -> str:
    more = f" and {len(paths) - MAX_LISTED} more" if len(paths) > MAX_LISTED else ""
    return ", ".join(paths[:MAX_LISTED]) + more


def kernels(root: Path) -> list[Path]:
    moddir = root / "usr/lib/modules"
    if not moddir.is_dir():
        return []
    return sorted(p for p in moddir.iterdir() if (p / "vmlinuz").exists() or (p / "initramfs.img").exists())


def check_kernel(root: Path, labels: Labels) -> list[str]:
    found = kernels(root)
    if not found:
        return ["no kernel: /usr/lib/modules/$kver/vmlinuz not found"]
    if len(found) > 1:
        names = ", ".join(k.name for k in found)
        return [f"{len(found)} kernels found ({names}); a bootable image carries exactly one"]
    k = found[0]
    missing = [f for f in ("vmlinuz", "initramfs.img") if not (k / f).is_file()]
    if missing:
        return [f"kernel {k.name} has no {' and no '.join(missing)} in /usr/lib/modules/{k.name}"]
    return []


def check_bootc_label(root: Path, labels: Labels) -> list[str]:
    if labels.get("containers.bootc") != "1":
        return ["label containers.bootc=1 is missing: this is not a bootable image"]
    return []


# Left behind by container builds themselves (podman, buildah), never by the image's author.
_BUILD_ARTIFACTS = {".containerenv", "secrets"}


def check_run_tmp_empty(root: Path, labels: Labels) -> list[str]:
    out = []
    for d in ("run", "tmp"):
        p = root / d
        if p.is_dir() and not p.is_symlink():
            content = sorted(c.name for c in p.iterdir() if not (d == "run" and c.name in _BUILD_ARTIFACTS))
            if content:
                out.append(f"/{d} is not empty ({_listed(content)}); it is a tmpfs on a booted system")
    return out


def tmpfiles_paths(root: Path) -> dict[str, str]:
    """Path -> tmpfiles.d line type, from every tmpfiles.d directory of the image (later files win)."""

    def texts() -> Iterator[str]:
        for d in tmpfiles.DIRS:
            for f in sorted((root / d).glob("*.conf")) if (root / d).is_dir() else []:
                try:
                    yield f.read_text(errors="replace")
                except OSError:
                    continue

    return tmpfiles.parse(texts())


# Build-time state of package managers, content whose loss on a device is harmless by definition, and
# the links into /run that systemd's own tmpfiles.d makes (the var-run rule checks /var/run).
VAR_IGNORED = (
    "/var/run",
    "/var/lock",
    "/var/cache",
    "/var/log",
    "/var/tmp",
    "/var/lib/apt",
    "/var/lib/dpkg",
    "/var/lib/ucf",
    "/var/lib/systemd/deb-systemd-helper-enabled",
    "/var/lib/systemd/deb-systemd-user-helper-enabled",
    "/var/lib/systemd/catalog",
    "/var/lib/dnf",
    "/var/lib/rpm",
    # state of Debian's maintainer-script helpers (add-shell, pam-auth-update, python3)
    "/var/lib/shells.state",
    "/var/lib/pam",
    "/var/lib/python",
)


def check_var_content(root: Path, labels: Labels) -> list[str]:
    """/var reaches a device once, at install; only tmpfiles.d lines are replayed on every boot."""
    var = root / "var"
    if not var.is_dir():
        return []
    entries = tmpfiles_paths(root)
    copied = [p for p, t in entries.items() if t in ("C", "L")]
    uncovered = []
    for dirpath, dirnames, filenames in os.walk(var):
        rel = "/" + os.path.relpath(dirpath, root)
        if rel.startswith(VAR_IGNORED):
            dirnames[:] = []
            continue
        if any(rel == c or rel.startswith(c + "/") for c in copied):
            dirnames[:] = []
            continue
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            path = f"{rel}/{name}"
            if path.startswith(VAR_IGNORED) or path in entries:
                continue
            if not any(path.startswith(c + "/") for c in copied):
                uncovered.append(path)
        dirnames.sort()
    if uncovered:
        return [
            f"{len(uncovered)} files in /var have no tmpfiles.d entry and will not reach an updated device"
            f" ({_listed(uncovered)})"
        ]
    return []


def check_fstab_root(root: Path, labels: Labels) -> list[str]:
    fstab = root / "etc/fstab"
    if not fstab.is_file():
        return []
    for line in fstab.read_text(errors="replace").splitlines():
        fields = line.split()
        if len(fields) >= 2 and not fields[0].startswith("#") and fields[1] == "/":
            return [f"/etc/fstab mounts / ({fields[0]}); the root is set up by the initramfs from ostree="]
    return []


def _kargs_error(data: object) -> str | None:
    if not isinstance(data, dict):
        return "not a table"
    unknown = set(data) - {"kargs", "match-architectures"}
    if unknown:
        return f"unknown key {sorted(unknown)[0]!r}"
    kargs = data.get("kargs")
    if not isinstance(kargs, list) or not all(isinstance(k, str) and k for k in kargs):
        return "'kargs' must be a list of non-empty strings"
    arches = data.get("match-architectures", [])
    if not isinstance(arches, list) or not all(isinstance(a, str) for a in arches):
        return "'match-architectures' must be a list of strings"
    return None


def check_kargs_toml(root: Path, labels: Labels) -> list[str]:
    out = []
    d = root / "usr/lib/bootc/kargs.d"
    if not d.is_dir():
        return []
    for f in sorted(d.glob("*.toml")):
        rel = "/" + str(f.relative_to(root))
        try:
            problem = _kargs_error(tomllib.loads(f.read_text()))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            problem = str(e)
        if problem:
            out.append(f"{rel}: {problem}")
    return out


def _walk_bytes(root: bytes) -> Iterator[bytes]:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            yield os.path.join(dirpath, name)


def check_utf8_names(root: Path, labels: Labels) -> list[str]:
    broot = os.fsencode(root)
    bad = []
    for p in _walk_bytes(broot):
        try:
            p.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(repr(p[len(broot) :])[2:-1])
    if bad:
        return [f"{len(bad)} file names are not valid UTF-8 ({_listed(bad)})"]
    return []


def check_usr_etc(root: Path, labels: Labels) -> list[str]:
    if (root / "usr/etc").exists():
        return ["/usr/etc exists; the importer moves /etc there, so the image must keep config in /etc"]
    return []


def check_var_run(root: Path, labels: Labels) -> list[str]:
    p = root / "var/run"
    present = p.exists() or p.is_symlink()
    if present and (not p.is_symlink() or os.readlink(p).rstrip("/") not in ("/run", "../run")):
        return ["/var/run is not a link to /run"]
    return []


def check_boot_empty(root: Path, labels: Labels) -> list[str]:
    p = root / "boot"
    if p.is_dir() and not p.is_symlink():
        content = sorted(c.name for c in p.iterdir())
        if content:
            return [f"/boot is not empty ({_listed(content)}); kernels belong in /usr/lib/modules/$kver"]
    return []


def check_signature_keys(root: Path, labels: Labels) -> list[str]:
    """An image that turns on signature enforcement must carry what verifies: a policy.json that
    requires signatures and the key files it names (docs/signing.md)."""
    from imagemode import confined
    from imagemode.oci import policy as policies

    with confined.Tree(root) as tree:
        try:
            enforce = policies.enforce_requested(tree)
            pol = policies.image_policy(tree, etc="etc")
        except policies.PolicyError as e:
            return [str(e)]
        if pol is None:
            return [f"signature enforcement is on, and {POLICY_JSON} is missing"] if enforce else []
        reqs = pol.every_requirement()
        out = [
            f"{POLICY_JSON} names the key {p}, which is not in the image"
            for p in policies.missing_key_files(policies.key_paths(reqs), tree, "etc")
        ]
    if enforce and not policies.has_keys(reqs):
        out.append(f"signature enforcement is on, and {POLICY_JSON} requires no signature")
    elif enforce and pol.default_accepts_anything:
        out.append(f"signature enforcement is on, and {POLICY_JSON}'s default accepts any image")
    return out


RULES: tuple[Rule, ...] = (
    Rule(
        "kernel",
        Level.ERROR,
        "exactly one kernel, with vmlinuz and initramfs.img in /usr/lib/modules/$kver",
        check_kernel,
    ),
    Rule("bootc-label", Level.ERROR, "the label containers.bootc=1 is set", check_bootc_label),
    Rule("run-tmp-empty", Level.ERROR, "/run and /tmp are empty", check_run_tmp_empty),
    Rule("kargs-toml", Level.ERROR, "every /usr/lib/bootc/kargs.d/*.toml is valid", check_kargs_toml),
    Rule("utf8-names", Level.ERROR, "every file name is valid UTF-8", check_utf8_names),
    Rule("usr-etc", Level.ERROR, "no /usr/etc in the image (config lives in /etc)", check_usr_etc),
    Rule("var-run", Level.ERROR, "/var/run is a link to /run", check_var_run),
    Rule(
        "var-content",
        Level.WARNING,
        "/var holds nothing that tmpfiles.d does not recreate",
        check_var_content,
    ),
    Rule("fstab-root", Level.WARNING, "/etc/fstab has no entry for /", check_fstab_root),
    Rule("boot-empty", Level.WARNING, "/boot is empty", check_boot_empty),
    Rule(
        "signature-keys",
        Level.WARNING,
        "signature enforcement comes with a policy that requires signatures and the keys it names",
        check_signature_keys,
    ),
)


class LintFailedError(ImagemodeError):
    def __init__(self, report: Report) -> None:
        self.report = report
        first = report.errors[0] if report.errors else report.warnings[0]
        more = len(report.errors) + len(report.warnings) - 1
        super().__init__(f"{report.image} fails lint: {first}" + (f" (and {more} more)" if more > 0 else ""))


def lint_tree(root: Path, labels: Labels, image: str = "", skip: frozenset[str] = frozenset()) -> Report:
    """`skip`: rules by name that are not run (bootc container lint --skip)."""
    report = Report(image=image or str(root))
    for rule in RULES:
        if rule.name in skip:
            continue
        messages = rule.check(root, labels)
        if not messages:
            report.passed.append(rule.name)
        for m in messages:
            finding = Finding(rule.name, rule.level, m)
            (report.errors if rule.level is Level.ERROR else report.warnings).append(finding)
    return report
