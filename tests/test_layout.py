"""The code's shape: no method imports another, shared blocks never import a method, the import graph
of runner/ (module-level and function-level imports alike) has no cycles, every import keeps to the floors
of the README's "How the code is laid out", no module is over 500 lines, and runner/speed.py holds the one
interleaved timer."""

from __future__ import annotations

import ast
import re

from tests.conftest import ROOT

PACKAGE = ROOT / "runner"


def module_name(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(packages: tuple[str, ...] = ("runner",)) -> dict[str, set[str]]:
    """module of `packages` -> the modules of `packages` it imports (any level)."""
    graph = {}
    for path in [p for package in packages for p in (ROOT / package).rglob("*.py")]:
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
        graph[name] = {m for m in found if m.split(".")[0] in packages}
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


# -- the floors of the README's "How the code is laid out", line counts, one timer ---------------------------

README = ROOT / "README.md"
LAYOUT_HEADING = "## How the code is laid out"
MAX_LINES = 500
CLOCKS = {"perf_counter", "perf_counter_ns", "process_time", "process_time_ns", "monotonic", "monotonic_ns",
          "Event", "elapsed_time"}  # time.*, torch.cuda.Event


def sources() -> list:
    return sorted([*PACKAGE.rglob("*.py"), *(ROOT / "plm_kernels").rglob("*.py")])


def layout_floors() -> dict[str, int]:
    """Package or module name -> floor number, from the table of the README's layout section."""
    text = README.read_text()
    assert LAYOUT_HEADING in text, f"README.md has no '{LAYOUT_HEADING}' section"
    section = text.split(LAYOUT_HEADING, 1)[1].split("\n## ", 1)[0]
    floors = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 2 and cells[0][:1].isdigit():
            number = int(cells[0].split()[0])
            for name in re.findall(r"`([A-Za-z_][\w.]*)`", cells[1]):
                floors[name] = number
    assert floors, "the layout section has no floor table (| floor | packages | ... |)"
    return floors


def floor_of(module: str, floors: dict[str, int]) -> int | None:
    """The floor of the longest listed package (or module) that `module` is or is inside."""
    owners = [name for name in floors if module == name or module.startswith(name + ".")]
    return floors[max(owners, key=len)] if owners else None


def test_readme_layout_section_places_every_top_level_package():
    floors = layout_floors()
    packages = {f"runner.{p.parent.name}" for p in PACKAGE.glob("*/__init__.py")} | {"runner", "plm_kernels"}
    missing = sorted(p for p in packages if p not in floors)
    assert not missing, f"README '{LAYOUT_HEADING}' places no floor for {missing}: add each to a row of its table"


def test_every_import_goes_to_the_same_floor_or_a_lower_one():
    floors = layout_floors()
    graph = imports(("runner", "plm_kernels"))
    upward = []
    for name, deps in graph.items():
        mine = floor_of(name, floors)
        upward += [f"{name} (floor {mine}) imports {dep} (floor {floor_of(dep, floors)})"
                   for dep in deps if floor_of(dep, floors) > mine]
    assert not upward, "imports against the README's floors:\n  " + "\n  ".join(sorted(upward))


def test_no_module_is_longer_than_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in sources() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by concern): {long}"


def interleaved_timers(tree: ast.Module) -> list[str]:
    """Functions of a module that time variants against each other: a loop (over repetitions) around a loop
    (over variants) that reads a clock, directly or through a small timing helper of the module (a function
    or variable that reads one and loops no deeper than once); and any function named `interleaved`."""
    loops = (ast.For, ast.While, ast.AsyncFor)

    def reads_clock(node, clock_names) -> bool:
        return any((isinstance(sub, ast.Attribute) and sub.attr in CLOCKS)
                   or (isinstance(sub, ast.Name) and (sub.id in CLOCKS or sub.id in clock_names))
                   for sub in ast.walk(node))

    def inner_loops(fn) -> list:
        return [inner for outer in ast.walk(fn) if isinstance(outer, loops)
                for inner in ast.walk(outer) if inner is not outer and isinstance(inner, loops)]

    clocks: set[str] = set()
    for node in tree.body:  # module-level clock variables, e.g. CLOCK = [time.perf_counter]
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None and reads_clock(node.value, set()):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            clocks |= {t.id for t in targets if isinstance(t, ast.Name)}
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    helpers = {fn.name for fn in functions if reads_clock(fn, clocks) and not inner_loops(fn)}
    return [fn.name for fn in functions
            if fn.name == "interleaved" or any(reads_clock(inner, clocks | helpers) for inner in inner_loops(fn))]


def test_only_runner_speed_defines_an_interleaved_timer():
    timers = {f"{p.relative_to(ROOT)}:{name}" for p in sources() if p != PACKAGE / "speed.py"
              for name in interleaved_timers(ast.parse(p.read_text()))}
    assert not timers, f"interleaved timers outside runner/speed.py (time through runner.speed.interleaved): {timers}"
    assert interleaved_timers(ast.parse((PACKAGE / "speed.py").read_text())) == ["interleaved"]
