"""TransformerLens 3.9 backend: a `TransformerBridge` booted from the already-loaded HF model.

`TransformerBridge.boot_transformers(..., hf_model=m)` rewrites `m` in place (its Linear layers
become `LinearBridge`; the plain HF forward then runs 1.3-2x slower and peft refuses to wrap it), so
`to_transformer_lens` gives the bridge its own deep copy. A PEFT adapter is merged into that copy
(`merge_and_unload`), so the bridge computes the finetuned model. The user's model is untouched.
Block outputs are the hooks `blocks.{i}.hook_out`.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch

from ..activations import Acts, Pooling
from ..layers import LayerSpec, resolve_layers
from .common import assemble, padded_batches, _pool


def to_transformer_lens(model, **kwargs: Any):
    """A TransformerLens `TransformerBridge` on a deep copy of `model` (no hub download).

    Args:
        model: a `LoadedModel` (left untouched; a LoRA adapter is merged into the copy).
        **kwargs: passed to `TransformerBridge.boot_transformers`.

    Returns:
        The bridge.
    """
    from transformer_lens.model_bridge import TransformerBridge

    hf = copy.deepcopy(model.model)
    if hasattr(hf, "merge_and_unload"):
        hf = hf.merge_and_unload()
    hf.eval()
    source = model.meta.get("source") or model.name
    kwargs.setdefault("device", str(model.device))
    kwargs.setdefault("dtype", model.dtype)
    bridge = TransformerBridge.boot_transformers(source, hf_model=hf, tokenizer=model.tokenizer, **kwargs)
    bridge.eval()
    return bridge


@torch.inference_mode()
def cache_transformer_lens(
    bridge,
    conversations: Sequence[Any],
    layers: LayerSpec = None,
    positions: Pooling = "response_mean",
    batch_size: int = 8,
    *,
    tokenizer_model,
    dtype: torch.dtype | None = None,
) -> Acts:
    """`activations.cache` through the bridge.

    `run_with_cache` on `blocks.{i}.hook_out` with `stop_at_layer` after the last requested block.

    Args:
        bridge: from `to_transformer_lens`.
        conversations: as for `activations.cache`.
        layers: a `LayerSpec`.
        positions: the `Pooling`.
        batch_size: conversations per forward.
        tokenizer_model: the `LoadedModel` that tokenises conversations (same tokenisation as `cache`).
        dtype: dtype of the result.

    Returns:
        What `activations.cache` returns.
    """
    n_blocks = int(bridge.cfg.n_layers)
    layer_ids = resolve_layers(layers, n_blocks)
    names = [f"blocks.{i}.hook_out" for i in layer_ids]
    n, lengths, batches = padded_batches(tokenizer_model, conversations, positions, batch_size)
    out_dtype = dtype or tokenizer_model.dtype
    dev = next(bridge.parameters()).device
    parts = []
    for idx, ids, att, sel in batches:
        stop = layer_ids[-1] + 1
        _, c = bridge.run_with_cache(ids.to(dev), attention_mask=att.to(dev), names_filter=names,
                                     stop_at_layer=stop if stop < n_blocks else None)
        pooled = [_pool(c[name], sel.to(dev), positions, out_dtype).cpu() for name in names]
        parts.append((idx, torch.stack(pooled, 1)))
    return assemble(n, lengths, len(layer_ids), int(bridge.cfg.d_model), positions, out_dtype, parts)
