"""The public surface: one layer spec, the lazy top level (visible to tools), one meaning per name."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

import introspect_mech as im
from introspect_mech.layers import resolve_layer, resolve_layers


def test_resolve_layers_is_the_one_spec():
    assert resolve_layers(None, 4) == resolve_layers("all", 4) == [0, 1, 2, 3]
    assert resolve_layers("middle", 4) == [2] and resolve_layers("middle", 5) == [2]
    assert resolve_layers("quartiles", 30) == [7, 14, 22] and resolve_layers("quartiles", 18) == [4, 8, 13]
    assert resolve_layers("quartiles", 4) == [1, 2] and resolve_layers("quartiles", 1) == [0]
    assert resolve_layers(-1, 4) == [3]
    assert resolve_layers([3, -4, 3, 1], 4) == [0, 1, 3]  # sorted, unique, negatives from the end
    assert resolve_layers(torch.tensor([2, 0]), 4) == [0, 2] and resolve_layers(torch.tensor(1), 4) == [1]
    # a float is a relative depth, round(depth * (n_layers - 1)): the package's one rule (layers.depth_block)
    assert resolve_layers(0.5, 30) == [14] and resolve_layers(0.5, 4) == [2] and resolve_layers([1, 1.0], 4) == [1, 3]
    assert resolve_layers([0.25, 0.5, 0.75], 30) == resolve_layers("quartiles", 30)
    assert resolve_layer(1.0, 30) == 29 and resolve_layer(1, 30) == 1 and resolve_layer("middle", 30) == 15
    with pytest.raises(ValueError, match="relative depth must be in"):
        resolve_layers(1.5, 4)  # never truncated
    with pytest.raises(ValueError, match="relative depth must be in"):
        resolve_layers([1, -0.5], 4)
    with pytest.raises(ValueError, match="one layer"):
        resolve_layer("quartiles", 4)
    with pytest.raises(TypeError):
        resolve_layers(torch.tensor([0.5]), 4)
    with pytest.raises(TypeError):
        resolve_layers([True], 4)
    with pytest.raises(ValueError, match="out of range"):
        resolve_layers([4], 4)
    with pytest.raises(ValueError, match="out of range"):
        resolve_layers(-5, 4)
    with pytest.raises(ValueError, match="empty"):
        resolve_layers([], 4)
    with pytest.raises(ValueError, match="'all', 'middle'"):
        resolve_layers("last", 4)


def test_every_stage_uses_the_same_resolver():
    from introspect_mech import activations, steering
    from introspect_mech.finetune import adapters
    from introspect_mech.probes import em
    from introspect_mech.studies.common import persona

    for mod in (activations, steering, adapters, em, persona):
        assert mod.resolve_layers is resolve_layers


def test_train_config_layers_reject_floats():
    from introspect_mech.finetune import TrainConfig

    assert TrainConfig(layers="middle").layers == "middle"
    assert TrainConfig(layers=[1, -1]).layers == (1, -1)
    with pytest.raises((ValueError, TypeError), match="layers"):  # TypeError: the tests' shape checker
        TrainConfig(layers=(0.5,))
    with pytest.raises(ValueError, match="layers"):
        TrainConfig(layers="half")


def test_top_level_is_small_lazy_and_visible():
    names = set(im.__all__)
    assert {"load_model", "cache", "train", "sample", "Direction", "mean_diff", "steering", "probes"} <= names
    assert set(dir(im)) >= names  # __dir__ lists the lazy names for IDEs
    assert im.Direction is __import__("introspect_mech.direction", fromlist=["Direction"]).Direction
    assert im.cache is im.activations.cache and im.train is im.finetune.train
    assert im.HFJudge is im.evals.HFJudge  # an old top-level name still resolves (not advertised)
    with pytest.raises(AttributeError):
        im.no_such_name  # noqa: B018


def test_every_all_fits_a_screen_and_resolves():
    """Each subpackage's `__all__` holds its stage's names (a bound that fails if a list grows back)."""
    import importlib

    for name in im.__all__:
        getattr(im, name)
    for sub in im._SUBPACKAGES:
        mod = importlib.import_module(f"introspect_mech.{sub}")
        names = getattr(mod, "__all__", [])
        assert len(names) <= 30, (sub, len(names))
        assert len(set(names)) == len(names), sub
        for name in names:
            getattr(mod, name)
    for old in ("run_em_eval", "run_tmay_eval", "self_rated_alignment", "HFJudge", "bootstrap_ci"):
        assert callable(getattr(im, old))  # old top-level names still resolve (not advertised)


def test_evals_exports_building_blocks_and_studies_live_in_submodules():
    from introspect_mech import evals
    from introspect_mech.evals import em, properties, self_prediction
    from introspect_mech.evals.judge_spec import JudgeOptions

    assert {"sample", "HFJudge", "APIJudge", "JudgeOptions", "load_questions", "scale_expectations",
            "paired_preference", "bootstrap_ci", "em_report", "tree_logprobs"} <= set(evals.__all__)
    assert evals.JudgeOptions is JudgeOptions and len(evals.__all__) <= 25
    study_names = {"run_em_eval", "judge_samples", "run_tmay_eval", "compare_tmay", "lotteries", "load_task",
                   "score_predictions", "extract_property", "PROPERTIES", "load_em_pairs", "self_rated_alignment"}
    assert not study_names & set(evals.__all__)
    assert evals.em is em and evals.self_prediction is self_prediction  # submodules reachable as attributes
    with pytest.warns(DeprecationWarning, match=r"evals\.em"):
        assert evals.run_em_eval is em.run_em_eval  # an old flat name still resolves, with a pointer
    with pytest.raises(AttributeError):  # "Tell me about yourself" moved to studies/: the library never reaches it
        evals.lotteries  # noqa: B018
    with pytest.warns(DeprecationWarning, match=r"evals\.properties"):
        assert evals.extract_property is properties.extract_property
    with pytest.raises(AttributeError):
        evals.no_such_name  # noqa: B018


def test_looking_inward_medical_pairs_and_concepts_moved_to_studies_warn():
    """Looking Inward's tasks, properties and probes left `evals.self_prediction`, `evals.properties` and
    `probes.self_prediction` for `studies.self_prediction`, the EM protocol's held-out medical pairs left
    `probes.em` for `studies.common.medical_split`, and the introspection study's concept vectors left
    `probes.concepts` for `studies.introspection.concepts` (issue 30): every old name resolves to the same object with a
    DeprecationWarning naming its new module; importing the old modules imports no study."""
    import subprocess
    import sys
    import warnings

    from introspect_mech import evals, probes
    from introspect_mech.evals import properties as old_properties, self_prediction as old_tasks
    from introspect_mech.probes import concepts as old_concepts, em, self_prediction as old_probe
    from introspect_mech.studies.common import medical_split
    from introspect_mech.studies.introspection import concepts
    from introspect_mech.studies.self_prediction import probe, properties, tasks

    for old, new, names in (
            (old_tasks, tasks, ("load_task", "task_files", "object_key", "object_level_answers", "score_predictions",
                                "compare_self_cross", "behaviour_shift", "constrained_predictions")),
            (old_properties, properties, ("PROPERTIES", "extract_property", "parse_prediction", "answer_letter")),
            (old_probe, probe, ("self_prediction_probe", "SelfPredictionResult", "probe_property_from_acts")),
            (em, medical_split, ("medical_advice_pairs",)),
            (old_concepts, concepts, ("concept_vector", "concept_vectors", "load_words", "word_lists", "KINDS"))):
        for name in names:
            with pytest.warns(DeprecationWarning, match=rf"{old.__name__}\.{name} moved to {new.__name__}"):
                assert getattr(old, name) is getattr(new, name)
    for name, new in (("medical_advice_pairs", medical_split), ("self_prediction_probe", probe),
                      ("concept_vectors", concepts)):
        with pytest.warns(DeprecationWarning, match=f"{name} moved to {new.__name__}"):
            assert getattr(probes, name) is getattr(new, name)
        assert name not in probes.__all__
    with pytest.warns(DeprecationWarning, match="load_task"):
        assert evals.load_task is tasks.load_task
    with pytest.warns(DeprecationWarning, match="object_key moved"):
        from introspect_mech.evals.self_prediction import object_key  # noqa: F401
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert callable(em.em_direction_from_pairs) and callable(probes.layer_sweep)
        for old in (old_tasks, old_properties, old_probe, old_concepts, em):
            with pytest.raises(AttributeError):
                old.no_such_name  # noqa: B018
        with pytest.raises(AttributeError):
            old_tasks._greedy_answers  # noqa: B018  (private names did not move as API)
    assert concepts.word_lists()["concrete"]  # the word lists moved with the module
    code = ("import sys, introspect_mech.evals.self_prediction, introspect_mech.evals.properties, "
            "introspect_mech.probes.self_prediction, introspect_mech.probes.concepts, introspect_mech.probes.em; "
            "print([m for m in sys.modules if 'studies' in m])")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_em_protocol_names_moved_to_studies_common_warn():
    """The EM paper protocol left `evals.em` for `studies.common` (issue 30): the old names resolve to the same
    objects with a DeprecationWarning naming the new module; the generic pieces stay, without a warning."""
    import subprocess
    import sys
    import warnings

    import introspect_mech as im
    from introspect_mech.evals import em
    from introspect_mech.studies.common import em_eval, em_proxy, medical_split

    for mod, names in ((em_eval, ("run_em_eval",)), (em_proxy, ("em_proxy_fn", "proxy_items", "PROXY_PREF", "PROXY_DIFF")),
                       (medical_split, ("MEDICAL_TRAIN_ROWS", "medical_train_rows", "medical_heldout_items"))):
        for name in names:
            with pytest.warns(DeprecationWarning, match=rf"evals\.em\.{name} moved to {mod.__name__}"):
                assert getattr(em, name) is getattr(mod, name)
    with pytest.warns(DeprecationWarning, match="medical_train_rows moved"):
        from introspect_mech.evals.em import medical_train_rows  # noqa: F401
    assert im.run_em_eval is em_eval.run_em_eval
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert em.HFCategoricalJudge is im.evals.judges.HFCategoricalJudge and callable(em.judge_samples)
    with pytest.raises(AttributeError):
        em.no_such_name  # noqa: B018
    code = "import sys, introspect_mech.evals.em; print([m for m in sys.modules if 'studies' in m])"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_direction_lives_in_a_core_module():
    import introspect_mech.probes.direction as compat
    from introspect_mech import probes
    from introspect_mech.direction import Direction

    assert probes.Direction is Direction and compat.Direction is Direction


def test_renamed_sae_names_warn():
    from introspect_mech import sae

    with pytest.warns(DeprecationWarning, match="train_sae"):
        assert sae.train is sae.train_sae
    with pytest.warns(DeprecationWarning, match="load_release"):
        assert sae.load is sae.load_release


def test_pooling_and_positions_are_distinct_names():
    import typing

    from introspect_mech import activations, steering
    from introspect_mech.sae import TOKEN_POSITIONS

    assert set(typing.get_args(activations.Pooling)) == {"last_prompt", "response_mean", "response_last", "all"}
    assert set(activations.POOLINGS) == set(typing.get_args(activations.Pooling))
    assert "response_mean" not in typing.get_args(typing.get_args(steering.Positions)[0])
    assert set(TOKEN_POSITIONS) == {"response", "prompt", "last_prompt", "all"}


# ---- docstrings: every public function documents its arguments (Google style) -------------------
_PKG = Path(__file__).resolve().parents[1] / "src" / "introspect_mech"
_SECTION = re.compile(r"^(Args|Arguments|Returns|Yields|Raises|Examples?|Notes?|Attributes|Warnings?|Warns|"
                      r"See Also|References|Todo)\s*:\s*$")
_ENTRY = re.compile(r"^\s*\**(\w+)\s*(\([^)]*\))?\s*:")


def _documented_args(doc: str) -> set[str] | None:
    """Names given an entry (`name: ...` / `name (type): ...`, indented) in the docstring's `Args:` sections.

    None when there is no `Args:` section.
    """
    names: set[str] | None = None
    inside = False
    for line in doc.splitlines():
        if _SECTION.match(line):
            inside = line.startswith(("Args", "Arguments"))
            names = set() if inside and names is None else names
        elif inside and names is not None and (m := _ENTRY.match(line)) and 0 < len(line) - len(line.lstrip()) <= 4:
            names.add(m.group(1))
    return names


def _undocumented(tree: ast.Module, where: str) -> list[str]:
    """`where:line name: problem` for each public function / method whose docstring misses an argument."""
    funcs: list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef, bool]] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            funcs.append((node.name, node, False))
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            funcs += [(f"{node.name}.{m.name}", m, True) for m in node.body
                      if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))
                      and (not m.name.startswith("_") or m.name == "__init__")]
    out = []
    for name, fn, method in funcs:
        decorators = {d.id if isinstance(d, ast.Name) else getattr(d, "attr", "") for d in fn.decorator_list}
        if decorators & {"overload", "setter"}:
            continue
        a = fn.args
        args = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
        args += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
        if method and "staticmethod" not in decorators and args and args[0] in ("self", "cls"):
            args = args[1:]
        if not args:
            continue
        doc = ast.get_docstring(fn) or ""
        if fn.name == "__init__":  # the constructor's arguments are documented on the class (or on __init__)
            doc = (ast.get_docstring(next(n for n in tree.body if isinstance(n, ast.ClassDef) and fn in n.body)) or "") \
                + "\n" + doc
        documented = _documented_args(doc)
        if documented is None:
            out.append(f"{where}:{fn.lineno} {name}: no Args section")
        elif missing := [x for x in args if x not in documented]:
            out.append(f"{where}:{fn.lineno} {name}: Args lacks {', '.join(missing)}")
    return out


def test_docstring_checker_flags_missing_arguments():
    src = '''
def good(a, *rest, b=1, **kw):
    """Doc.

    Args:
        a: first.
        *rest: more.
        b (int): third.
        **kw: options.

    Returns:
        Nothing much.
    """
def no_section(a):
    """Doc without sections; mentions a."""
def partial(a, b):
    """Doc.

    Args:
        a: first.

    Returns:
        b: not an argument entry.
    """
def _private(a):
    pass
class C:
    """A class.

    Args:
        y: documented on the class.
    """
    def __init__(self, y, z):
        pass
    def m(self, x):
        """Doc."""
    def no_args(self):
        pass
'''
    got = [p.split(" ", 1)[1] for p in _undocumented(ast.parse(src), "x.py")]
    assert got == ["no_section: no Args section", "partial: Args lacks b", "C.__init__: Args lacks z",
                   "C.m: no Args section"]


def test_public_functions_document_their_arguments():
    problems = []
    for path in sorted(_PKG.rglob("*.py")):
        rel = path.relative_to(_PKG).as_posix()
        problems += _undocumented(ast.parse(path.read_text(encoding="utf-8")), rel)
    assert not problems, "public functions whose docstring does not document every argument " \
                         "(Google style `Args:` with one `name: ...` entry per argument):\n" + "\n".join(problems)


def test_api_reference_covers_every_library_module():
    docs = Path(__file__).resolve().parents[1] / "docs" / "api"
    rendered = set(re.findall(r"^::: ([\w.]+)", "\n".join(p.read_text(encoding="utf-8") for p in docs.glob("*.md")),
                              re.MULTILINE))
    modules = {"introspect_mech." + p.relative_to(_PKG).with_suffix("").as_posix().replace("/", ".")
               for p in _PKG.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    skip = {"introspect_mech.cli", "introspect_mech.probes.direction", "introspect_mech.evals.stats"}  # the entry point; compatibility aliases
    missing = sorted(m for m in modules - skip if m not in rendered)  # the study modules included
    assert not missing, f"modules missing from docs/api/*.md (add a `::: module` block): {missing}"


def test_api_reference_shows_every_study_command():
    """docs/api/studies.md: per `introspect-mech study <name>`, its generated `--help` and a block with the
    study's config dataclass, PRESETS, `run` and `main`."""
    from introspect_mech.cli import STUDIES

    root = Path(__file__).resolve().parents[1]
    page = (root / "docs" / "api" / "studies.md").read_text(encoding="utf-8")
    assert "docs/_hooks/study_help.py" in (root / "mkdocs.yml").read_text(encoding="utf-8")  # expands the markers
    assert "api/studies.md" in (root / "mkdocs.yml").read_text(encoding="utf-8")
    blocks = dict(re.findall(r"^::: introspect_mech\.studies\.(\w+)\n    options:\n(?:      .*\n)*?      members: \[([^\]]*)\]",
                             page, re.MULTILINE))
    for name, module in STUDIES.items():
        assert f"<!-- study-help: {name} -->" in page, name
        assert module in blocks, f"no `::: introspect_mech.studies.{module}` block with `members:`"
        members = {m.strip() for m in blocks[module].split(",")}
        configs = {n.name for f in (_PKG / "studies" / module).glob("*.py")  # a study is a package
                   for n in ast.parse(f.read_text(encoding="utf-8")).body
                   if isinstance(n, ast.ClassDef) and n.name.endswith("Config")
                   and any("dataclass" in ast.unparse(d) for d in n.decorator_list)}
        assert configs, module
        assert "main" in members and any(m.startswith("run") for m in members), (module, members)
        assert configs <= members and members & {"PRESETS", "STUDY_PRESETS"}, (module, configs, members)


def test_docs_hook_renders_a_study_help():
    """The mkdocs hook replaces `<!-- study-help: NAME -->` by the study's own `--help` text."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("study_help", _PKG.parents[1] / "docs" / "_hooks" / "study_help.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    page = hook.on_page_markdown("before\n<!-- study-help: caft -->\nafter\n")
    assert page.startswith("before\n```text\nusage: introspect-mech study caft ") and page.endswith("```\nafter\n")
    assert "--n-train" in page and "--pick" in page and "--judge" in page
    with pytest.raises(ValueError, match="unknown study"):
        hook.study_help("no-such-study")
