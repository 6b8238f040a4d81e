"""The diffing methods: each reads what changed between a base and a tuned model as a `Direction`
(activation-difference lens, difference PCA, response-mean difference, probe, SAE latent)."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..activations import cache
from ..direction import Direction
from ..models import LoadedModel
from ..probes import mean_diff, train_probe
from ..sae import model_diff
from ..sae.tokens import TokenPositions
from .paired import PairedActivations, _base_context, _resolve, paired_activations

METHODS = ("activation_difference", "difference_pca", "response_mean_difference", "probe", "sae_latent")


def _meta(base: LoadedModel, tuned: LoadedModel, **kw: Any) -> dict[str, Any]:
    return {"base": base.name, "tuned": tuned.name, "tuned_adapter": tuned.meta.get("adapter"), **kw}


def activation_difference(base: LoadedModel, tuned: LoadedModel, texts: Sequence[Any],
                          layers: int | Sequence[int] | None = None, first_tokens: int = 5, *,
                          acts: PairedActivations | None = None, batch_size: int = 16) -> Direction:
    """The activation-difference lens: per layer, mean over the first `first_tokens` tokens of every
    text of `tuned - base` residual activations.

    Args:
        base: the reference model (or the same adapted model as `tuned`: base pass without adapter).
        tuned: the finetuned model.
        texts: unrelated text (strings, tokenized without a chat template) or message lists.
        layers: block indices (default all).
        first_tokens: how many leading tokens of each text to average over.
        acts: precomputed `paired_activations` (then `texts`/`layers` only label the result).
        batch_size: texts per forward pass.

    Returns:
        A `Direction` (unit mean difference per layer; `norms` = its length; `meta["per_position_norm"]`
        = the norm of the mean difference at each position 0..k-1 at every layer).
    """
    a = acts or paired_activations(base, tuned, texts, layers, first_tokens, batch_size=batch_size)
    d = a.diff
    per_pos = [[round(float(d[a.position == p, k].mean(0).norm()), 4) for k in range(len(a.layers))]
               for p in sorted(set(a.position.tolist()))]
    return Direction.from_raw(d.mean(0), a.layers, **_meta(base, tuned, method="activation_difference",
                              first_tokens=a.first_tokens, n_texts=a.n_texts, n_tokens=len(d),
                              per_position_norm=per_pos))


def difference_pca(base: LoadedModel, tuned: LoadedModel, texts: Sequence[Any],
                   layers: int | Sequence[int] | None = None, first_tokens: int = 5, *,
                   acts: PairedActivations | None = None, batch_size: int = 16) -> Direction:
    """Top right-singular vector of the per-token differences `tuned - base` (uncentred), per layer.

    The sign is chosen so the mean difference projects positively; `norms` hold the RMS projection
    of the differences on the component; `meta["explained"]` its share of the differences' energy.

    Args:
        base: the reference model (or the same adapted model as `tuned`: base pass without adapter).
        tuned: the finetuned model.
        texts: unrelated text (strings, tokenized without a chat template) or message lists.
        layers: block indices (default all).
        first_tokens: how many leading tokens of each text to use.
        acts: precomputed `paired_activations` (then `texts`/`layers` only label the result).
        batch_size: texts per forward pass.

    Returns:
        A `Direction`.
    """
    a = acts or paired_activations(base, tuned, texts, layers, first_tokens, batch_size=batch_size)
    d = a.diff
    vecs, norms, expl = [], [], []
    for k in range(len(a.layers)):
        x = d[:, k].double()
        _, s, vh = torch.linalg.svd(x, full_matrices=False)
        v = vh[0] if float(s[0]) > 0 else torch.zeros_like(vh[0])  # identical models: no component
        if float(x.mean(0) @ v) < 0:
            v = -v
        vecs.append(v.float())
        norms.append(float(s[0] / max(len(x), 1) ** 0.5))
        tot = float((s ** 2).sum())
        expl.append(round(float(s[0] ** 2) / tot, 4) if tot > 0 else 0.0)
    return Direction(torch.stack(vecs), torch.tensor(norms), a.layers,
                     _meta(base, tuned, method="difference_pca", first_tokens=a.first_tokens, n_texts=a.n_texts,
                           n_tokens=len(d), explained=expl))


def response_mean_difference(base: LoadedModel, tuned: LoadedModel, conversations: Sequence[Any],
                             layers: int | Sequence[int] | None = None, *, batch_size: int = 8) -> Direction:
    """Mean difference `tuned - base` of the response-averaged activations on the same conversations.

    Args:
        base: the reference model (the same adapted object as `tuned`: base pass without adapter).
        tuned: the finetuned model.
        conversations: message lists with assistant answers (the same answers for both models).
        layers: block indices (default all).
        batch_size: conversations per forward pass.

    Returns:
        A `Direction` (norm = distance between the two models' mean response activations).
    """
    layer_ids = _resolve(tuned, layers)
    with _base_context(base, tuned):
        b = cache(base, conversations, layers=layer_ids, positions="response_mean", batch_size=batch_size, progress=False)
    t = cache(tuned, conversations, layers=layer_ids, positions="response_mean", batch_size=batch_size, progress=False)
    d = mean_diff(t, b, layer_ids, **_meta(base, tuned, n_conversations=len(conversations)))
    d.meta["method"] = "response_mean_difference"
    return d


def probe_difference(base: LoadedModel, tuned: LoadedModel, texts: Sequence[Any],
                     layers: int | Sequence[int] | None = None, first_tokens: int = 5, *,
                     acts: PairedActivations | None = None, cv: int = 5, seed: int = 0,
                     batch_size: int = 16) -> Direction:
    """A logistic probe per layer separating the tuned model's token activations (1) from the base
    model's (0) on the same tokens; the direction is the probe's normal in activation space.

    `norms` are the mean difference's projection on the normal (so `steering.add(..., scale="norm")`
    moves by the measured shift along it); `meta["accuracy"]` / `meta["auroc"]` the CV scores. Blocks
    where the two models are identical on these tokens get no probe (`meta["identical_layers"]`).

    Args:
        base: the reference model (or the same adapted model as `tuned`: base pass without adapter).
        tuned: the finetuned model.
        texts: unrelated text (strings, tokenized without a chat template) or message lists.
        layers: block indices (default all).
        first_tokens: how many leading tokens of each text to use.
        acts: precomputed `paired_activations` (then `texts`/`layers` only label the result).
        batch_size: texts per forward pass.
        cv: cross-validation folds.
        seed: fold seed.

    Returns:
        A `Direction`.
    """
    a = acts or paired_activations(base, tuned, texts, layers, first_tokens, batch_size=batch_size)
    vecs, norms, acc, auc, kept, same = [], [], [], [], [], []
    y = [0] * len(a.base) + [1] * len(a.tuned)
    for k in range(len(a.layers)):
        x = torch.cat([a.base[:, k], a.tuned[:, k]])
        if float((a.tuned[:, k] - a.base[:, k]).abs().max()) == 0.0:
            same.append(a.layers[k])  # nothing to separate: no probe at this block
            continue
        kept.append(a.layers[k])
        res = train_probe(x, y, cv=cv, seed=seed)
        v = res.direction.float()
        vecs.append(v)
        norms.append(float(a.diff[:, k].mean(0) @ v))
        acc.append(round(res.accuracy, 4))
        auc.append(round(res.auroc, 4))
    if not kept:
        raise ValueError(f"probe_difference: the two models are identical at every block {a.layers}")
    return Direction(torch.stack(vecs), torch.tensor(norms).abs(), kept,
                     _meta(base, tuned, method="probe", first_tokens=a.first_tokens, accuracy=acc, auroc=auc,
                           n_tokens=len(a.base), identical_layers=same))


def sae_latent_difference(base: LoadedModel, tuned: LoadedModel, sae: Any, conversations: Sequence[Any], *,
                          positions: TokenPositions = "response", rank: int = 0, top_k: int = 10,
                          direction: Any = None, batch_size: int = 8) -> tuple[Direction, Any]:
    """The SAE model diff (`sae.model_diff`): the decoder vector of the `rank`-th most increased latent.

    Args:
        base: the reference `LoadedModel`.
        tuned: the finetuned `LoadedModel`, a distinct object (the SAE diff runs both itself).
        sae: a `sae.LayerSAE` reading the residual stream after one block.
        conversations: message lists with answers (the same for both models).
        positions: tokens pooled by the diff ("response", "prompt", "all", ...).
        rank: which increased latent to return (0 = the largest increase).
        top_k: how many latents the diff ranks in detail.
        direction: optional known direction; the diff reports every latent's cosine with it.
        batch_size: conversations per forward pass.

    Returns:
        `(Direction at the SAE's layer, sae.ModelDiff)`; the Direction's norm is the latent's mean
        activation increase times its decoder norm (the shift that latent accounts for).

    Raises:
        ValueError: `base is tuned`.
    """
    if base is tuned:
        raise ValueError("sae_latent_difference needs two distinct models (load the finetune separately)")
    md = model_diff(base, tuned, sae, conversations, positions=positions, direction=direction, top_k=top_k,
                    n_examples=0, batch_size=batch_size)
    change = md.increases[rank]
    w = sae.W_dec[change.latent].float().cpu()
    return Direction(w[None] / w.norm().clamp_min(1e-12), torch.tensor([max(change.delta, 0.0) * float(w.norm())]),
                     [sae.layer], _meta(base, tuned, method="sae_latent", latent=change.latent, delta=change.delta,
                                        sae=sae.source, positions=positions)), md
