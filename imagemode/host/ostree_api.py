"""The part of libostree's API that the device side calls, as Protocols.

The objects come from GObject introspection (python3-gi), which has no type information of its own.
These Protocols name exactly the methods imagemode calls, with the types it relies on, so that strict
mypy checks the device code; the unit tests pass small fakes that satisfy them. Nothing here imports gi.
Signatures follow libostree 2022.7 as PyGObject maps them: GError becomes an exception, out
arguments become a returned tuple led by the boolean result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class KeyFile(Protocol):
    """GLib.KeyFile: a deployment's origin."""

    def to_data(self) -> tuple[str, int]: ...


class BootConfig(Protocol):
    """OSTree.BootconfigParser: a deployment's boot entry."""

    def get(self, key: str) -> str | None: ...


class Variant(Protocol):
    """GLib.Variant: a commit object, read with the helpers of imagemode.store.libostree."""

    def get_child_value(self, index: int) -> Variant: ...

    def n_children(self) -> int: ...


class File(Protocol):
    """Gio.File."""

    def get_path(self) -> str: ...


class Deployment(Protocol):
    """OSTree.Deployment."""

    def get_csum(self) -> str: ...

    def get_deployserial(self) -> int: ...

    def get_osname(self) -> str: ...

    def get_origin(self) -> KeyFile | None: ...

    def get_bootconfig(self) -> BootConfig | None: ...

    def is_pinned(self) -> bool: ...

    def get_unlocked(self) -> int: ...  # an OSTree.DeploymentUnlockedState, an int to Python


class Repo(Protocol):
    """OSTree.Repo, as the device reads it."""

    def load_commit(self, checksum: str) -> tuple[bool, Variant, object]: ...


class Sysroot(Protocol):
    """OSTree.Sysroot."""

    def load(self, cancellable: None) -> bool: ...

    def try_lock(self) -> tuple[bool, bool]: ...

    def unlock(self) -> None: ...

    def repo(self) -> Repo: ...

    def get_path(self) -> File: ...

    def get_deployments(self) -> list[Deployment]: ...

    def get_booted_deployment(self) -> Deployment | None: ...

    def get_staged_deployment(self) -> Deployment | None: ...

    def get_merge_deployment(self, osname: str | None) -> Deployment | None: ...

    def get_deployment_dirpath(self, deployment: Deployment) -> str: ...

    def write_deployments(self, deployments: Sequence[Deployment], cancellable: None) -> bool: ...

    def write_origin_file(self, deployment: Deployment, origin: KeyFile, cancellable: None) -> bool: ...

    def stage_tree(
        self,
        osname: str | None,
        revision: str,
        origin: KeyFile | None,
        merge_deployment: Deployment | None,
        override_kernel_argv: Sequence[str] | None,
        cancellable: None,
    ) -> tuple[bool, Deployment]: ...

    def prepare_cleanup(self, cancellable: None) -> bool: ...


def deployment_id(checksum: str, serial: int) -> str:
    """`checksum.serial`: the one name imagemode gives a deployment (ostree's own directory name for it),
    in status, the health records, the download-only mark and every message."""
    return f"{checksum}.{serial}"


def dep_id(dep: Deployment) -> str:
    return deployment_id(dep.get_csum(), dep.get_deployserial())
