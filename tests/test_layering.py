"""The shape of the package: the library never imports `introspect_mech.studies` (studies compose the library,
not the reverse) nor holds the paper logic that moved there; no study imports another; no import circle; one
depth rule; no module over 600 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "introspect_mech"
# callers of the studies layer: the studies themselves, the command line, and the lazy top-level facade (its
# `persona_direction`, compat `run_tmay_eval` / `run_em_eval`, and `_moved_to_studies` -- through which an old
# library module's `__getattr__` resolves its moved names -- resolve from studies on first use; importing the
# package imports no study: `test_importing_the_package_imports_no_study`)
ALLOWED = {"studies", "cli.py", "__init__.py"}


def _imports(path: Path, text: str | None = None) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8") if text is None else text)):
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


def _mentions_studies(path: Path, text: str | None = None) -> bool:
    """An import of `introspect_mech.studies` (anywhere in the file), or a string naming one of its modules (an
    `import_module("introspect_mech.studies...")` or a lazy map's "studies.x" entry)."""
    text = path.read_text(encoding="utf-8") if text is None else text
    strings = [n.value for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    return (any(m == "introspect_mech.studies" or m.startswith("introspect_mech.studies.") for m in _imports(path, text))
            or any(s.startswith(("introspect_mech.studies", ".studies", "studies.")) for s in strings))


def library_modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        if rel.parts[0] not in ALLOWED:
            yield rel, path


def test_library_does_not_import_studies():
    for where, text in (("probe.py", "from .studies.common import persona\n"),
                        ("evals/probe.py", "def f():\n    from ..studies import runner\n"),
                        ("probe.py", "import importlib\nimportlib.import_module('introspect_mech.studies.caft')\n")):
        assert _mentions_studies(PKG / where, text), text
    assert not _mentions_studies(PKG / "probe.py", "from . import stats\n")
    offenders = [str(rel) for rel, path in library_modules() if _mentions_studies(path)]
    assert not offenders, f"library modules import introspect_mech.studies: {offenders}"


def test_importing_the_package_imports_no_study():
    import subprocess
    import sys

    code = ("import sys, introspect_mech as im, introspect_mech.evals, introspect_mech.probes, introspect_mech.viz, "
            "introspect_mech.sae; print(sorted(m for m in sys.modules if m.startswith('introspect_mech.studies')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# paper logic that moved into studies/ (issue 30): no library module may define these names again; the old
# library modules of the first moves are gone (OLD_MODULES), those of the later ones only forward (SHIM_MODULES)
MOVED_NAMES = {
    "studies/common/persona.py": ("persona_data", "persona_direction", "PersonaResult", "load_trait", "TraitJudge",
                                  "judge_rows", "projection_difference", "upstream_keep", "coherence_prompt",
                                  "instruction_likelihood_scores"),
    "studies/common/em_eval.py": ("run_em_eval",),
    "studies/common/em_proxy.py": ("em_proxy_fn", "proxy_items"),  # its metric names PROXY_* live in evals.metrics
    "studies/common/medical_split.py": ("MEDICAL_TRAIN_ROWS", "medical_train_rows", "medical_heldout_items",
                                        "medical_advice_pairs"),
    "studies/common/ab_pairs.py": ("ab_items", "lotteries", "pair_records", "choice_behaviour", "risk_behaviour",
                                   "split_of"),
    "studies/self_awareness/reports.py": ("scale_reports", "word_reports", "word_probs", "language_two_hop",
                                          "one_word_tally", "sampled_word_reports"),
    "studies/self_awareness/backdoor.py": ("trigger_dataset", "backdoor_awareness", "trigger_awareness"),
    "studies/self_awareness/measures.py": ("run_tmay_eval", "compare_tmay", "persona_scales", "codeword_elicitation"),
    "studies/self_prediction/sae_latents.py": ("predictive_latents", "prompt_diff", "prompt_latents"),
    "studies/self_prediction/tasks.py": ("task_files", "load_task", "task_size", "object_key", "task_property",
                                         "object_level_answers", "hypothetical_answers", "constrained_predictions",
                                         "score_predictions", "prediction_training_data", "object_level_training_data",
                                         "self_prediction_data", "cross_prediction_data", "compare_self_cross",
                                         "behaviour_shift", "BINARY_PROPERTIES", "CHARACTER_PROPERTIES"),
    "studies/self_prediction/properties.py": ("PROPERTIES", "extract_property", "parse_prediction", "is_compliant",
                                              "answer_letter"),
    "studies/self_prediction/probe.py": ("self_prediction_probe", "SelfPredictionResult", "probe_property_from_acts"),
    "studies/introspection/concepts.py": ("concept_vector", "concept_vectors", "load_words", "word_lists",
                                          "concept_prompts", "word_activations"),
    "studies/caft/panels.py": ("caft_components_html", "CAFTComponentRow"),
    "studies/organisms/panels.py": ("organisms_figures", "OrganismRow"),
    "studies/introspection/panels.py": ("detection_heatmaps", "identification_heatmaps", "self_report_track_figure",
                                        "IntrospectionGridRow", "SelfReportTrackRow"),
}
OLD_MODULES = ("evals/self_awareness.py", "probes/persona.py", "sae/selfpred.py", "viz/caft.py", "viz/organisms.py",
               "viz/introspection.py")
# old library modules whose whole content moved: they keep only a `__getattr__` that resolves every old name through
# the top-level `_moved_to_studies` (a DeprecationWarning, for one release)
SHIM_MODULES = ("evals/self_prediction.py", "evals/properties.py", "probes/self_prediction.py", "probes/concepts.py")


def _top_level_names(path: Path) -> set[str]:
    out = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                out |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
    return out


def test_paper_logic_lives_in_studies_not_in_the_library():
    moved = {name: home for home, names in MOVED_NAMES.items() for name in names}
    for home, names in MOVED_NAMES.items():
        assert set(names) <= _top_level_names(PKG / home), home  # the list follows the code
    assert not [m for m in OLD_MODULES if (PKG / m).exists()], "an old library module of moved paper logic is back"
    offenders = {str(rel): sorted(found) for rel, path in library_modules()
                 if (found := _top_level_names(path) & set(moved))}
    assert not offenders, f"library modules define paper logic that lives in studies/ ({moved}): {offenders}"


def test_old_modules_of_moved_code_only_forward():
    for rel in SHIM_MODULES:
        tree = ast.parse((PKG / rel).read_text(encoding="utf-8"))
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assigned = [n for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign))]
        assert defined == {"__getattr__"} and not assigned, (rel, defined)
        assert "_moved_to_studies" in ast.unparse(tree), rel


def _study_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) > 2 and parts[1] == "studies" and parts[2] not in ("runner", "common"):
        return parts[2]
    return None


def test_no_study_imports_another():
    """A study may use the runner, `studies.common` and the library; never another study's package."""
    graph = import_graph()
    offenders = {m: sorted(t for t in targets if _study_of(t) not in (None, _study_of(m)))
                 for m, targets in graph.items() if _study_of(m)}
    offenders = {m: t for m, t in offenders.items() if t}
    assert not offenders, f"studies importing another study: {offenders}"
    common = {m: sorted(t for t in targets if _study_of(t)) for m, targets in graph.items()
              if m.startswith("introspect_mech.studies.common")}
    assert not any(common.values()), f"studies.common imports a study: {common}"


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


MAX_LINES = 600
# modules still over MAX_LINES, each with the ceiling it may not grow past and why it is not split yet; a module
# that shrinks under MAX_LINES must leave this list (the test says so), so the list only gets shorter
OVERSIZE = {
}


def test_no_module_over_600_lines():
    sizes = {str(p.relative_to(PKG)): len(p.read_text(encoding="utf-8").splitlines()) for p in PKG.rglob("*.py")}
    over = {m: n for m, n in sizes.items() if n > MAX_LINES and m not in OVERSIZE}
    assert not over, f"modules over {MAX_LINES} lines (split them into cohesive files): {over}"
    grown = {m: (sizes.get(m), ceiling) for m, (ceiling, _) in OVERSIZE.items() if sizes.get(m, 0) > ceiling}
    assert not grown, f"listed oversize modules grew past their ceiling (split instead): {grown}"
    stale = [m for m in OVERSIZE if sizes.get(m, 0) <= MAX_LINES]
    assert not stale, f"no longer over {MAX_LINES} lines (or gone): remove from OVERSIZE: {stale}"


VOCABULARY = ("errors", "layers", "direction", "positions", "validate", "stats", "paths")
ABOVE_VOCABULARY = ("models", "finetune", "evals", "activations", "probes", "sae", "steering", "diffing", "backends",
                    "viz", "studies", "cli", "commands", "cliargs", "kv_cache", "scrub", "testing")


def test_vocabulary_modules_import_nothing_above_them():
    """`layers direction positions validate stats` know no model and no stage (`positions` once imported `models`
    for `decoder_layers`, which now lives in `layers`). `direction` saves through `runs`' writer (the one writer)."""
    graph = import_graph()
    offenders = {v: sorted(t for t in graph[f"introspect_mech.{v}"]
                           if t.split(".")[1] in ABOVE_VOCABULARY)
                 for v in VOCABULARY}
    assert not any(offenders.values()), f"vocabulary modules importing upward: {offenders}"
