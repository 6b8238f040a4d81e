"""Boundary checks shared by the stages: finite numbers, integer layers, tensor shapes.

Every check raises `ValueError` with one line that names the argument, what was expected and what
was given, before any forward pass runs. No NaN or infinity passes silently.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor


def finite_scalar(name: str, value: Any) -> float:
    """`value` as a float; NaN, infinity, bools and non-numbers are refused.

    Args:
        name: argument name for the message (e.g. "alpha").
        value: the number given.

    Returns:
        float(value).
    """
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, Tensor)):
        raise ValueError(f"{name} must be a finite number, got {type(value).__name__} {value!r}")  # noqa: TRY004
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a single number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {v}")
    return v


def finite_tensor(name: str, t: Tensor) -> Tensor:
    """Refuse a tensor with NaN or infinite entries (message gives how many and the first index)."""
    if isinstance(t, Tensor) and t.is_floating_point():
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            first = tuple(int(i) for i in bad.nonzero()[0])
            raise ValueError(f"{name} contains {int(bad.sum())} non-finite value(s) (NaN/inf), first at index {first}")
    return t


def int_layers(name: str, layers: Any) -> Any:
    """Refuse float (or other non-integer) layer indices instead of truncating them to a block.

    Accepts None, "all", an int, an integer tensor, or a sequence of those; returns `layers` unchanged.
    """
    if layers is None or isinstance(layers, str):
        return layers
    items = layers.flatten().tolist() if isinstance(layers, Tensor) else (
        [layers] if not isinstance(layers, (list, tuple, range)) else list(layers))
    if isinstance(layers, Tensor) and layers.is_floating_point():
        raise ValueError(f"{name} must be integers, got a {layers.dtype} tensor")
    for x in items:
        if isinstance(x, bool) or not isinstance(x, numbers.Integral):
            raise ValueError(f"{name} must be integers (block indices), got {x!r}")  # noqa: TRY004
    return layers
