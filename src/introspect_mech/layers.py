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
* a sequence of ints (list, tuple, 1-d integer tensor): those blocks.

Only integers index layers: a float such as `0.5` is an error, never truncated (write `"middle"`
or `"quartiles"`).
`resolve_layers` returns the blocks sorted ascending and without duplicates.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Union

from torch import Tensor

LayerSpec = Union[int, Sequence[int], str, Tensor, None]
LAYER_WORDS = ("all", "middle", "quartiles")
QUARTILES = (0.25, 0.5, 0.75)

__all__ = ["LayerSpec", "LAYER_WORDS", "resolve_layers"]


def _as_int(x: object, n_layers: int) -> int:
    if isinstance(x, Tensor) and x.ndim == 0 and not x.is_floating_point():
        x = int(x)
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"layers must be ints (or 'all' / 'middle' / 'quartiles'), got {x!r} ({type(x).__name__}); "
                        "relative depths are not accepted, write 'middle', 'quartiles' or a block index")
    i = int(x)
    j = i + n_layers if i < 0 else i
    if not 0 <= j < n_layers:
        raise ValueError(f"layer {i} out of range for a model with {n_layers} layers")
    return j


def resolve_layers(layers: LayerSpec, n_layers: int) -> list[int]:
    """Turn a layer spec into sorted, unique block indices.

    Args:
        layers: `None` / `"all"` (every block), `"middle"` (block `n_layers // 2`), `"quartiles"`
            (blocks `round(q * (n_layers - 1))`, q = 0.25, 0.5, 0.75), an int or a sequence of ints
            (negative counts from the end). Floats are rejected.
        n_layers: number of decoder blocks of the model.

    Returns:
        Block indices in `[0, n_layers)`, ascending, without duplicates (never empty).

    Raises:
        TypeError: a non-integer layer (e.g. `0.5`).
        ValueError: an unknown word, a layer out of range, or an empty sequence.

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
            return sorted({round(q * (n_layers - 1)) for q in QUARTILES})
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
