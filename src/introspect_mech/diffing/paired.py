"""The same tokens through two models: per-token residual activations of a base and a tuned model (the same
adapted object runs its base pass under `disable_adapter()`), which every diffing method reads."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..layers import resolve_layers
from ..models import LoadedModel


class _StopForward(Exception):
    pass


def _base_context(base: LoadedModel, tuned: LoadedModel):
    """Context for the base pass: `disable_adapter()` when base and tuned are the same adapted model."""
    if base is tuned:
        if not base.has_adapter:
            raise ValueError("base and tuned are the same model without an adapter: nothing to diff")
        peft_model: Any = base.model  # a peft.PeftModel (has_adapter)
        return peft_model.disable_adapter()
    return contextlib.nullcontext()


def _resolve(model: LoadedModel, layers: int | Sequence[int] | None) -> list[int]:

    return resolve_layers(layers, model.n_layers)


def _texts_to_ids(model: LoadedModel, texts: Sequence[Any], first_tokens: int | None) -> list[Tensor]:
    """Token ids of each text (plain strings: the tokenizer's own special tokens, no chat template;
    message lists: rendered with the chat template), cut to `first_tokens`."""
    if len(texts) == 0:
        raise ValueError("texts is empty")
    out = []
    for i, t in enumerate(texts):
        if isinstance(t, str):
            ids = model.tokenizer(t)["input_ids"]
        elif isinstance(t, (list, tuple)) and all(isinstance(m, dict) and "role" in m for m in t):
            ids = model.tokenizer(model.render(t), add_special_tokens=False)["input_ids"]
        else:
            raise ValueError(f"texts[{i}]: expected a string or a message list, got {type(t).__name__}")
        if not ids:
            raise ValueError(f"texts[{i}]: tokenizes to nothing")
        out.append(torch.tensor(ids[:first_tokens] if first_tokens else ids))
    return out


@torch.no_grad()
def text_activations(model: LoadedModel, texts: Sequence[Any], layers: int | Sequence[int] | None = None,
                     first_tokens: int | None = None, *, batch_size: int = 16,
                     ) -> tuple[Float[Tensor, "tok layer d_model"], Int[Tensor, " tok"]]:
    """Per-token residual activations after the blocks `layers` on the first tokens of each text.

    Args:
        model: the model to run.
        texts: strings (tokenized with the tokenizer's own special tokens, no chat template) or
            message lists (rendered with the chat template).
        layers: block indices (a layer spec; default all).
        first_tokens: how many leading tokens of each text to keep (None = all).
        batch_size: texts per forward pass.

    Returns:
        `(acts, position)`: `acts` `[tok, layer, d_model]` (float32, CPU) stacks every kept token of
        every text in order; `position[i]` is token i's index inside its text.

    Raises:
        ValueError: `texts` is empty, or an item is neither a string nor a message list, or
            tokenizes to nothing.
    """
    layer_ids = _resolve(model, layers)
    ids = _texts_to_ids(model, texts, first_tokens)
    pad = model.tokenizer.pad_token_id or 0
    rows, pos = [], []
    dev = model.device
    for s in range(0, len(ids), batch_size):
        chunk = ids[s:s + batch_size]
        n = max(len(x) for x in chunk)
        inp = torch.full((len(chunk), n), pad, dtype=torch.long)
        att = torch.zeros((len(chunk), n), dtype=torch.long)
        for i, x in enumerate(chunk):
            inp[i, :len(x)] = x
            att[i, :len(x)] = 1
        buf: dict[int, Tensor] = {}

        def make_hook(layer: int):
            def hook(_m, _a, out):
                h = out[0] if isinstance(out, tuple) else out
                buf[layer] = h.detach().float().cpu()
                if layer == layer_ids[-1]:
                    raise _StopForward
            return hook

        handles = [model.layers[l].register_forward_hook(make_hook(l)) for l in layer_ids]
        try:
            model.model(input_ids=inp.to(dev), attention_mask=att.to(dev), use_cache=False)
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        stacked = torch.stack([buf[l] for l in layer_ids], dim=2)  # [b, seq, layer, d]
        keep = att.bool()
        rows.append(stacked[keep])
        pos.append(torch.arange(n).expand(len(chunk), n)[keep])
    return torch.cat(rows), torch.cat(pos)


@dataclass
class PairedActivations:
    """Activations of both models on the same tokens (first `first_tokens` of each text)."""

    base: Float[Tensor, "tok layer d_model"]
    tuned: Float[Tensor, "tok layer d_model"]
    position: Int[Tensor, " tok"]
    layers: list[int]
    n_texts: int
    first_tokens: int | None

    @property
    def diff(self) -> Float[Tensor, "tok layer d_model"]:
        """`tuned - base`, token by token."""
        return self.tuned - self.base


def paired_activations(base: LoadedModel, tuned: LoadedModel, texts: Sequence[Any],
                       layers: int | Sequence[int] | None = None, first_tokens: int | None = 5, *,
                       batch_size: int = 16) -> PairedActivations:
    """`text_activations` of both models on the same texts.

    Args:
        base: the reference model; the same adapted object as `tuned` runs its base pass under
            `disable_adapter()`.
        tuned: the finetuned model.
        texts: strings or message lists (as for `text_activations`).
        layers: block indices (default all).
        first_tokens: leading tokens kept per text (None = all).
        batch_size: texts per forward pass.

    Returns:
        `PairedActivations` with `base` and `tuned` `[tok, layer, d_model]` on the same tokens.

    Raises:
        ValueError: the models differ in depth or width, tokenize the texts differently, or are
            one object without an adapter.
    """
    if base.d_model != tuned.d_model or base.n_layers != tuned.n_layers:
        raise ValueError(f"models differ in shape: {base.name} ({base.n_layers} x {base.d_model}) vs "
                         f"{tuned.name} ({tuned.n_layers} x {tuned.d_model})")
    layer_ids = _resolve(tuned, layers)
    with _base_context(base, tuned):
        b, pos = text_activations(base, texts, layer_ids, first_tokens, batch_size=batch_size)
    t, _ = text_activations(tuned, texts, layer_ids, first_tokens, batch_size=batch_size)
    if b.shape != t.shape:
        raise ValueError("the two models tokenized the texts differently (different tokenizers?)")
    return PairedActivations(b, t, pos, layer_ids, len(texts), first_tokens)
