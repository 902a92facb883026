"""One image as imagemode knows it: its manifest digest, its manifest and its config, each checked
whole (imagemode.oci.manifest) before this value was made. Where the image is comes on top: a source
to copy from (imagemode.store.fetch.Remote) or an OCI layout on disk (imagemode.store.importer.OciImage)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imagemode.oci import manifest as oci_manifest


@dataclass(frozen=True, kw_only=True)
class Image:
    digest: str  # the manifest's
    manifest: dict[str, Any]
    config: dict[str, Any]

    @property
    def config_digest(self) -> str:
        d: str = self.manifest["config"]["digest"]
        return d

    @property
    def diff_ids(self) -> list[str]:
        ids: list[str] = self.config["rootfs"]["diff_ids"]
        return ids

    @property
    def labels(self) -> dict[str, str]:
        return oci_manifest.labels(self.config)

    @property
    def version(self) -> str | None:
        return self.labels.get("org.opencontainers.image.version")
