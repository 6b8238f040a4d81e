"""The library never imports `introspect_mech.studies` (studies compose the library, not the reverse)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "introspect_mech"
ALLOWED = {"studies", "cli.py", "main_job.py"}  # callers of the studies layer


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:  # relative: resolve against the file's package
                parts = list(path.relative_to(PKG.parent).with_suffix("").parts[:-1])
                parts = parts[: len(parts) - node.level + 1]
                mod = ".".join(parts + ([mod] if mod else []))
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_library_does_not_import_studies():
    offenders = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        if rel.parts[0] in ALLOWED:
            continue
        if any(m == "introspect_mech.studies" or m.startswith("introspect_mech.studies.") for m in _imports(path)):
            offenders.append(str(rel))
    assert not offenders, f"library modules import introspect_mech.studies: {offenders}"


DEPTH_NAMES = {"n_layers", "num_hidden_layers", "n_blocks"}


def _mentions_depth(node: ast.AST) -> bool:
    return any((isinstance(n, ast.Name) and n.id in DEPTH_NAMES) or (isinstance(n, ast.Attribute) and n.attr in DEPTH_NAMES)
               for n in ast.walk(node))


def depth_arithmetic(source: str) -> list[int]:
    """Lines that multiply, divide or floor-divide with a layer count (a depth -> block rule of their own)."""
    return sorted({node.lineno for node in ast.walk(ast.parse(source))
                   if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Div, ast.FloorDiv, ast.Mod))
                   and (_mentions_depth(node.left) or _mentions_depth(node.right))})


def test_depth_arithmetic_only_in_layers_py():
    """One depth rule (`layers.depth_block`): no other module turns a relative depth into a block itself."""
    assert depth_arithmetic("b = round(0.5 * (model.n_layers - 1))\nm = n_layers // 2\nk = n_layers - 1\n") == [1, 2]
    offenders = {str(p.relative_to(PKG)): lines for p in PKG.rglob("*.py") if p.relative_to(PKG) != Path("layers.py")
                 if (lines := depth_arithmetic(p.read_text(encoding="utf-8")))}
    assert not offenders, f"n_layers arithmetic outside layers.py (use layers.resolve_layers / depth_block): {offenders}"


def _module(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports, anywhere in the file (function-local imports too; not the
    `TYPE_CHECKING` blocks, nor the lazy top-level package). `from pkg import sub` is an edge to `pkg.sub`."""
    mods = {_module(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                for n in ast.walk(node)}
        pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        edges: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom):
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else (node.module or "")
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
                edges |= set(subs) if len(subs) == len(node.names) else {base} & set(mods)
            elif isinstance(node, ast.Import):
                edges |= {a.name for a in node.names} & set(mods)
        graph[name] = edges - {name, PKG.name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while (w := stack.pop()) != v:
                comp.append(w)
            if comp:
                cycles.append(sorted(comp + [v]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_circle_among_package_modules():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    cycles = import_cycles(import_graph())
    assert not cycles, f"import circles (function-local imports count): {cycles}"
