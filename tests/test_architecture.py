"""The import graph of anasim tells the truth: imports run one way, with no cycle.

Every ``import`` / ``from ... import`` in ``anasim/`` counts, including those inside
functions (a lazy import that closes a cycle is still a cycle), parsed with ``ast``
rather than executed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "anasim"

# A package may import itself and the packages to its right (lower layers), never to
# its left. Modules of the same rank must not import each other unless listed in ALLOWED.
LAYERS = [
    ["__main__"],
    ["cli"],
    ["experiment"],
    ["snapshot"],
    ["analog"],
    ["datasets", "graph", "config"],
    ["devices", "ops"],
    ["kernels"],
    ["params", "threads", "version", "files", "memory"],
    ["errors"],
]
ALLOWED = {("config", "devices"), ("graph", "ops")}  # (importer, imported) across a rank, one way


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(name: str, path: Path, modules) -> set[str]:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("anasim"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("anasim"))
    return found - {name}


def _graph():
    modules = _modules()
    return {m: _imports(m, p, modules) & set(modules) for m, p in modules.items()}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "<anasim>"


def test_no_import_cycle():
    graph = _graph()
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_nothing_imports_the_package_root():
    graph = _graph()
    upward = sorted(m for m, deps in graph.items() if "anasim" in deps and m != "anasim")
    assert not upward, f"modules importing the anasim package root (use anasim.version etc.): {upward}"


@pytest.mark.parametrize("importer", [p for layer in LAYERS for p in layer])
def test_imports_run_one_way(importer):
    rank = {p: i for i, layer in enumerate(LAYERS) for p in layer}
    graph = _graph()
    bad = []
    for m, deps in graph.items():
        if _part(m) != importer:
            continue
        for d in deps:
            target = _part(d)
            if target in (importer, "<anasim>"):
                continue
            assert target in rank, f"{d}: package {target!r} is missing from LAYERS"
            if rank[target] < rank[importer] or (rank[target] == rank[importer]
                                                  and (importer, target) not in ALLOWED):
                bad.append(f"{m} imports {d}")
    assert not bad, "imports against the layering: " + "; ".join(sorted(bad))


def test_layers_name_every_package():
    listed = {p for layer in LAYERS for p in layer}
    present = {_part(m) for m in _modules()} - {"<anasim>"}
    assert present <= listed, f"packages not placed in LAYERS: {sorted(present - listed)}"
