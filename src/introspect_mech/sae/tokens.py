"""Token-level residual activations at one layer, with the masks SAE analyses need.

`activations.cache` gives pooled activations (`response_mean`, ...) for probes; SAE work needs every
token of one layer together with which tokens are the assistant's, so that latents can be pooled
over response or prompt tokens and top-activating examples shown token by token. This module reads
the output of `loaded.layers[layer]` with a plain forward hook and stops the forward right after it
(no later layers, no logits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Literal, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from .. import activations as A
from ..models import LoadedModel

TokenPositions = Literal["response", "prompt", "last_prompt", "all"]
"""Which tokens of an example an SAE analysis pools over (the `positions=` argument of `sae` functions).

The words mean what they mean elsewhere: "all", "prompt", "response" select positions as
`steering.Positions` does (response = the assistant-content tokens), and "last_prompt" is the token
`activations.Pooling`'s "last_prompt" reads (the last token before the first assistant content).
The first token (an attention sink) is never selected except by "last_prompt".
"""
TOKEN_POSITIONS: tuple[str, ...] = ("response", "prompt", "last_prompt", "all")
POSITIONS = TOKEN_POSITIONS  # deprecated alias


@dataclass
class TokenActs:
    """One example: its tokens, their activations at `layer`, and the assistant-content mask."""

    acts: Float[Tensor, "seq d_model"]
    input_ids: Int[Tensor, " seq"]
    assistant_mask: Bool[Tensor, " seq"]

    def mask(self, positions: TokenPositions) -> Bool[Tensor, " seq"]:
        """Tokens selected by `positions` (the first token, an attention sink, is never selected).

        Args:
            positions: a `TokenPositions` word.

        Returns:
            `[seq]` boolean mask.
        """
        n = len(self.input_ids)
        keep = torch.ones(n, dtype=torch.bool)
        keep[0] = False
        if positions == "all":
            return keep
        if positions == "response":
            return self.assistant_mask & keep
        if positions == "prompt":
            return ~self.assistant_mask & keep
        if positions == "last_prompt":
            out = torch.zeros(n, dtype=torch.bool)
            idx = torch.nonzero(self.assistant_mask).flatten()
            out[(int(idx[0]) - 1) if len(idx) else n - 1] = True
            return out
        raise ValueError(f"positions must be one of {TOKEN_POSITIONS}, got {positions!r}")


def as_messages(item: Any, i: int = 0) -> list[dict] | str:
    """A conversation (message list, or dict with "messages") or a plain text, checked.

    Args:
        item: the input.
        i: its index, for the error message.

    Returns:
        The message list, or the text.

    Raises:
        ValueError: naming item `i`.
    """
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and "messages" in item:
        item = item["messages"]
    if isinstance(item, (list, tuple)) and all(isinstance(m, dict) and "role" in m and "content" in m for m in item):
        return list(item)
    raise ValueError(f"item {i}: expected a text, a message list or a dict with 'messages', got {type(item).__name__}")


def tokenize_item(model: LoadedModel, item: str | list[dict], max_length: int | None = None
                  ) -> tuple[Int[Tensor, " seq"], Bool[Tensor, " seq"]]:
    """Token ids and assistant mask of one text or conversation.

    Args:
        model: a `LoadedModel`.
        item: a plain text (no chat template; the mask is all False) or a message list.
        max_length: cut after this many tokens.

    Returns:
        `(input_ids, assistant_mask)`, both `[seq]`.
    """
    if isinstance(item, str):
        ids = torch.tensor(model.tokenizer(item, add_special_tokens=True)["input_ids"])
        mask = torch.zeros(len(ids), dtype=torch.bool)
    else:
        ct = model.tokenize_chat(item)
        ids, mask = ct.input_ids, ct.assistant_mask
    if max_length is not None:
        ids, mask = ids[:max_length], mask[:max_length]
    return ids, mask


@torch.no_grad()
def token_activations(
    model: LoadedModel,
    items: Sequence[Any],
    layer: int,
    *,
    batch_size: int = 8,
    max_length: int | None = 512,
    chunk: int = 64,
    progress: bool = True,
    desc: str = "activations",
) -> list[TokenActs]:
    """Every token's residual stream after block `layer`, per item (float32, on CPU).

    Conversations go through the shared `activations.cache(..., positions="all")`; plain texts (no
    chat template) through the same forward machinery.

    Args:
        model: a `LoadedModel`.
        items: conversations (message lists or dicts with "messages") or plain texts.
        layer: a block index.
        batch_size: sequences per forward.
        max_length: cut sequences after this many tokens.
        chunk: conversations per `cache` call (so the zero-padded result stays small).
        progress: show a tqdm bar.
        desc: the bar's label.

    Returns:
        One `TokenActs` per item, in input order.
    """

    if not 0 <= layer < model.n_layers:
        raise ValueError(f"layer {layer} out of range for {model.name} ({model.n_layers} layers)")
    parsed = [as_messages(it, i) for i, it in enumerate(items)]  # validate before any work
    toks = [tokenize_item(model, it, max_length) for it in parsed]
    result: list[TokenActs | None] = [None] * len(parsed)
    order = sorted(range(len(parsed)), key=lambda i: len(toks[i][0]))  # similar lengths per chunk
    bar = tqdm(total=sum(len(t[0]) for t in toks), desc=desc, unit="tok", disable=not progress)
    try:
        for c in range(0, len(order), chunk):
            idx = order[c:c + chunk]
            convs = [i for i in idx if not isinstance(parsed[i], str) and _fits(toks[i], max_length)]
            texts = [i for i in idx if i not in set(convs)]
            if convs:
                h = A.cache(model, [parsed[i] for i in convs], layers=[layer], positions="all",
                            batch_size=batch_size, dtype=torch.float32, progress=False)
                assert isinstance(h, Tensor)  # no out=: a tensor, not a LazyActivations
                for r, i in enumerate(convs):
                    n = len(toks[i][0])
                    result[i] = TokenActs(h[r, 0, :n].clone(), toks[i][0], toks[i][1])
            for b in range(0, len(texts), batch_size):
                sub = texts[b:b + batch_size]
                batch = [A.Tokenized(toks[i][0], torch.ones(len(toks[i][0]), dtype=torch.bool)) for i in sub]
                h = A._run_batch(model, batch, [layer], "all", torch.float32)
                for r, i in enumerate(sub):
                    n = len(toks[i][0])
                    result[i] = TokenActs(h[r, 0, :n].clone(), toks[i][0], toks[i][1])
            bar.update(sum(len(toks[i][0]) for i in idx))
    finally:
        bar.close()
    return result  # type: ignore[return-value]


def _fits(tok: tuple[Tensor, Tensor], max_length: int | None) -> bool:
    """A conversation not cut by max_length goes through `activations.cache` (which never cuts)."""
    return max_length is None or len(tok[0]) < max_length


def stack_selected(examples: Iterable[TokenActs], positions: TokenPositions) -> Float[Tensor, "n d_model"]:
    """All selected tokens' activations, concatenated.

    Args:
        examples: `TokenActs` from `token_activations`.
        positions: a `TokenPositions` word.

    Returns:
        `[n, d_model]`: the selected tokens of every example, in order.
    """
    parts = [ex.acts[ex.mask(positions)] for ex in examples]
    parts = [p for p in parts if len(p)]
    if not parts:
        raise ValueError(f"no tokens selected with positions={positions!r} (do the items have assistant turns?)")
    return torch.cat(parts)
