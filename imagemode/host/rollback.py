"""`rollback`: boot the other deployment next, by reordering ostree's deployments (libostree's
write_deployments, as bootc does; ostree 2022.7 has no `admin set-default`).

When the booted deployment is first, the rollback deployment moves to the front. When it is not (a
rollback is already queued), the booted one moves back to the front: a second rollback undoes the
first. A staged deployment is discarded either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from imagemode.errors import ImagemodeError
from imagemode.host import ostree_api as api
from imagemode.host import sysroot as sr

D = TypeVar("D", bound=api.Deployment)


@dataclass(frozen=True)
class RollbackResult:
    next_boot: str  # checksum.serial
    image: str
    digest: str
    queued: bool  # True: the next boot is the rollback deployment; False: a queued rollback was undone
    discarded_staged: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def human(self) -> str:
        if self.queued:
            text = f"next boot: {self.image} {self.digest} (the rollback deployment)"
        else:
            text = f"rollback undone: next boot is the booted deployment again, {self.image}"
        return text + ("\n  the staged deployment was discarded" if self.discarded_staged else "")


def reorder(deployments: list[D], booted: D) -> list[D]:
    """The new order of the (non-staged) deployments."""
    if not deployments:
        raise ImagemodeError("no deployments")
    if not sr.same(deployments[0], booted):
        i = next(i for i, d in enumerate(deployments) if sr.same(d, booted))
        return [deployments[i], *deployments[:i], *deployments[i + 1 :]]
    if len(deployments) < 2:
        raise ImagemodeError("there is no rollback deployment: only the booted one exists")
    return [deployments[1], deployments[0], *deployments[2:]]


def rollback() -> RollbackResult:
    sr.require_booted()
    with sr.locked() as sysroot:
        booted = sr.booted(sysroot)
        staged = sysroot.get_staged_deployment()
        deps = [d for d in sysroot.get_deployments() if not sr.same(d, staged)]
        new = reorder(deps, booted)
        sysroot.write_deployments(new, None)
        if staged is not None:
            sr.DOWNLOAD_ONLY.unlink(missing_ok=True)
        sysroot.load(None)
        first = sysroot.get_deployments()[0]
        d = sr.describe(sysroot, first)
        return RollbackResult(d.id, d.image, d.digest, not sr.same(first, booted), staged is not None)
