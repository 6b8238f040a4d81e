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
