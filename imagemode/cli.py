"""The command line, from one table.

Each verb is a frozen `Verb`: its path (`build base`), its help, its options (shared `Opt`
declarations), the flags that contradict each other, and a handler in imagemode.commands that
returns a result, which imagemode.output prints as JSON or for people, the same way for every verb.
The top-level help, the README's verb table check and the CLI tests all read VERBS. Only the parser
of the verb asked for is built, so a verb starts without the others' imports.

Exit codes: 0 done, 1 an error (one line on stderr), 2 a usage error (one line), 130 interrupted.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import imagemode
from imagemode import commands as c
from imagemode.build import spec
from imagemode.errors import ImagemodeError
from imagemode.output import Result, emit

EXIT_USAGE = 2
PROG = "imagemode"


Handler = Callable[[argparse.Namespace], Result | int]


@dataclass(frozen=True)
class Opt:
    """One option or positional, as argparse takes it (`flags`, then its keywords)."""

    flags: tuple[str, ...]
    kw: Mapping[str, Any] = field(default_factory=dict)

    @property
    def dest(self) -> str:
        if "dest" in self.kw:
            return str(self.kw["dest"])
        long = next((f for f in self.flags if f.startswith("--")), self.flags[0])
        return long.lstrip("-").replace("-", "_")


def opt(*flags: str, **kw: Any) -> Opt:
    return Opt(flags, kw)


def flag(*flags: str, help: str) -> Opt:
    return opt(*flags, action="store_true", help=help)


@dataclass(frozen=True)
class Verb:
    path: tuple[str, ...]
    help: str  # one line, for the listing
    description: str
    handler: Handler
    options: tuple[Opt, ...] = ()
    exclusive: tuple[tuple[str, ...], ...] = ()  # option dests, at most one of each set given
    requires: tuple[tuple[str, str], ...] = ()  # (dest, the dest it needs)
    device: bool = False  # runs on a booted device

    @property
    def name(self) -> str:
        return " ".join(self.path)


# ---- options more than one verb takes ----------------------------------------------------------------

JSON = flag("--json", help="print the result as JSON")
QUIET = flag("--quiet", help="print nothing but errors")
APPLY = flag("--apply", help="reboot into the result once it is staged")


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


TLS = opt("--tls-verify", type=_bool, default=True, metavar="BOOL",
          help="false: reach registries over plain HTTP (as podman's flag)")  # fmt: skip
ENFORCE = "--enforce-container-sigpolicy"
LINT = (
    opt("image", nargs="?", metavar="IMAGE", help="an image in local containers-storage"),
    flag("--fatal-warnings", help="fail on warnings too"),
    JSON,
    flag("--list", help="list the lint rules and exit"),
)
LINT_TEXT = (
    "Check a bootable container image. Errors make it unusable, warnings flag surprises on a device. "
    "Exit 1 on an error (or a warning with --fatal-warnings)."
)
UPDATE = (APPLY, QUIET, JSON)
PROGRESS_FD = opt("--progress-fd", type=int, metavar="N",
                  help="progress as JSON lines (bootc's progress-v0) on open descriptor N")  # fmt: skip
READ_ONLY = flag("--read-only", help="mount the overlay read-only (remount it writable in a mount namespace "
                 "of your own)")  # fmt: skip
ANY_IMAGE = opt("image", metavar="IMAGE", help="a local image, or oci:DIR, oci-archive:FILE, docker://REF")
REBASE = flag("--rebase", help="no patch layers: ship every changed package's layer whole (the base of "
              "later patches; docs/chunking.md)")  # fmt: skip
FORMAT_VERSION = opt("--format-version", type=int, choices=(0, 1), metavar="N",
                     help="the status format: 0 and 1 are the one version (as bootc has it)")  # fmt: skip


BASE = (
    opt("-t", "--tag", default=spec.DEFAULT_TAG, help="image tag (default: %(default)s)"),
    opt("--release", default=spec.DEFAULT_RELEASE, help="Debian release (default: %(default)s)"),
    opt("--mirror", default=spec.DEFAULT_MIRROR, help="Debian mirror (default: %(default)s)"),
    opt("--security-mirror", default=spec.DEFAULT_SECURITY_MIRROR, metavar="URL",
        help="security mirror, '' for none (default: %(default)s)"),
    opt("--package", action="append", default=[], metavar="NAME",
        help="an extra package to install (repeatable)"),
    opt("--lock", metavar="FILE",
        help="build exactly the package versions of this lock list (see docs/base-image.md)"),
    opt("--source-date-epoch", type=int, metavar="N",
        help="timestamp clamp (default: the mirror's Release date, or the lock list's)"),
    flag("--plan", help="print the resolved package set and the build steps, then exit without building"),
    JSON,
    opt("--output", metavar="oci:DIR", help="also write the image to an OCI layout or archive"),
    flag("--no-cache", help="rebuild the OS layer even if it is cached"),
    opt("--cache-dir", default=str(spec.DEFAULT_CACHE), metavar="DIR",
        help="cache for package lists, .debs and OS layers (default: %(default)s)"),
    opt("--prior", metavar="REF", help="keep the layer slots of this earlier build, any transport "
        "(default: the image now under the tag; docs/chunking.md)"),
    REBASE,
    flag("--single-layer", help="write the OS as one layer, not grouped by package"),
)  # fmt: skip


# ---- the verbs ---------------------------------------------------------------------------------------

VERBS: tuple[Verb, ...] = (
    Verb(("build", "base"), "build the bootable Debian base image",
         "Build the bootable Debian base image from Debian packages, into local containers-storage. apt "
         "resolves the package set; the OS layer is cached by the hash of its inputs and written as one "
         "layer per large source package (docs/chunking.md); imagemode itself is a thin top layer. Use the "
         f"result in a Containerfile: FROM {spec.DEFAULT_TAG}",
         c.build_base, BASE,
         exclusive=(("plan", "output"), ("plan", "no_cache"), ("prior", "single_layer"),
                    ("rebase", "single_layer"))),
    Verb(("build",), "build a Containerfile and lint the result",
         "Build a Containerfile with podman, with the options this machine needs, then lint the result. "
         "The tag is applied only if the build and the lint pass. For the base image see "
         "'imagemode build base --help'.",
         c.build, (
             opt("context", nargs="?", default=".", metavar="CONTEXT", help="build context (default: .)"),
             opt("-f", "--file", metavar="CONTAINERFILE", help="default: CONTEXT/Containerfile"),
             opt("-t", "--tag", required=True, help="tag of the built image"),
             opt("--build-arg", action="append", default=[], metavar="KEY=VALUE"),
             flag("--no-lint", help="skip the lint after the build"),
             flag("--fatal-warnings", help="lint warnings fail the build too"),
             opt("--embed", action="append", default=[], metavar="SOURCE",
                 help="embed the images SOURCE names (release JSON, manifests, kustomize dir, quadlets, "
                 "list)"),
             flag("--rechunk", help="write the result grouped into layers by package (imagemode rechunk) "
                  "before it is tagged"),
             TLS,
         ), exclusive=(("no_lint", "fatal_warnings"),)),
    Verb(("rechunk",), "write an image again, its layers grouped by package",
         "Flatten IMAGE and write it again as a chunked image: one layer per large Debian source package, "
         "the rest in bins, every component in the slot it had in the prior build (docs/chunking.md). A "
         "derived image that changes one package then costs its devices that package, not the image.",
         c.rechunk, (
             ANY_IMAGE,
             opt("-t", "--tag", required=True, help="tag of the chunked image"),
             opt("--prior", metavar="REF", help="keep the slots of this build (default: the image now under "
                 "the tag, else the slots IMAGE inherits from its chunked base)"),
             REBASE,
             opt("--source-date-epoch", type=int, metavar="N",
                 help="the time of files the build made (default: IMAGE's created time)"),
             JSON,
         )),
    Verb(("embed",), "copy workload images into the OS tree's read-only store",
         "Copy every image the SOURCEs name into a read-only containers-storage under "
         "ROOT/usr/lib/imagemode/containers/storage, which podman and CRI-O on the device use as an "
         "additional image store, with no copy at start. SOURCE: MicroShift release JSON, Kubernetes "
         "manifests, a kustomize directory, quadlet .container/.image files, or a list of references.",
         c.embed, (
             opt("source", nargs="+", metavar="SOURCE"),
             opt("--root", help="the OS tree to embed into; '/' in a Containerfile RUN step (no default: "
                 "a build host's own /usr is never meant)"),
             flag("--dry-run", help="print what would be embedded; copy nothing"),
             JSON, TLS,
         )),
    Verb(("bundle",), "write an OS image as one oci-archive, for offline updates",
         "Write a local bootable image, with every workload image embedded in it, to one oci-archive "
         "file. A device applies it with no network: imagemode switch --transport oci-archive PATH.",
         c.bundle, (
             opt("image", metavar="IMAGE", help="a bootable image in local containers-storage"),
             opt("-o", "--output", required=True, metavar="FILE", help="the archive to write"),
             opt("--sign-by", metavar="FINGERPRINT", help="sign the image's manifest with this GPG key"),
             opt("--sign-identity", metavar="REF", help="the registry reference the signature names, as "
                 "devices' policies know it, e.g. registry.example.com/os:2 (default: IMAGE)"),
             opt("--sign-passphrase-file", metavar="FILE", help="the key's passphrase, if it has one"),
             JSON,
         ), requires=(("sign_identity", "sign_by"), ("sign_passphrase_file", "sign_by"))),
    Verb(("container", "lint"), "check that an image is bootable", LINT_TEXT, c.lint, LINT,
         exclusive=(("list", "image"),)),
    Verb(("lint",), "alias of 'container lint'", LINT_TEXT, c.lint, LINT, exclusive=(("list", "image"),)),
    Verb(("disk",), "turn a bootable image into a disk (raw, qcow2, vmdk, vhd)",
         "Import IMAGE into an ostree store, deploy it into a sysroot, and write a GPT disk with an ESP "
         "(standalone GRUB) and an ext4 root, without loop devices or mounts. The image is linted first. "
         "Files appear in the output directory only when complete.",
         c.disk, (
             ANY_IMAGE,
             opt("--type", action="append", default=[], metavar="TYPE",
                 help="raw, qcow2 (default), vmdk or vhd; repeatable"),
             opt("--config", metavar="config.toml", help="customizations in bootc-image-builder's format"),
             opt("-o", "--output", default="output", metavar="DIR", help="output dir (default: output)"),
             opt("--cache-dir", metavar="DIR", help=f"store and work dir (default: {spec.DEFAULT_CACHE})"),
             opt("--target-imgref", metavar="REF", help="the image the device follows for updates, e.g. "
                 "registry.example.com/os:stable (default: IMAGE)"),
             opt(ENFORCE, action=argparse.BooleanOptionalAction, default=None,
                 help="the device takes only updates its policy.json finds signed (default: as the disk "
                 "config or the image's /usr/lib/bootc/install/*.toml say; else off)"),
             JSON,
         )),
    Verb(("vm",), "boot a disk in QEMU and log in over SSH",
         "Boot DISK with QEMU and OVMF (KVM when it really works, TCG otherwise), user networking with "
         "restrict=on and SSH forwarded on 127.0.0.1. Waits for SSH, stopping early on grub>, emergency "
         "mode, a kernel panic or a silent console. Without --exec it opens an SSH session, then powers "
         "off.",
         c.vm, (
             opt("disk", metavar="DISK"),
             opt("--memory", type=int, default=1024, metavar="MiB", help="default: 1024"),
             opt("--cpus", type=int, default=2, help="default: 2"),
             flag("--snapshot", help="never write to DISK"),
             opt("--serial-log", metavar="FILE", help="append the serial console to FILE"),
             opt("--ssh-port", type=int, metavar="PORT", help="host port for SSH (default: a free one)"),
             opt("--ssh-key", metavar="FILE", help="default: id_ed25519 beside DISK"),
             opt("--exec", metavar="CMD", help="run CMD in the guest, power off, exit with its status"),
             opt("--timeout", type=float, default=600, metavar="S", help="boot timeout (default: 600)"),
         )),
    Verb(("status",), "the booted, staged and rollback deployments",
         "Show the host as bootc does (apiVersion org.containers.bootc/v1, kind BootcHost): human text on "
         "a terminal, YAML otherwise.",
         c.status, (
             flag("--json", help="same as --format json"),
             opt("--format", choices=("humanreadable", "yaml", "json"), help="output format"),
             flag("--booted", help="only the booted deployment"),
             FORMAT_VERSION,
         ), exclusive=(("json", "format"),), device=True),
    Verb(("upgrade",), "fetch and stage the image the device follows",
         "Read the followed image's manifest; if it changed, fetch the layers the store lacks, import them, "
         "check /etc, and stage a deployment that ostree finalizes at shutdown. The booted system is not "
         "touched. See docs/upgrade.md.",
         c.upgrade, (
             flag("--check", help="only read the manifest: the download size and the package changes; "
                  "status shows them as cachedUpdate"),
             flag("--download-only", help="stage, but do not apply at shutdown (apply later with "
                  "--from-downloaded)"),
             flag("--from-downloaded", help="apply the update staged by --download-only"),
             opt("--tag", metavar="TAG", help="follow the same image under another tag from now on"),
             PROGRESS_FD,
             *UPDATE,
         ), exclusive=(("check", "download_only", "from_downloaded"), ("apply", "check"),
                    ("apply", "download_only"), ("json", "quiet"), ("tag", "from_downloaded")),
         device=True),
    Verb(("switch",), "follow another image, and stage it",
         "Like upgrade, to a new image reference, which becomes spec.image. A switch to the booted image "
         "under another name stages a deployment of it that follows the new name (nothing is fetched).",
         c.switch, (
             opt("image", metavar="IMAGE", help="e.g. registry.example.com/os:stable, oci:/path"),
             opt("--transport", metavar="T",
                 help="registry (default), oci, oci-archive or containers-storage"),
             opt(ENFORCE, action=argparse.BooleanOptionalAction, default=None,
                 help="updates must pass a policy.json that requires signatures, from now on (the default: "
                 "as the device does now; --no-... turns it off)"),
             flag("--check", help="only read the manifest: the download size and the package changes; "
                  "change nothing"),
             PROGRESS_FD,
             *UPDATE,
         ), exclusive=(("json", "quiet"), ("apply", "check")), device=True),
    Verb(("rollback",), "boot the rollback deployment next (again: undo)",
         "Make the rollback deployment the next boot; a second rollback before the reboot undoes the "
         "first. A staged deployment is discarded.",
         c.rollback, (flag("--apply", help="reboot now"), JSON), device=True),
    Verb(("usr-overlay",), "a writable /usr until the next boot, for debugging",
         "Mount a transient overlay on /usr (libostree's unlock, as bootc does it): install or change "
         "anything there, and the next boot forgets it. Status shows it as usrOverlay.",
         c.usr_overlay, (READ_ONLY,), device=True),
    Verb(("health",), "run the health checks now and show the results",
         "Run the required and wanted checks (greenboot's layout, docs/health.md) and show each result. "
         "Exit 1 when a required check failed. At boot, imagemode-health.service runs --boot, which also "
         "keeps or rolls back a newly updated deployment.",
         c.health, (
             JSON,
             flag("--show", help="show the last results without running anything"),
             flag("--boot", help="this boot's verdict: clear the boot counter, or fall back "
                  "(imagemode-health.service)"),
             opt("--forget", metavar="DIGEST",
                 help="let upgrade stage an image that failed here again (a digest, or all)"),
         ), exclusive=(("show", "boot", "forget"), ("forget", "json")), device=True),
    Verb(("prune",), "remove deployments and store content that nothing needs",
         "Undeploy all but the booted, rollback and staged deployments (pinned ones stay), remove the "
         "images and layers no deployment uses, and print the space freed.",
         c.prune, (JSON, QUIET), exclusive=(("json", "quiet"),), device=True),
    Verb(("boot", "update"), "rewrite grub.cfg from ostree's boot entries",
         "Rewrite SYSROOT/boot/grub/grub.cfg from ostree's BLS entries, atomically. "
         "imagemode-bootloader.service runs it after the staged deployment is finalized at shutdown.",
         c.boot_update, (
             opt("--sysroot", default="/sysroot", metavar="DIR", help="default: /sysroot"),
             flag("--quiet", help="print nothing"),
         ), device=True),
)  # fmt: skip

GROUPS = {
    "container": "operations on container images",
    "boot": "bootloader plumbing (used by the device's own units)",
}


@dataclass(frozen=True)
class Table:
    """A command line: its program name, verbs and groups. imagemode's is the one below; bootc's, on a
    device, is imagemode.bootc's, over the same handlers."""

    prog: str
    verbs: tuple[Verb, ...]
    groups: Mapping[str, str]
    intro: str
    version: str
    # The one line for a verb the table lacks; None: argparse's "unknown verb".
    unsupported: Callable[[str], str] | None = None

    def find(self, words: Sequence[str]) -> Verb | None:
        """The verb `words` begin with, the longest path first (`build base` before `build`)."""
        for v in sorted(self.verbs, key=lambda v: -len(v.path)):
            if tuple(words[: len(v.path)]) == v.path:
                return v
        return None


# ---- parsing -----------------------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, like every other error."""

    def error(self, message: str) -> NoReturn:
        usage_error(self.prog, message)


def usage_error(prog: str, message: str) -> NoReturn:
    sys.stderr.write(f"{prog}: error: {message} (see {prog} --help)\n")
    raise SystemExit(EXIT_USAGE)


VERBOSE = opt("-v", "--verbose", action="store_true", help="log every external command and its output")


def parser(verb: Verb, prog: str = PROG) -> Parser:
    p = Parser(prog=f"{prog} {verb.name}", description=verb.description)
    for o in (VERBOSE, *verb.options):
        p.add_argument(*o.flags, **o.kw)
    return p


def _given(args: argparse.Namespace, dest: str, defaults: dict[str, Any]) -> bool:
    return bool(getattr(args, dest) != defaults.get(dest))


def _spelled(verb: Verb, dest: str) -> str:
    o = next(o for o in verb.options if o.dest == dest)
    return max(o.flags, key=len) if o.flags[0].startswith("-") else o.flags[0].upper()


def check(verb: Verb, p: Parser, args: argparse.Namespace) -> None:
    """Contradictory flags, and flags given without the one they go with, are usage errors."""
    defaults = {o.dest: o.kw.get("default", False if o.kw.get("action") == "store_true" else None)
                for o in verb.options}  # fmt: skip
    for group in verb.exclusive:
        given = [d for d in group if _given(args, d, defaults)]
        if len(given) > 1:
            p.error(f"{_spelled(verb, given[0])} and {_spelled(verb, given[1])} contradict each other")
    for dest, needs in verb.requires:
        if _given(args, dest, defaults) and not _given(args, needs, defaults):
            p.error(f"{_spelled(verb, dest)} goes with {_spelled(verb, needs)}")


def top_help(table: Table | None = None) -> str:
    t = table or IMAGEMODE
    width = max(len(v.name) for v in t.verbs) + 2
    lines = [f"usage: {t.prog} [-v] [--version] VERB ...", "", t.intro, "", "verbs:"]
    for v in t.verbs:
        lines.append(f"  {v.name:<{width}}{v.help}{' (device side)' if v.device else ''}")
    lines += ["", "options:", "  -v, --verbose  log every external command and its output",
              "  --version      print the version", "",
              f"Run '{t.prog} VERB --help' for a verb's options."]  # fmt: skip
    return "\n".join(lines) + "\n"


def group_help(group: str, table: Table | None = None) -> str:
    t = table or IMAGEMODE
    subs = [v for v in t.verbs if v.path[0] == group and len(v.path) > 1]
    lines = [f"usage: {t.prog} {group} [-v] VERB ...", "", f"{t.groups[group]}.", "", "verbs:"]
    lines += [f"  {v.path[1]:<8}{v.help}" for v in subs]
    return "\n".join(lines) + "\n  -v, --verbose  log every external command and its output\n"


def find(words: Sequence[str]) -> Verb | None:
    return IMAGEMODE.find(words)


def _unknown(t: Table, words: list[str]) -> NoReturn:
    """The words name no verb of the table: a group without its verb, a verb the table refuses by name
    (bootc's), or a usage error."""
    group = words[0] in t.groups
    subs = ", ".join(v.path[1] for v in t.verbs if v.path[0] == words[0] and len(v.path) > 1)
    if group and len(words) == 1:
        usage_error(f"{t.prog} {words[0]}", f"a verb is required (one of: {subs})")
    if t.unsupported is not None and not words[0].startswith("-"):
        sys.stderr.write(t.unsupported(" ".join(words[:2]) if group else words[0]) + "\n")
        raise SystemExit(EXIT_USAGE)
    if group:
        usage_error(f"{t.prog} {words[0]}", f"unknown verb {words[1]!r} (one of: {subs})")
    if words[0].startswith("-"):
        usage_error(t.prog, f"unrecognized arguments: {words[0]}")
    usage_error(t.prog, f"unknown verb {words[0]!r}")


def dispatch(argv: Sequence[str], table: Table | None = None) -> tuple[Verb, argparse.Namespace]:
    t = table or IMAGEMODE
    words = list(argv)
    verbose = False
    while words and words[0] in ("-v", "--verbose"):
        verbose, words = True, words[1:]
    if not words or words[0] in ("-h", "--help"):
        sys.stdout.write(top_help(t))
        raise SystemExit(0 if words else EXIT_USAGE)
    if words[0] == "--version":
        print(t.version)
        raise SystemExit(0)
    verb = t.find(words)
    if verb is None:
        if words[0] in t.groups and words[1:2] in (["-h"], ["--help"]):
            sys.stdout.write(group_help(words[0], t))
            raise SystemExit(0)
        _unknown(t, words)
    p = parser(verb, t.prog)
    args = p.parse_args(words[len(verb.path) :])
    args.verbose = args.verbose or verbose
    check(verb, p, args)
    return verb, args


IMAGEMODE = Table(
    PROG, VERBS, GROUPS,
    "Image mode for Linux: build the OS as a bootable container image, turn it into disks, and update "
    "devices from a registry, whole and atomically.",
    f"{PROG} {imagemode.__version__}",
)  # fmt: skip


# ---- output and errors -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, table: Table | None = None) -> int:
    t = table or IMAGEMODE
    verb, args = dispatch(list(sys.argv[1:] if argv is None else argv), t)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(message)s",
                        stream=sys.stderr)  # fmt: skip
    try:
        out = verb.handler(args)
        if isinstance(out, int):
            return out
        emit(out, args)
        return int(getattr(out, "exit_code", 0))
    except ImagemodeError as e:
        print(f"{t.prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        if e.errno == errno.ENOSPC:
            print(f"{t.prog}: error: no space left on device writing {e.filename or 'a file'}; nothing was"
                  " tagged", file=sys.stderr)  # fmt: skip
        else:
            print(f"{t.prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{t.prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        # libostree's errors arrive as GLib.Error; they are as much a one-line error as ours.
        if type(e).__module__.startswith("gi.") and hasattr(e, "message"):
            print(f"{t.prog}: error: libostree: {e.message}", file=sys.stderr)
            return 1
        raise
