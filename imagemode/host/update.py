"""`upgrade` and `switch`: fetch an image, import it, and stage it to boot next.

One operation, two ways to name the image: `upgrade` follows the reference the device already
follows, `switch` follows a new one. The order is the safety argument:

1. read the manifest and config (no layer): an unchanged image stops here ("no update available");
2. fetch and import the missing layers into the store, lint the merged tree;
3. check the device's /etc against the new image's (imagemode.host.etc);
4. stage: ostree checks the tree out now and finalizes it at shutdown (ostree-finalize-staged), which
   merges /etc at that moment and switches the boot entries atomically.

Until step 4 nothing but the store has changed; a failure anywhere leaves the booted system, its
/etc and its boot entries as they were.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from imagemode import atomic
from imagemode.boot import grubenv, kargs
from imagemode.embed import bound as bound_images
from imagemode.errors import ImagemodeError
from imagemode.health import config as health_config
from imagemode.health import state as health_state
from imagemode.host import bound, decisions, etc, origin, preview, progress, prune
from imagemode.host import ostree_api as api
from imagemode.host import sysroot as sr
from imagemode.host.decisions import Outcome
from imagemode.host.status import image_reference
from imagemode.oci import auth
from imagemode.oci import policy as policies
from imagemode.oci.reference import ImageRef, Transport, parse
from imagemode.store import fetch, importer, meta
from imagemode.store.libostree import gi
from imagemode.store.ostree import Repo
from imagemode.ui import human_size


class EtcConflictError(ImagemodeError):
    pass


@dataclass(frozen=True)
class UpdateOptions:
    image: ImageRef | None = None  # None: the image the device follows
    check: bool = False
    download_only: bool = False
    from_downloaded: bool = False
    # Signature enforcement (bootc's --enforce-container-sigpolicy). None: as the followed deployment
    # has it, so that a switch never turns it off unasked.
    enforce: bool | None = None
    tag: str | None = None  # upgrade --tag: the followed image under this tag (bootc's upgrade --tag)
    progress_fd: int | None = None  # progress-v0 JSON lines on this descriptor (imagemode.host.progress)


@dataclass(frozen=True)
class UpdateResult:
    outcome: Outcome
    image: str
    digest: str = ""
    version: str | None = None
    layers_total: int = 0
    layers_fetched: int = 0
    bytes_fetched: int = 0
    seconds: float = 0.0
    staged: str = ""  # checksum.serial of the staged deployment
    kargs: tuple[str, ...] = ()
    refs_removed: int = 0  # image and layer refs nothing uses; objects freed at the next boot
    tries: int = 0  # boots the staged deployment gets to become healthy (docs/health.md)
    failed_at: str = ""  # FAILED_BEFORE: when, and why
    failed_reason: str = ""
    preview: preview.Preview | None = None  # AVAILABLE: what it would download and change
    next_step: str = "imagemode upgrade"  # what stages it (AVAILABLE)

    def to_dict(self) -> dict[str, Any]:
        d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}
        del d["preview"], d["next_step"]
        if self.preview is not None:
            d.update(self.preview.to_dict())
        return d

    def human(self) -> str:
        what = f"{self.image} {self.digest}" + (f" (version {self.version})" if self.version else "")
        match self.outcome:
            case Outcome.NO_UPDATE:
                return f"no update available: {what} is booted"
            case Outcome.AVAILABLE:
                shown = self.preview.lines() if self.preview is not None else []
                return "\n  ".join([f"update available: {what}", *shown, f"{self.next_step} stages it"])
            case Outcome.RETARGETED:
                return (f"{self.image} is the booted image under another name: staged a deployment that"
                        " follows it (nothing fetched); it boots at the next restart")  # fmt: skip
            case Outcome.ALREADY_STAGED:
                return f"already staged: {what}; it boots at the next restart"
            case Outcome.FAILED_BEFORE:
                return (f"not staged: {what} failed its health checks here at {self.failed_at}:"
                        f" {self.failed_reason}\n"
                        f"  to allow it again: imagemode health --forget {self.digest}")  # fmt: skip
        fetched = (
            f"fetched {self.layers_fetched} of {self.layers_total} layers ({human_size(self.bytes_fetched)})"
            if self.layers_total else "applied the downloaded update"
        )  # fmt: skip
        lines = [f"staged {what}", f"  {fetched} in {self.seconds:.1f}s"]
        if self.refs_removed:
            lines.append(
                f"  {self.refs_removed} unused image and layer refs removed; space is freed at next boot"
            )
        if self.outcome is Outcome.DOWNLOADED:
            lines.append(
                "  download only: not applied at shutdown; apply: imagemode upgrade --from-downloaded"
            )
        else:
            lines.append(f"  it boots at the next restart, with {self.tries} tries to pass its health"
                         " checks; imagemode rollback undoes it")  # fmt: skip
        return "\n".join(lines)


def followed_image(sysroot: api.Sysroot) -> ImageRef:
    """The image the device follows: the staged deployment's, else the booted one's."""
    dep = sysroot.get_staged_deployment() or sysroot.get_booted_deployment()
    image = sr.origin_of(dep).image
    if not image:
        raise ImagemodeError("the booted deployment follows no image (its origin names none); use switch")
    return parse(image)


def _same_image(sysroot: api.Sysroot, dep: api.Deployment | None, remote: fetch.Remote) -> bool:
    """The same manifest, or the same config: an image pushed again with other compression is the same."""
    if dep is None:
        return False
    csum = dep.get_csum()
    if sr.commit_meta(sysroot, csum, meta.DIGEST) == remote.digest:
        return True
    manifest = json.loads(sr.commit_meta(sysroot, csum, meta.MANIFEST) or "{}")
    return bool(manifest) and manifest.get("config", {}).get("digest") == remote.config_digest


def _image_status(remote: fetch.Remote) -> dict[str, Any]:
    """bootc's ImageStatus, for cachedUpdate."""
    created = remote.config.get("created")
    return {
        "image": image_reference(remote.ref.spec),
        "version": remote.version,
        "timestamp": created[:19] + "Z" if isinstance(created, str) and len(created) >= 19 else None,
        "imageDigest": remote.digest,
        "architecture": remote.config.get("architecture", ""),
    }


def _pulling(events: progress.Events, remote: fetch.Remote) -> fetch.OnLayers:
    """The fetch's bytes per layer, as ProgressBytes: every layer whole is always told."""
    sizes = {str(d["digest"]): int(d["size"]) for d in remote.manifest["layers"]}
    named = False

    def heard(per_layer: dict[str, int], in_flight: int) -> None:
        nonlocal named
        if not named:  # the first call names the layers the pull fetches
            events.layers({d: sizes.get(d, 0) for d in per_layer})
            named = True
        whole = all(n >= sizes.get(d, 0) for d, n in per_layer.items())
        events.bytes(per_layer, in_flight, force=whole)

    return heard


def _unlock_download(staged: api.Deployment) -> None:
    if sr.download_only(staged):
        sr.DOWNLOAD_ONLY.unlink()


def _keyfile(text: str) -> api.KeyFile:
    GLib = gi().GLib
    kf = GLib.KeyFile()
    kf.load_from_data(text, len(text.encode()), GLib.KeyFileFlags.NONE)
    return cast(api.KeyFile, kf)


def check_etc(sysroot: api.Sysroot, repo: Repo, booted: api.Deployment, commit: str, work: Path) -> None:
    new_etc = work / "new-etc"
    repo.checkout_subpath(commit, "usr/etc", new_etc)  # no /etc in the image: nothing can clash
    old_etc = sr.deployment_dir(sysroot, booted) / "usr/etc"
    found = etc.conflicts(Path("/etc"), old_etc, new_etc)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise EtcConflictError(
            f"/etc/{found[0]}{more}: the update cannot merge /etc; move the local path away and retry."
            " Nothing was staged"
        )


def new_kargs(sysroot: api.Sysroot, repo: Repo, merge: api.Deployment, commit: str) -> list[str]:
    new = kargs.commit_kargs(repo, commit)  # the new image's kargs.d must be right, or nothing is staged
    try:
        old_image = kargs.commit_kargs(repo, merge.get_csum())
    except kargs.KargsError:
        # The running image's own kargs.d is broken: it must not keep the device from the fix.
        old_image = []
    return kargs.replace_image_kargs(sr.kargs_of(merge), old_image, new)


def stage(
    sysroot: api.Sysroot,
    commit: str,
    target: ImageRef,
    merge: api.Deployment,
    args: list[str],
    hold: bool,
    tries: int,
    signed: bool = False,
) -> str:
    """Stage `commit` for the next boot; `hold`: leave it unfinalized at shutdown (--download-only).
    It gets `tries` boots to become healthy (grubenv; they count once it is the default). Returns the
    new deployment's checksum.serial."""
    if hold:
        # Before staging: a shutdown between the two must not finalize what is download-only.
        atomic.write(sr.DOWNLOAD_ONLY, b"pending\n")
    try:
        _, new = sysroot.stage_tree(
            origin.STATEROOT, commit, _keyfile(origin.origin(target.spec, signed)), merge, args, None
        )
    except Exception:
        if hold:
            sr.DOWNLOAD_ONLY.unlink(missing_ok=True)
        raise
    serial = api.dep_id(new)
    grubenv.arm(grubenv.PHYSICAL, serial, tries)
    if hold:
        atomic.write(sr.DOWNLOAD_ONLY, (serial + "\n").encode())
        atomic.write(sr.DOWNLOADED, (commit + "\n").encode())
    else:
        sr.DOWNLOAD_ONLY.unlink(missing_ok=True)
        sr.DOWNLOADED.unlink(missing_ok=True)  # a staged update supersedes what was downloaded
    return serial


def clear_stale_work(root: Path) -> int:
    """Remove the work directories of updates that died (a power cut, a kill): an update runs only
    with the sysroot lock held, so any `update-*` found under it is no one's. Found by
    bench/powercut.py: a cut during the import left its layout behind, hundreds of MB. Returns how
    many were removed."""
    stale = [d for d in root.glob("update-*") if d.is_dir() and not d.is_symlink()]
    for d in stale:
        shutil.rmtree(d, ignore_errors=True)
    return len(stale)


def with_tag(ref: ImageRef, tag: str) -> ImageRef:
    """`ref` under another tag (upgrade --tag), checked as a reference is; the digest goes with the old
    tag."""
    if ref.transport in (Transport.OCI, Transport.OCI_ARCHIVE):
        return parse(f"{ref.transport.value}:{ref.path}:{tag}")
    return parse(f"{ref.name}:{tag}", ref.transport)


def update(
    opts: UpdateOptions,
    on_bytes: fetch.OnBytes | None = None,
    say: Callable[[str], None] = lambda s: None,
) -> UpdateResult:
    events = progress.Events(opts.progress_fd)  # a bad descriptor is refused before anything is read
    try:
        return _update(opts, on_bytes, say, events)
    except (policies.PolicyError, fetch.SignatureError) as e:
        # The trust policy's refusals, from wherever they came: the person at the device learns that
        # the running system is as it was.
        text = str(e)
        raise type(e)(
            text if text.endswith("nothing was staged") else f"{text}; nothing was staged"
        ) from None


def _update(
    opts: UpdateOptions, on_bytes: fetch.OnBytes | None, say: Callable[[str], None], events: progress.Events
) -> UpdateResult:
    sr.require_booted()
    t0 = time.monotonic()
    events.start()
    with sr.locked() as sysroot:
        booted = sr.booted(sysroot)
        staged = sysroot.get_staged_deployment()
        target = opts.image or followed_image(sysroot)
        if opts.tag is not None:
            target = with_tag(target, opts.tag)
        if opts.from_downloaded:
            if staged is None or not sr.download_only(staged):
                raise ImagemodeError(
                    "no downloaded update is staged (see imagemode upgrade --download-only)"
                )
            _unlock_download(staged)
            d = sr.describe(sysroot, staged, staged=True)
            return UpdateResult(Outcome.STAGED, d.image, d.digest, d.version, staged=d.id)
        authfile = auth.find()
        followed = staged or booted
        enforce = sr.origin_of(followed).signed if opts.enforce is None else opts.enforce
        trust = policies.Trust(enforce=enforce)
        if enforce and target.transport is not Transport.OCI_ARCHIVE:
            # A bundle's own signatures are checked against the identity they sign (oci.archive).
            policies.require_signatures(policies.load(trust.policy), target)
        say(f"reading {target.skopeo}")
        events.step(0, target.spec)
        remote = fetch.inspect(target, authfile, trust=trust)
        booted_image = sr.origin_of(booted).image

        def said(outcome: Outcome, staged: str = "", shown: preview.Preview | None = None) -> UpdateResult:
            step = "imagemode upgrade" if opts.image is None else f"imagemode switch {target.spec}"
            return UpdateResult(outcome, target.skopeo, remote.digest, remote.version, staged=staged,
                                preview=shown, next_step=step)  # fmt: skip

        failed = health_state.failed_image(remote.digest)
        plan = decisions.plan_update(decisions.UpdateFacts(
            booted_is_it=_same_image(sysroot, booted, remote),
            booted_follows_it=booted_image == target.spec and sr.origin_of(booted).signed == enforce,
            staged=staged is not None,
            staged_is_it=_same_image(sysroot, staged, remote) and sr.origin_of(staged).image == target.spec
            and sr.origin_of(staged).signed == enforce,
            failed_here=failed is not None,
            check=opts.check,
            download_only=opts.download_only,
        ))  # fmt: skip
        if plan.drop_staged and staged is not None:
            sysroot.write_deployments([d for d in sysroot.get_deployments() if not sr.same(d, staged)], None)
            sr.DOWNLOAD_ONLY.unlink(missing_ok=True)
        if plan.outcome is Outcome.FAILED_BEFORE and failed is not None:
            return UpdateResult(
                Outcome.FAILED_BEFORE, target.skopeo, remote.digest, remote.version,
                failed_at=failed.get("at", ""), failed_reason=failed.get("reason", ""),
            )  # fmt: skip
        if plan.outcome is Outcome.RETARGETED:
            tries = health_config.load().tries
            merge = sysroot.get_merge_deployment(origin.STATEROOT) or booted
            prune.drop_extra_deployments(sysroot)
            serial = stage(sysroot, booted.get_csum(), target, merge, sr.kargs_of(merge), opts.download_only,
                           tries, enforce)  # fmt: skip
            sr.CACHED_UPDATE.unlink(missing_ok=True)
            events.staging(len(progress.STAGING), target.spec)
            return UpdateResult(Outcome.RETARGETED, target.skopeo, remote.digest, remote.version,
                                staged=serial, tries=tries)  # fmt: skip
        if plan.outcome not in (Outcome.STAGED, Outcome.DOWNLOADED):
            # What it would download and change, before a layer is fetched (docs/chunking.md)
            shown = (
                preview.preview(Repo(sr.REPO), booted.get_csum(), remote)
                if plan.outcome is Outcome.AVAILABLE
                else None
            )
            # cachedUpdate is about the image the device follows; a switch --check elsewhere is not it
            follows = opts.image is None or target.spec == sr.origin_of(staged or booted).image
            if plan.cached_update is True and follows:
                cached = _image_status(remote)
                if shown is not None:
                    cached["preview"] = shown.status()
                atomic.write(sr.CACHED_UPDATE, (json.dumps(cached) + "\n").encode())
            elif plan.cached_update is False:
                sr.CACHED_UPDATE.unlink(missing_ok=True)
            if plan.outcome is Outcome.ALREADY_STAGED:
                assert staged is not None
                if plan.unlock_download:
                    _unlock_download(staged)
                d = sr.describe(sysroot, staged, staged=True)
                return said(plan.outcome, d.id)
            return said(plan.outcome, shown=shown)
        tries = health_config.load().tries  # a broken health.toml stops the update before it starts
        repo = Repo(sr.REPO)
        sr.WORK.mkdir(parents=True, exist_ok=True)
        clear_stale_work(sr.WORK)
        work = Path(tempfile.mkdtemp(prefix="update-", dir=sr.WORK))
        try:
            say(f"importing {remote.digest}")
            imp = importer.import_image(
                repo, target, work, remote=remote, authfile=authfile, on_bytes=on_bytes,
                check_bootable=True, trust=trust, on_layers=_pulling(events, remote),
                on_layer=lambda i, n, new: events.importing(i, n),
            )  # fmt: skip
            events.staging(0)
            check_etc(sysroot, repo, booted, imp.commit, work)
            events.staging(1)
            bound.pull(bound_images.in_commit(repo, imp.commit), say, authfile)
            events.staging(2)
            merge = sysroot.get_merge_deployment(origin.STATEROOT) or booted
            args = new_kargs(sysroot, repo, merge, imp.commit)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        prune.drop_extra_deployments(sysroot)
        say("staging")
        serial = stage(sysroot, imp.commit, target, merge, args, opts.download_only, tries, enforce)
        events.staging(3)
        sr.CACHED_UPDATE.unlink(missing_ok=True)
        sysroot.load(None)
        refs_removed, _ = prune.prune_store(sysroot, repo, objects=False)
        events.staging(4)
        return UpdateResult(
            plan.outcome,
            target.skopeo,
            imp.manifest_digest,
            remote.version,
            layers_total=imp.layers_total,
            layers_fetched=imp.layers_imported,
            bytes_fetched=imp.bytes_fetched,
            seconds=round(time.monotonic() - t0, 1),
            staged=serial,
            kargs=tuple(args),
            refs_removed=refs_removed,
            tries=tries,
        )
