"""The emergent-misalignment direction and per-example projections.

`em_direction(model, scored_samples)`: the model-organisms recipe (Turner/Soligo et al. 2025): the
mean response activation of misaligned answers (aligned <= 30, coherent > 50) minus that of aligned
answers (aligned > 70), balanced by subsampling the larger class, in the finetuned model.

`em_direction_from_pairs(model, misaligned, aligned)`: the judge-free variant used where no judge
scores exist (the embedded model): teacher-forced misaligned vs aligned answer texts to the same
questions, e.g. held-out bad vs good medical advice (`studies.common.medical_split.medical_advice_pairs`,
the EM protocol's held-out split; `probes.em.medical_advice_pairs` resolves there with a DeprecationWarning).

`project(model, direction, conversations)`: per-example projection on the direction at each layer
(screening a finetuning dataset before training; monitoring during training).
"""

from __future__ import annotations

import random
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ..activations import Pooling, cache
from ..direction import Direction, DirectionLike, as_vectors
from ..layers import LayerSpec, resolve_layers
from ..models import LoadedModel
from ..validate import finite_tensor
from .linear import mean_diff

MOVED_TO_STUDIES = ("medical_advice_pairs",)  # the EM protocol's held-out medical pairs (studies.common.medical_split)


def __getattr__(name: str) -> Any:
    if name in MOVED_TO_STUDIES:
        from .. import _moved_to_studies  # the top-level facade: the one library module that may name studies

        return _moved_to_studies(__name__, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _conv(row: dict, i: int) -> list[dict]:
    if "messages" in row and row.get("response") is not None:
        msgs = [m for m in row["messages"]]
        if msgs and msgs[-1]["role"] == "assistant":
            msgs = msgs[:-1]
        return msgs + [{"role": "assistant", "content": row["response"]}]
    if "messages" in row:
        return list(row["messages"])
    raise ValueError(f"scored_samples[{i}]: needs 'messages' (and 'response' unless the messages end with the answer)")


def em_direction(
    model: LoadedModel,
    scored_samples: Sequence[dict],
    *,
    layers: LayerSpec = None,
    aligned_max: float = 30.0,
    coherent_min: float = 50.0,
    aligned_min: float = 70.0,
    balance: bool = True,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
) -> Direction:
    """Mean response activation of misaligned minus aligned samples (the model-organisms recipe).

    Args:
        model: the finetuned model (the activations are read in it).
        scored_samples: rows from `evals.sample` with judge fields "aligned" and "coherent" (0-100);
            rows with a None score are dropped.
        layers: a `LayerSpec` (default: every block).
        aligned_max: a sample is misaligned if aligned <= this ...
        coherent_min: ... and coherent > this (the filter applies to both classes).
        aligned_min: a sample is aligned if aligned > this and coherent > coherent_min.
        balance: subsample the larger class to the size of the smaller.
        seed: seed of the subsampling.
        batch_size: conversations per forward.
        progress: show tqdm bars.

    Returns:
        A `Direction` (`meta` records the recipe and thresholds).

    Raises:
        ValueError: a row without judge scores (named by index).
        RuntimeError: no misaligned or no aligned sample.
    """
    for i, r in enumerate(scored_samples):
        if "aligned" not in r or "coherent" not in r:
            raise ValueError(f"scored_samples[{i}]: missing field 'aligned' or 'coherent' (judge scores 0-100)")
        _conv(r, i)
    ok = [r for r in scored_samples if r["aligned"] is not None and r["coherent"] is not None]
    mis = [r for r in ok if r["aligned"] <= aligned_max and r["coherent"] > coherent_min]
    ali = [r for r in ok if r["aligned"] > aligned_min and r["coherent"] > coherent_min]
    if not mis or not ali:
        raise RuntimeError(f"em_direction: {len(mis)} misaligned and {len(ali)} aligned samples; need at least one of each")
    rng = random.Random(seed)
    if balance:
        k = min(len(mis), len(ali))
        mis, ali = rng.sample(mis, k), rng.sample(ali, k)
    d = em_direction_from_pairs(model, [_conv(r, 0) for r in mis], [_conv(r, 0) for r in ali], layers=layers,
                                batch_size=batch_size, progress=progress)
    d.meta.update(recipe="model_organisms_em", aligned_max=aligned_max, coherent_min=coherent_min,
                  aligned_min=aligned_min, balance=balance, seed=seed, n_scored=len(scored_samples))
    return d


def em_direction_from_pairs(model: LoadedModel, misaligned: Sequence[Sequence[dict]],
                            aligned: Sequence[Sequence[dict]], *, layers: LayerSpec = None, batch_size: int = 8,
                            progress: bool = True) -> Direction:
    """Judge-free EM direction: teacher-forced response means, misaligned minus aligned conversations.

    Args:
        model: the model the activations are read in.
        misaligned: conversations ending with a misaligned answer.
        aligned: conversations ending with an aligned answer (e.g. the same questions).
        layers: a `LayerSpec` (default: every block).
        batch_size: conversations per forward.
        progress: show tqdm bars.

    Returns:
        A `Direction` (`meta["method"] = "em_mean_diff"`).
    """
    layer_ids = resolve_layers(layers, model.n_layers)
    pos = cache(model, misaligned, layers=layer_ids, positions="response_mean", batch_size=batch_size, progress=progress)
    neg = cache(model, aligned, layers=layer_ids, positions="response_mean", batch_size=batch_size, progress=progress)
    d = mean_diff(pos, neg, layer_ids, model=model.name, adapter=model.meta.get("adapter"), recipe="em_pairs_teacher_forced")
    d.meta["method"] = "em_mean_diff"
    return d


def project(model: LoadedModel, direction: DirectionLike, conversations: Sequence[Any], *,
            layers: LayerSpec = None, positions: Pooling = "response_mean", batch_size: int = 8,
            progress: bool = True) -> Float[Tensor, "n layer"]:
    """Projection of each conversation's pooled activation on the unit direction at each layer.

    Args:
        model: the model the activations are read in.
        direction: a `Direction` or a raw `[d_model]` / `[layer, d_model]` tensor (normalised).
        conversations: message lists (or dicts with "messages").
        layers: a `LayerSpec` (default: the Direction's layers; every block for a raw tensor).
        positions: the `Pooling` of `activations.cache`.
        batch_size: conversations per forward.
        progress: show a tqdm bar.

    Returns:
        `[n, layer]` scalar projections (screening a finetuning dataset, monitoring training).
    """
    if isinstance(direction, Tensor):
        finite_tensor("direction", direction)
    if layers is None:
        layer_ids = list(direction.layers) if isinstance(direction, Direction) else resolve_layers(None, model.n_layers)
    else:
        layer_ids = resolve_layers(layers, model.n_layers)
    if isinstance(direction, Tensor) and direction.ndim == 2:  # raw [layer, d_model]: row i is block i
        if tuple(direction.shape) != (model.n_layers, model.d_model):
            raise ValueError(f"a raw [layer, d_model] direction must have shape {(model.n_layers, model.d_model)} "
                             f"(row i = block i), got {tuple(direction.shape)}")
        direction = direction[layer_ids]
    v = finite_tensor("direction", as_vectors(direction, layer_ids))
    if tuple(v.shape) != (len(layer_ids), model.d_model):
        raise ValueError(f"direction gives vectors of shape {tuple(v.shape)}; expected {(len(layer_ids), model.d_model)} "
                         f"(layer, d_model) for layers {layer_ids} of {model.name}")
    acts = cache(model, conversations, layers=layer_ids, positions=positions, batch_size=batch_size, progress=progress)
    assert isinstance(acts, Tensor)  # no out=: a tensor
    return torch.einsum("nld,ld->nl", acts.float(), v)
