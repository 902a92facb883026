"""The package's imports follow the data (docs/design.md), read from the source with ast:

    errors, run, confined, atomic, ui, tmpfiles, output  <-  oci  <-  store  <-  boot  <-  health  <-  embed
    <-  host  <-  (build, disk, vm)  <-  commands  <-  cli  <-  bootc  <-  entry

A module imports only from its own rank or below (build, disk and vm from each other too), there is no
import cycle, and the device's verbs reach nothing outside the standard library, gi and yaml: the
device runs on the OS's own python3 and installs nothing. Imports inside functions count (they run
when the verb does); imports only for the type checker, and optional ones (`except ImportError`), do not.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "imagemode"
BOTTOM = {"imagemode", "errors", "run", "confined", "ui", "tmpfiles", "output", "atomic", "data"}
ORDER = ["oci", "chunk", "store", "boot", "health", "embed", "host"]
BESIDE = {"build", "disk", "vm"}
TOP = ["commands", "cli", "bootc", "entry", "__main__"]
DEVICE_HANDLERS = {"status", "_update", "upgrade", "switch", "rollback", "prune", "health", "boot_update",
                   "_reboot", "_path", "usr_overlay"}  # fmt: skip
DEVICE_EXTERNAL = {"gi", "yaml"}


def rank(module: str) -> int:
    part = module.split(".")[1] if "." in module else "imagemode"
    if part in BOTTOM:
        return 0
    if part in ORDER:
        return 1 + ORDER.index(part)
    if part in BESIDE:
        return 1 + len(ORDER)
    return 2 + len(ORDER) + TOP.index(part)


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def _optional(node: ast.Try) -> bool:
    names = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
    return bool(names & {"ImportError", "ModuleNotFoundError"})


def imports(tree: ast.AST, functions: set[str] | None = None) -> Iterator[tuple[str, int]]:
    """(module, line) of each import that runs: at module level and in functions, not under
    TYPE_CHECKING and not optional. `functions`: only those top-level functions (and module level)."""

    def walk(node: ast.AST) -> Iterator[tuple[str, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                yield from (x for n in child.orelse for x in walk(n))
                continue
            if isinstance(child, ast.Try) and _optional(child):
                continue
            if isinstance(child, ast.Import):
                yield from ((a.name, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                yield child.module, child.lineno
                yield from ((f"{child.module}.{a.name}", child.lineno) for a in child.names)
            yield from walk(child)

    assert isinstance(tree, ast.Module)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and functions is not None and node.name not in functions:
            continue
        yield from walk(ast.Module([node], []))


def graph(sources: dict[str, str]) -> dict[str, dict[str, int]]:
    """module -> {imported module of the package: line}."""
    return {
        m: {dep: line for dep, line in imports(ast.parse(text)) if dep in sources and dep != m}
        for m, text in sources.items()
    }


def package_sources() -> dict[str, str]:
    return {module_name(p): p.read_text() for p in PACKAGE.rglob("*.py")}


def wrong_way(sources: dict[str, str]) -> list[str]:
    return [
        f"{m}:{line} imports {dep}, which is above it"
        for m, deps in graph(sources).items()
        for dep, line in deps.items()
        if rank(dep) > rank(m)
    ]


def cycles(sources: dict[str, str]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    g = graph(sources)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return found


def device_closure(sources: dict[str, str]) -> dict[str, str]:
    """Every module outside the package that the device's verbs may import -> who imports it."""
    todo = [
        "imagemode.entry",
        "imagemode.cli",
        "imagemode.bootc",
        "imagemode.boot.editenv",
        "imagemode.output",
        "imagemode.__main__",
    ]
    starts = {dep for dep, _ in imports(ast.parse(sources["imagemode.commands"]), DEVICE_HANDLERS)}
    todo += [d for d in starts if d in sources]
    seen: set[str] = set()
    outside: dict[str, str] = {
        d.split(".")[0]: "imagemode.commands" for d in starts if not d.startswith("imagemode")
    }
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        for dep, _ in imports(ast.parse(sources[m])):
            if dep.startswith("imagemode"):
                if dep in sources:
                    todo.append(dep)
            else:
                outside.setdefault(dep.split(".")[0], m)
    return outside


def test_imports_follow_the_data() -> None:
    assert wrong_way(package_sources()) == []


def test_no_import_cycle() -> None:
    assert cycles(package_sources()) == []


def test_the_device_verbs_need_only_the_stdlib_gi_and_yaml() -> None:
    outside = device_closure(package_sources())
    extra = {m: by for m, by in outside.items() if m not in sys.stdlib_module_names | DEVICE_EXTERNAL}
    assert extra == {}
    assert "gi" in outside, "the closure missed libostree's bindings: the walk is broken"


@pytest.mark.parametrize(
    ("module", "planted", "found"),
    [
        ("imagemode.oci.layout", "from imagemode.store import importer\n", "imports imagemode.store"),
        ("imagemode.store.compose", "from imagemode.build import lint\n", "imports imagemode.build"),
        (
            "imagemode.host.update",
            "def f() -> None:\n    from imagemode.cli import main\n",
            "imports imagemode.cli",
        ),
    ],
)
def test_a_planted_wrong_way_import_is_found(module: str, planted: str, found: str) -> None:
    sources = package_sources()
    sources[module] += "\n" + planted
    assert any(found in v for v in wrong_way(sources))


def test_a_planted_cycle_and_a_planted_dependency_are_found() -> None:
    sources = package_sources()
    sources["imagemode.oci.reference"] += "\nfrom imagemode.oci import policy\n"
    assert ["imagemode.oci.policy", "imagemode.oci.reference"] in cycles(sources)
    sources["imagemode.host.rollback"] += "\nimport rich\n"
    assert "rich" in device_closure(sources)


def test_only_run_py_starts_programs() -> None:
    """QEMU and the test registry too go through run.spawn, so that -v shows their command lines."""
    starters = {"Popen", "call", "check_call", "check_output", "run", "system", "execv", "execvp"}
    found = []
    for m, text in package_sources().items():
        if m == "imagemode.run":
            continue
        for node in ast.walk(ast.parse(text)):
            f = node.func if isinstance(node, ast.Call) else None
            if (
                isinstance(f, ast.Attribute)
                and f.attr in starters
                and isinstance(f.value, ast.Name)
                and f.value.id in ("subprocess", "os")
            ):
                found.append(f"{m}:{node.lineno} {f.value.id}.{f.attr}")
    assert found == []
