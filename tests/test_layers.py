"""The package's structure: no import knots, the library below the app, files of one job."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("casn_core", "app")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def _imported(module: str, node: ast.AST, known: set[str], is_package: bool) -> set[str]:
    """Modules of ours that an import statement names (module level or inside a function)."""
    names: set[str] = set()
    if isinstance(node, ast.Import):
        names = {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            anchor = module.split(".") if is_package else module.split(".")[:-1]
            anchor = anchor[: len(anchor) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        names = {base} | {f"{base}.{alias.name}" for alias in node.names}
    found = set()
    for name in names:
        while name and name not in known:  # `import a.b.c` names module a.b.c, or a.b for an attribute
            name = name.rpartition(".")[0]
        if name:
            found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    sources = _sources()
    known = set(sources)
    graph = {}
    for module, path in sources.items():
        tree = ast.parse(path.read_text(), str(path))
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= _imported(module, node, known, path.name == "__init__.py")
        # a package's __init__ re-exports its submodules: importing them is not a knot
        graph[module] = {e for e in edges if e != module and not e.startswith(module + ".")}
    return graph


def knots(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_knot_finder_finds_a_knot():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert knots(graph) == [["a", "b", "c"]]
    assert knots({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_back_up():
    """No import cycle among casn_core/ and app/, counting imports inside functions."""
    assert knots(import_graph()) == []


def test_the_library_does_not_import_the_app():
    graph = import_graph()
    offenders = {m: sorted(e for e in edges if e.split(".")[0] == "app")
                 for m, edges in graph.items() if m.split(".")[0] == "casn_core"}
    assert {m: e for m, e in offenders.items() if e} == {}


def test_no_file_over_500_lines():
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in _sources().values()}
    assert {name: n for name, n in sizes.items() if n > 500} == {}


def long_signatures(source: str, limit: int = 8) -> list[tuple[str, int]]:
    """Public functions and methods of ``source`` with more than ``limit`` parameters (``self``/``cls``
    not counted; ``*args``/``**kwargs`` count one each)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("_"):
            continue
        args = node.args
        names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
        count = len(names) - (1 if names and names[0] in ("self", "cls") else 0)
        count += (args.vararg is not None) + (args.kwarg is not None)
        if count > limit:
            found.append((node.name, count))
    return found


def test_the_signature_counter_counts():
    source = "def f(a, b, c, *, d, e, f, g, h, i): pass\nclass C:\n    def m(self, a, b, c, d, e, f, g, h): pass\n" \
             "def _private(a, b, c, d, e, f, g, h, i): pass\ndef g(a, *rest, **named): pass\n"
    assert long_signatures(source) == [("f", 9)]
    assert long_signatures(source, limit=2) == [("f", 9), ("g", 3), ("m", 8)]


def test_no_public_function_takes_more_than_8_parameters():
    """Settings travel in frozen dataclasses (``TrainConfig``, ``ExtractionConfig``, ``RankingSpec``,
    ``Compute``, ...), not in long argument lists."""
    offenders = {f"{name}: {func}": count for name, path in _sources().items()
                 for func, count in long_signatures(path.read_text())}
    assert offenders == {}


def test_no_code_cites_an_issue_number():
    """Comments and docstrings give reasons, not tracker numbers a reader does not have."""
    import re

    pattern = re.compile(r"\b" + "issue" + r"s?\s*#?\d+", re.IGNORECASE)
    roots = ("casn_core", "app", "bench", "scripts", "tests")
    hits = [f"{p.relative_to(REPO)}:{n}" for root in roots for p in sorted((REPO / root).rglob("*.py"))
            for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []
