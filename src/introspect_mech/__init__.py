"""introspect_mech: mechanistic interpretability of finetuning-induced behaviour."""

from .models import DEFAULT_MODEL, ChatTokens, LoadedModel, ModelLoadError, load_model
from .paths import cache_dir, data_dir
from .runs import JsonlLog, RunDir

__all__ = [
    "DEFAULT_MODEL", "ChatTokens", "LoadedModel", "ModelLoadError", "load_model",
    "cache_dir", "data_dir", "JsonlLog", "RunDir",
]
