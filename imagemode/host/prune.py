"""What the store keeps: the images of the deployments, and the layers those images are made of.

ostree keeps a deployment's commit alive (its `ostree/B/S/N` ref) but not the import's own refs:
`imagemode/image/...` for each image, `imagemode/layer/...` for each layer and `imagemode/merged/...` for
the merged run of a chunked image's layers. Those that no image a deployment uses names any more are
removed here, then `ostree prune` frees their objects.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from imagemode.host import bound
from imagemode.host import ostree_api as api
from imagemode.host import sysroot as sr
from imagemode.store import compose, importer, meta
from imagemode.store.ostree import Repo
from imagemode.ui import human_size


def drop_extra_deployments(sysroot: api.Sysroot) -> int:
    """Undeploy all but the booted, rollback and staged deployments (pinned ones stay). Returns how many."""
    keep = [sysroot.get_booted_deployment(), sysroot.get_staged_deployment(), sr.rollback_of(sysroot)]
    deps = list(sysroot.get_deployments())
    new = [d for d in deps if d.is_pinned() or any(sr.same(d, k) for k in keep if k is not None)]
    staged = sysroot.get_staged_deployment()
    if len(new) == len(deps):
        return 0
    # write_deployments takes the non-staged list; the staged deployment stays as it is.
    sysroot.write_deployments([d for d in new if not sr.same(d, staged)], None)
    sysroot.load(None)
    return len(deps) - len(new)


def refs_to_delete(
    image_refs: dict[str, str],
    layer_refs: list[str],
    deployed: set[str],
    diff_ids: dict[str, list[str]],
    merged_refs: Sequence[str] = (),
    merged: Mapping[str, str] | None = None,
) -> list[str]:
    """image_refs: ref → commit; diff_ids: commit → its layers; merged: commit → the key of its merged
    run (imagemode.store.compose). Returns the refs nothing uses."""
    doomed = [ref for ref, commit in image_refs.items() if commit not in deployed]
    kept_commits = deployed | {c for r, c in image_refs.items() if r not in doomed}
    needed = {importer.layer_ref(d) for c in kept_commits for d in diff_ids.get(c, [])}
    needed |= {compose.MERGED_REF + k for c, k in (merged or {}).items() if k and c in kept_commits}
    return doomed + [r for r in [*layer_refs, *merged_refs] if r not in needed]


def prune_store(sysroot: api.Sysroot, repo: Repo, objects: bool = True) -> tuple[int, int]:
    """Remove what no deployment needs. Returns (refs removed, bytes freed as `ostree prune` counts).

    objects=False only deletes the refs and leaves a marker: pruning walks every object of the store
    (5 s on an emulated device), so an update leaves it to imagemode-prune.service at the next boot,
    as ostree leaves its own cleanup after finalization.
    """
    # What a --download-only update fetched counts as deployed, after a reboot dropped its deployment.
    deployed = {d.get_csum() for d in sysroot.get_deployments()} | sr.downloaded()
    image_refs = {r: repo.resolve(r) or "" for r in repo.refs(importer.IMAGE_REF.rstrip("/"))}
    layer_refs = repo.refs(importer.LAYER_REF.rstrip("/"))
    merged_refs = repo.refs(compose.MERGED_REF.rstrip("/"))
    diff_ids: dict[str, list[str]] = {}
    merged: dict[str, str] = {}
    for commit in deployed | set(image_refs.values()):
        config = json.loads(repo.metadata(commit, meta.CONFIG) or "{}")
        diff_ids[commit] = config.get("rootfs", {}).get("diff_ids", [])
        merged[commit] = repo.metadata(commit, meta.MERGED) or ""
    doomed = refs_to_delete(image_refs, layer_refs, deployed, diff_ids, merged_refs, merged)
    for ref in doomed:
        repo.delete_ref(ref)
    if not objects:
        if doomed:
            sr.PRUNE_PENDING.parent.mkdir(parents=True, exist_ok=True)
            sr.PRUNE_PENDING.touch()
        return len(doomed), 0
    freed = repo.prune()
    sr.PRUNE_PENDING.unlink(missing_ok=True)
    # Deployment directories and boot files that nothing lists any more; the repo was pruned above.
    sysroot.prepare_cleanup(None)
    return len(doomed), freed


@dataclass(frozen=True)
class Pruned:
    deployments_removed: int
    refs_removed: int
    bytes_freed: int
    bound_images_removed: list[str]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def human(self) -> str:
        lines = [f"freed {human_size(self.bytes_freed)}: {self.refs_removed} image and layer refs,"
                 f" {self.deployments_removed} deployments"]  # fmt: skip
        lines += [f"  removed bound image {r}: no deployment names it" for r in self.bound_images_removed]
        return "\n".join(lines)


def prune() -> Pruned:
    """`imagemode prune`: extra deployments, then the store, then bound images nothing names."""
    sr.require_booted()
    with sr.locked() as sysroot:
        undeployed = drop_extra_deployments(sysroot)
        refs, freed = prune_store(sysroot, Repo(sr.REPO))
        sysroot.load(None)
        images = bound.gc(sysroot)
    return Pruned(undeployed, refs, freed, images)
