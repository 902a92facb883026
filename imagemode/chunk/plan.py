"""Components into layer slots: which layers a chunked image has, and what each one holds.

- The largest components get a layer each (an own slot), up to OWN_MAX, if they hold at least
  OWN_MIN bytes. The rest go into BINS bins by a hash of their name, so a small component stays in
  the same bin whatever else changes.
- A component keeps its slot from the prior build (its label): own stays own, binned stays binned.
  A new component takes a free own slot if it is large enough; a binned one that has grown past
  PROMOTE_MIN may take one too. Nothing else moves, so one package's update never reshuffles the
  layers of the others (the "change cascading" rpm-ostree's users report, #5302).
- `@initramfs`, `@volatile` and imagemode's own files (in a rechunked image) are layers of their own,
  always, at the top.
- Patch layers: a large own component that changed only a little ships one cumulative patch layer
  (its entries that differ from the base in its slot) and keeps the base layer of the prior build,
  as long as the patch stays under PATCH_CAP of the component's bytes and the base holds nothing
  that the tree has lost or moved elsewhere (docs/chunking.md).

Everything here is pure: the fingerprints come in as data, so the unit tier tests every branch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from imagemode.chunk import label as chunk_label
from imagemode.chunk.components import IMAGEMODE, INITRAMFS, VOLATILE

MAX_LAYERS = 80  # the whole image: Debian 12's podman caps an image at 128, derived layers included
TOP = 1  # imagemode's own layer: above the plan in the base image, its last slot in a rechunked one
BINS = 16
PATCH_SLOTS = 4
OWN_MAX = MAX_LAYERS - TOP - 2 - BINS - PATCH_SLOTS  # 2: initramfs and volatile
OWN_MIN = 256 << 10
PROMOTE_MIN = 4 << 20
PATCH_MIN = 8 << 20  # a component smaller than this is shipped whole: a patch would save little
PATCH_CAP = 0.30  # a patch past this share of its component's bytes is a rebase

Fingerprints = dict[bytes, bytes]  # path hash -> content hash, 6 bytes each
# Components that are a layer of their own, always, in this order at the top: the slot is the name.
SPECIAL = {INITRAMFS: "initramfs", VOLATILE: "volatile", IMAGEMODE: "imagemode"}


@dataclass(frozen=True)
class Size:
    """What the plan needs to know of a component."""

    name: str
    size: int


@dataclass(frozen=True)
class Prior:
    """The build whose slots this one keeps: its label, its layers' diff_ids and its manifest digest."""

    label: chunk_label.ChunkLabel
    diff_ids: tuple[str, ...]
    digest: str

    def base_of(self, component: str) -> str | None:
        """The diff_id of the layer in `component`'s own slot."""
        try:
            return self.diff_ids[self.label.layers.index(f"own:{component}")]
        except (ValueError, IndexError):
            return None


@dataclass(frozen=True)
class LayerPlan:
    slot: str
    components: tuple[str, ...]
    reuse: str | None = None  # a layer of the prior build, kept as it is (a patched component's base)
    only: frozenset[bytes] | None = None  # a patch: only the entries with these path hashes


@dataclass(frozen=True)
class Slots:
    own: tuple[str, ...]
    binned: tuple[str, ...]
    bins: int = BINS


def bin_of(name: str, bins: int = BINS) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % bins


def assign(components: Sequence[Size], prior: chunk_label.ChunkLabel | None) -> Slots:
    """Own slots and bins for the (non-special) components, keeping the prior's."""
    sizes = {c.name: c.size for c in components if c.name not in SPECIAL}
    by_size = sorted(sizes, key=lambda n: (-sizes[n], n))
    if prior is None or prior.bins != BINS:
        own = [n for n in by_size if sizes[n] >= OWN_MIN][:OWN_MAX]
    else:
        own = [n for n in prior.own if n in sizes][:OWN_MAX]
        was_binned = set(prior.binned)
        for n in by_size:
            if len(own) >= OWN_MAX:
                break
            if n in own:
                continue
            if (n not in was_binned and sizes[n] >= OWN_MIN) or sizes[n] >= PROMOTE_MIN:
                own.append(n)
    taken = set(own)
    return Slots(tuple(own), tuple(sorted(n for n in sizes if n not in taken)))


def eligible(c: Size, slots: Slots, kernel: str | None) -> bool:
    """A component whose own slot can take patches (a kernel's module paths change with its ABI, so a
    kernel update touches every entry: it is always shipped whole)."""
    return c.name in slots.own and c.size >= PATCH_MIN and c.name != kernel


@dataclass(frozen=True)
class Patch:
    component: str
    base: str  # the prior layer kept
    changed: frozenset[bytes]  # path hashes of the entries the patch layer holds
    changed_bytes: int


@dataclass(frozen=True)
class Tree:
    """What the patch decision reads: the component's entries now, and the whole tree by path hash."""

    current: Callable[[str], Fingerprints]  # component -> fingerprints of its layer now
    sizes: Callable[[str], Mapping[bytes, int]]  # component -> path hash -> bytes of a regular file
    # path hash -> (content hash, component or "" for a parent directory, is a directory)
    lookup: Callable[[bytes], tuple[bytes, str, bool] | None]


def decide_patch(name: str, size: int, base: bytes, base_id: str, tree: Tree) -> Patch | None:
    """A patch over the prior base, or None: ship the component whole (unchanged, or a rebase)."""
    old = _unpack(base)
    now = tree.current(name)
    changed = frozenset(h for h, c in now.items() if old.get(h) != c)
    if not changed:
        return None
    for h, content in old.items():
        if h in now:
            continue
        # In the base, not in the component now: the kept base would put it back. Harmless only when
        # the tree still has the very same directory there.
        found = tree.lookup(h)
        if found is None or not found[2] or found[0] != content:
            return None
    sizes = tree.sizes(name)
    changed_bytes = sum(sizes.get(h, 0) for h in changed)
    if changed_bytes > PATCH_CAP * size:
        return None
    return Patch(name, base_id, changed, changed_bytes)


def pack(fps: Fingerprints) -> bytes:
    return b"".join(h + c for h, c in sorted(fps.items()))


def _unpack(data: bytes) -> Fingerprints:
    step = chunk_label.FINGERPRINT
    return {data[i : i + 6]: data[i + 6 : i + step] for i in range(0, len(data) - step + 1, step)}


@dataclass(frozen=True)
class Plan:
    layers: tuple[LayerPlan, ...]
    slots: Slots
    bases: Mapping[str, bytes] = field(default_factory=dict)
    patches: tuple[Patch, ...] = ()

    def label(self, packages: Mapping[str, str], prior: Prior | None) -> chunk_label.ChunkLabel:
        return chunk_label.ChunkLabel(
            layers=tuple(lp.slot for lp in self.layers),
            bins=self.slots.bins,
            binned=self.slots.binned,
            bases=dict(self.bases),
            packages=dict(packages),
            prior=prior.digest if prior is not None else None,
        )


def make(
    components: Sequence[Size],
    prior: Prior | None,
    kernel: str | None,
    fingerprints: Callable[[str], Fingerprints],
    tree: Callable[[], Tree],
    patches: bool = True,
) -> Plan:
    """The layers of a chunked image. `fingerprints(name)`: a component's layer now, asked only of
    components that can take patches; `tree()`: what a patch decision reads, asked only when the
    prior has a base to patch. `patches=False` (a rebase): every changed component is shipped whole,
    and its layer is the base of the next build's patches."""
    slots = assign(components, prior.label if prior is not None else None)
    sizes = {c.name: c.size for c in components}
    bases: dict[str, bytes] = {}
    candidates: list[Patch] = []
    seen: Tree | None = None
    for c in components:
        if not eligible(c, slots, kernel):
            continue
        old = prior.label.bases.get(c.name) if prior is not None else None
        base_id = prior.base_of(c.name) if prior is not None else None
        if patches and old is not None and base_id is not None:
            seen = seen or tree()
            p = decide_patch(c.name, c.size, old, base_id, seen)
            if p is not None:
                candidates.append(p)
                bases[c.name] = old
                continue
        bases[c.name] = pack(fingerprints(c.name))
    # More patches than slots: the ones that save the most stay, the others are shipped whole.
    candidates.sort(key=lambda p: (-(sizes[p.component] - p.changed_bytes), p.component))
    kept = tuple(sorted(candidates[:PATCH_SLOTS], key=lambda p: p.component))
    for p in candidates[PATCH_SLOTS:]:
        bases[p.component] = pack(fingerprints(p.component))
    patched = {p.component: p for p in kept}
    layers = [
        LayerPlan(f"own:{n}", (n,), reuse=patched[n].base if n in patched else None) for n in slots.own
    ]
    binned: dict[int, list[str]] = {}
    for n in slots.binned:
        binned.setdefault(bin_of(n, slots.bins), []).append(n)
    layers += [LayerPlan(f"bin:{i}", tuple(sorted(binned[i]))) for i in sorted(binned)]
    layers += [LayerPlan(f"patch:{p.component}", (p.component,), only=p.changed) for p in kept]
    layers += [LayerPlan(slot, (name,)) for name, slot in SPECIAL.items() if name in sizes]
    return Plan(tuple(layers), slots, bases, kept)
