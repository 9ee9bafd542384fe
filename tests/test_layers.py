"""The package's folders are its layers (docs/architecture.md): each imports only from the folders below
it, never from a sibling, and no module imports itself back through others. Read from the code with
``ast``: module- and function-level imports alike, ``if TYPE_CHECKING:`` blocks left out."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "trm_cluster"

LAYERS: dict[str, int] = {
    "core": 0,
    "rundir": 1,
    "state": 2,
    "wandb": 2,
    "runtime": 3,
    "scheduler": 4,
    "launch": 5,
    "ops": 5,
    "": 6,  # the commands at the top of the package (submit, status, preempt, sync) and its public API
    "doctor": 7,
    "chaos": 7,
}
"""Lowest first; folders of one rank are siblings and may not import each other."""
WORKLOADS = "workloads"
"""Loaded by reference (a preset's ``module:NAME``); they import only ``core`` and themselves."""

MAX_TOP_MODULES = 8
MAX_MODULES_PER_FOLDER = 14
MAX_LINES = 450


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def folder_of(module: str) -> str:
    """``trm_cluster.runtime.session`` -> ``runtime``; a module at the top of the package -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()) else ""


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(path: Path, module: str | None = None) -> Iterator[tuple[str, int]]:
    """Every package module ``path`` (the module ``module``) imports, with its line: ``from a import b``
    counts as ``a.b`` when ``b`` is a module, else as ``a``."""
    module = module or module_name(path)
    is_package = path.name == "__init__.py"

    def walk(node: ast.AST) -> Iterator[ast.AST]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            yield child
            yield from walk(child)

    for node in walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("trm_cluster"):
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join([*anchor, base] if base else anchor)
            if not base.startswith("trm_cluster"):
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield (candidate if _exists(candidate) else base), node.lineno


def _exists(module: str) -> bool:
    path = PACKAGE.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def climbing(importer: str, imported: str) -> str | None:
    """Why this import breaks the layering, or None."""
    a, b = folder_of(importer), folder_of(imported)
    if a == b:
        return None
    if a == WORKLOADS or b == WORKLOADS:
        return (
            None
            if a == WORKLOADS and b == "core"
            else f"{WORKLOADS}/ imports only core/ (and is imported by none)"
        )
    if importer == "trm_cluster" or (b == "" and imported == "trm_cluster"):
        return None  # the public API's lazy names; a user script's `import trm_cluster`
    if a not in LAYERS or b not in LAYERS:
        return f"folder {a or b!r} has no layer (add it to LAYERS and docs/architecture.md)"
    if LAYERS[a] == LAYERS[b]:
        return f"{a or 'the top'} and {b or 'the top'} are siblings"
    return None if LAYERS[a] > LAYERS[b] else f"{b or 'the top'} is above {a or 'the top'}"


def test_no_import_climbs_a_layer_or_crosses_to_a_sibling() -> None:
    problems = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {module} imports {target}: {why}"
        for module, path in package_modules().items()
        for target, line in imports_of(path)
        if (why := climbing(module, target))
    ]
    assert not problems, "\n".join(problems)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it began, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_counting_function_level_imports() -> None:
    modules = package_modules()
    graph = {m: {t for t, _ in imports_of(p) if t in modules and t != m} for m, p in modules.items()}
    # a package's __init__ runs before its modules: `from trm_cluster.x import y` imports trm_cluster.x
    # too, but only an __init__ that imports its own modules could close a cycle through it
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize(
    ("importer", "imported", "allowed"),
    [
        ("trm_cluster.runtime.session", "trm_cluster.rundir.manifest", True),
        ("trm_cluster.rundir.manifest", "trm_cluster.runtime.session", False),  # climbs
        ("trm_cluster.ops.report", "trm_cluster.launch.runs", False),  # siblings
        ("trm_cluster.workloads.trm.trainer", "trm_cluster.core.workload", True),
        ("trm_cluster.workloads.trm.trainer", "trm_cluster.runtime.session", False),
        ("trm_cluster.state.saves", "trm_cluster.workloads.trm.trainer", False),
        ("trm_cluster.status", "trm_cluster.ops.report", True),
        ("trm_cluster.ops.report", "trm_cluster.status", False),
    ],
)
def test_the_layer_rule_refuses_what_it_should(importer: str, imported: str, allowed: bool) -> None:
    assert (climbing(importer, imported) is None) == allowed


def test_the_import_reader_sees_function_level_imports_and_skips_type_checking(tmp_path: Path) -> None:
    module = PACKAGE / "runtime" / "session.py"
    seen = {t for t, _ in imports_of(module)}
    assert "trm_cluster.runtime.plan" in seen
    text = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from trm_cluster.x import y\n"
    text += "def f():\n    from trm_cluster.core import rng\n"
    probe = tmp_path / "probe.py"
    probe.write_text(text)
    assert {t for t, _ in imports_of(probe, "trm_cluster.core.probe")} == {"trm_cluster.core.rng"}


def test_the_tree_stays_small_enough_to_read() -> None:
    top = [p.name for p in PACKAGE.glob("*.py")]
    assert len(top) <= MAX_TOP_MODULES, top
    for folder in [PACKAGE, *[p for p in PACKAGE.rglob("*") if p.is_dir() and p.name != "__pycache__"]]:
        count = len([p for p in folder.glob("*.py") if p.name not in ("__init__.py", "__main__.py")])
        assert count <= MAX_MODULES_PER_FOLDER, f"{folder}: {count} modules"
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long
