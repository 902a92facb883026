"""`bootc` on an imagemode device: bootc's command line over imagemode's own handlers.

Fleet agents (flightctl), health frameworks (greenboot, greenboot-rs) and workloads (MicroShift) run
`bootc` by name and read what it prints. This table spells bootc's verbs and flags and calls the
handlers that `imagemode` calls (imagemode.commands): one implementation, two command lines. A bootc
verb that imagemode does not have is one line and exit 2, never a guess; docs/bootc-differences.md
has every verb and flag with imagemode's answer.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagemode
from imagemode import cli
from imagemode import commands as c
from imagemode.cli import APPLY, FORMAT_VERSION, PROGRESS_FD, QUIET, READ_ONLY, Table, Verb, flag, opt
from imagemode.errors import ImagemodeError
from imagemode.output import Result

PROG = "bootc"
DOC = "docs/bootc-differences.md"
TRANSPORTS = ("registry", "oci", "oci-archive", "containers-storage")


def unsupported(verb: str) -> str:
    return f"bootc (imagemode): {verb!r} is not supported; see {DOC}"


def _as_imagemode(args: argparse.Namespace) -> argparse.Namespace:
    """bootc's options, with the imagemode options bootc lacks at their defaults (no --json: bootc
    prints text for upgrade, switch and rollback)."""
    for k in ("json", "quiet"):
        if not hasattr(args, k):
            setattr(args, k, False)
    return args


def upgrade(args: argparse.Namespace) -> int:
    return c.upgrade(_as_imagemode(args))


def switch(args: argparse.Namespace) -> int:
    # bootc's flag only turns enforcement on. Without it bootc writes an unverified origin; imagemode
    # keeps what the device has, so an agent's plain switch never drops a signed device's policy.
    args.enforce_container_sigpolicy = True if args.enforce_container_sigpolicy else None
    args.image = args.target
    return c.switch(_as_imagemode(args))


def rollback(args: argparse.Namespace) -> int:
    return c.rollback(_as_imagemode(args))


@dataclass(frozen=True)
class Inspected:
    """`bootc container inspect`: the kernel arguments and the kernel of a root filesystem."""

    kargs: tuple[str, ...]
    kernel: str | None

    def to_dict(self) -> dict[str, Any]:
        kernel = {"version": self.kernel, "unified": False} if self.kernel else None
        return {"kargs": list(self.kargs), "kernel": kernel}

    def human(self) -> str:
        return f"Kernel: {self.kernel or '(none)'}\nKernel arguments: {' '.join(self.kargs) or '(none)'}"


def inspect(args: argparse.Namespace) -> Result | int:
    from imagemode import confined
    from imagemode.boot import kargs
    from imagemode.build.lint import kernels

    root = Path(args.rootfs)
    if not root.is_dir():
        raise ImagemodeError(f"--rootfs {root}: not a directory")
    found = kernels(root)
    out = Inspected(
        tuple(kargs.image_kargs(confined.Tree(root))), found[0].name if len(found) == 1 else None
    )
    if args.format == "yaml":
        from imagemode.host.status import to_yaml

        sys.stdout.write(to_yaml(out.to_dict()))
        return 0
    args.json = args.json or args.format == "json"
    return out


def lint(args: argparse.Namespace) -> Result | int:
    """A root filesystem, as `RUN bootc container lint` meets it in a build: there are no labels to
    read, so the label rule is not one of its checks."""
    from imagemode.build import lint as rules

    if args.list:
        return rules.Rules(rules.RULES)
    names = {r.name for r in rules.RULES}
    unknown = sorted(set(args.skip) - names)
    if unknown:
        raise ImagemodeError(f"unknown lint {unknown[0]!r} (see bootc container lint --list)")
    root = Path(args.rootfs)
    if not root.is_dir():
        raise ImagemodeError(f"--rootfs {root}: not a directory")
    report = rules.lint_tree(root, {}, skip=frozenset({"bootc-label", *args.skip}))
    failed = bool(report.errors) or (args.fatal_warnings and bool(report.warnings))
    print(report.human())
    return 1 if failed else 0


ROOTFS = opt("--rootfs", default="/", metavar="DIR", help="the root filesystem (default: /)")
FORMAT = opt("--format", choices=("humanreadable", "yaml", "json"), help="output format")
STATUS_TEXT = ("Show the host as bootc does: human text on a terminal, YAML otherwise. --format-version 0 "
               "and 1 name the same format, as in bootc.")  # fmt: skip
UPGRADE = (
    QUIET,
    flag("--check", help="only read the manifest; status shows it as cachedUpdate"),
    APPLY,
    flag("--download-only", help="stage, but do not apply at shutdown"),
    flag("--from-downloaded", help="apply the update staged by --download-only"),
    opt("--tag", metavar="TAG", help="follow the booted image under another tag"),
    PROGRESS_FD,
)
UPGRADE_EXCLUSIVE = (("check", "download_only", "from_downloaded"), ("apply", "check"),
                     ("apply", "download_only"), ("tag", "from_downloaded"))  # fmt: skip

VERBS: tuple[Verb, ...] = (
    Verb(("status",), "the booted, staged and rollback deployments", STATUS_TEXT, c.status, (
        flag("--json", help="same as --format json"), FORMAT, FORMAT_VERSION,
        flag("--booted", help="only the booted deployment (staged and rollback are null)"),
    ), exclusive=(("json", "format"),), device=True),
    Verb(("upgrade",), "fetch and stage the image the device follows",
         "imagemode upgrade, as bootc spells it (docs/upgrade.md).", upgrade, UPGRADE,
         exclusive=UPGRADE_EXCLUSIVE, device=True),
    Verb(("update",), "alias of upgrade", "imagemode upgrade, as bootc spells it.", upgrade, UPGRADE,
         exclusive=UPGRADE_EXCLUSIVE, device=True),
    Verb(("switch",), "follow another image, and stage it",
         "imagemode switch, as bootc spells it. --retain is accepted: imagemode keeps the rollback "
         "deployment's image in the store anyway.", switch, (
             QUIET, APPLY,
             opt("--transport", default="registry", choices=TRANSPORTS, help="default: registry"),
             flag("--enforce-container-sigpolicy", help="updates must pass a policy that requires "
                  "signatures, from now on"),
             flag("--retain", help="keep the booted image (imagemode always does)"),
             PROGRESS_FD,
             opt("target", metavar="IMAGE"),
         ), device=True),
    Verb(("rollback",), "boot the rollback deployment next", "imagemode rollback, as bootc spells it.",
         rollback, (APPLY,), device=True),
    Verb(("usr-overlay",), "a transient overlay on /usr", "imagemode usr-overlay.", c.usr_overlay,
         (READ_ONLY,), device=True),
    Verb(("usroverlay",), "alias of usr-overlay", "imagemode usr-overlay.", c.usr_overlay,
         (READ_ONLY,), device=True),
    Verb(("container", "lint"), "check a root filesystem as an image build meets it",
         "Lint the tree at --rootfs (a RUN step's /): imagemode's lint rules, but the label rule.", lint, (
             ROOTFS, flag("--fatal-warnings", help="fail on warnings too"),
             flag("--list", help="list the lint rules and exit"),
             opt("--skip", action="append", default=[], metavar="NAME", help="skip a rule (repeatable)"),
             flag("--no-truncate", help="accepted; imagemode lists the first findings of each rule"),
         )),
    Verb(("container", "inspect"), "the kernel and kernel arguments of a root filesystem",
         "Print the kernel arguments (/usr/lib/bootc/kargs.d) and the kernel of --rootfs, as bootc does.",
         inspect, (ROOTFS, flag("--json", help="same as --format json"), FORMAT),
         exclusive=(("json", "format"),)),
)  # fmt: skip

TABLE = Table(
    PROG, VERBS, {"container": "operations as part of a container build"},
    "bootc's command line on an imagemode device: the same work as `imagemode`, as bootc's callers "
    f"spell it. Verbs imagemode does not have are refused; see {DOC}.",
    f"bootc (imagemode {imagemode.__version__})", unsupported,
)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return cli.main(list(sys.argv[1:] if argv is None else argv), TABLE)
