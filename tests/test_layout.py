"""The code's shape: no method imports another, shared blocks never import a method, and the import graph
of runner/ (module-level and function-level imports alike) has no cycles."""

from __future__ import annotations

import ast

from tests.conftest import ROOT

PACKAGE = ROOT / "runner"


def module_name(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """runner module -> the runner modules it imports (any level)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this package
                    base = name.split(".")[: len(name.split(".")) - node.level + (path.name == "__init__.py")]
                    target = ".".join([*base, node.module] if node.module else base)
                else:
                    target = node.module or ""
                found.add(target)
                found |= {f"{target}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m.startswith("runner")}
    known = set(graph)
    return {name: {m for m in deps if m in known and m != name} for name, deps in graph.items()}


def test_no_method_imports_another_and_blocks_import_no_method():
    graph = imports()
    for name, deps in graph.items():
        methods = {d for d in deps if d.startswith("runner.methods.")}
        if name.startswith("runner.methods."):
            assert not methods, f"{name} imports another method: {methods} (move the shared code to the spine)"
        else:
            assert not methods, f"{name} imports a method: {methods} (methods are reached through runner.registry)"


def test_import_graph_has_no_cycles():
    graph = imports()
    # a package's __init__ importing its own submodules is not a cycle of concern
    edges = {n: {d for d in deps if not n.startswith(d + ".") and not d.startswith(n + ".")}
             for n, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for dep in edges.get(node, ()):
            if state.get(dep) == 1:
                cycle = [*stack[stack.index(dep):], dep] if dep in stack else [node, dep]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
