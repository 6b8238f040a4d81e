"""introspect_mech: mechanistic interpretability of finetuning-induced behaviour.

    import introspect_mech as im
    m = im.load_model()                                   # embedded default, a hub id, a dir, a .gguf
    im.train(m, im.data.load("bad_medical_advice")[:128], im.finetune.PRESETS["em"], "runs/ft")
    acts = im.cache(m, conversations, positions="response_mean")     # [n, layer, d_model]
    evil = im.persona_direction(m, "evil")                           # a Direction
    with im.steering.ablate(m, evil, layers="all"):
        rows = im.sample(m, prompts, n=4)
    im.export_dashboard("runs/demo", "runs/demo/dashboard.html")

The top level holds the dozen names a notebook needs (`__all__`); every stage's full API is in its
subpackage: data, finetune, evals, activations, probes, steering, sae, backends, viz (plus the core
modules models, layers, direction, runs, paths, testing). Subpackages are imported on first use, so
`import introspect_mech` stays fast; `TYPE_CHECKING` imports and `__dir__` make them visible to
type checkers and IDEs.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .models import LoadedModel, load_model
from .runs import RunDir

if TYPE_CHECKING:  # what the lazy `__getattr__` below returns, for type checkers and IDEs
    from . import (
        activations,
        backends,
        data,
        diffing,
        direction,
        evals,
        finetune,
        layers,
        models,
        paths,
        probes,
        runs,
        sae,
        steering,
        testing,
        viz,
    )
    from .activations import cache
    from .direction import Direction
    from .evals import sample
    from .finetune import TrainConfig, train
    from .layers import resolve_layers
    from .probes import em_direction, mean_diff, project
    from .studies.common.persona import persona_direction
    from .viz import export_dashboard

_SUBPACKAGES = ("data", "finetune", "evals", "activations", "probes", "steering", "sae", "diffing", "backends", "viz",
                "models", "layers", "direction", "runs", "paths", "testing")
_NAMES = {  # the notebook dozen: public name -> module it lives in
    "train": "finetune", "TrainConfig": "finetune",
    "sample": "evals",
    "cache": "activations",
    "Direction": "direction", "resolve_layers": "layers",
    "mean_diff": "probes", "persona_direction": "studies.common.persona", "em_direction": "probes", "project": "probes",
    "export_dashboard": "viz",
}
_COMPAT = {  # names the top level used to export; still resolved, no longer advertised
    "DEFAULT_MODEL": "models", "ChatTokens": "models", "ModelLoadError": "models", "cache_dir": "paths",
    "data_dir": "paths", "JsonlLog": "runs", "read_jsonl": "data", "DataError": "data", "TrainResult": "finetune",
    "PRESETS": "finetune", "load_questions": "evals", "HFJudge": "evals", "APIJudge": "evals",
    "em_report": "evals", "scale_expectation": "evals", "choice_probability": "evals",
    "paired_preference": "evals", "self_rated_alignment": "evals.metrics", "run_em_eval": "studies.common.em_eval",
    "bootstrap_ci": "evals", "LazyActivations": "activations",
    "pca_direction": "probes", "train_probe": "probes", "layer_sweep": "probes", "transfer": "probes",
    "cosine_matrix": "probes", "to_nnsight": "backends", "to_transformer_lens": "backends",
    "random_like": "steering", "sweep": "steering",
    "run_tmay_eval": "studies.self_awareness.measures",
}

# library names whose paper-protocol code moved into studies/ (issue 30): the old library module resolves them
# through `_moved_to_studies` (with a DeprecationWarning, for one release), so that no library module names a study
# (a string instead of a dict: the whole old module moved, and every public name of the new module resolves)
_MOVED_TO_STUDIES: dict[str, str | dict[str, str]] = {
    "introspect_mech.evals.self_prediction": "studies.self_prediction.tasks",  # Looking Inward's tasks and scoring
    "introspect_mech.evals.properties": "studies.self_prediction.properties",  # its behavioural properties
    "introspect_mech.probes.self_prediction": "studies.self_prediction.probe",  # its self-prediction probes
    "introspect_mech.probes.concepts": "studies.introspection.concepts",  # Lindsey 2025's concept vectors, word lists
    "introspect_mech.probes.em": {"medical_advice_pairs": "studies.common.medical_split"},
    "introspect_mech.evals.em": {
        "run_em_eval": "studies.common.em_eval",
        **dict.fromkeys(("em_proxy_fn", "proxy_items", "PROXY_PREF", "PROXY_DIFF"), "studies.common.em_proxy"),
        **dict.fromkeys(("MEDICAL_TRAIN_ROWS", "medical_train_rows", "medical_heldout_items"),
                        "studies.common.medical_split"),
    },
}

__all__ = ["load_model", "LoadedModel", "RunDir", *_NAMES, *_SUBPACKAGES]


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return import_module(f".{name}", __name__)
    module = _NAMES.get(name) or _COMPAT.get(name)
    if module is not None:
        return getattr(import_module(f".{module}", __name__), name)
    raise AttributeError(f"module 'introspect_mech' has no attribute {name!r}")


def _moved_to_studies(module: str, name: str) -> Any:
    """An old library name whose code moved into `studies.common`, with a DeprecationWarning naming its new home.

    Args:
        module: the old module (e.g. "introspect_mech.evals.em"), whose `__getattr__` calls this.
        name: the attribute asked for.

    Returns:
        The object from its new module.

    Raises:
        AttributeError: `name` did not move out of `module`.
    """
    entry = _MOVED_TO_STUDIES.get(module, {})
    if isinstance(entry, str):  # a whole module moved: its public names
        new = None if name.startswith("_") else entry
    else:
        new = entry.get(name)
    if new is None or not hasattr(target := import_module(f".{new}", __name__), name):
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    import warnings

    warnings.warn(f"{module}.{name} moved to introspect_mech.{new} (paper protocol code lives in studies/; "
                  "the old name goes in the next release)", DeprecationWarning, stacklevel=3)
    return getattr(target, name)


def __dir__() -> list[str]:
    return sorted(set(__all__) | set(globals()))
