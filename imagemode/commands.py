"""What each verb does: its options turned into a call, and the call's result returned for
imagemode.cli to print. Each handler imports what it needs when it runs, so that a verb starts
without the imports of the others (the device's own verbs, above all).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from imagemode.errors import ImagemodeError
from imagemode.output import Result, emit


def _path(text: str | None) -> Path | None:
    return Path(text) if text else None


def _reboot() -> None:
    from imagemode.run import run

    print("rebooting", file=sys.stderr)
    run(["systemctl", "reboot"])


# ---- build side --------------------------------------------------------------------------------------


def build_base(args: argparse.Namespace) -> Result:
    from dataclasses import replace

    from imagemode.build import base
    from imagemode.build.spec import BaseSpec
    from imagemode.oci.reference import local_tag, parse_local
    from imagemode.ui import Progress

    spec = BaseSpec(release=args.release, mirror=args.mirror, security_mirror=args.security_mirror,
                    extra_packages=tuple(args.package))  # fmt: skip
    opts = base.BaseOptions(
        spec=spec,
        tag=local_tag(args.tag),
        cache_dir=Path(args.cache_dir),
        lock_file=_path(args.lock),
        output=base.parse_output(args.output) if args.output else None,
        use_cache=not args.no_cache,
        source_date_epoch=args.source_date_epoch,
        single_layer=args.single_layer,
        rebase=args.rebase,
        prior=parse_local(args.prior) if args.prior else None,
    )
    if args.plan:
        return base.plan(opts)
    progress = Progress(len(base.PLAN_STEPS), quiet=args.json)
    result = base.build(opts, progress)
    return replace(result, seconds=round(progress.done("built " + result.tag), 1))


def build(args: argparse.Namespace) -> int:
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
        rechunk=args.rechunk,
    )
    log = logging.getLogger("imagemode.build")
    report = containerfile.build(opts, on_line=None if args.verbose else log.info)
    if report is not None:
        print(report.human())
    print(f"built {opts.tag}")
    return 0


def rechunk(args: argparse.Namespace) -> Result:
    from imagemode.build import rechunk as r
    from imagemode.oci.reference import parse_local

    opts = r.RechunkOptions(
        image=parse_local(args.image),
        tag=_tag(args.tag),
        prior=parse_local(args.prior) if args.prior else None,
        rebase=args.rebase,
        source_date_epoch=args.source_date_epoch,
    )
    return r.rechunk(opts, say=(lambda s: None) if args.json else (lambda s: print(s, file=sys.stderr)))


def _tag(text: str) -> Any:
    from imagemode.build.containerfile import parse_tag

    return parse_tag(text)


def embed(args: argparse.Namespace) -> Result:
    from imagemode.embed import sources, store

    wanted = sources.gather([Path(p) for p in args.source])
    if not wanted:
        raise ImagemodeError("the sources name no image")
    if args.dry_run:
        return sources.Plan(tuple(wanted))
    if args.root is None:
        raise ImagemodeError("--root is required: the OS tree to embed into ('/' in a RUN step)")
    root = Path(args.root)
    say = None if args.json else (lambda e: print(f"embedded {e.ref}  {e.digest}"))
    return store.Stored(root, tuple(store.embed(wanted, root, tls_verify=args.tls_verify, on_image=say)))


def bundle(args: argparse.Namespace) -> Result:
    from imagemode.build import bundle as b
    from imagemode.oci.reference import parse_local

    signing = (
        b.Signing(args.sign_by, args.sign_identity, _path(args.sign_passphrase_file))
        if args.sign_by
        else None
    )
    return b.bundle(parse_local(args.image), Path(args.output), signing)


def lint(args: argparse.Namespace) -> Result | int:
    from imagemode.build import containerfile
    from imagemode.build import lint as rules
    from imagemode.oci.reference import parse_local

    if args.list:
        return rules.Rules(rules.RULES)
    if not args.image:
        raise ImagemodeError("an IMAGE to lint is required (or --list)")
    report = containerfile.lint_image(parse_local(args.image))
    failed = bool(report.errors) or (args.fatal_warnings and bool(report.warnings))
    if failed:
        emit(report, args)
        if not args.json:
            first = report.errors[0] if report.errors else report.warnings[0]
            print(f"imagemode: error: {report.image} fails lint: {first}", file=sys.stderr)
        return 1
    return report


def disk(args: argparse.Namespace) -> Result:
    from dataclasses import replace

    from imagemode.build.spec import DEFAULT_CACHE
    from imagemode.disk import build as d
    from imagemode.oci.reference import parse, parse_local
    from imagemode.ui import Progress

    try:
        types = tuple(dict.fromkeys(d.DiskType(t) for t in args.type))
    except ValueError as e:
        raise ImagemodeError(f"--type: {e}") from None
    opts = d.DiskOptions(
        image=parse_local(args.image),
        types=types or (d.DiskType.QCOW2,),
        output=Path(args.output),
        cache_dir=Path(args.cache_dir or DEFAULT_CACHE),
        config=_path(args.config),
        target=parse(args.target_imgref) if args.target_imgref else None,
        enforce=args.enforce_container_sigpolicy,
    )
    progress = Progress(len(d.PLAN), quiet=args.json)
    result = d.build(opts, progress)
    return replace(result, seconds=round(progress.done(f"disk from {result.image}"), 1))


def vm(args: argparse.Namespace) -> int:
    from imagemode.run import run_interactive
    from imagemode.vm.qemu import VM

    disk = Path(args.disk)
    if not disk.is_file():
        raise ImagemodeError(f"disk not found: {disk}")
    machine = VM(disk, memory=args.memory, cpus=args.cpus, snapshot=args.snapshot,
                 serial_log=_path(args.serial_log), ssh_port=args.ssh_port or 0,
                 ssh_key=_path(args.ssh_key))  # fmt: skip
    with machine:
        print(f"booting {disk} ({machine.accel}, ssh on 127.0.0.1:{machine.ssh_port})", file=sys.stderr)
        print(f"ssh up after {machine.wait_ssh(args.timeout):.1f}s", file=sys.stderr)
        try:
            if args.exec is not None:
                return run_interactive(machine.ssh_cmd(args.exec))
            return run_interactive(machine.ssh_cmd("", tty=True)[:-1])
        finally:
            machine.poweroff()


# ---- device side -------------------------------------------------------------------------------------


def status(args: argparse.Namespace) -> int:
    from imagemode.host import status_cache
    from imagemode.host.sysroot import booted_path, read_status

    fp = status_cache.fingerprint()  # before the read: a change during it makes the next status read again
    st = read_status()
    if booted_path():
        status_cache.save(fp, st)
    fmt = "json" if args.json else args.format
    sys.stdout.write(status_cache.render(st, fmt, args.booted, sys.stdout.isatty()))
    return 0


def _update(args: argparse.Namespace, image: Any) -> int:
    from imagemode.host import update as up
    from imagemode.host.decisions import Outcome
    from imagemode.ui import Transfer

    opts = up.UpdateOptions(
        image=image,
        check=getattr(args, "check", False),
        download_only=getattr(args, "download_only", False),
        from_downloaded=getattr(args, "from_downloaded", False),
        enforce=getattr(args, "enforce_container_sigpolicy", None),
        tag=getattr(args, "tag", None),
        progress_fd=getattr(args, "progress_fd", None),
    )
    quiet = args.quiet or args.json
    say = (lambda s: None) if quiet else (lambda s: print(s, file=sys.stderr))
    r = up.update(opts, on_bytes=Transfer("fetching", quiet=quiet), say=say)
    emit(r, args)
    if args.apply and r.outcome in (Outcome.STAGED, Outcome.ALREADY_STAGED, Outcome.RETARGETED):
        _reboot()
    return 0


def upgrade(args: argparse.Namespace) -> int:
    return _update(args, None)


def switch(args: argparse.Namespace) -> int:
    from imagemode.oci.reference import parse

    return _update(args, parse(args.image, args.transport))


def rollback(args: argparse.Namespace) -> int:
    from imagemode.host import rollback as rb

    emit(rb.rollback(), args)
    if args.apply:
        _reboot()
    return 0


def usr_overlay(args: argparse.Namespace) -> Result:
    from imagemode.host import usr_overlay as ov

    return ov.unlock(read_only=args.read_only)


def prune(args: argparse.Namespace) -> Result:
    from imagemode.host import prune as p

    return p.prune()


def health(args: argparse.Namespace) -> int:
    from imagemode.health import state
    from imagemode.host.sysroot import require_booted

    require_booted()  # results and records live on a device: the build host has none to show
    if args.forget:
        n = state.forget(args.forget)
        print(f"forgot {n} failed deployment record{'s' if n != 1 else ''} of {args.forget}")
        return 0
    if args.show:
        rec = state.last()
        if not rec:
            raise ImagemodeError("no health check has run on this device yet (imagemode health runs them)")
        shown = state.Run(rec)
    else:
        from imagemode.host import verdict

        journal = args.boot and "INVOCATION_ID" in os.environ
        say = (lambda r: None) if args.json else (lambda r: print(r.journal_line(journal), flush=True))
        shown = state.Run(verdict.run(boot=args.boot, say=say).to_dict(), boot=args.boot)
    emit(shown, args)
    if args.boot and shown.record.get("reboot"):
        _reboot()
    return shown.exit_code


def boot_update(args: argparse.Namespace) -> int:
    from imagemode.boot import grub

    out = grub.update(Path(args.sysroot))
    if not args.quiet:
        print(f"wrote {out}")
    return 0
