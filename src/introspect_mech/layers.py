"""The one layer specification every stage accepts (`cache`, steering, finetuning, probes, backends).

A *layer* is a decoder-block index: layer `l` is the residual stream after block `l` (the output of
`LoadedModel.layers[l]`), the point `activations.cache` reads, steering hooks change and a
`Direction`'s row for layer `l` refers to.

`LayerSpec` is one of:

* `None` or `"all"`: every block;
* `"middle"`: block `n_layers // 2` (e.g. the single layer of a rank-1 model-organism adapter);
* `"quartiles"`: the blocks at a quarter, half and three quarters of the depth,
  `round(q * (n_layers - 1))` for q in 0.25, 0.5, 0.75 (Python's rounding; e.g. 7, 14, 22 of 30 blocks),
  a model-independent choice of a few layers to probe;
* an `int`: one block; negative values count from the end (`-1` = the last block);
* a `float` in [0, 1]: a **relative depth**, the block `round(depth * (n_layers - 1))` (0.0 = the first
  block, 1.0 = the last; Python's rounding, half to even: 0.5 of 30 blocks is block 14);
* a sequence of ints and depths (list, tuple, 1-d integer tensor): those blocks.

The depth rule is the package's only one: no other module turns a depth into a block (a test checks
that no module but this one does arithmetic on `n_layers`). A float outside [0, 1] is an error, never
truncated; an int is always a block index (`1` is block 1, `1.0` the last block). `"middle"` keeps its
own definition (`n_layers // 2`, the model-organisms papers' "layer 24 of 48"), which is not always
depth 0.5 (15 vs 14 of 30 blocks).
`resolve_layers` returns the blocks sorted ascending and without duplicates; `resolve_layer` one block;
`depth_of` the inverse (a block's relative depth).

`decoder_layers(model)` finds the blocks these indices count (a HF causal LM's decoder `ModuleList`, inside
a PEFT wrapper too); it lives here, below `models`, so `positions` can find a model's blocks without
importing `models`.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, Union

from torch import Tensor, nn

from .errors import ModelLoadError

LayerSpec = Union[int, float, Sequence[Union[int, float]], str, Tensor, None]
LAYER_WORDS = ("all", "middle", "quartiles")
QUARTILES = (0.25, 0.5, 0.75)

__all__ = ["LayerSpec", "LAYER_WORDS", "resolve_layers", "resolve_layer", "depth_block", "depth_of"]


def depth_block(depth: float, n_layers: int) -> int:
    """The block at relative depth `depth`: `round(depth * (n_layers - 1))` (the package's one depth rule).

    Args:
        depth: in [0, 1] (0 = the first block, 1 = the last).
        n_layers: number of decoder blocks.

    Returns:
        The block index.

    Raises:
        ValueError: `depth` outside [0, 1] (or NaN).
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"a relative depth must be in [0, 1], got {depth!r} (an int is a block index)")
    return int(round(depth * (n_layers - 1)))


def depth_of(layer: int, n_layers: int) -> float:
    """The relative depth of block `layer` (the inverse of `depth_block`; 0.0 for a one-block model).

    Args:
        layer: a block index in [0, n_layers).
        n_layers: number of decoder blocks.

    Returns:
        `layer / (n_layers - 1)`.
    """
    return layer / max(n_layers - 1, 1)


def _as_int(x: object, n_layers: int) -> int:
    if isinstance(x, Tensor) and x.ndim == 0 and not x.is_floating_point():
        x = int(x)
    if isinstance(x, float) and not isinstance(x, bool):
        return depth_block(x, n_layers)
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"layers must be block indices (ints), relative depths (floats in [0, 1]) or 'all' / "
                        f"'middle' / 'quartiles', got {x!r} ({type(x).__name__})")
    i = int(x)
    j = i + n_layers if i < 0 else i
    if not 0 <= j < n_layers:
        raise ValueError(f"layer {i} out of range for a model with {n_layers} layers")
    return j


def resolve_layers(layers: LayerSpec, n_layers: int) -> list[int]:
    """Turn a layer spec into sorted, unique block indices.

    Args:
        layers: `None` / `"all"` (every block), `"middle"` (block `n_layers // 2`), `"quartiles"`
            (depths 0.25, 0.5, 0.75), an int or a sequence of ints (negative counts from the end), a
            float in [0, 1] (a relative depth, `depth_block`) or a sequence mixing both.
        n_layers: number of decoder blocks of the model.

    Returns:
        Block indices in `[0, n_layers)`, ascending, without duplicates (never empty).

    Raises:
        TypeError: a layer that is neither an int nor a float (e.g. a bool or a string in a list).
        ValueError: an unknown word, a layer or depth out of range, or an empty sequence.

    Example:
        >>> resolve_layers([-1, 0], 4)
        [0, 3]
    """
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    if layers is None:
        return list(range(n_layers))
    if isinstance(layers, str):
        if layers == "all":
            return list(range(n_layers))
        if layers == "middle":
            return [n_layers // 2]
        if layers == "quartiles":
            return sorted({depth_block(q, n_layers) for q in QUARTILES})
        raise ValueError(f"layers must be 'all', 'middle', 'quartiles', an int or a list of ints, got {layers!r}")
    if isinstance(layers, Tensor):
        if layers.is_floating_point() or layers.ndim > 1:
            raise TypeError(f"layers must be integers, got a {layers.dtype} tensor of shape {tuple(layers.shape)}")
        items: list[object] = [layers] if layers.ndim == 0 else list(layers)
    elif isinstance(layers, Sequence) or (hasattr(layers, "__iter__") and not isinstance(layers, numbers.Number)):
        items = list(layers)  # type: ignore[arg-type]
    else:
        items = [layers]
    out = sorted({_as_int(x, n_layers) for x in items})
    if not out:
        raise ValueError("layers is empty")
    return out


def resolve_layer(spec: int | float | str, n_layers: int) -> int:
    """Exactly one block: an int (negative from the end), a relative depth or `"middle"`.

    Args:
        spec: a block index, a float in [0, 1] (`depth_block`) or "middle".
        n_layers: number of decoder blocks.

    Returns:
        The block index.

    Raises:
        TypeError: not an int, float or word.
        ValueError: out of range, or a word naming several blocks.
    """
    if isinstance(spec, str) and spec != "middle":
        raise ValueError(f"one layer: an int, a depth in [0, 1] or 'middle', got {spec!r}")
    return resolve_layers(spec, n_layers)[0]


# ---- the blocks the indices count ---------------------------------------------------------
def base_model(model: nn.Module) -> Any:
    """The HF model inside a PEFT wrapper, else `model` itself.

    Args:
        model: a module, possibly a PEFT wrapper.

    Returns:
        The wrapped HF model, or `model`. Typed `Any`: a PreTrainedModel's own
    methods (`save_pretrained`, `get_decoder`, ...) are not `nn.Module`'s, and transformers is imported
    lazily (a PreTrainedModel annotation would load it with this module)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if get_base is not None else model


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of Qwen2/Qwen3/Llama/Gemma3 (and PEFT-wrapped versions of them).

    Args:
        model: a HF causal LM, possibly inside a PEFT wrapper.

    Returns:
        The `ModuleList` of decoder blocks.
    """
    base = base_model(model)
    cfg = getattr(base, "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    n = getattr(cfg, "num_hidden_layers", None)
    for path in ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers"):
        obj = base
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.ModuleList) and (n is None or len(obj) == n):
            return obj
    for name, mod in base.named_modules():
        if isinstance(mod, nn.ModuleList) and name.endswith("layers") and len(mod) == n:
            return mod
    raise ModelLoadError(f"cannot find decoder layers in {type(base).__name__}")
