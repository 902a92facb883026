"""`imagemode build -f Containerfile`: a podman build with this machine's options, then a lint.

The image gets its tag only once it has built and passed lint: podman builds under a temporary tag, so a
failed build or a failed lint never leaves a half-built image under the name the user asked for.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from imagemode.build import lint
from imagemode.embed import layer, sources
from imagemode.errors import ImagemodeError
from imagemode.oci import storage
from imagemode.oci.reference import ImageRef, Transport, local_tag
from imagemode.run import run


def isolation() -> str:
    """crun refuses to run without cgroup v2 ("cgroups in hybrid mode not supported"): chroot works."""
    return "oci" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "chroot"


def lint_image(ref: ImageRef) -> lint.Report:
    """Lint a local image, or one from any transport by way of a temporary local copy."""
    if ref.transport is not Transport.CONTAINERS_STORAGE:
        with storage.as_local(ref, "lint") as temp:
            report = lint_image(temp)
        report.image = ref.skopeo
        return report
    labels = storage.labels(ref)
    with storage.mounted(ref) as root:
        return lint.lint_tree(root, labels, image=str(ref))


@dataclass(frozen=True)
class BuildOptions:
    containerfile: Path
    tag: ImageRef
    context: Path
    build_args: tuple[str, ...] = ()
    do_lint: bool = True
    fatal_warnings: bool = False
    embed: tuple[Path, ...] = ()  # sources of workload images to embed (imagemode.embed)
    tls_verify: bool = True  # for the registries of embedded images
    rechunk: bool = False  # the result grouped into layers by package before it is tagged


def build(opts: BuildOptions, on_line: Callable[[str], None] | None = None) -> lint.Report | None:
    if not opts.containerfile.is_file():
        raise ImagemodeError(f"Containerfile not found: {opts.containerfile}")
    if not opts.context.is_dir():
        raise ImagemodeError(f"build context is not a directory: {opts.context}")
    temp = local_tag(f"localhost/imagemode-build-tmp:{secrets.token_hex(6)}")
    args: Sequence[str] = [f"--build-arg={a}" for a in opts.build_args]
    # The sources are read before anything is built: a bad one costs no build time.
    wanted = sources.gather(list(opts.embed)) if opts.embed else []
    if opts.embed and not wanted:
        raise ImagemodeError("--embed: the sources name no image")
    built = temp
    try:
        run(
            [
                "podman",
                "build",
                f"--isolation={isolation()}",
                "--force-rm",
                "--layers",
                "-f",
                opts.containerfile,
                "-t",
                str(temp),
                *args,
                opts.context,
            ],
            on_line=on_line,
        )
        if wanted:
            built = local_tag(f"localhost/imagemode-build-tmp:{secrets.token_hex(6)}-embed")
            layer.add_layer(
                temp, built, wanted, isolation=isolation(), tls_verify=opts.tls_verify, on_line=on_line
            )
        report = lint_image(built) if opts.do_lint else None
        if report is not None:
            report.image = str(opts.tag)
        if report is not None and (report.errors or (opts.fatal_warnings and report.warnings)):
            raise lint.LintFailedError(report)
        if opts.rechunk:
            from imagemode.build import rechunk

            rechunk.rechunk(rechunk.RechunkOptions(built, opts.tag), say=on_line or (lambda s: None))
        else:
            storage.tag(str(built), opts.tag)
        return report
    finally:
        storage.untag(temp)
        if built != temp:
            storage.untag(built)


def parse_tag(text: str) -> ImageRef:
    ref = local_tag(text)
    if ref.transport is not Transport.CONTAINERS_STORAGE:
        raise ImagemodeError(f"-t {text!r}: a tag names an image in local containers-storage")
    return ref
