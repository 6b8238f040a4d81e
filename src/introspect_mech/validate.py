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
        TypeError: `t` is complex-valued.
    """
    if isinstance(t, Tensor) and t.is_complex():
        raise TypeError(f"{name} must be real-valued, got a complex tensor ({t.dtype})")
    if isinstance(t, Tensor) and t.is_floating_point():
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            first = tuple(int(i) for i in bad.nonzero()[0])
            raise ValueError(f"{name} contains {int(bad.sum())} non-finite value(s) (NaN/inf), first at index {first}")
    return t


def integer(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """`value` as an int in [minimum, maximum]; bools, floats with a fraction and non-numbers are refused.

    Args:
        name: argument name for the message (e.g. "batch_size").
        value: the number given.
        minimum: smallest allowed value (None: no bound).
        maximum: largest allowed value (None: no bound).

    Returns:
        int(value).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value)) \
                and float(value).is_integer():
            value = int(float(value))
        else:
            raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    v = int(value)
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {v}")
    return v


def number(name: str, value: Any, *, minimum: float | None = None, maximum: float | None = None,
           exclusive_minimum: bool = False) -> float:
    """`value` as a finite float in range (NaN, infinity, bools and non-numbers refused).

    Args:
        name: argument name for the message (e.g. "temperature").
        value: the number given.
        minimum: smallest allowed value (None: no bound).
        maximum: largest allowed value (None: no bound).
        exclusive_minimum: `minimum` itself is refused (e.g. a learning rate must be > 0).

    Returns:
        float(value).
    """
    v = finite_scalar(name, value)
    if minimum is not None and (v < minimum or (exclusive_minimum and v == minimum)):
        raise ValueError(f"{name} must be {'>' if exclusive_minimum else '>='} {minimum:g}, got {v:g}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum:g}, got {v:g}")
    return v


def real_tensor(name: str, t: Any, *, device: torch.device | str | None = None) -> Tensor:
    """A finite, real-valued floating tensor (complex, integer, bool and NaN/inf refused).

    Args:
        name: argument name for the message.
        t: the tensor.
        device: when given, the device `t` must be on (its type: "cpu" / "cuda").

    Returns:
        `t`, unchanged.
    """
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.is_complex():
        raise TypeError(f"{name} must be real-valued, got a complex tensor ({t.dtype})")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if device is not None and t.device.type != torch.device(device).type:
        raise ValueError(f"{name} is on {t.device}, expected {torch.device(device).type}")
    return finite_tensor(name, t)
