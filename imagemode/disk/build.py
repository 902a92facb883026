"""`imagemode disk IMAGE`: lint, import, deploy, customize, write the disk.

Nothing reaches the output directory until the end. Every file is written under a temporary name in
that directory and renamed into place, so a failure (a bad key, a full disk) leaves nothing
half-written.
"""

from __future__ import annotations

import enum
import json
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagemode import atomic
from imagemode.boot import kargs
from imagemode.build.containerfile import lint_image
from imagemode.build.lint import LintFailedError
from imagemode.disk import config as diskconfig
from imagemode.disk import image as diskimage
from imagemode.disk import sysroot as disk_sysroot
from imagemode.disk.image import DiskError
from imagemode.oci import policy as policies
from imagemode.oci.reference import ImageRef, Transport, parse
from imagemode.run import run
from imagemode.store import importer
from imagemode.store.ostree import CommitReader, Repo
from imagemode.ui import Progress, human_size

SSH_KEY_NAME = "id_ed25519"


class DiskType(enum.StrEnum):
    RAW = "raw"
    QCOW2 = "qcow2"
    VMDK = "vmdk"
    VHD = "vhd"

    @property
    def qemu_format(self) -> str:
        return "vpc" if self is DiskType.VHD else self.value


@dataclass(frozen=True)
class DiskOptions:
    image: ImageRef
    types: tuple[DiskType, ...]
    output: Path
    cache_dir: Path
    config: Path | None = None
    target: ImageRef | None = None  # what the device updates from; default: `image`
    # Signature enforcement on the device: None takes the config's, else the image's install config.
    enforce: bool | None = None


@dataclass
class DiskResult:
    image: str
    image_digest: str
    root_uuid: str
    kargs: list[str]
    files: dict[str, int] = field(default_factory=dict)
    ssh_key: str | None = None
    layers_imported: int = 0
    layers_total: int = 0
    target: str = ""  # the image the device follows (its origin)
    enforce: bool = False  # the device takes only signed updates (an ostree-image-signed: origin)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def human(self) -> str:
        lines = [f"from {self.image}\n  digest {self.image_digest}\n  follows {self.target}"]
        if self.enforce:
            lines.append("  updates must be signed: the image's policy.json is enforced (docs/signing.md)")
        lines += [f"  {path}  {human_size(size)}" for path, size in self.files.items()]
        if self.ssh_key:
            first = Path(next(iter(self.files)))
            lines.append(f"  log in: imagemode vm {first} (root, with {first.parent / self.ssh_key})")
        return "\n".join(lines)


PLAN = (
    ("lint", "lint the image; a failure stops here, before anything is written"),
    ("import", "import the image into the ostree store, layer by layer (cached by digest)"),
    ("deploy", "deploy into a directory sysroot: init-fs, os-init, pull-local, deploy"),
    ("customize", "users, SSH keys and the GRUB menu"),
    ("disk", "GPT with ESP (standalone GRUB) and ext4 root by mkfs.ext4 -d; convert"),
)


def _enforce(
    opts: DiskOptions, cfg: diskconfig.DiskConfig, repo: Repo, commit: str, follows: ImageRef
) -> bool:
    """Whether the device enforces signatures, and if so, that the image can: its own policy.json must
    require them for the image the device follows, with key files the image holds. Checked before
    anything is written, since a device that cannot verify its next update never takes one."""
    tree = CommitReader(repo, commit)
    try:
        enforce = next((e for e in (opts.enforce, cfg.enforce, policies.enforce_requested(tree))
                        if e is not None), False)  # fmt: skip
        if not enforce:
            return False
        pol = policies.image_policy(tree)
        if pol is None:
            raise DiskError(
                "signature enforcement is on, and the image has no /etc/containers/policy.json;"
                " nothing was written"
            )
        if follows.transport is not Transport.OCI_ARCHIVE:
            policies.require_signatures(pol, follows)
            if not policies.has_keys(pol.requirements(follows)[1]):
                raise DiskError(
                    f"the image's policy.json has no signature requirement for {follows}: the device"
                    " could take no update from it; nothing was written"
                )
            missing = policies.missing_keys(pol, follows, tree)
            if missing:
                raise DiskError(
                    f"signature enforcement is on, and the image lacks the key {missing[0]} that its"
                    f" policy.json names for {follows}; nothing was written"
                )
    except policies.PolicyError as e:
        raise DiskError(f"{e}; nothing was written") from None
    return True


def build(opts: DiskOptions, progress: Progress) -> DiskResult:
    cfg = diskconfig.load(opts.config) if opts.config else diskconfig.DiskConfig()
    with progress.step(*PLAN[0]):
        report = lint_image(opts.image)
        if report.errors:
            raise LintFailedError(report)
    work_base = opts.cache_dir / "work"
    work_base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="disk-", dir=work_base))
    sysroot = work / "sysroot"
    temps: list[Path] = []
    try:
        repo = Repo(opts.cache_dir / "repo").ensure()
        with progress.step(*PLAN[1]):
            imp = importer.import_image(
                repo, opts.image, work, on_layer=lambda i, n, new: progress.line(f"layer {i}/{n}")
            )
        root_uuid = str(uuid.uuid4())
        cmdline = [
            f"root=UUID={root_uuid}",
            "rw",
            *kargs.commit_kargs(repo, imp.commit),
            *cfg.kernel_append,
        ]
        follows = opts.target.spec if opts.target else imp.image
        enforce = _enforce(opts, cfg, repo, imp.commit, opts.target or parse(imp.image))
        with progress.step(*PLAN[2]):
            sysroot.mkdir()
            deployment = disk_sysroot.deploy(
                sysroot, repo, imp.commit, importer.ref_for(follows), follows, cmdline, imp.store_refs,
                signed=enforce,
            )  # fmt: skip
        result = DiskResult(
            imp.image,
            imp.manifest_digest,
            root_uuid,
            cmdline,
            layers_imported=imp.layers_imported,
            layers_total=imp.layers_total,
            target=follows,
            enforce=enforce,
        )
        with progress.step(*PLAN[3]):
            users = list(cfg.users)
            if not any(u.key for u in users):
                # A disk needs a way in: without a configured key, root gets a fresh one, kept beside it.
                keyfile = work / SSH_KEY_NAME
                run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "imagemode-disk", "-f", keyfile])
                users.append(diskconfig.User("root", key=(work / f"{SSH_KEY_NAME}.pub").read_text()))
                result.ssh_key = SSH_KEY_NAME
            disk_sysroot.customize(sysroot, deployment, diskconfig.DiskConfig(tuple(users)))
        with progress.step(*PLAN[4]):
            content = diskimage.tree_size(sysroot)
            rootfs = diskimage.root_size(content, cfg.root_minsize)
            opts.output.mkdir(parents=True, exist_ok=True)
            raw = opts.output / f".disk.raw.{uuid.uuid4().hex[:8]}.tmp"
            temps.append(raw)
            diskimage.write_raw(sysroot, raw, root_uuid, rootfs, work)
            finals: list[tuple[Path, Path]] = []
            for t in opts.types:
                if t is DiskType.RAW:
                    finals.append((raw, opts.output / "disk.raw"))
                    continue
                tmp = opts.output / f".disk.{t.value}.{uuid.uuid4().hex[:8]}.tmp"
                temps.append(tmp)
                progress.line(f"converting to {t.value}")
                diskimage.convert(raw, tmp, t.qemu_format)
                finals.append((tmp, opts.output / f"disk.{t.value}"))
            if result.ssh_key:
                for name in (SSH_KEY_NAME, f"{SSH_KEY_NAME}.pub"):
                    tmp = opts.output / f".{name}.tmp"
                    temps.append(tmp)
                    shutil.copy2(work / name, tmp)
                    finals.append((tmp, opts.output / name))
            meta = opts.output / ".disk.json.tmp"
            temps.append(meta)
            # All written: now the renames, which cannot fail for lack of space.
            for tmp, final in finals:
                atomic.publish(tmp, final)
                result.files[str(final)] = final.stat().st_size
            meta.write_text(json.dumps(result.__dict__, indent=2) + "\n")
            meta.replace(opts.output / "disk.json")
            result.files[str(opts.output / "disk.json")] = (opts.output / "disk.json").stat().st_size
        return result
    finally:
        for leftover in temps:
            leftover.unlink(missing_ok=True)
        disk_sysroot.remove(sysroot)
        shutil.rmtree(work, ignore_errors=True)
