"""Batching shared by the backend caches: the same tokenisation and pooling as `activations.cache`."""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..activations import Pooling, Tokenized, _batches, _pool, tokenize


def padded_batches(model, conversations: Sequence[Any], positions: Pooling, batch_size: int
                   ) -> tuple[int, list[int], Iterator[tuple[list[int], Int[Tensor, "b seq"], Int[Tensor, "b seq"],
                                                         Bool[Tensor, "b seq"]]]]:
    """(n, lengths, iterator of (indices, input_ids, attention_mask, select)), right-padded, longest first.

    Args:
        model: the `LoadedModel` that tokenises (as `activations.cache` does).
        conversations: the conversations.
        positions: the `Pooling`.
        batch_size: conversations per batch.

    Returns:
        `(n, lengths, batches)`: the number of conversations, their token counts, and per batch
        `(indices, input_ids [b, seq], attention_mask [b, seq], select [b, seq])` (`select`: the
        tokens the pooling reads).
    """
    items: list[Tokenized] = tokenize(model, conversations, positions)
    lengths = [len(t.input_ids) for t in items]
    pad = model.tokenizer.pad_token_id or 0

    def gen():
        for idx in _batches(lengths, batch_size):
            s = max(lengths[i] for i in idx)
            ids = torch.full((len(idx), s), pad, dtype=torch.long)
            att = torch.zeros((len(idx), s), dtype=torch.long)
            sel = torch.zeros((len(idx), s), dtype=torch.bool)
            for j, i in enumerate(idx):
                ids[j, : lengths[i]], att[j, : lengths[i]], sel[j, : lengths[i]] = items[i].input_ids, 1, items[i].select
            yield idx, ids, att, sel

    return len(items), lengths, gen()


def assemble(n: int, lengths: list[int], n_layers: int, d: int, positions: str, dtype,
             parts: list[tuple[list[int], Float[Tensor, "_ layer ... d_model"]]]
             ) -> Float[Tensor, "n layer *pos d_model"]:
    """Scatter per-batch [b, layer, d] (or [b, layer, s, d]) results back into input order.

    Args:
        n: number of conversations.
        lengths: their token counts.
        n_layers: layers cached.
        d: d_model.
        positions: the `Pooling` ("all" keeps positions).
        dtype: dtype of the result.
        parts: `(indices, activations)` per batch: `[b, layer, d_model]`, or `[b, layer, s, d_model]`
            for "all" (`s` = the batch's longest conversation).

    Returns:
        `[n, layer, d_model]` (or `[n, layer, pos, d_model]` for "all").
    """
    shape = (n, n_layers, max(lengths, default=0), d) if positions == "all" else (n, n_layers, d)
    out = torch.zeros(shape, dtype=dtype)
    for idx, acts in parts:
        for j, i in enumerate(idx):
            if positions == "all":
                out[i, :, : lengths[i]] = acts[j, :, : lengths[i]]
            else:
                out[i] = acts[j]
    return out


__all__ = ["padded_batches", "assemble", "_pool"]
