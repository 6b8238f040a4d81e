"""Steering: add, ablate and clamp directions in the residual stream; sweeps; train-time interventions.

See docs/steering.md. Hooks are plain torch forward hooks on `LoadedModel.layers`; every function
here takes a `LoadedModel` and a `DirectionLike` (a `Direction`, or a raw `[d_model]` /
`[layer, d_model]` tensor). `layers=`, `alpha=` and `value=` are keyword-only everywhere:

    with steering.add(model, direction, layers=[12], alpha=4.0, positions="response"):
        ...
"""

from ..layers import LayerSpec, resolve_layers
from ..positions import PositionError, prompt_scope
from .hooks import Positions, Steering, ablate, add, clamp, component, is_steered, layer_vector, random_like
from .sweep import hierarchical_ci, relative_reduction, steer, summarize, sweep
from .train_time import caft, preventative_steering

__all__ = [
    "Steering", "Positions", "LayerSpec", "PositionError", "is_steered", "prompt_scope", "add", "ablate", "clamp",
    "random_like", "component", "layer_vector", "resolve_layers", "steer", "sweep", "summarize", "hierarchical_ci",
    "relative_reduction", "caft", "preventative_steering",
]
