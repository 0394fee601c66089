"""The package's layers (docs/concepts.md, "Package map"), read from the code's own imports.

Every ``import`` / ``from ... import`` in ``star_merge/`` (also those inside functions) is an edge from one
module to another. A module may import only from its own floor or below, the edges must not form a cycle, no
module may exceed 400 lines and no function 80. Each failure names the offending edge, cycle or function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "star_merge"

#: Module (or package prefix) -> floor. The longest matching prefix decides; keep in step with docs/concepts.md.
FLOORS = {
    # 1: leaves, importing nothing of star-merge but each other
    "errors": 1, "io": 1, "seeding": 1, "locking": 1, "finite": 1, "_faults": 1, "columns": 1,
    "launch": 1, "discovery": 1, "version": 1, "metrics": 1,
    # 2: symmetry specs, built-in models, config -> class, processors, the argument system
    "spec": 2, "groups": 2, "models": 2, "modeling": 2, "processing": 2, "argparsing": 2,
    # 3: one adapter module per family
    "adapters": 3,
    # 4: the task seam, datasets, the run directory, references and populations -> local folders
    "tasks": 4, "data": 4, "population_data": 4, "rundir": 4, "batchnorm": 4, "references": 4,
    # 5: the matching engine and what is built on it
    "matching": 5,
    # 6: the evaluation engine (forward loop, interpolation, metrics, barriers between two checkpoints)
    "evaluation": 6,
    # 7: training the star, the BMA wrapper, training members
    "starlight": 7, "bma": 7, "population": 7,
    # 8: the Hub, outwards: push, model cards
    "hub": 8, "hub.publish": 7, "hub.sanitize": 7, "hub.trainer_push": 7,
    # 9: scoring and rendering a run
    "evaluation.report": 9, "evaluation.render": 9, "evaluation.__init__": 9,
    # 10: entry points: the end-to-end run, the commands, the public face of the package
    "pipeline": 10, "commands": 10, "cli": 10, "__init__": 10,
}

MAX_MODULE_LINES = 400

MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts)  # "tasks.base", "tasks.__init__", "__init__"


def modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def floor_key(module: str) -> str:
    """The entry of FLOORS that decides ``module``'s floor: the longest matching prefix."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in FLOORS:
            return key
    raise AssertionError(f"star_merge.{module} has no floor; add it to FLOORS here and to docs/concepts.md")


def floor_of(module: str) -> int:
    return FLOORS[floor_key(module)]


def _target(name: str, known: dict[str, Path]) -> str | None:
    """The module a dotted name inside the package refers to (a module file, or a package's __init__)."""
    if name in known:
        return name
    if f"{name}.__init__" in known:
        return f"{name}.__init__"
    if name == "":
        return "__init__"
    return None


def imports_of(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The star-merge modules ``module`` imports (every import statement, at any depth)."""
    package = module.split(".")[:-1]  # the package the module lives in ("__init__" lives in its folder)
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
            for n in names:
                if n == "star_merge" or n.startswith("star_merge."):
                    t = _target(n[len("star_merge."):] if "." in n else "", known)
                    if t:
                        out.add(t)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            elif node.module and (node.module == "star_merge" or node.module.startswith("star_merge.")):
                mod = node.module[len("star_merge"):].lstrip(".")
            else:
                continue
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = _target(f"{mod}.{alias.name}" if mod else alias.name, known)
                if sub:
                    out.add(sub)
                    continue
                t = _target(mod, known)
                if t:
                    out.add(t)
    out.discard(module)
    return out


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports_of(m, p, known) for m, p in known.items()}


def upward_edges(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"star_merge.{a} (floor {floor_of(a)}) imports star_merge.{b} (floor {floor_of(b)})"
        for a, targets in graph.items() for b in targets if floor_of(b) > floor_of(a)
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles: every group of modules that import each other in a loop (Tarjan's components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(m: str) -> None:
        index[m] = low[m] = len(index)
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if n not in index:
                visit(n)
                low[m] = min(low[m], low[n])
            elif n in stack:
                low[m] = min(low[m], index[n])
        if low[m] == index[m]:
            group = []
            while True:
                n = stack.pop()
                group.append(n)
                if n == m:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for m in sorted(graph):
        if m not in index:
            visit(m)
    return sorted(out)


def describe_cycle(graph: dict[str, set[str]], group: list[str]) -> str:
    """The edges inside one cycle, ``a -> b``, so the import to cut can be read off."""
    edges = [f"star_merge.{a} -> star_merge.{b}" for a in group for b in sorted(graph[a]) if b in group]
    return "; ".join(edges)


def test_every_module_has_a_floor():
    for m in modules():
        floor_of(m)


def test_no_module_imports_from_a_higher_floor():
    bad = upward_edges(import_graph())
    assert not bad, "upward imports (move the piece one floor lower, or let the caller pass it in):\n  " + "\n  ".join(bad)


def test_no_import_cycle():
    graph = import_graph()
    found = [describe_cycle(graph, group) for group in cycles(graph)]
    assert not found, "import cycles:\n  " + "\n  ".join(found)


def test_no_module_over_400_lines():
    long = [f"star_merge/{p.relative_to(PACKAGE)}: {n} lines" for m, p in modules().items()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them):\n  " + "\n  ".join(long)


def long_functions() -> list[str]:
    out = []
    for m, p in modules().items():
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    out.append(f"star_merge/{p.relative_to(PACKAGE)}:{node.lineno} {node.name}: {n} lines")
    return out


def test_no_function_over_80_lines():
    long = long_functions()
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps):\n  " + "\n  ".join(long)


def test_the_package_map_in_the_docs_gives_every_listed_module_its_floor():
    """docs/concepts.md's table names modules (``evaluation/report.py``) and folders (``adapters/``) per floor."""
    import re

    doc = (PACKAGE.parent / "docs" / "concepts.md").read_text()
    rows = re.findall(r"^\| (\d+) \| (.+?) \| .+ \|$", doc, re.M)
    assert len(rows) == 10, "docs/concepts.md's package map has one row per floor"
    known = modules()
    for floor, cell in rows:
        for name in re.findall(r"`([^`]+)`", cell):
            module = name.removesuffix(".py").rstrip("/").replace("/", ".")
            if module not in known and f"{module}.__init__" not in known and not any(
                    m.startswith(module + ".") for m in known):
                raise AssertionError(f"docs/concepts.md lists {name} on floor {floor}, but star_merge has no such module")
            probe = module if module in known else None
            if probe is None:  # a folder: one of its modules that no more specific entry of FLOORS places
                probe = next((m for m in sorted(known) if m.startswith(module + ".") and floor_key(m) == module),
                             f"{module}.__init__")
            assert floor_of(probe) == int(floor), f"docs/concepts.md puts {name} on floor {floor}, the code on {floor_of(probe)}"


# ------------------------------------------------------------------------------------ the checks can fail
def test_the_checks_see_an_upward_import_and_a_cycle():
    graph = {"errors": {"spec"}, "spec": {"errors"}, "adapters.gpt2": {"spec"}, "tasks.base": {"matching.align"},
             "matching.align": set()}
    assert upward_edges(graph) == [
        "star_merge.errors (floor 1) imports star_merge.spec (floor 2)",
        "star_merge.tasks.base (floor 4) imports star_merge.matching.align (floor 5)",
    ]
    assert cycles(graph) == [["errors", "spec"]]
    assert describe_cycle(graph, ["errors", "spec"]) == "star_merge.errors -> star_merge.spec; star_merge.spec -> star_merge.errors"
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_reader_resolves_relative_and_lazy_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("from ..data import make_dataloader\n"
                   "def f():\n    from .. import tasks as package\n    from .engine import x\n"
                   "import star_merge.spec\n")
    known = {"evaluation.m": src, "data": src, "tasks.__init__": src, "evaluation.engine": src, "spec": src}
    assert imports_of("evaluation.m", src, known) == {"data", "tasks.__init__", "evaluation.engine", "spec"}


@pytest.mark.parametrize("module,floor", [("tasks.base", 4), ("references.resolve", 4), ("hub.push", 8),
                                          ("evaluation.report", 9), ("evaluation.engine", 6)])
def test_floor_lookup_takes_the_longest_prefix(module, floor):
    assert floor_of(module) == floor
