"""Variable-length ("varlen") attention for padding-free packed rows, on any device.

A packed row holds several examples back to back. Transformers can build a block-diagonal mask
from restarting `position_ids`, but with sdpa/eager that mask is dense: attention then costs
(row length)^2 instead of the sum of each example's length^2 and, on CPU, dominates small models.
`varlen_attention(loaded)` switches the model (temporarily) to an attention function that runs
causal sdpa per example using the row's `cu_seq_lens` (the same kwargs flash-attention's varlen
kernels take), so no compute is spent across example boundaries. Without `cu_seq_lens_q` in the
call (e.g. a plain forward) it falls back to transformers' sdpa.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F

NAME = "introspect_mech_varlen_sdpa"
_registered = False


def _varlen_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    cu = kwargs.get("cu_seq_lens_q")
    window = getattr(module, "sliding_window", None)
    if cu is None or query.shape[0] != 1 or getattr(module, "is_causal", True) is False:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    n_rep = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    bounds = cu.tolist()
    drop = dropout if module.training else 0.0
    outs = []
    for s, e in zip(bounds[:-1], bounds[1:]):
        q, k, v = query[:, :, s:e], key[:, :, s:e], value[:, :, s:e]
        if window and e - s > window:  # sliding-window layer on a long example: explicit banded mask
            i = torch.arange(e - s, device=q.device)
            band = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < window)
            outs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=band, dropout_p=drop, scale=scaling))
        else:
            outs.append(F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop, scale=scaling))
    out = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Register the per-example sdpa attention with transformers' `AttentionInterface` (once).

    Returns:
        The name to set as a config's `_attn_implementation`.
    """
    global _registered
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(NAME, _varlen_sdpa)
        _registered = True
    return NAME


def _configs(model) -> list:
    seen, out = set(), []
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and id(cfg) not in seen and hasattr(cfg, "_attn_implementation"):
            seen.add(id(cfg))
            out.append(cfg)
    return out


@contextlib.contextmanager
def varlen_attention(model) -> Iterator[bool]:
    """Use per-example sdpa while inside (unless the model already runs flash attention varlen).

    The attention implementation of every config in `model` is restored on exit.

    Args:
        model: the (PEFT-wrapped) transformers model.

    Yields:
        True when the varlen path is active (the caller must then pass `cu_seq_lens_q/k` and
        `max_length_q/k` kwargs), False when the model's own implementation is kept.
    """
    cfgs = _configs(model)
    current = {getattr(c, "_attn_implementation", None) for c in cfgs}
    if any(str(a).startswith("flash_attention") for a in current) or not cfgs:
        yield False
        return
    name = register()
    saved = [(c, c._attn_implementation) for c in cfgs]
    try:
        for c in cfgs:
            c._attn_implementation = name
        yield True
    finally:
        for c, a in saved:
            c._attn_implementation = a
