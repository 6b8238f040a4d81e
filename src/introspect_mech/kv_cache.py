"""Passing and reading KV caches across transformers releases by public quantities only.

transformers 5.24 renamed the cache argument of model forwards and `generate` from `past_key_values`
to `cache` (the old name warns and goes at 5.40) and the output field likewise. These helpers pick the
name the installed model's own `forward` signature declares, and find a returned cache by its type
(the public `transformers.cache_utils.Cache`), so the project's code neither warns nor breaks on
either side of the rename.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn


def _base(model: Any) -> nn.Module:
    m = getattr(model, "model", model) if not isinstance(model, nn.Module) else model  # LoadedModel -> nn.Module
    get_base = getattr(m, "get_base_model", None)  # a PEFT wrapper
    return get_base() if get_base is not None else m


_NAMES: dict[type, str] = {}  # model class -> its cache keyword (the signature is read once per class)


def _name_for(cls: type[nn.Module]) -> str:
    if cls not in _NAMES:
        params = inspect.signature(cls.forward).parameters
        if "cache" in params:
            _NAMES[cls] = "cache"
        elif "past_key_values" in params:
            _NAMES[cls] = "past_key_values"
        else:
            raise TypeError(f"{cls.__name__}.forward takes neither `cache` nor `past_key_values`: "
                            "this model cannot be given a KV cache")
    return _NAMES[cls]


def cache_arg_name(model: Any) -> str:
    """The keyword the installed transformers uses for a KV cache in `model`'s forward and `generate`.

    Args:
        model: a `LoadedModel`, an `nn.Module` or a PEFT-wrapped model.

    Returns:
        "cache" or "past_key_values", as the base model's `forward` signature declares.

    Raises:
        TypeError: the model's forward takes neither.
    """
    return _name_for(type(_base(model)))


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """`{<cache keyword>: cache}` for a forward or `generate` call on `model`.

    Args:
        model: a `LoadedModel`, an `nn.Module` or a PEFT-wrapped model.
        cache: the KV cache to pass.

    Returns:
        The keyword arguments.
    """
    return {cache_arg_name(model): cache}


def output_cache(out: Any) -> Any:
    """The KV cache a model forward returned (found by type).

    Args:
        out: a model output (a `ModelOutput` or any mapping).

    Returns:
        The first value that is a `transformers.cache_utils.Cache`, or None.
    """
    from transformers.cache_utils import Cache

    values = out.values() if hasattr(out, "values") else ()
    for v in values:
        if isinstance(v, Cache):
            return v
    return None
