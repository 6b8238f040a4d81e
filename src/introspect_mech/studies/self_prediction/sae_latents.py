"""SAE latents behind self-prediction ("Looking Inward"; moved here from `sae/selfpred.py`: paper logic).

Two analyses on hypothetical prompts ("If you were asked X, what would the second letter of your
answer be?"), read at the last prompt token (where the answer is about to be produced):

* `prompt_diff(base, trained, sae, prompts)`: latents whose activation changes most between the
  base model and the self-prediction-trained model;
* `predictive_latents(model, sae, prompts, labels)`: latents that best predict the model's own
  object-level property (the label comes from the model's own temperature-0 answer to the
  object-level prompt), scored by AUROC (binary labels) or the correlation ratio eta^2
  (categorical), with the best latent chosen on a train split and scored on a held-out split.
"""

from __future__ import annotations

import os
from typing import Any, Hashable, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ...models import LoadedModel
from ...runs import RunDir, json_sha256, write_json
from ...sae.loading import LayerSAE
from ...activations import cache


@torch.no_grad()
def prompt_latents(model: LoadedModel, sae: LayerSAE, prompts: Sequence[Any], *,
                   batch_size: int = 8) -> Float[Tensor, "n d_sae"]:
    """SAE latents at the last prompt token (generation header included) of each prompt.

    Args:
        model: the model.
        sae: a `LayerSAE` that fits it.
        prompts: prompts (message lists without the answer).
        batch_size: prompts per forward.

    Returns:
        `[n, d_sae]` latent activations.
    """

    sae.check_fits(model)
    acts = cache(model, list(prompts), layers=[sae.layer], positions="last_prompt", batch_size=batch_size,
                 dtype=torch.float32, progress=False)
    assert isinstance(acts, torch.Tensor)  # no out=: a tensor
    return sae.encode(acts[:, 0]).cpu()


def prompt_diff(base: LoadedModel, trained: LoadedModel, sae: LayerSAE, prompts: Sequence[Any], *,
                top_k: int = 20, batch_size: int = 8) -> dict[str, Any]:
    """Latents ranked by mean activation change (trained - base) at the last token of `prompts`.

    Args:
        base: the base model.
        trained: the trained model.
        sae: a `LayerSAE` that fits both.
        prompts: prompts (message lists).
        top_k: latents reported in each direction.
        batch_size: prompts per forward.

    Returns:
        The ranked latents (increases and decreases) with their mean activations.
    """
    zb = prompt_latents(base, sae, prompts, batch_size=batch_size)
    zt = prompt_latents(trained, sae, prompts, batch_size=batch_size)
    delta = zt.mean(0) - zb.mean(0)
    order = torch.argsort(delta.abs(), descending=True, stable=True)[:top_k]
    rows = [{"latent": int(j), "delta": float(delta[j]), "mean_base": float(zb[:, j].mean()),
             "mean_trained": float(zt[:, j].mean()), "url": sae.url(int(j))} for j in order]
    return {"n_prompts": len(prompts), "max_abs_delta": float(delta.abs().max()), "top": rows}


def _auroc_columns(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """AUROC of every column of z for binary y (Mann-Whitney with average ranks for ties)."""
    from scipy.stats import rankdata

    pos = y.astype(bool)
    n1, n0 = int(pos.sum()), int((~pos).sum())
    ranks = rankdata(z, axis=0)
    return (ranks[pos].sum(0) - n1 * (n1 + 1) / 2) / (n1 * n0)


def _eta2_columns(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Correlation ratio: between-class variance / total variance, per column."""
    total = ((z - z.mean(0)) ** 2).sum(0)
    between = np.zeros(z.shape[1])
    for c in np.unique(y):
        zc = z[y == c]
        between += len(zc) * (zc.mean(0) - z.mean(0)) ** 2
    return np.where(total > 0, between / np.maximum(total, 1e-30), 0.0)


def predictive_latents(
    model: LoadedModel | None,
    sae: LayerSAE,
    prompts: Sequence[Any],
    labels: Sequence[Hashable],
    *,
    top_k: int = 20,
    test_fraction: float = 0.3,
    seed: int = 0,
    batch_size: int = 8,
    latents: Float[Tensor, "n d_sae"] | None = None,
    out: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Latents whose activation on `prompts` (last prompt token) predicts `labels`.

    Binary labels: score = AUROC (reported as is; 0.5 = chance, < 0.5 = predicts the other class),
    ranked by |AUROC - 0.5|. More classes: eta^2. The ranking uses a random train split; the top
    latents' scores on the held-out split are reported next to it (selection on train, so the test
    score is an honest estimate).

    Args:
        model: the model (None when `latents` is given).
        sae: the `LayerSAE`.
        prompts: prompts (message lists).
        labels: one label per prompt.
        top_k: latents reported.
        test_fraction: held-out fraction.
        seed: split seed.
        batch_size: prompts per forward.
        latents: precomputed `[n, d_sae]` latents (skips the forward passes).
        out: a run directory for the result.

    Returns:
        The metric, the top latents with train / test scores, and counts.
    """
    if len(prompts) != len(labels):
        raise ValueError(f"{len(prompts)} prompts but {len(labels)} labels")
    classes = sorted(set(labels), key=str)
    if len(classes) < 2:
        raise ValueError(f"labels have a single class ({classes[0]!r}): nothing to predict")
    y = np.array([classes.index(l) for l in labels])
    if latents is None and model is None:
        raise ValueError("predictive_latents needs a model or precomputed latents=")
    z = (latents if latents is not None else prompt_latents(model, sae, prompts, batch_size=batch_size)).numpy()  # type: ignore[arg-type]
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y))
    n_test = max(2, int(round(len(y) * test_fraction)))
    test, train = perm[:n_test], perm[n_test:]
    binary = len(classes) == 2
    alive = z.std(0) > 0
    if binary:
        if len(set(y[train])) < 2 or len(set(y[test])) < 2:
            raise ValueError("both classes must occur in the train and the test split; give more prompts")
        s_train, s_test = _auroc_columns(z[train], y[train]), _auroc_columns(z[test], y[test])
        strength = np.where(alive, np.abs(s_train - 0.5), -1)
    else:
        s_train, s_test = _eta2_columns(z[train], y[train]), _eta2_columns(z[test], y[test])
        strength = np.where(alive, s_train, -1)
    order = np.argsort(-strength, kind="stable")[:top_k]
    rows = [{"latent": int(j), "score_train": float(s_train[j]), "score_test": float(s_test[j]),
             "mean_by_class": {str(c): float(z[y == k, j].mean()) for k, c in enumerate(classes)},
             "url": sae.url(int(j))} for j in order]
    result = {"metric": "auroc" if binary else "eta2", "classes": [str(c) for c in classes],
              "class_counts": {str(c): int((y == k).sum()) for k, c in enumerate(classes)},
              "n_train": len(train), "n_test": len(test), "n_alive_latents": int(alive.sum()), "top": rows}
    if out is not None:
        rd = RunDir(out)
        rd.write_manifest(stage="sae_self_prediction", model=model.name if model is not None else None,
                          adapter=model.meta.get("adapter") if model is not None else None,
                          sae=sae.source, sae_layer=sae.layer, seed=seed,
                          data={"prompts_sha256": json_sha256(list(prompts)), "n": len(prompts)})
        write_json(rd.path / "predictive_latents.json", result, root=rd.path)
    return result
