"""Train-time interventions for `finetune.train(..., intervention=...)`.

`finetune.train` enters `intervention()` around every training forward. Two recipes:

* **preventative steering** (Chen et al. 2025, persona vectors): add `alpha * v` (the persona
  direction) during finetuning, so the optimiser need not move the model along v to fit the data;
  at evaluation time (no hook) the finetuned model should show less of the trait;
* **CAFT** (concept-ablation finetuning, Casademunt et al. 2025): project v out of the residual
  stream during finetuning, so the gradient cannot use the v-component.

Both hooks change the forward only; gradients follow from autograd through the hook (for an
ablation at block `l`, the gradient reaching block `l`'s output is orthogonal to v — tested).

Gradient checkpointing recomputes block forwards during `backward()`, which runs outside the
intervention context, so the recomputed activations would be unsteered and the gradients wrong:
these helpers refuse a model with gradient checkpointing enabled.
"""

from __future__ import annotations

from typing import Callable, Literal

from ..direction import DirectionLike
from ..layers import LayerSpec, resolve_layers
from ..models import LoadedModel
from .hooks import Positions, Steering, ablate, add


def _check_no_checkpointing(model: LoadedModel) -> None:
    base = model.base_model
    flag = "is_activation_checkpointing" if hasattr(type(base), "is_activation_checkpointing") \
        else "is_gradient_checkpointing"
    if getattr(base, flag, False):
        raise ValueError("train-time steering cannot be combined with gradient checkpointing: the recomputed "
                         "forward in backward() runs outside the hook (set TrainConfig.gradient_checkpointing=False)")


def _intervention(model: LoadedModel, make: Callable[[], Steering], name: str) -> Callable[[], Steering]:
    steering = make()  # vectors are moved to the model's device/dtype once

    def intervention() -> Steering:
        _check_no_checkpointing(model)
        return steering

    intervention.__name__ = name
    intervention.steering = steering  # type: ignore[attr-defined]
    return intervention


def preventative_steering(model: LoadedModel, direction: DirectionLike, *, layers: LayerSpec, alpha: float,
                          positions: Positions = "all",
                          scale: Literal["unit", "norm"] = "unit") -> Callable[[], Steering]:
    """Zero-arg callable for `finetune.train(intervention=...)` adding `alpha * v` at `layers`.

    Args:
        model: the model being finetuned.
        direction: a `Direction` or a raw `[d_model]` / `[layer, d_model]` tensor.
        layers: a `LayerSpec`.
        alpha: multiplier, as in `steering.add`.
        positions: `Positions` changed.
        scale: "unit" or "norm", as in `steering.add`.

    Returns:
        A callable returning the `Steering` context the training loop enters around every forward.
    """
    idx = resolve_layers(layers, model.n_layers)
    return _intervention(model, lambda: add(model, direction, layers=idx, alpha=alpha, positions=positions,
                                            scale=scale),
                         f"preventative_steering(layers={idx}, alpha={alpha})")


def caft(model: LoadedModel, direction: DirectionLike, *, layers: LayerSpec = "all",
         positions: Positions = "all") -> Callable[[], Steering]:
    """Zero-arg callable for `finetune.train(intervention=...)` ablating v at `layers` (CAFT).

    Args:
        model: the model being finetuned.
        direction: a `Direction` or a raw `[d_model]` / `[layer, d_model]` tensor.
        layers: a `LayerSpec` (default: every block).
        positions: `Positions` changed.

    Returns:
        A callable returning the `Steering` context the training loop enters around every forward.
    """
    idx = resolve_layers(layers, model.n_layers)
    return _intervention(model, lambda: ablate(model, direction, layers=idx, positions=positions),
                         f"caft(layers={idx if len(idx) < model.n_layers else 'all'})")
