"""What an update would change, told before a layer of it is fetched (`upgrade --check`, `switch --check`):
the bytes of the layers the store lacks, and the packages it upgrades, downgrades, adds and removes.

The new image's packages come from its chunk label (imagemode.chunk.label), read from the config that
the check reads anyway; the booted ones from the booted deployment's own dpkg status, read in the store
(never through a path on the device). A label that does not describe every layer of the image (a
Containerfile built on the chunked base without --rechunk) is not shown as the image's package list:
its layers above may install or remove packages that it does not name. bootc was asked for this
(bootc #2451); it is not in bootc.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imagemode import confined
from imagemode.chunk import label as chunk_label
from imagemode.chunk import packages
from imagemode.store import fetch
from imagemode.store.importer import layer_ref
from imagemode.store.ostree import CommitReader, Repo
from imagemode.ui import human_size

SHOWN = 30  # package lines a person sees; --json lists them all


@dataclass(frozen=True)
class Preview:
    download_bytes: int
    layers_to_download: int
    layers_total: int
    changes: packages.Changes | None
    note: str = ""  # why the package changes are not shown

    def to_dict(self) -> dict[str, Any]:
        """For the verb's --json (snake_case, as its other keys)."""
        return {
            "download_bytes": self.download_bytes,
            "layers_to_download": self.layers_to_download,
            "layers_total": self.layers_total,
            "packages": self.changes.to_dict() if self.changes is not None else None,
            "packages_note": self.note or None,
        }

    def status(self) -> dict[str, Any]:
        """For status's cachedUpdate: the same, camelCase, as bootc's status is written."""
        return {_camel(k): v for k, v in self.to_dict().items()}

    def lines(self) -> list[str]:
        out = [f"to download: {human_size(self.download_bytes)} in {self.layers_to_download} of"
               f" {self.layers_total} layers"]  # fmt: skip
        if self.changes is None:
            out.append(f"packages: not known ({self.note})")
            return out
        out.append(f"packages: {self.changes.summary()}")
        rows = self.changes.lines()
        out += [f"  {r}" for r in rows[:SHOWN]]
        if len(rows) > SHOWN:
            out.append(f"  ... and {len(rows) - SHOWN} more (--json lists them all)")
        return out


def _camel(key: str) -> str:
    first, *rest = key.split("_")
    return first + "".join(w.title() for w in rest)


def booted_packages(repo: Repo, commit: str) -> dict[str, str] | None:
    reader = CommitReader(repo, commit)
    for path in packages.STATUS_PATHS:
        try:
            text = confined.read_text(reader, path)
        except confined.ConfinedError:
            text = None
        if text is not None:
            return packages.installed(text)
    return None


def preview(repo: Repo, booted_commit: str, remote: fetch.Remote) -> Preview:
    layers = remote.manifest["layers"]
    missing = [int(d["size"]) for d, diff in zip(layers, remote.diff_ids, strict=True)
               if repo.resolve(layer_ref(diff)) is None]  # fmt: skip
    changes, note = None, ""
    try:
        lab = chunk_label.of_config(remote.config)
    except chunk_label.LabelError as e:
        lab, note = None, str(e)
    if lab is None:
        note = note or "the image has no package list: build it with imagemode build base or rechunk"
    elif len(lab.layers) < len(layers):
        note = (f"the image's package list names {len(lab.layers)} of its {len(layers)} layers; the others"
                " may change packages (imagemode build --rechunk writes a whole list)")  # fmt: skip
    else:
        old = booted_packages(repo, booted_commit)
        if old is None:
            note = "the booted deployment has no dpkg status"
        else:
            changes = packages.compare(old, lab.packages)
    return Preview(sum(missing), len(missing), len(layers), changes, note)
