"""Behavioural distance of two models: mean next-token KL over the assistant tokens of given conversations
(the effect measure of the organisms study)."""

from __future__ import annotations

from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ..models import LoadedModel

Message = dict[str, str]


@torch.no_grad()
def response_logprobs(model: LoadedModel, conversations: Sequence[Sequence[Message]], *,
                      batch_size: int = 8) -> list[Float[Tensor, "_n_resp vocab"]]:
    """Next-token log-distributions at the positions predicting each conversation's assistant tokens.

    Steering hooks active on `model` apply.

    Args:
        model: the model to score with.
        conversations: message lists with assistant answers.
        batch_size: conversations per forward pass.

    Returns:
        Per conversation, `[n_resp, vocab]` float32 log-probabilities on CPU (`n_resp` = its number
        of assistant tokens after the first position).

    Raises:
        ValueError: a conversation has no assistant token to score.
        FloatingPointError: the model produced non-finite log-probabilities.
    """
    toks = [model.tokenize_chat(c) for c in conversations]
    for i, t in enumerate(toks):
        if not t.assistant_mask[1:].any():
            raise ValueError(f"conversation {i}: no assistant tokens to score")
    pad = model.tokenizer.pad_token_id or 0
    dev = model.device
    out: list[Tensor] = [torch.empty(0)] * len(toks)
    for s in range(0, len(toks), batch_size):
        chunk = toks[s:s + batch_size]
        n = max(len(t.input_ids) for t in chunk)
        ids = torch.full((len(chunk), n), pad, dtype=torch.long)
        att = torch.zeros((len(chunk), n), dtype=torch.long)
        for i, t in enumerate(chunk):
            ids[i, :len(t.input_ids)] = t.input_ids
            att[i, :len(t.input_ids)] = 1
        logits = model.model(input_ids=ids.to(dev), attention_mask=att.to(dev), use_cache=False).logits
        for i, t in enumerate(chunk):
            m = t.assistant_mask[1:]
            lp = torch.log_softmax(logits[i, :len(t.input_ids) - 1][m.to(dev)].float(), -1).cpu()
            if not torch.isfinite(lp).all():
                raise FloatingPointError(f"conversation {s + i}: non-finite log-probabilities")
            out[s + i] = lp
    return out


def response_kl(model: LoadedModel, reference: Sequence[Float[Tensor, "_n_resp vocab"]],
                conversations: Sequence[Sequence[Message]], *,
                batch_size: int = 8) -> list[float]:
    """Per conversation, the mean over assistant positions of KL(p_model || p_reference).

    Args:
        model: the model whose distribution is `p_model` (steering hooks active on it apply).
        reference: `response_logprobs(reference_model, conversations)`: per conversation a
            `[n_resp, vocab]` log-probability tensor.
        conversations: the same message lists the reference was computed on.
        batch_size: conversations per forward pass.

    Returns:
        One KL value (nats) per conversation.

    Raises:
        ValueError: a reference tensor's shape differs from the model's log-probabilities.
    """
    lps = response_logprobs(model, conversations, batch_size=batch_size)
    out = []
    for p, q in zip(lps, reference):
        if p.shape != q.shape:
            raise ValueError(f"reference log-probs have shape {tuple(q.shape)}, model's {tuple(p.shape)}")
        out.append(float((p.exp() * (p - q)).sum(-1).mean()))
    return out
