"""The image references a node needs, read from what already names them (issue: offline edge).

Sources, told apart by what they are:

- a directory: every kustomization, Kubernetes manifest and quadlet file under it;
- `*.json`: MicroShift's release JSON, `{"release": {...}, "images": {"name": "REF", ...}}`;
- `*.yaml`/`*.yml`: Kubernetes manifests (`containers`, `initContainers`, `ephemeralContainers` at any
  depth, so Deployments, Jobs, CronJobs and bare Pods alike), or a kustomization;
- `*.container`/`*.image`: quadlet units (`Image=`; a `.container` naming `foo.image` takes that file's);
- anything else: a plain list, one reference per line, `#` comments.

A name without a registry host is qualified as Kubernetes and CRI-O do: `busybox` is
`docker.io/library/busybox`. The first source that names a reference is kept, for error messages.
"""

from __future__ import annotations

import configparser
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagemode.errors import ImagemodeError
from imagemode.oci.reference import ImageRef, ImageRefError, Transport, has_domain, parse

KUSTOMIZATIONS = ("kustomization.yaml", "kustomization.yml", "Kustomization")
POD_LISTS = ("containers", "initContainers", "ephemeralContainers")


class SourceError(ImagemodeError):
    pass


@dataclass(frozen=True)
class Wanted:
    ref: ImageRef  # registry reference, host-qualified
    source: str  # where it was named: "path:line", "path: images.cli", ...

    @property
    def pinned(self) -> bool:
        return self.ref.digest is not None


@dataclass(frozen=True)
class Plan:
    """What `embed --dry-run` prints: the images the sources name, and where each was named."""

    wanted: tuple[Wanted, ...]

    def to_dict(self) -> list[dict[str, Any]]:
        return [{"ref": str(w.ref), "digest": w.ref.digest, "source": w.source} for w in self.wanted]

    def human(self) -> str:
        names = [w.ref.name + (f":{w.ref.tag}" if w.ref.tag else "") for w in self.wanted]
        width = max(len(n) for n in names)
        lines = [f"{name:<{width}}  {w.ref.digest or '(tag: digest read when embedded)':<71}  {w.source}"
                 for name, w in zip(names, self.wanted, strict=True)]  # fmt: skip
        lines.append(f"{len(self.wanted)} images would be embedded; nothing was copied")
        return "\n".join(lines)


def qualify(text: str, source: str) -> ImageRef:
    try:
        ref = parse(text, Transport.REGISTRY)
    except ImageRefError as e:
        raise SourceError(f"{source}: {e}") from None
    if not has_domain(ref.name):
        path = ref.name if "/" in ref.name else f"library/{ref.name}"
        ref = ImageRef(Transport.REGISTRY, f"docker.io/{path}", ref.tag, ref.digest)
    return ref


def from_list(path: Path) -> list[Wanted]:
    out = []
    for n, line in enumerate(_text(path).splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if text:
            out.append(Wanted(qualify(text, f"{path}:{n}"), f"{path}:{n}"))
    return out


def from_release_json(path: Path) -> list[Wanted]:
    shape = 'expected a MicroShift release JSON: {"release": {...}, "images": {"name": "reference"}}'
    try:
        data = json.loads(_text(path))
    except json.JSONDecodeError as e:
        raise SourceError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, dict) or not images:
        raise SourceError(f"{path}: {shape}")
    out = []
    for key, value in images.items():
        if not isinstance(value, str):
            raise SourceError(f"{path}: images.{key} is {type(value).__name__}; {shape}")
        out.append(Wanted(qualify(value, f"{path}: images.{key}"), f"{path}: images.{key}"))
    return out


def _containers(node: Any, where: str) -> Iterator[tuple[str, str]]:
    """(image, where) for each container spec at any depth of a manifest document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in POD_LISTS and isinstance(value, list):
                for i, c in enumerate(value):
                    if isinstance(c, dict) and isinstance(c.get("image"), str):
                        yield c["image"], f"{where} {key}[{i}]"
            else:
                yield from _containers(value, where)
    elif isinstance(node, list):
        for item in node:
            yield from _containers(item, where)


def _yaml_docs(path: Path) -> list[Any]:
    import yaml

    class NoAliases(yaml.SafeLoader):
        """YAML without aliases: a few hundred bytes of nested aliases expand to billions of nodes
        (the "billion laughs"), and no manifest needs them."""

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event: Any = self.peek_event()  # type: ignore[no-untyped-call]
                raise SourceError(
                    f"{path}: YAML alias *{event.anchor} at line {event.start_mark.line + 1}; aliases are"
                    " refused (docs/security.md)"
                )
            return super().compose_node(parent, index)

    try:
        return [d for d in yaml.load_all(_text(path), Loader=NoAliases) if d is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise SourceError(f"{path}: not YAML{at}") from None


Overrides = Sequence[dict[str, dict[str, str]]]  # kustomize `images:` tables, innermost first


def from_manifest(path: Path, overrides: Overrides = ()) -> list[Wanted]:
    out = []
    for doc in _yaml_docs(path):
        kind = doc.get("kind", "?") if isinstance(doc, dict) else "?"
        name = doc.get("metadata", {}).get("name", "?") if isinstance(doc, dict) else "?"
        for image, where in _containers(doc, f"{kind}/{name}"):
            for table in overrides:
                image = _override(image, table)
            out.append(Wanted(qualify(image, f"{path}: {where}"), f"{path}: {where}"))
    return out


def _override(image: str, overrides: dict[str, dict[str, str]]) -> str:
    """kustomize's `images:` transformer: newName, newTag and digest for a matching image name."""
    base = image.split("@", 1)[0]
    slash, colon = base.rfind("/"), base.rfind(":")
    name, tag = (base[:colon], base[colon + 1 :]) if colon > slash else (base, "")
    o = overrides.get(name)
    if o is None:
        return image
    name = o.get("newName", name)
    if o.get("digest"):
        return f"{name}@{o['digest']}"
    tag = o.get("newTag", tag)
    return f"{name}:{tag}" if tag else name


def from_kustomization(
    directory: Path, outer: Overrides = (), seen: frozenset[Path] = frozenset()
) -> list[Wanted]:
    """A kustomization's resources, with its `images:` overrides (and those of the ones including it)."""
    kfile = next((directory / k for k in KUSTOMIZATIONS if (directory / k).is_file()), None)
    if kfile is None:
        raise SourceError(f"{directory}: no kustomization.yaml")
    if directory.resolve() in seen:
        raise SourceError(f"{kfile}: resources include each other in a loop")
    docs = _yaml_docs(kfile)
    k = docs[0] if docs and isinstance(docs[0], dict) else {}
    table = {
        o["name"]: {key: str(v) for key, v in o.items() if key != "name"}
        for o in k.get("images") or [] if isinstance(o, dict) and "name" in o
    }  # fmt: skip
    chain = [table, *outer]
    out: list[Wanted] = []
    for res in [*(k.get("resources") or []), *(k.get("bases") or [])]:
        p = directory / str(res)
        if p.is_dir():
            out += from_kustomization(p, chain, seen | {directory.resolve()})
        elif p.is_file():
            out += from_manifest(p, chain)
        elif "://" not in str(res):
            raise SourceError(f"{kfile}: resource {res} does not exist")
    return out


def from_quadlet(path: Path) -> list[Wanted]:
    return quadlet(lambda name: _text(path.with_name(name)), path.name, str(path.parent))


def quadlet(read: Callable[[str], str], name: str, where: str, seen: tuple[str, ...] = ()) -> list[Wanted]:
    """The image of the quadlet unit `name` in the directory `where`, whose files `read` returns by
    name. A `.container` may name a `.image` beside it, which may not name itself again."""
    shown = f"{where}/{name}"
    section = "Image" if name.endswith(".image") else "Container"
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        cp.read_string(read(name))
    except configparser.Error as e:
        raise SourceError(f"{shown}: not a quadlet unit ({e.message.splitlines()[0]})") from None
    image = cp.get(section, "Image", fallback=None)
    if not image:
        raise SourceError(f"{shown}: no Image= in [{section}]")
    if image.endswith(".image"):  # a .container that uses a .image unit
        if "/" in image or image in (*seen, name):
            raise SourceError(f"{shown}: Image={image} is not another .image unit beside it")
        return quadlet(read, image, where, (*seen, name))
    return [Wanted(qualify(image, f"{shown}: Image="), f"{shown}: Image=")]


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise SourceError(f"{path}: not text") from None


def read(path: Path) -> list[Wanted]:
    """The references one source names."""
    if path.is_dir():
        if any((path / k).is_file() for k in KUSTOMIZATIONS):
            return from_kustomization(path)
        # A subdirectory with a kustomization is one unit (MicroShift's manifests.d holds such
        # directories): its files are read through it, so that its `images:` overrides apply.
        out: list[Wanted] = []
        for p in sorted(path.iterdir()):
            if p.is_dir() or p.suffix in (".yaml", ".yml", ".container", ".image", ".json"):
                out += read(p)
        return out
    if path.name in KUSTOMIZATIONS:
        return from_kustomization(path.parent)
    if path.suffix == ".json":
        return from_release_json(path)
    if path.suffix in (".yaml", ".yml"):
        return from_manifest(path)
    if path.suffix in (".container", ".image"):
        return from_quadlet(path)
    return from_list(path)


def gather(paths: list[Path]) -> list[Wanted]:
    """Every reference the sources name, once each, in the order first named."""
    seen: dict[str, Wanted] = {}
    for p in paths:
        for w in read(p):
            seen.setdefault(str(w.ref), w)
    return list(seen.values())
