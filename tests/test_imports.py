"""The package's import graph keeps DESIGN.md's dependency rules (read from the source with ast).

Every `import ethoprism.x` / `from ethoprism.x import y` / relative import counts, wherever it
stands (function-level imports too: a lazy import still makes a cycle, it only hides it). The
CLI may import everything and is left out; so are the tests. No cycle is allowed.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the package `ethoprism`
PACKAGE = "ethoprism"

# probe may use extract only to encode a query clip or text (DESIGN.md, "Dependencies").
PROBE_MAY_IMPORT_FROM_EXTRACT = {
    "ethoprism.extract.lvt",  # PROMPT_TEMPLATE, how a text query is worded for the text tower
    "ethoprism.extract.videotext",  # the text tower: text queries and zero-shot prompts
}
WINGS = ("classify", "retrieve", "localize")
CLI = ("cli", "cli.py", "cli_options.py", "__main__.py")  # may import everything


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PACKAGE, *parts))


def library_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*.py")
        if p.relative_to(root).parts[0] not in (*CLI, "tests", ".venv", "build")
    )


def imported(path: Path, root: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports (a name imported from a package counts as
    its submodule when there is one, else as the package, whose lazy exports count as its
    imports)."""
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    if path.name == "__init__.py":  # a package's lazy exports name their modules as strings
        lazy = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)} & modules
        found |= lazy - {me}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import ethoprism.x.y as z` and the like
                target = target.rpartition(".")[0]
            if target.startswith(PACKAGE + ".") and target != me:
                found.add(target)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """{module: the package's modules it imports} over the library below `root`."""
    files = library_files(root)
    modules = {module_name(p, root) for p in files}
    return {module_name(p, root): imported(p, root, modules) for p in files}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def wing(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "probe" and parts[2] in WINGS else None


def edges(graph):
    return [(a, b) for a, targets in sorted(graph.items()) for b in sorted(targets)]


def test_graph_sees_function_level_and_relative_imports(tmp_path):
    """The reader of imports itself: a lazy import inside a function is an edge."""
    pkg = tmp_path / "ethoprism"
    (pkg / "store").mkdir(parents=True)
    (pkg / "store" / "__init__.py").write_text("")
    (pkg / "store" / "a.py").write_text("def f():\n    from ethoprism.store.b import g\n")
    (pkg / "store" / "b.py").write_text("from . import a\nfrom .a import f\n")
    graph = import_graph(pkg)
    assert graph["ethoprism.store.a"] == {"ethoprism.store.b"}
    assert graph["ethoprism.store.b"] == {"ethoprism.store.a"}
    assert cycles(graph) == [["ethoprism.store.a", "ethoprism.store.b"]]


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 50  # the package was found
    assert cycles(graph) == []


def test_dependencies_point_one_way():
    """DESIGN.md: pipeline -> extract, store, probe; probe -> store (and extract only to encode
    a query); the wings of probe never import each other; extract never imports probe or
    pipeline; store imports none of them."""
    wrong = []
    for a, b in edges(import_graph()):
        la, lb = layer(a), layer(b)
        if la == "store" and lb in ("extract", "probe", "pipeline"):
            wrong.append((a, b))
        if la == "extract" and lb in ("probe", "pipeline"):
            wrong.append((a, b))
        if la == "probe" and lb == "pipeline":
            wrong.append((a, b))
        if la == "probe" and lb == "extract" and b not in PROBE_MAY_IMPORT_FROM_EXTRACT:
            wrong.append((a, b))
        if wing(a) and wing(b) and wing(a) != wing(b):
            wrong.append((a, b))
    assert wrong == []
