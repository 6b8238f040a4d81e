"""Reading a direction: through the unembedding (`logit_lens`) and by steering with it (`steer_readout`)."""

from __future__ import annotations

import contextlib
from typing import Any, Literal, Sequence

import torch
from torch import Tensor

from .. import steering
from ..direction import Direction
from ..evals.sampling import sample
from ..models import LoadedModel


def _final_norm_weight(model: LoadedModel) -> Tensor | None:
    base = model.base_model
    dec = base.get_decoder() if hasattr(base, "get_decoder") else getattr(base, "model", None)
    norm = getattr(dec, "norm", None)
    w = getattr(norm, "weight", None)
    if w is None:
        return None
    w = w.detach().float().cpu()
    if "gemma" in str(getattr(base.config, "model_type", "")):  # Gemma RMSNorm scales by (1 + weight)
        w = 1.0 + w
    return w


@torch.no_grad()
def logit_lens(model: LoadedModel, direction: Any, layer: int | None = None, k: int = 10) -> dict[str, list[dict]]:
    """Tokens a direction promotes and suppresses when read through the unembedding.

    The vector is scaled elementwise by the final RMSNorm's weight (the norm's positive scalar does
    not change the ranking) and multiplied by the unembedding: `logits = W_U (g * v)`.

    Args:
        model: the model whose unembedding reads the direction.
        direction: a `Direction` (read at `layer`, default its first layer) or a `[d_model]` tensor.
        layer: which block's vector to read.
        k: how many tokens per side.

    Returns:
        `{"promoted": [{"text", "id", "logit"}...], "suppressed": [...]}`, largest effect first.
    """
    if isinstance(direction, Direction):
        v = direction.at(direction.layers[0] if layer is None else layer)
    else:
        v = torch.as_tensor(direction, dtype=torch.float32)
    v = v.float() / v.float().norm().clamp_min(1e-12)
    g = _final_norm_weight(model)
    if g is not None:
        v = v * g
    W = model.base_model.get_output_embeddings().weight.detach().float().cpu()
    logits = W @ v
    k = min(k, len(logits))
    tok = model.tokenizer

    def rows(idx: Tensor) -> list[dict]:
        return [{"text": tok.decode([int(i)]), "id": int(i), "logit": round(float(logits[i]), 4)} for i in idx]

    return {"promoted": rows(logits.topk(k).indices), "suppressed": rows((-logits).topk(k).indices)}


def steer_readout(model: LoadedModel, direction: Any, layer: int, alpha: float, prompts: Sequence[Any], *,
                  max_new_tokens: int = 32, seed: int = 0, scale: Literal["norm", "unit"] = "norm") -> list[dict[str, Any]]:
    """Greedy answers to `prompts` with and without `alpha * direction` added after block `layer`
    (all positions), to show what a found difference encodes.

    Args:
        model: the model to steer (usually the base).
        direction: a `Direction` or raw vector.
        layer: the block to steer after.
        alpha: steering coefficient (`scale="norm"`: in units of the Direction's norm at `layer`).
        prompts: message lists or strings.
        max_new_tokens: tokens generated per answer (greedy).
        seed: sampling seed.
        scale: how `alpha` is scaled, as in `steering.add` ("norm": units of the Direction's norm,
            "unit": units of the unit vector).

    Returns:
        Rows `{"prompt", "steered", "response"}`, unsteered first.
    """

    ps = [[{"role": "user", "content": p}] if isinstance(p, str) else list(p) for p in prompts]
    out = []
    for steered in (False, True):
        ctx = steering.add(model, direction, layers=[layer], alpha=alpha, scale=scale) if steered \
            else contextlib.nullcontext()
        with ctx:
            rows = sample(model, ps, n=1, max_new_tokens=max_new_tokens, temperature=0.0, seed=seed, progress=False)
        out += [{"prompt": r["messages"][-1]["content"], "steered": steered, "alpha": alpha if steered else 0.0,
                 "response": r["response"]} for r in rows]
    return out
