"""Boundary checks shared by the stages: finite numbers and finite tensors.

Every check raises one line that names the argument, what was expected and what was given, before
any forward pass runs (`ValueError` for a wrong value, `TypeError` for a wrong type). No NaN or
infinity passes silently. Integer layers are checked by `layers.resolve_layers`.
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
        raise TypeError(f"{name} must be a finite number, got {type(value).__name__} {value!r}")
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a single number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {v}")
    return v


def finite_tensor(name: str, t: Tensor) -> Tensor:
    """Refuse a tensor with NaN or infinite entries.

    Args:
        name: the argument's name, for the message.
        t: the tensor (integer tensors and non-tensors pass unchecked).

    Returns:
        `t`, unchanged.

    Raises:
        ValueError: `t` has non-finite entries (how many, and the first index).
    """
    if isinstance(t, Tensor) and t.is_floating_point():
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            first = tuple(int(i) for i in bad.nonzero()[0])
            raise ValueError(f"{name} contains {int(bad.sum())} non-finite value(s) (NaN/inf), first at index {first}")
    return t
