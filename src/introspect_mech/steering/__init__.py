"""Steering: add, ablate and clamp directions in the residual stream; sweeps; train-time interventions.

See docs/steering.md. Hooks are plain torch forward hooks on `LoadedModel.layers`; every function
here takes a `LoadedModel` and a `probes.Direction` or a raw `[d_model]` tensor.
"""

from ..positions import PositionError, prompt_scope
from .hooks import Steering, ablate, add, clamp, component, is_steered, layer_vector, random_like, resolve_layers
from .sweep import hierarchical_ci, relative_reduction, steer, summarize, sweep
from .train_time import caft, preventative_steering

__all__ = [
    "Steering", "PositionError", "is_steered", "prompt_scope", "add", "ablate", "clamp", "random_like", "component", "layer_vector", "resolve_layers",
    "steer", "sweep", "summarize", "hierarchical_ci", "relative_reduction", "caft", "preventative_steering",
]
