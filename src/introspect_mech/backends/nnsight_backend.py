"""nnsight backend: `to_nnsight(model)` and the activation cache written in the nnsight idiom.

Local: `to_nnsight(loaded)` is `nnsight.NNsight(loaded.model)` - the very same modules, weights and
PEFT adapter (nnsight wraps, it does not copy or rewrite). Remote (NDIF, models too big for one
machine): pass a hub id, `to_nnsight("meta-llama/Llama-3.1-70B-Instruct", remote=True)` returns an
nnsight `LanguageModel` whose weights stay on NDIF (meta tensors locally), and
`cache_nnsight(that, conversations, tokenizer_model=..., remote=True)` runs the same pooled cache
there; pooling happens inside the trace so only `[batch, layer, d_model]` comes back. That path needs
an NDIF API key (`nnsight.CONFIG.set_default_api_key(...)`) and network; it cannot run here.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..activations import Acts, Pooling
from ..layers import LayerSpec, resolve_layers
from .common import assemble, padded_batches
from ..models import decoder_layers


def to_nnsight(model, *, remote: bool = False, **kwargs: Any):
    """An nnsight wrapper of a `LoadedModel` (shares its modules), or of a hub id (for NDIF).

    Args:
        model: a `LoadedModel` (wrapped in place: nnsight adds no parameters) or a hub id.
        remote: build a `LanguageModel` for NDIF remote execution (hub id).
        **kwargs: passed to nnsight.

    Returns:
        The nnsight model.
    """
    if isinstance(model, str):
        from nnsight import LanguageModel  # NDIF's documented entry point for hub checkpoints

        if not remote:
            kwargs.setdefault("dispatch", True)
        return LanguageModel(model, **kwargs)
    from nnsight import NNsight

    return NNsight(model.model)


def layers_path(module: nn.Module, layers: nn.ModuleList | None = None) -> str:
    """Dotted path of the decoder-block ModuleList inside `module` (e.g. "model.layers").

    Args:
        module: the (wrapped) HF model.
        layers: the ModuleList to look for (default: `decoder_layers(module)`).

    Returns:
        The dotted path.
    """

    layers = decoder_layers(module) if layers is None else layers
    for name, mod in module.named_modules():
        if mod is layers:
            return name
    raise ValueError(f"decoder layers not found inside {type(module).__name__}")


def _envoy(root, path: str):
    for part in path.split("."):
        root = getattr(root, part)
    return root


def cache_nnsight(
    nn_model,
    conversations: Sequence[Any],
    layers: LayerSpec = None,
    positions: Pooling = "response_mean",
    batch_size: int = 8,
    *,
    tokenizer_model=None,
    remote: bool = False,
    dtype: torch.dtype | None = None,
) -> Acts:
    """`activations.cache` through nnsight.

    Block outputs are saved inside `trace`, pooled in the trace, and the trace stopped after the
    last requested block.

    Args:
        nn_model: `to_nnsight(loaded)` or a `LanguageModel`.
        conversations: as for `activations.cache`.
        layers: a `LayerSpec`.
        positions: the `Pooling`.
        batch_size: conversations per trace.
        tokenizer_model: the `LoadedModel` (or any object with its chat methods and tokenizer) that
            tokenises conversations exactly as `activations.cache` does.
        remote: run on NDIF.
        dtype: dtype of the result.

    Returns:
        What `activations.cache` returns (`[n, layer, d_model]`, or `[n, layer, pos, d_model]`).
    """
    if tokenizer_model is None:
        raise ValueError("cache_nnsight needs tokenizer_model= (the LoadedModel whose chat template tokenises)")
    inner = nn_model._module if hasattr(nn_model, "_module") else nn_model._model
    path = layers_path(inner)
    n_blocks = len(_envoy(nn_model, path))
    layer_ids = resolve_layers(layers, n_blocks)
    n, lengths, batches = padded_batches(tokenizer_model, conversations, positions, batch_size)
    d = int(getattr(getattr(inner, "config", None), "hidden_size", 0) or tokenizer_model.d_model)
    out_dtype = dtype or next(inner.parameters()).dtype
    parts = []
    blocks = _envoy(nn_model, path)
    for idx, ids, att, sel in batches:
        saved = []
        w = sel.to(torch.float32)
        first = sel.to(torch.int64).argmax(1)
        rows = torch.arange(len(idx))
        with nn_model.trace(input_ids=ids, attention_mask=att, use_cache=False, remote=remote) as tracer:
            for li in layer_ids:
                h = blocks[li].output
                h = h[0] if isinstance(h, tuple) else h
                if positions == "all":
                    pooled = h * sel.unsqueeze(-1).to(h.device)
                elif positions == "response_mean":
                    ww = w.to(h.device)
                    pooled = torch.einsum("bs,bsd->bd", ww, h.float()) / ww.sum(1, keepdim=True)
                else:
                    pooled = h[rows.to(h.device), first.to(h.device)]
                saved.append(pooled.to(out_dtype).save())
            tracer.stop()
        parts.append((idx, torch.stack([s.detach().cpu() for s in saved], 1)))
    return assemble(n, lengths, len(layer_ids), d, positions, out_dtype, parts)
