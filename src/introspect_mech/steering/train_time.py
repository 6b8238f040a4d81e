"""Train-time interventions for `finetune.train(..., intervention=...)`.

`finetune.train` enters `intervention()` around every training forward. Two recipes:

* **preventative steering** (Chen et al. 2025, persona vectors): add `alpha * v` (the persona
  direction) during finetuning, so the optimiser need not move the model along v to fit the data;
  at evaluation time (no hook) the finetuned model should show less of the trait;
* **CAFT** (concept-ablation finetuning, Casademunt et al. 2025): project v (`caft`) or a chosen
  subspace per layer (`caft_subspace`: e.g. the interpretable principal components of base-vs-finetune
  activation differences a person picked) out of the residual stream during finetuning only, so the
  gradient cannot use those components; at inference nothing is ablated.

Both hooks change the forward only; gradients follow from autograd through the hook (for an
ablation at block `l`, the gradient reaching block `l`'s output is orthogonal to v — tested).

Gradient checkpointing recomputes block forwards during `backward()`, which runs outside the
intervention context, so the recomputed activations would be unsteered and the gradients wrong:
these helpers refuse a model with gradient checkpointing enabled.
"""

from __future__ import annotations

from typing import Callable, Literal, Mapping

import torch
from jaxtyping import Float
from torch import Tensor

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


# ---- CAFT on a chosen subspace (Casademunt et al. 2025) --------------------------------------
def orthonormal_basis(components: Float[Tensor, "k d_model"] | Float[Tensor, " d_model"],
                      tol: float = 1e-6) -> Float[Tensor, "rank d_model"]:
    """Orthonormal rows spanning `components`; rank-deficient rows are dropped.

    Args:
        components: `[k, d_model]` vectors (k >= 1), or one `[d_model]` vector.
        tol: a row whose QR diagonal entry is at most `tol * max(1, largest |entry|)` is dropped
            as dependent.

    Returns:
        `[rank, d_model]` float32 orthonormal rows (`rank <= k`).

    Raises:
        ValueError: no component, or the components span nothing (all zero).
    """
    c = torch.as_tensor(components, dtype=torch.float64)
    if c.ndim == 1:
        c = c[None]
    if c.ndim != 2 or c.shape[0] == 0:
        raise ValueError(f"components must be [k, d_model] with k >= 1, got shape {tuple(c.shape)}")
    q, r = torch.linalg.qr(c.T)  # [d, k]
    keep = r.diagonal().abs() > tol * max(1.0, float(r.diagonal().abs().max()))
    if not bool(keep.any()):
        raise ValueError("components span nothing (all zero)")
    return q[:, keep].T.float().contiguous()


class SubspaceAblation:
    """Context manager projecting a per-layer subspace out of the residual stream after the chosen
    blocks, at every position: `h <- h - (h Q^T) Q` with `Q` the orthonormal basis (`[k, d_model]`)
    of that layer. Out of place under autograd (training), in place otherwise. Re-entrant
    sequentially (a training loop enters it around every forward).

    Args:
        model: the model whose blocks are hooked.
        bases: `{block index: [k, d_model] components}` (orthonormalised by `orthonormal_basis`).

    Raises:
        ValueError: components of another width than the model's, or no layer.
    """

    def __init__(self, model: LoadedModel, bases: Mapping[int, Float[Tensor, "... d_model"]]):
        self.layers_mod = model.layers
        n = len(self.layers_mod)
        self.bases: dict[int, Tensor] = {}
        for layer, comp in bases.items():
            (li,) = resolve_layers([int(layer)], n)
            q = orthonormal_basis(comp)
            if q.shape[1] != model.d_model:
                raise ValueError(f"layer {layer}: components have d_model {q.shape[1]}, the model has {model.d_model}")
            p = next(self.layers_mod[li].parameters())
            self.bases[li] = q.to(device=p.device, dtype=p.dtype)
        if not self.bases:
            raise ValueError("no layer to ablate")
        self.handles: list = []

    @property
    def dims(self) -> dict[int, int]:
        """`{layer: dimension of the ablated subspace}`."""
        return {l: int(q.shape[0]) for l, q in sorted(self.bases.items())}

    def _hook(self, q: Tensor):
        def hook(module, args, output):
            h = output[0] if isinstance(output, tuple) else output
            upd = -((h @ q.T) @ q)
            if torch.is_grad_enabled() and h.requires_grad:
                new = h + upd
                return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new
            h.add_(upd)
            return None

        return hook

    def __enter__(self) -> "SubspaceAblation":
        if self.handles:
            raise RuntimeError("this subspace ablation is already active")
        for l, q in sorted(self.bases.items()):
            self.handles.append(self.layers_mod[l].register_forward_hook(self._hook(q)))
        return self

    def __exit__(self, *exc) -> None:
        while self.handles:
            self.handles.pop().remove()

    @property
    def active(self) -> bool:
        """Whether the hooks are registered (inside the `with` block)."""
        return bool(self.handles)


def caft_subspace(model: LoadedModel, components: Mapping[int, Float[Tensor, "... d_model"]]
                  ) -> Callable[[], SubspaceAblation]:
    """Zero-arg callable for `finetune.train(intervention=...)`: CAFT with a chosen subspace per layer.

    Args:
        model: the model being finetuned.
        components: {block index: `[k, d_model]`} -- e.g. the principal components of base-vs-finetune
            activation differences a person picked (`studies.caft`), or SAE decoder rows. Each layer's
            rows are orthonormalised; during every training forward their span is projected out of the
            residual stream after that block at all positions. Outside training (no hook) the model is
            untouched: CAFT changes only what the optimiser can use.

    Returns:
        The intervention; `.steering` is the `SubspaceAblation` (its `.bases` are the orthonormal bases).
    """
    abl = SubspaceAblation(model, components)

    def intervention() -> SubspaceAblation:
        _check_no_checkpointing(model)
        return abl

    import hashlib

    h = hashlib.sha256(b"".join(abl.bases[l].float().cpu().numpy().tobytes() for l in sorted(abl.bases))).hexdigest()
    intervention.__name__ = f"caft_subspace(dims={abl.dims}, bases_sha256={h[:16]})"
    intervention.steering = abl  # type: ignore[attr-defined]
    return intervention
