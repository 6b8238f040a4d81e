"""Steering hooks: add, ablate or clamp a direction in the residual stream after decoder blocks.

All three are context managers over plain torch forward hooks on `LoadedModel.layers`:

    with steering.add(model, direction, layers=[12], alpha=8.0):
        model.model.generate(...)               # steered
    # leaving the block removes the hooks: the model computes exactly what it did before

* `add`    : h <- h + alpha * v            (v: unit vector of a `Direction`, or a raw vector as given)
* `ablate` : h <- h - (h . v) v            (v normalised; directional ablation)
* `clamp`  : h <- h + (value - h . v) v    (the component along v is set to `value`)

`h` is the output of decoder block `l` (the residual stream after block `l`, the same point that
`activations.cache` reads and `Direction` layer `l` refers to). Weights are never touched.

Positions
---------
`positions` selects which token positions are changed:

* `"all"`      every position of every forward (plain forward, training, prefill and decode steps);
* `"prompt"`   prompt tokens only; `"response"` generated tokens only;
* `"last_prompt_and_response"`  the last prompt token and every generated token: inside `generate`
  exactly the last position of every forward, the rule of the persona-vectors steerer (upstream's
  "response"), so the first generated token is already steered.

  How positions are known (never from the name of a keyword transformers passes to its layers, which
  changed in 5.24): while a position-dependent context is active, `generate` on the model is wrapped
  (an instance attribute, removed on exit) to record the length `P` of the `input_ids` it was given and
  to keep a running count of the tokens each forward through block 0 adds, starting at the length of
  any KV cache handed to `generate` (a prompt partly prefilled beforehand, as `evals.sample` does).
  A token at absolute position `p` is a prompt token iff `p < P`. Where block 0's inputs carry a KV
  cache (found by its type, transformers' public `Cache` class) its length must equal the count, else
  `PositionError`: a forward whose positions cannot be determined is refused, never guessed.
  Outside `generate` a forward from an empty cache is a prompt pass (a plain forward, a manual prefill;
  for `"last_prompt_and_response"` its last token is steered) and a forward extending a non-empty cache
  is a response pass (e.g. scoring candidate answers over a prefilled prompt); `prompt_scope(model, P)`
  declares `P` around a manual prefill. Consequences: "response" steering acts from the second
  generated token on (the first is predicted from the unsteered prompt); a plain forward over a whole
  conversation counts as prompt, so "response" changes nothing there -- pass a mask (below) to steer
  the assistant tokens of a full forward;
* a boolean mask `Bool[Tensor, "seq"]` or `Bool[Tensor, "batch seq"]` over absolute positions
  (e.g. `model.tokenize_chat(msgs).assistant_mask`); in a decode step the token at absolute position
  `past + i` uses `mask[..., past + i]`, positions beyond the mask are left alone.

Hooks change the block output in place when no gradient is needed (cheap: one fused add per layer
and step) and out of place under autograd (training), so both are exact. Contexts compose: nested
contexts apply in the order they were entered. An exception inside the block still removes the hooks.
"""

from __future__ import annotations

import dataclasses
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Union

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from ..direction import Direction, DirectionLike, _direction_matrix, check_direction, layer_vector
from ..layers import LayerSpec, resolve_layers
from ..models import LoadedModel
from ..positions import PositionError, _layers_of, _Tracker, _tracker_enter, _tracker_exit, selected_range
from ..validate import finite_scalar, finite_tensor

Positions = Union[Literal["all", "prompt", "response", "last_prompt_and_response"], Bool[Tensor, " seq"],
                  Bool[Tensor, "batch seq"]]
"""Which token positions a steering hook changes: "all", "prompt", "response",
"last_prompt_and_response" or a boolean mask over absolute positions (see the module docstring).
Not to be confused with `activations.Pooling`."""
POSITION_MODES = ("all", "prompt", "response", "last_prompt_and_response")


# ---- inputs ---------------------------------------------------------------------------------
def layer_norm(direction: DirectionLike, layer: int) -> float:
    """`Direction.norms` at block `layer` (1.0 for a raw tensor).

    Args:
        direction: a `Direction` or a raw `[d_model]` / `[layer, d_model]` tensor.
        layer: a block index.

    Returns:
        The raw vector's norm at that block (for a mean difference: the class-mean distance).
    """
    check_direction(direction)
    if not isinstance(direction, Direction):
        return 1.0
    if layer not in direction.layers:
        raise ValueError(f"direction has no vector for layer {layer} (it has layers {direction.layers})")
    return float(direction.norms[direction.layers.index(layer)])


def _param_of(module: nn.Module) -> Tensor:
    for p in module.parameters():
        return p
    raise ValueError("decoder layer has no parameters")


_ACTIVE: "weakref.WeakKeyDictionary[nn.ModuleList, int]" = weakref.WeakKeyDictionary()
_ENTERED: "weakref.WeakKeyDictionary[nn.ModuleList, list[Steering]]" = weakref.WeakKeyDictionary()


def active_steering(model: LoadedModel | nn.Module) -> list[dict[str, Any]]:
    """What the steering contexts active on the model do (for binding results made under them).

    Args:
        model: a `LoadedModel` or its module.

    Returns:
        One `{"op", "layers", "scalar", "vectors_sha256", "positions"}` per active context, in entry
        order (empty when none is active).
    """
    import hashlib

    try:
        mods = _layers_of(model)
    except (ValueError, AttributeError):
        return []
    out = []
    for st in _ENTERED.get(mods, []):
        h = hashlib.sha256()
        for layer in sorted(st.vectors):
            h.update(str(layer).encode() + st.vectors[layer].detach().float().cpu().numpy().tobytes())
        pos = st.positions if isinstance(st.positions, str) else "mask:" + hashlib.sha256(
            st.positions.detach().cpu().numpy().tobytes()).hexdigest()[:16]
        out.append({"op": st.op, "layers": list(st.layers), "scalar": st.scalar, "vectors_sha256": h.hexdigest(),
                    "positions": pos})
    return out


def is_steered(model: LoadedModel | nn.Module) -> bool:
    """Whether a steering context (`add` / `ablate` / `clamp`) is active on the model's decoder blocks.

    Args:
        model: a `LoadedModel` or its module.

    Returns:
        True while at least one steering context is entered (False for a model without decoder blocks).
    """
    try:
        return _ACTIVE.get(_layers_of(model), 0) > 0
    except (ValueError, AttributeError):
        return False


@dataclass
class Steering:
    """A reusable steering context: hooks are registered on `__enter__` and removed on `__exit__`.

    Built by `add`, `ablate` and `clamp`; re-entrant sequentially (not nested within itself), so a
    training loop can enter the same object around every forward.
    """

    op: str
    layers_mod: nn.ModuleList
    layers: list[int]
    vectors: dict[int, Tensor]  # per layer, on the layer's device and dtype
    scalar: float
    positions: Positions
    gen_owner: nn.Module | None = None
    handles: list = field(default_factory=list)
    _masks: dict[int, Tensor] = field(default_factory=dict)
    _tracker: _Tracker | None = None
    _entered: bool = False

    # -- registration
    def __enter__(self) -> Steering:
        if self._entered:
            raise RuntimeError("this steering context is already active")
        self._entered = True
        try:
            if not (isinstance(self.positions, str) and self.positions == "all"):
                self._tracker = _tracker_enter(self.gen_owner, self.layers_mod)
            for layer in self.layers:
                self.handles.append(self.layers_mod[layer].register_forward_hook(self._hook_for(layer)))
            _ACTIVE[self.layers_mod] = _ACTIVE.get(self.layers_mod, 0) + 1
            _ENTERED.setdefault(self.layers_mod, []).append(self)
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove the hooks (what `__exit__` does); safe to call when not entered."""
        entered = _ENTERED.get(self.layers_mod, [])
        if any(x is self for x in entered):
            entered[:] = [x for x in entered if x is not self]
            if not entered:
                _ENTERED.pop(self.layers_mod, None)
        if self.handles:
            left = _ACTIVE.get(self.layers_mod, 0) - 1
            if left > 0:
                _ACTIVE[self.layers_mod] = left
            else:
                _ACTIVE.pop(self.layers_mod, None)
        while self.handles:
            self.handles.pop().remove()
        _tracker_exit(self._tracker)
        self._tracker, self._entered = None, False

    @property
    def active(self) -> bool:
        """Whether the context is entered (its hooks registered)."""
        return self._entered

    # -- the hook
    def _select(self, layer: int, h: Tensor) -> Tensor | bool | None:
        """True: all positions; None: none; a [batch|1, seq, 1] 0/1 mask otherwise."""
        pos = self.positions
        if isinstance(pos, str) and pos == "all":
            return True
        assert self._tracker is not None
        state = self._tracker.state
        seq = h.shape[-2]
        if state.seq != seq:
            raise PositionError(f"steering positions: block {layer} saw {seq} tokens but block 0 saw "
                                f"{state.seq} in this forward")
        if isinstance(pos, str):
            lo, hi = selected_range(pos, state)
            if lo == 0 and hi == seq:
                return True
            if hi <= lo:
                return None
            sel = torch.zeros(1, seq, 1, dtype=h.dtype, device=h.device)
            sel[:, lo:hi] = 1
            return sel
        mask = self._masks[layer]
        past = state.past
        sel = mask[:, past:past + seq]
        if sel.shape[1] < seq:
            sel = torch.cat([sel, sel.new_zeros(sel.shape[0], seq - sel.shape[1])], dim=1)
        if sel.shape[0] not in (1, h.shape[0]):
            raise ValueError(f"positions mask has batch {sel.shape[0]} but the forward has batch {h.shape[0]}")
        return sel.unsqueeze(-1)

    def _hook_for(self, layer: int) -> Callable:
        v = self.vectors[layer]
        op, scalar = self.op, self.scalar
        delta = (v * scalar) if op == "add" else None

        def hook(module, args, output):
            h = output[0] if isinstance(output, tuple) else output
            sel = self._select(layer, h)
            if sel is None:
                return None
            if op == "add":
                upd = delta if sel is True else sel * delta
            else:
                coef = h @ v  # [batch, seq]
                coef = (-coef) if op == "ablate" else (scalar - coef)
                upd = coef.unsqueeze(-1) * v
                if sel is not True:
                    upd = upd * sel
            if torch.is_grad_enabled() and h.requires_grad:
                new = h + upd
                return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new
            h.add_(upd)
            return None

        return hook


def _build(op: str, model, direction: DirectionLike, layers: LayerSpec, scalar: float, positions: Positions,
           normalise: bool, scale: str = "unit") -> Steering:
    scalar = finite_scalar("alpha" if op == "add" else "value", scalar)
    if isinstance(direction, Tensor):
        finite_tensor("direction", direction)
    layers_mod = _layers_of(model)
    idx = resolve_layers(layers, len(layers_mod))
    if isinstance(positions, str):
        if positions not in POSITION_MODES:
            raise ValueError(f"positions must be one of {POSITION_MODES} or a boolean mask, got {positions!r}")
    elif not isinstance(positions, Tensor) or positions.ndim not in (1, 2):
        raise ValueError("positions mask must be a Bool[Tensor, 'seq'] or Bool[Tensor, 'batch seq']")
    if scale not in ("unit", "norm"):
        raise ValueError(f"scale must be 'unit' or 'norm', got {scale!r}")
    _, _, is_direction = _direction_matrix(direction)
    vectors, masks = {}, {}
    for layer in idx:
        v = finite_tensor(f"direction (layer {layer})", layer_vector(direction, layer)).float()
        d = _layers_hidden(model, layers_mod)
        if d is not None and v.shape[-1] != d:
            raise ValueError(f"direction has d_model {v.shape[-1]}, the model has {d}")
        if normalise or is_direction:
            n = v.norm()
            if n == 0:
                raise ValueError(f"direction vector for layer {layer} is zero")
            v = v / n
        if scale == "norm" and is_direction:
            v = v * finite_scalar(f"direction norm (layer {layer})", layer_norm(direction, layer))
        p = _param_of(layers_mod[layer])
        vectors[layer] = v.to(device=p.device, dtype=p.dtype).contiguous()
        if isinstance(positions, Tensor):
            m = positions.bool()
            m = m.unsqueeze(0) if m.ndim == 1 else m
            masks[layer] = m.to(device=p.device, dtype=p.dtype)
    owner = model.base_model if isinstance(model, LoadedModel) else model
    return Steering(op=op, layers_mod=layers_mod, layers=idx, vectors=vectors, scalar=float(scalar),
                    positions=positions, gen_owner=owner, _masks=masks)


def _layers_hidden(model, layers_mod) -> int | None:
    if isinstance(model, LoadedModel):
        return model.d_model
    return None


# ---- public API ------------------------------------------------------------------------------
def add(model: LoadedModel | nn.Module, direction: DirectionLike, *, layers: LayerSpec, alpha: float,
        positions: Positions = "all", scale: Literal["unit", "norm"] = "unit") -> Steering:
    """Add `alpha * v` to the residual stream after each block in `layers`.

    Args:
        model: a `LoadedModel` (or a bare HF causal LM).
        direction: a `Direction` (`v` is its unit vector at each layer, or with `scale="norm"` its
            raw vector: unit vector times `Direction.norms`, e.g. the mean difference, so `alpha=1`
            moves by one class-mean distance), or a raw `[d_model]` / `[layer, d_model]` tensor used
            as given (`alpha` multiplies its norm).
        layers: a `LayerSpec` (ints, "all", "middle").
        alpha: the multiplier.
        positions: `Positions` changed: "all", "prompt", "response" or a boolean mask (module docstring).
        scale: "unit" or "norm" (see `direction`).

    Returns:
        A `Steering` context manager (hooks live while the `with` block runs).

    Example:
        >>> with steering.add(model, d, layers=[12], alpha=4.0, positions="response"):
        ...     rows = im.sample(model, prompts)
    """
    return _build("add", model, direction, layers, alpha, positions, normalise=False, scale=scale)


def ablate(model: LoadedModel | nn.Module, direction: DirectionLike, *, layers: LayerSpec = "all",
           positions: Positions = "all") -> Steering:
    """Project the (normalised) direction out of the residual stream: `h <- h - (h . v) v`.

    Args:
        model: a `LoadedModel` (or a bare HF causal LM).
        direction: a `Direction` or a raw `[d_model]` / `[layer, d_model]` tensor (normalised).
        layers: a `LayerSpec` (default: every block).
        positions: `Positions` changed.

    Returns:
        A `Steering` context manager.
    """
    return _build("ablate", model, direction, layers, 0.0, positions, normalise=True)


def clamp(model: LoadedModel | nn.Module, direction: DirectionLike, *, value: float, layers: LayerSpec,
          positions: Positions = "all") -> Steering:
    """Set the component of the residual stream along the (normalised) direction to `value`.

    Args:
        model: a `LoadedModel` (or a bare HF causal LM).
        direction: a `Direction` or a raw `[d_model]` / `[layer, d_model]` tensor (normalised).
        value: the component `h . v` after the hook.
        layers: a `LayerSpec`.
        positions: `Positions` changed.

    Returns:
        A `Steering` context manager.
    """
    return _build("clamp", model, direction, layers, value, positions, normalise=True)


def random_like(direction: DirectionLike, seed: int = 0) -> DirectionLike:
    """A norm-matched random control: same type, shape and per-layer norms, random orientation.

    Args:
        direction: a `Direction` or a raw `[d_model]` / `[layer, d_model]` tensor.
        seed: seed of the `torch.Generator` the isotropic Gaussian draws come from.

    Returns:
        For a Direction: a Direction with random unit vectors (one per layer), the same norms and
        layers, and `meta["random_like"] = seed`. For a raw tensor: a tensor of the same shape whose
        rows have random orientations and the original rows' norms.
    """
    vec, _, is_direction = _direction_matrix(direction)
    g = torch.Generator().manual_seed(int(seed))
    r = torch.randn(vec.shape, generator=g, dtype=torch.float64)
    r = r / r.norm(dim=-1, keepdim=True)
    norms = vec.double().norm(dim=-1, keepdim=True)
    if not isinstance(direction, Direction):
        return (r * norms).to(vec.dtype)
    meta = {**direction.meta, "random_like": int(seed)}
    return dataclasses.replace(direction, vectors=r.to(vec.dtype), meta=meta)


def component(h: Float[Tensor, "*batch d_model"], direction: Float[Tensor, " d_model"]) -> Float[Tensor, "*batch"]:
    """Scalar projection of activations on a (normalised) direction.

    Args:
        h: activations `[..., d_model]`.
        direction: a `[d_model]` vector (normalised here).

    Returns:
        `h . v / |v|`, shape `[...]`.
    """
    v = direction.to(h.dtype)
    return h @ (v / v.norm())
