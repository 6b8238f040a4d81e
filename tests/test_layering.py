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
