"""Comparing the diffing methods: every method on one pair of models (`compare`), and how well a found
direction recovers a known one against a norm-matched random baseline (`recovery`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence, cast

import torch
from torch import Tensor

from ..direction import Direction
from ..models import LoadedModel
from ..sae.tokens import TokenPositions
from ..steering import random_like
from .methods import (
    METHODS, activation_difference, difference_pca, probe_difference, response_mean_difference, sae_latent_difference,
)
from .paired import PairedActivations, _resolve, paired_activations


def _truth_vector(truth: Any, layer: int) -> Tensor | None:
    if isinstance(truth, Direction):
        if layer in truth.layers:
            return truth.at(layer)
        return truth.vectors[0] if len(truth.layers) == 1 else None
    v = torch.as_tensor(truth, dtype=torch.float32)
    return v / v.norm().clamp_min(1e-12)


def recovery(found: Direction, truth: Any, *, n_random: int = 3, seed: int = 0) -> list[dict[str, Any]]:
    """Per layer of `found`, its cosine with the known `truth` and the random baseline.

    `truth` is a `Direction` (per layer; a single-layer Direction or a `[d_model]` vector is compared
    with every layer). The baseline is the |cosine| of `n_random` norm-matched random directions
    (`steering.random_like(found, seed + i)`) with the truth: mean and max.

    Args:
        found: the direction a diffing method found.
        truth: the known direction (`Direction` or `[d_model]` vector).
        n_random: how many random baseline directions.
        seed: seed of the first random direction.

    Returns:
        Rows `{"layer", "cosine", "random_abs_mean", "random_abs_max"}`.
    """

    rands = [cast(Direction, random_like(found, seed + i)) for i in range(n_random)]  # same type as `found`
    rows = []
    for l in found.layers:
        t = _truth_vector(truth, l)
        if t is None:
            continue
        t = t / t.norm().clamp_min(1e-12)
        rc = [abs(float(r.at(l) @ t)) for r in rands]
        rows.append({"layer": l, "cosine": float(found.at(l) @ t),
                     "random_abs_mean": sum(rc) / len(rc) if rc else None,
                     "random_abs_max": max(rc) if rc else None})
    return rows


@dataclass
class Comparison:
    """All methods' directions for one pair of models (`compare`)."""

    directions: dict[str, Direction]
    errors: dict[str, str] = field(default_factory=dict)  # method -> why it failed / was skipped
    sae_diff: Any = None

    def recovery(self, truth: Any, *, n_random: int = 3, seed: int = 0) -> list[dict[str, Any]]:
        """`recovery` rows of every method, with a `method` field.

        Args:
            truth: the known direction (`Direction` or `[d_model]` vector).
            n_random: random baseline directions per method.
            seed: seed of the first random direction.

        Returns:
            Rows `{"method", "layer", "cosine", "random_abs_mean", "random_abs_max"}`.
        """
        return [{"method": m, **r} for m, d in self.directions.items()
                for r in recovery(d, truth, n_random=n_random, seed=seed)]


def compare(base: LoadedModel, tuned: LoadedModel, texts: Sequence[Any],
            conversations: Sequence[Any] | None = None, *, layers: int | Sequence[int] | None = None,
            first_tokens: int = 5, methods: Sequence[str] = METHODS, probe_layers: Sequence[int] | None = None,
            sae: Any = None, sae_positions: TokenPositions = "response", truth: Any = None, seed: int = 0,
            batch_size: int = 16) -> Comparison:
    """Run every diffing method on one pair of models.

    Args:
        base: the reference model (the same adapted object as `tuned`: base passes without adapter).
        tuned: the finetuned model.
        texts: unrelated texts for the first-token methods (activation difference, PCA, probe).
        conversations: conversations with answers for the response and SAE methods (skipped if None).
        layers: blocks for the first-token and response methods (default all).
        first_tokens: leading tokens per text.
        methods: subset of `METHODS`.
        probe_layers: blocks for the probe (default `layers`; probes are the slowest method).
        sae: a `sae.LayerSAE` for the SAE diff (skipped if None).
        sae_positions: tokens the SAE diff pools over ("response", "prompt", "all", ...).
        truth: a known direction passed to the SAE diff for its latent cosines.
        seed: the probe's fold seed.
        batch_size: texts per forward pass (halved for the conversation methods).

    Returns:
        A `Comparison`; a method that cannot run is recorded in `errors`, never silently dropped.

    Raises:
        ValueError: `methods` names an unknown method.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {METHODS}")
    layer_ids = _resolve(tuned, layers)
    out = Comparison({})
    acts = None
    if {"activation_difference", "difference_pca", "probe"} & set(methods):
        acts = paired_activations(base, tuned, texts, layer_ids, first_tokens, batch_size=batch_size)
    if "activation_difference" in methods:
        out.directions["activation_difference"] = activation_difference(base, tuned, texts, acts=acts)
    if "difference_pca" in methods:
        out.directions["difference_pca"] = difference_pca(base, tuned, texts, acts=acts)
    if "response_mean_difference" in methods:
        if conversations:
            out.directions["response_mean_difference"] = response_mean_difference(
                base, tuned, conversations, layer_ids, batch_size=max(1, batch_size // 2))
        else:
            out.errors["response_mean_difference"] = "no conversations given"
    if "probe" in methods:
        assert acts is not None  # computed above whenever "probe" is among the methods
        pl = list(probe_layers) if probe_layers is not None else layer_ids
        sub = PairedActivations(acts.base[:, [layer_ids.index(l) for l in pl]],
                                acts.tuned[:, [layer_ids.index(l) for l in pl]], acts.position, pl, acts.n_texts,
                                acts.first_tokens)
        try:
            out.directions["probe"] = probe_difference(base, tuned, texts, acts=sub, seed=seed)
        except ValueError as e:
            out.errors["probe"] = str(e)
    if "sae_latent" in methods:
        if sae is None:
            out.errors["sae_latent"] = "no SAE given"
        elif not conversations:
            out.errors["sae_latent"] = "no conversations given"
        elif base is tuned:
            out.errors["sae_latent"] = "base and tuned are the same object"
        else:
            out.directions["sae_latent"], out.sae_diff = sae_latent_difference(
                base, tuned, sae, conversations, positions=sae_positions, direction=truth,
                batch_size=max(1, batch_size // 2))
    return out
