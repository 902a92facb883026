"""The command line: parse, call one function, print. Every failure is one line and a non-zero exit."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import imagemode
from imagemode.errors import ImagemodeError
from imagemode.ui import human_size

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _json_out(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False))


# ---- build base -------------------------------------------------------------------------------------


def _base_options(args: argparse.Namespace) -> Any:
    from imagemode.build.base import BaseOptions, parse_output
    from imagemode.build.spec import BaseSpec
    from imagemode.oci.reference import local_tag

    spec = BaseSpec(
        release=args.release,
        mirror=args.mirror,
        security_mirror=args.security_mirror,
        extra_packages=tuple(args.package),
    )
    return BaseOptions(
        spec=spec,
        tag=local_tag(args.tag),
        cache_dir=Path(args.cache_dir),
        lock_file=Path(args.lock) if args.lock else None,
        output=parse_output(args.output) if args.output else None,
        use_cache=not args.no_cache,
        source_date_epoch=args.source_date_epoch,
    )


def cmd_build_base(args: argparse.Namespace) -> int:
    from imagemode.build import base
    from imagemode.ui import Progress

    opts = _base_options(args)
    if args.plan:
        p = base.plan(opts)
        if args.json:
            _json_out(p)
            return 0
        print(
            f"Resolved by apt for Debian {p['release']}/{p['architecture']}"
            f" (SOURCE_DATE_EPOCH={p['source_date_epoch']}):"
        )
        width = max(len(x["name"]) for x in p["packages"])
        for x in p["packages"]:
            print(f"  {x['name']:<{width}}  {x['version']:<36} {x['installed_size_kib']:>8} KiB")
        print(f"{len(p['packages'])} packages, {human_size(p['total_installed_kib'] * 1024)} installed")
        cache = "cached" if p["os_layer_cached"] else "not cached"
        print(f"Build steps (OS layer {cache}, key {p['cache_key'][:12]}):")
        for i, s in enumerate(p["steps"], 1):
            print(f"  {i:>2}. {s['name']:<16} {s['summary']}")
        return 0
    progress = Progress(len(base.PLAN_STEPS), quiet=args.json)
    result = base.build(opts, progress)
    total = progress.done("built " + result.tag)
    from dataclasses import asdict, replace

    result = replace(result, seconds=round(total, 1))
    if args.json:
        _json_out(asdict(result))
    else:
        print(
            f"{result.tag}\n  digest   {result.digest}\n  size     {human_size(result.size_bytes)}"
            f"\n  packages {result.packages}\n  OS layer {'cached' if result.cached else 'built'}"
            f" ({result.cache_key[:12]})\n  time     {result.seconds:.1f}s"
        )
    return 0


# ---- build -f Containerfile -------------------------------------------------------------------------


def _print_report(report: Any, as_json: bool) -> None:
    if as_json:
        _json_out(report.to_dict())
        return
    for e in report.errors:
        print(f"error: {e}")
    for w in report.warnings:
        print(f"warning: {w}")
    print(
        f"{report.image}: {len(report.errors)} errors, {len(report.warnings)} warnings,"
        f" {len(report.passed)} checks passed"
    )


def cmd_build(args: argparse.Namespace) -> int:
    from imagemode.build import containerfile

    context = Path(args.context)
    cf = Path(args.file) if args.file else context / "Containerfile"
    if not args.file and not cf.exists() and (context / "Dockerfile").exists():
        cf = context / "Dockerfile"
    opts = containerfile.BuildOptions(
        containerfile=cf,
        tag=containerfile.parse_tag(args.tag),
        context=context,
        build_args=tuple(args.build_arg),
        do_lint=not args.no_lint,
        fatal_warnings=args.fatal_warnings,
        embed=tuple(Path(e) for e in args.embed),
        tls_verify=args.tls_verify,
    )
    log = logging.getLogger("imagemode.build")
    report = containerfile.build(opts, on_line=None if args.verbose else log.info)
    if report is not None:
        _print_report(report, as_json=False)
    print(f"built {opts.tag}")
    return 0


# ---- embed ------------------------------------------------------------------------------------------


def cmd_embed(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from imagemode.embed import sources, store

    wanted = sources.gather([Path(p) for p in args.source])
    if not wanted:
        raise ImagemodeError("the sources name no image")
    if args.dry_run:
        if args.json:
            _json_out([{"ref": str(w.ref), "digest": w.ref.digest, "source": w.source} for w in wanted])
            return 0
        names = [w.ref.name + (f":{w.ref.tag}" if w.ref.tag else "") for w in wanted]
        width = max(len(n) for n in names)
        for name, w in zip(names, wanted, strict=True):
            pinned = w.ref.digest or "(tag: digest read when embedded)"
            print(f"{name:<{width}}  {pinned:<71}  {w.source}")
        print(f"{len(wanted)} images would be embedded; nothing was copied")
        return 0
    if args.root is None:
        raise ImagemodeError("--root is required: the OS tree to embed into ('/' in a RUN step)")
    root = Path(args.root)
    done = store.embed(
        wanted,
        root,
        tls_verify=args.tls_verify,
        on_image=None if args.json else (lambda e: print(f"embedded {e.ref}  {e.digest}")),
    )
    if args.json:
        _json_out({"store": str(root / store.STORE), "images": [asdict(e) for e in done]})
    else:
        print(f"{len(done)} images in {root / store.STORE}; list in {root / store.LIST}")
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from imagemode.build import bundle
    from imagemode.oci.reference import parse_local

    signing = None
    if args.sign_by:
        signing = bundle.Signing(args.sign_by, args.sign_identity, Path(args.sign_passphrase_file) if
                                 args.sign_passphrase_file else None)  # fmt: skip
    elif args.sign_identity or args.sign_passphrase_file:
        raise ImagemodeError("--sign-identity and --sign-passphrase-file go with --sign-by")
    b = bundle.bundle(parse_local(args.image), Path(args.output), signing)
    if args.json:
        _json_out(asdict(b))
        return 0
    print(f"{b.path}: {b.image} {b.digest}, {human_size(b.size_bytes)}")
    if b.signed_as:
        print(f"  signed as {b.signed_as} by {args.sign_by}")
    print(f"  {len(b.embedded)} embedded workload images inside")
    for ref in b.bound:
        print(f"  bound image not inside (pulled by the device at update time): {ref}")
    print(f"apply on a device: imagemode switch --transport oci-archive {b.path}")
    return 0


# ---- container lint ---------------------------------------------------------------------------------


def cmd_lint(args: argparse.Namespace) -> int:
    from imagemode.build import containerfile, lint
    from imagemode.oci.reference import parse_local

    if args.list:
        if args.json:
            _json_out(
                [{"name": r.name, "level": r.level.value, "description": r.description} for r in lint.RULES]
            )
        else:
            for r in lint.RULES:
                print(f"{r.name:<14} {r.level.value:<8} {r.description}")
        return 0
    if not args.image:
        raise ImagemodeError("an IMAGE to lint is required (or --list)")
    report = containerfile.lint_image(parse_local(args.image))
    _print_report(report, args.json)
    failed = bool(report.errors) or (args.fatal_warnings and bool(report.warnings))
    if failed and not args.json:
        first = report.errors[0] if report.errors else report.warnings[0]
        print(f"imagemode: error: {report.image} fails lint: {first}", file=sys.stderr)
    return 1 if failed else 0


# ---- disk -------------------------------------------------------------------------------------------


def cmd_disk(args: argparse.Namespace) -> int:
    from imagemode.build.base import DEFAULT_CACHE
    from imagemode.disk import build as disk
    from imagemode.oci.reference import parse, parse_local
    from imagemode.ui import Progress

    try:
        types = tuple(dict.fromkeys(disk.DiskType(t) for t in args.type))
    except ValueError as e:
        raise ImagemodeError(f"--type: {e}") from None
    opts = disk.DiskOptions(
        image=parse_local(args.image),
        types=types or (disk.DiskType.QCOW2,),
        output=Path(args.output),
        cache_dir=Path(args.cache_dir or DEFAULT_CACHE),
        config=Path(args.config) if args.config else None,
        target=parse(args.target_imgref) if args.target_imgref else None,
        enforce=args.enforce_container_sigpolicy,
    )
    progress = Progress(len(disk.PLAN), quiet=args.json)
    result = disk.build(opts, progress)
    total = progress.done(f"disk from {result.image}")
    if args.json:
        _json_out({**result.__dict__, "seconds": round(total, 1)})
        return 0
    print(f"from {result.image}\n  digest {result.image_digest}\n  follows {result.target}")
    if result.enforce:
        print("  updates must be signed: the image's policy.json is enforced (docs/signing.md)")
    for path, size in result.files.items():
        print(f"  {path}  {human_size(size)}")
    if result.ssh_key:
        print(
            f"  log in: imagemode vm {next(iter(result.files))} (root, with {args.output}/{result.ssh_key})"
        )
    return 0


def cmd_vm(args: argparse.Namespace) -> int:
    from imagemode.run import run_interactive
    from imagemode.vm.qemu import VM

    disk = Path(args.disk)
    if not disk.is_file():
        raise ImagemodeError(f"disk not found: {disk}")
    vm = VM(
        disk,
        memory=args.memory,
        cpus=args.cpus,
        snapshot=args.snapshot,
        serial_log=Path(args.serial_log) if args.serial_log else None,
        ssh_port=args.ssh_port or 0,
        ssh_key=Path(args.ssh_key) if args.ssh_key else None,
    )
    with vm:
        print(f"booting {disk} ({vm.accel}, ssh on 127.0.0.1:{vm.ssh_port})", file=sys.stderr)
        took = vm.wait_ssh(args.timeout)
        print(f"ssh up after {took:.1f}s", file=sys.stderr)
        try:
            if args.exec is not None:
                return run_interactive(vm.ssh_cmd(args.exec))
            return run_interactive(vm.ssh_cmd("", tty=True)[:-1])
        finally:
            vm.poweroff()


def cmd_status(args: argparse.Namespace) -> int:
    from imagemode.host import status_cache
    from imagemode.host.sysroot import booted_path, read_status

    fp = status_cache.fingerprint()  # before the read: a change during it makes the next status read again
    st = read_status()
    if booted_path():
        status_cache.save(fp, st)
    sys.stdout.write(status_cache.render(st, "json" if args.json else args.format, args.booted,
                                         sys.stdout.isatty()))  # fmt: skip
    return 0


def cmd_boot_update(args: argparse.Namespace) -> int:
    from imagemode.boot import grub

    out = grub.update(Path(args.sysroot))
    if not args.quiet:
        print(f"wrote {out}")
    return 0


# ---- device side: upgrade, switch, rollback, prune ---------------------------------------------------


def _reboot() -> None:
    from imagemode.run import run

    print("rebooting", file=sys.stderr)
    run(["systemctl", "reboot"])


def _update(args: argparse.Namespace, image: Any) -> int:
    from imagemode.host import update as up
    from imagemode.host.decisions import Outcome
    from imagemode.ui import Transfer

    if args.apply and getattr(args, "download_only", False):
        raise ImagemodeError("--apply and --download-only contradict each other")
    if args.apply and getattr(args, "check", False):
        raise ImagemodeError("--apply and --check contradict each other")
    opts = up.UpdateOptions(
        image=image,
        check=getattr(args, "check", False),
        download_only=getattr(args, "download_only", False),
        from_downloaded=getattr(args, "from_downloaded", False),
        enforce=getattr(args, "enforce_container_sigpolicy", None),
    )
    quiet = args.quiet or args.json
    say = (lambda s: None) if quiet else (lambda s: print(s, file=sys.stderr))
    r = up.update(opts, on_bytes=Transfer("fetching", quiet=quiet), say=say)
    if args.json:
        _json_out(r.to_dict())
    elif not args.quiet:
        what = f"{r.image} {r.digest}" + (f" (version {r.version})" if r.version else "")
        if r.outcome is Outcome.NO_UPDATE:
            print(f"no update available: {what} is booted")
        elif r.outcome is Outcome.AVAILABLE:
            print(f"update available: {what}\n  imagemode upgrade stages it")
        elif r.outcome is Outcome.RETARGETED:
            print(f"{r.image} is the booted image: the device now follows it (no new deployment)")
        elif r.outcome is Outcome.ALREADY_STAGED:
            print(f"already staged: {what}; it boots at the next restart")
        elif r.outcome is Outcome.FAILED_BEFORE:
            print(f"not staged: {what} failed its health checks here at {r.failed_at}: {r.failed_reason}\n"
                  f"  to allow it again: imagemode health --forget {r.digest}")  # fmt: skip
        else:
            fetched = (
                f"fetched {r.layers_fetched} of {r.layers_total} layers ({human_size(r.bytes_fetched)})"
                if r.layers_total else "applied the downloaded update"
            )  # fmt: skip
            print(f"staged {what}\n  {fetched} in {r.seconds:.1f}s")
            if r.refs_removed:
                print(f"  {r.refs_removed} unused image and layer refs removed; space is freed at next boot")
            if r.outcome is Outcome.DOWNLOADED:
                print("  download only: not applied at shutdown; apply: imagemode upgrade --from-downloaded")
            else:
                print(f"  it boots at the next restart, with {r.tries} tries to pass its health checks;"
                      " imagemode rollback undoes it")  # fmt: skip
    if args.apply and r.outcome in (Outcome.STAGED, Outcome.ALREADY_STAGED):
        _reboot()
    return 0


def cmd_upgrade(args: argparse.Namespace) -> int:
    return _update(args, None)


def cmd_switch(args: argparse.Namespace) -> int:
    from imagemode.oci.reference import parse

    return _update(args, parse(args.image, args.transport))


def cmd_rollback(args: argparse.Namespace) -> int:
    from imagemode.host.rollback import rollback

    r = rollback()
    if args.json:
        _json_out(r.__dict__)
    elif r.queued:
        print(f"next boot: {r.image} {r.digest} (the rollback deployment)")
    else:
        print(f"rollback undone: next boot is the booted deployment again, {r.image}")
    if r.discarded_staged and not args.json:
        print("  the staged deployment was discarded")
    if args.apply:
        _reboot()
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from imagemode.host.prune import prune

    r = prune()
    if args.json:
        _json_out(r)
    elif not args.quiet:
        print(
            f"freed {human_size(r['bytes_freed'])}: {r['refs_removed']} image and layer refs,"
            f" {r['deployments_removed']} deployments"
        )
        for ref in r["bound_images_removed"]:
            print(f"  removed bound image {ref}: no deployment names it")
    return 0


def _print_result(r: Any, boot: bool) -> None:
    from imagemode.health import checks

    # Under systemd, a "<N>" prefix sets the journal priority: failures are errors, warnings warnings.
    prio = {checks.PASSED: "<6>", checks.WARNED: "<4>", checks.FAILED: "<3>"}
    prefix = prio.get(r.status, "") if boot and "INVOCATION_ID" in os.environ else ""
    print(f"{prefix}{r.line()}", flush=True)


def _print_health(rep: dict[str, Any]) -> None:
    from imagemode.health import checks

    print(f"deployment {rep['deployment']}: {rep['image']} {rep['digest']}")
    for r in rep["results"]:
        print(f"  {checks.Result(**r).line()}  [{r['seconds']:.1f}s]")
    print(_verdict_line(rep))
    for a in rep.get("actions", []):
        print(f"  {a}")


def _verdict_line(rep: dict[str, Any]) -> str:
    from imagemode.health import checks

    warned = sum(r["status"] == checks.WARNED for r in rep["results"])
    verdict = "healthy" if rep["healthy"] else "FAILED"
    return f"{verdict} at {rep['at']}: {len(rep['results'])} checks, {warned} warned"


def cmd_health(args: argparse.Namespace) -> int:
    from imagemode.health import state
    from imagemode.host import health
    from imagemode.host import sysroot as sr

    sr.require_booted()  # results and records live on a device: the build host has none to show
    if args.forget:
        n = state.forget(args.forget)
        print(f"forgot {n} failed deployment record{'s' if n != 1 else ''} of {args.forget}")
        return 0
    if args.show:
        rep = state.last()
        if not rep:
            raise ImagemodeError("no health check has run on this device yet (imagemode health runs them)")
    else:
        say = (lambda r: None) if args.json else (lambda r: _print_result(r, args.boot))
        report = health.run(boot=args.boot, say=say)
        rep = report.to_dict()
        if args.boot and not args.json:  # the journal's account of this boot ends with the verdict
            for a in report.actions:
                print(a, flush=True)
            print(_verdict_line(rep), flush=True)
    if args.json:
        _json_out(rep)
    elif not args.boot:
        _print_health(rep)
    if args.boot and rep.get("reboot"):
        _reboot()
    return 0 if rep["healthy"] else 1


def _update_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--apply", action="store_true", help="reboot into the update once it is staged")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _device_verbs(sub: Any) -> None:
    u = _verb(
        sub,
        "upgrade",
        help="fetch the image the device follows and stage it for the next boot",
        description="Read the followed image's manifest; if it changed, fetch the layers the store "
        "lacks, import them, check /etc, and stage a deployment that ostree finalizes at shutdown. "
        "The booted system is not touched. See docs/upgrade.md.",
    )
    u.add_argument(
        "--check", action="store_true", help="only read the manifest; status shows it as cachedUpdate"
    )
    u.add_argument(
        "--download-only",
        action="store_true",
        help="stage, but do not apply at shutdown (apply later with --from-downloaded)",
    )
    u.add_argument(
        "--from-downloaded", action="store_true", help="apply the update staged by --download-only"
    )
    _update_flags(u)
    u.set_defaults(func=cmd_upgrade)

    sw = _verb(
        sub,
        "switch",
        help="follow another image, and stage it",
        description="Like upgrade, to a new image reference, which becomes spec.image. A switch to the "
        "booted image under another name only changes what the device follows.",
    )
    sw.add_argument("image", metavar="IMAGE", help="e.g. registry.example.com/os:stable, oci:/path")
    sw.add_argument(
        "--transport",
        metavar="T",
        help="registry (default), oci, oci-archive or containers-storage",
    )
    sw.add_argument(
        "--enforce-container-sigpolicy",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="updates must pass a policy.json that requires signatures, from now on (the default:"
        " as the device does now; --no-... turns it off)",
    )
    _update_flags(sw)
    sw.set_defaults(func=cmd_switch)

    rb = _verb(
        sub,
        "rollback",
        help="boot the rollback deployment next (again: undo)",
        description="Make the rollback deployment the next boot; a second rollback before the reboot "
        "undoes the first. A staged deployment is discarded.",
    )
    rb.add_argument("--apply", action="store_true", help="reboot now")
    rb.add_argument("--json", action="store_true", help="print the result as JSON")
    rb.set_defaults(func=cmd_rollback)

    h = _verb(
        sub,
        "health",
        help="run the health checks now and show the results",
        description="Run the required and wanted checks (greenboot's layout, docs/health.md) and show "
        "each result. Exit 1 when a required check failed. At boot, imagemode-health.service runs "
        "--boot, which also keeps or rolls back a newly updated deployment.",
    )
    h.add_argument("--json", action="store_true", help="print the results as JSON")
    h.add_argument("--show", action="store_true", help="show the last results without running anything")
    h.add_argument(
        "--boot",
        action="store_true",
        help="this boot's verdict: clear the boot counter, or fall back (imagemode-health.service)",
    )
    h.add_argument(
        "--forget",
        metavar="DIGEST",
        help="let upgrade stage an image that failed here again (a digest, or all)",
    )
    h.set_defaults(func=cmd_health)

    pr = _verb(
        sub,
        "prune",
        help="remove deployments and store content that nothing needs",
        description="Undeploy all but the booted, rollback and staged deployments (pinned ones stay), "
        "remove the images and layers no deployment uses, and print the space freed.",
    )
    pr.add_argument("--json", action="store_true", help="print the result as JSON")
    pr.add_argument("--quiet", action="store_true", help="print nothing but errors")
    pr.set_defaults(func=cmd_prune)


# ---- parser -----------------------------------------------------------------------------------------


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="log every external command and its output")


def _verb(sub: Any, name: str, help: str, description: str) -> argparse.ArgumentParser:
    """A verb's parser, with the options every verb takes."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=description)
    _add_common(p)
    return p


def _group(sub: Any, name: str, help: str, description: str) -> Any:
    """A verb whose first argument is a sub-verb (`container lint`, `boot update`)."""
    g = _verb(sub, name, help, description)
    return g.add_subparsers(dest=f"{name}_verb", metavar="VERB", parser_class=Parser, required=True)


def _tls_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tls-verify",
        type=_bool,
        default=True,
        metavar="BOOL",
        help="false: reach registries over plain HTTP (as podman's flag)",
    )


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


def _lint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", nargs="?", metavar="IMAGE", help="an image in local containers-storage")
    p.add_argument("--fatal-warnings", action="store_true", help="fail on warnings too")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--list", action="store_true", help="list the lint rules and exit")
    p.set_defaults(func=cmd_lint)


def build_base_parser() -> Parser:
    from imagemode.build import spec

    p = Parser(
        prog="imagemode build base",
        description=(
            "Build the bootable Debian base image from Debian packages, into local containers-storage. "
            "apt resolves the package set; the OS layer is cached by the hash of its inputs; "
            "imagemode itself is a thin top layer. Use the result in a Containerfile: FROM "
            + spec.DEFAULT_TAG
        ),
    )
    _add_common(p)
    p.add_argument("-t", "--tag", default=spec.DEFAULT_TAG, help="image tag (default: %(default)s)")
    p.add_argument("--release", default=spec.DEFAULT_RELEASE, help="Debian release (default: %(default)s)")
    p.add_argument("--mirror", default=spec.DEFAULT_MIRROR, help="Debian mirror (default: %(default)s)")
    p.add_argument(
        "--security-mirror",
        default=spec.DEFAULT_SECURITY_MIRROR,
        metavar="URL",
        help="security mirror, '' for none (default: %(default)s)",
    )
    p.add_argument(
        "--package",
        action="append",
        default=[],
        metavar="NAME",
        help="an extra package to install (repeatable)",
    )
    p.add_argument(
        "--lock",
        metavar="FILE",
        help="build exactly the package versions of this lock list (see docs/base-image.md)",
    )
    p.add_argument(
        "--source-date-epoch",
        type=int,
        metavar="N",
        help="timestamp clamp (default: the mirror's Release date, or the lock list's)",
    )
    p.add_argument(
        "--plan",
        action="store_true",
        help="print the resolved package set and the build steps, then exit without building",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--output", metavar="oci:DIR", help="also write the image to an OCI layout or archive")
    p.add_argument("--no-cache", action="store_true", help="rebuild the OS layer even if it is cached")
    from imagemode.build.base import DEFAULT_CACHE

    p.add_argument(
        "--cache-dir",
        default=str(DEFAULT_CACHE),
        metavar="DIR",
        help="cache for package lists, .debs and OS layers (default: %(default)s)",
    )
    p.set_defaults(func=cmd_build_base)
    return p


def build_parser() -> Parser:
    p = Parser(
        prog="imagemode",
        description=(
            "Image mode for Linux: build the OS as a bootable container image, turn it into disks, "
            "and update devices from a registry, whole and atomically."
        ),
        epilog="verbs:\n  build base      build the bootable Debian base image\n"
        "  build           build a Containerfile and lint the result\n"
        "  embed           copy workload images into the OS tree's read-only store\n"
        "  bundle          write an OS image as one oci-archive, for offline updates\n"
        "  container lint  check that an image is bootable (alias: lint)\n"
        "  disk            turn a bootable image into a disk (raw, qcow2, vmdk, vhd)\n"
        "  vm              boot a disk in QEMU, log in over SSH\n"
        "  status          the booted, staged and rollback deployments (device side)\n"
        "  upgrade         fetch and stage the image the device follows (device side)\n"
        "  switch          follow another image, and stage it (device side)\n"
        "  rollback        boot the rollback deployment next (device side)\n"
        "  prune           remove what no deployment needs (device side)\n"
        "  boot update     rewrite the GRUB menu from ostree's entries (device side)\n\n"
        "Run 'imagemode VERB --help' for a verb's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"imagemode {imagemode.__version__}")
    _add_common(p)
    sub = p.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)

    b = _verb(
        sub,
        "build",
        help="build a Containerfile (or 'build base', the base image)",
        description="Build a Containerfile with podman, with the options this machine needs, "
        "then lint the result. The tag is applied only if the build and the lint "
        "pass. For the base image see 'imagemode build base --help'.",
    )
    b.add_argument("context", nargs="?", default=".", metavar="CONTEXT", help="build context (default: .)")
    b.add_argument("-f", "--file", metavar="CONTAINERFILE", help="default: CONTEXT/Containerfile")
    b.add_argument("-t", "--tag", required=True, help="tag of the built image")
    b.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE")
    b.add_argument("--no-lint", action="store_true", help="skip the lint after the build")
    b.add_argument("--fatal-warnings", action="store_true", help="lint warnings fail the build too")
    b.add_argument(
        "--embed",
        action="append",
        default=[],
        metavar="SOURCE",
        help="embed the images SOURCE names (release JSON, manifests, kustomize dir, quadlets, list)",
    )
    _tls_arg(b)
    b.set_defaults(func=cmd_build)

    e = _verb(
        sub,
        "embed",
        help="copy workload images into the OS tree's read-only store",
        description="Copy every image the SOURCEs name into a read-only containers-storage under "
        "ROOT/usr/lib/imagemode/containers/storage, which podman and CRI-O on the device use as an "
        "additional image store, with no copy at start. SOURCE: MicroShift release JSON, Kubernetes "
        "manifests, a kustomize directory, quadlet .container/.image files, or a list of references.",
    )
    e.add_argument("source", nargs="+", metavar="SOURCE")
    e.add_argument(
        "--root",
        help="the OS tree to embed into; '/' in a Containerfile RUN step (no default: a build "
        "host's own /usr is never meant)",
    )
    e.add_argument("--dry-run", action="store_true", help="print what would be embedded; copy nothing")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    _tls_arg(e)
    e.set_defaults(func=cmd_embed)

    bu_ = _verb(
        sub,
        "bundle",
        help="write an OS image as one oci-archive, for offline updates",
        description="Write a local bootable image, with every workload image embedded in it, to one "
        "oci-archive file. A device applies it with no network: "
        "imagemode switch --transport oci-archive PATH.",
    )
    bu_.add_argument("image", metavar="IMAGE", help="a bootable image in local containers-storage")
    bu_.add_argument("-o", "--output", required=True, metavar="FILE", help="the archive to write")
    bu_.add_argument("--sign-by", metavar="FINGERPRINT", help="sign the image's manifest with this GPG key")
    bu_.add_argument(
        "--sign-identity",
        metavar="REF",
        help="the registry reference the signature names, as devices' policies know it,"
        " e.g. registry.example.com/os:2 (default: IMAGE)",
    )
    bu_.add_argument("--sign-passphrase-file", metavar="FILE", help="the key's passphrase, if it has one")
    bu_.add_argument("--json", action="store_true", help="print the result as JSON")
    bu_.set_defaults(func=cmd_bundle)

    csub = _group(
        sub,
        "container",
        help="operations on container images (lint)",
        description="Operations on bootable container images.",
    )
    cl = _verb(
        csub,
        "lint",
        help="check that an image is bootable",
        description="Check a bootable container image. Errors make it unusable, warnings "
        "flag surprises on a device. Exit 1 on an error (or a warning with "
        "--fatal-warnings).",
    )
    _lint_args(cl)

    d = _verb(
        sub,
        "disk",
        help="turn a bootable image into a disk (raw, qcow2, vmdk, vhd)",
        description="Import IMAGE into an ostree store, deploy it into a sysroot, and write "
        "a GPT disk with an ESP (standalone GRUB) and an ext4 root, without loop "
        "devices or mounts. The image is linted first. Files appear in the output "
        "directory only when complete.",
    )
    d.add_argument(
        "image", metavar="IMAGE", help="a local image, or oci:DIR, oci-archive:FILE, docker://REF"
    )
    d.add_argument(
        "--type",
        action="append",
        default=[],
        metavar="TYPE",
        help="raw, qcow2 (default), vmdk or vhd; repeatable",
    )
    d.add_argument("--config", metavar="config.toml", help="customizations in bootc-image-builder's format")
    d.add_argument(
        "-o", "--output", default="output", metavar="DIR", help="output directory (default: output)"
    )
    d.add_argument(
        "--cache-dir", metavar="DIR", help="store and work directory (default: /var/cache/imagemode)"
    )
    d.add_argument(
        "--target-imgref",
        metavar="REF",
        help="the image the device follows for updates, e.g. registry.example.com/os:stable"
        " (default: IMAGE)",
    )
    d.add_argument(
        "--enforce-container-sigpolicy",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the device takes only updates its policy.json finds signed (default: as the disk"
        " config or the image's /usr/lib/bootc/install/*.toml say; else off)",
    )
    d.add_argument("--json", action="store_true", help="print the result as JSON")
    d.set_defaults(func=cmd_disk)

    v = _verb(
        sub,
        "vm",
        help="boot a disk in QEMU and log in over SSH",
        description="Boot DISK with QEMU and OVMF (KVM when it really works, TCG otherwise), "
        "user networking with restrict=on and SSH forwarded on 127.0.0.1. Waits "
        "for SSH, stopping early on grub>, emergency mode, a kernel panic or a "
        "silent console. Without --exec it opens an SSH session, then powers off.",
    )
    v.add_argument("disk", metavar="DISK")
    v.add_argument("--memory", type=int, default=1024, metavar="MiB", help="default: 1024")
    v.add_argument("--cpus", type=int, default=2, help="default: 2")
    v.add_argument("--snapshot", action="store_true", help="never write to DISK")
    v.add_argument("--serial-log", metavar="FILE", help="append the serial console to FILE")
    v.add_argument("--ssh-port", type=int, metavar="PORT", help="host port for SSH (default: a free one)")
    v.add_argument("--ssh-key", metavar="FILE", help="default: id_ed25519 beside DISK")
    v.add_argument("--exec", metavar="CMD", help="run CMD in the guest, power off, exit with its status")
    v.add_argument("--timeout", type=float, default=600, metavar="S", help="boot timeout (default: 600)")
    v.set_defaults(func=cmd_vm)

    s = _verb(
        sub,
        "status",
        help="the booted, staged and rollback deployments",
        description="Show the host as bootc does (apiVersion org.containers.bootc/v1, kind "
        "BootcHost): human text on a terminal, YAML otherwise.",
    )
    s.add_argument("--json", action="store_true", help="same as --format json")
    s.add_argument("--format", choices=("humanreadable", "yaml", "json"), help="output format")
    s.add_argument("--booted", action="store_true", help="only the booted deployment")
    s.set_defaults(func=cmd_status)

    btsub = _group(
        sub,
        "boot",
        help="bootloader plumbing (used by the device's own units)",
        description="Bootloader plumbing.",
    )
    bu = _verb(
        btsub,
        "update",
        help="rewrite grub.cfg from ostree's boot entries",
        description="Rewrite SYSROOT/boot/grub/grub.cfg from ostree's BLS entries, "
        "atomically. imagemode-bootloader.service runs it at boot and after "
        "the staged deployment is finalized at shutdown.",
    )
    bu.add_argument("--sysroot", default="/sysroot", metavar="DIR", help="default: /sysroot")
    bu.add_argument("--quiet", action="store_true")
    bu.set_defaults(func=cmd_boot_update)

    _device_verbs(sub)

    al = _verb(
        sub, "lint", help="alias of 'container lint'", description="Alias of 'imagemode container lint'."
    )
    _lint_args(al)
    return p


def _dispatch(argv: Sequence[str]) -> tuple[argparse.Namespace, Callable[[argparse.Namespace], int]]:
    # "build base" is its own verb, but argparse cannot mix a sub-verb with build's CONTEXT positional.
    if len(argv) >= 2 and argv[0] == "build" and argv[1] == "base":
        args = build_base_parser().parse_args(argv[2:])
    else:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.verb is None:
            parser.print_help()
            raise SystemExit(EXIT_USAGE)
    func: Callable[[argparse.Namespace], int] = args.func
    return args, func


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, func = _dispatch(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING,
        format="%(message)s",
        stream=sys.stderr,
    )
    try:
        return func(args)
    except ImagemodeError as e:
        print(f"imagemode: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        if e.errno == errno.ENOSPC:
            print(
                f"imagemode: error: no space left on device writing {e.filename or 'a file'};"
                " nothing was tagged",
                file=sys.stderr,
            )
        else:
            print(f"imagemode: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("imagemode: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        # libostree's errors arrive as GLib.Error; they are as much a one-line error as ours.
        if type(e).__module__.startswith("gi.") and hasattr(e, "message"):
            print(f"imagemode: error: libostree: {e.message}", file=sys.stderr)
            return 1
        raise
