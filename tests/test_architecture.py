"""The package's layers (docs/design.md): imports run one way, and no module imports itself back.

The import graph is read from the source with ``ast`` (imports inside functions count too),
so a lazy import cannot hide an upward edge or a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

#: From the bottom up; a module may import its own layer and the layers below it. The top-level
#: package (``layerlmc/__init__``, the public names) and the old-path aliases sit above all.
LAYERS = [
    ("foundation", ["layerlmc._version", "layerlmc.errors", "layerlmc.registry", "layerlmc.config"]),
    ("core", ["layerlmc.core"]),
    ("zoo", ["layerlmc.models", "layerlmc.data"]),
    ("adapters", ["layerlmc.hf", "layerlmc.specs"]),
    ("evaluate", ["layerlmc.evaluate"]),
    ("analyses", ["layerlmc.analyses"]),
    ("train", ["layerlmc.train"]),
    ("plots", ["layerlmc.plots"]),
    ("api", ["layerlmc.api"]),
    ("recipes", ["layerlmc.recipes"]),
    ("cli", ["layerlmc.cli"]),
    ("package", ["layerlmc", "layerlmc._compat"]),
]


def modules(src: Path = SRC) -> dict[str, Path]:
    found = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """Module → the package modules it imports (a name imported from a package counts as the
    submodule when one of that name exists)."""
    known = modules(src)
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[:len(package) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                # `from a.b import c`: the module a.b.c where there is one, else a.b itself
                targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                           for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def layer_of(module: str) -> int:
    best, rank = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    if rank is None:
        raise AssertionError(f"{module} belongs to no layer of tests/test_architecture.py")
    return rank


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} "
                  f"({LAYERS[layer_of(target)][0]})"
                  for module, targets in graph.items() for target in targets
                  if layer_of(target) > layer_of(module))


def test_every_module_has_a_layer():
    for module in modules():
        layer_of(module)


def test_no_import_circle():
    assert circles(import_graph()) == []


def test_no_upward_import():
    assert upward_imports(import_graph()) == []


def test_no_analysis_imports_plotting_training_or_recipes():
    graph = import_graph()
    offending = sorted(f"{module} imports {target}" for module, targets in graph.items()
                       if module.startswith("layerlmc.analyses")
                       for target in targets
                       if target.split(".")[1] in {"plots", "train", "recipes", "api", "cli"})
    assert offending == []


def test_the_core_imports_only_itself_and_the_foundation():
    graph = import_graph()
    foundation = tuple(LAYERS[0][1])
    offending = sorted(f"{module} imports {target}" for module, targets in graph.items()
                       if module.startswith("layerlmc.core")
                       for target in targets
                       if not target.startswith("layerlmc.core") and target not in foundation)
    assert offending == []


@pytest.mark.parametrize("edge, expected", [
    ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": set()}, []),
])
def test_the_circle_finder_finds_circles(edge, expected):
    assert circles(edge) == expected


def test_the_checks_see_lazy_and_upward_imports(tmp_path):
    """The same walk over a made-up package with a lazy upward import and a circle."""
    package = tmp_path / "layerlmc"
    (package / "core").mkdir(parents=True)
    (package / "plots").mkdir()
    (package / "__init__.py").write_text("")
    (package / "core" / "__init__.py").write_text("")
    (package / "plots" / "__init__.py").write_text("")
    (package / "core" / "paths.py").write_text("def f():\n    from ..plots import draw\n")
    (package / "plots" / "draw.py").write_text("from ..core import paths\n")
    graph = import_graph(tmp_path)
    assert graph["layerlmc.core.paths"] == {"layerlmc.plots.draw"}
    assert circles(graph) == [["layerlmc.core.paths", "layerlmc.plots.draw"]]
    assert upward_imports(graph) == [
        "layerlmc.core.paths (core) imports layerlmc.plots.draw (plots)"]
