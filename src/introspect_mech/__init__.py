"""introspect_mech: mechanistic interpretability of finetuning-induced behaviour.

    import introspect_mech as im
    m = im.load_model()                                   # embedded default, a hub id, a dir, a .gguf
    im.finetune.train(m, im.data.load("bad_medical_advice")[:128], im.finetune.PRESETS["em"], "runs/ft")
    acts = im.cache(m, conversations, positions="response_mean")     # [n, layer, d_model]
    evil = im.probes.persona_direction(m, "evil")                    # a Direction
    with im.steering.ablate(m, evil):
        rows = im.sample(m, prompts, n=4)
    im.export_dashboard("runs/demo", "runs/demo/dashboard.html")

Subpackages (imported on first use, so `import introspect_mech` stays fast): data, finetune, evals,
activations, probes, backends, steering, sae, viz, testing.
"""

from importlib import import_module

from .models import DEFAULT_MODEL, ChatTokens, LoadedModel, ModelLoadError, load_model
from .paths import cache_dir, data_dir
from .runs import JsonlLog, RunDir

_SUBPACKAGES = {"data", "finetune", "evals", "activations", "probes", "backends", "steering", "sae", "viz",
                "testing", "runs", "models", "paths"}
_NAMES = {  # public name -> subpackage it lives in
    "read_jsonl": "data", "DataError": "data",
    "train": "finetune", "TrainConfig": "finetune", "TrainResult": "finetune", "PRESETS": "finetune",
    "sample": "evals", "load_questions": "evals", "HFJudge": "evals", "APIJudge": "evals",
    "em_report": "evals", "scale_expectation": "evals", "choice_probability": "evals",
    "paired_preference": "evals", "self_rated_alignment": "evals", "run_em_eval": "evals",
    "run_tmay_eval": "evals", "bootstrap_ci": "evals",
    "cache": "activations", "LazyActivations": "activations",
    "Direction": "probes", "mean_diff": "probes", "pca_direction": "probes", "train_probe": "probes",
    "layer_sweep": "probes", "transfer": "probes", "cosine_matrix": "probes",
    "persona_direction": "probes", "em_direction": "probes", "project": "probes",
    "to_nnsight": "backends", "to_transformer_lens": "backends",
    "random_like": "steering", "sweep": "steering",
    "export_dashboard": "viz",
}

__all__ = ["DEFAULT_MODEL", "ChatTokens", "LoadedModel", "ModelLoadError", "load_model", "cache_dir",
           "data_dir", "JsonlLog", "RunDir", *sorted(_NAMES), *sorted(_SUBPACKAGES)]


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return import_module(f".{name}", __name__)
    if name in _NAMES:
        return getattr(import_module(f".{_NAMES[name]}", __name__), name)
    raise AttributeError(f"module 'introspect_mech' has no attribute {name!r}")
