"""Self-prediction probes ("Looking Inward", Binder et al. 2024), read from activations.

For rows of `<data>/introspection/{train,test}/*.jsonl.gz` the ground truth is the evaluated
model's own object-level answer (greedy) with the behavioural property extracted from it. A probe
per layer reads that property from the activations at the last token of the *hypothetical* prompt
("Previously, you were asked ... what is the first character of your response?"), before the model
says anything. Run it on the base model and on a self-prediction-trained one and compare the
per-layer accuracy with the majority-class rate (`chance`). `source="object"` probes the
object-level prompt instead (a reference: how decodable the answer is where it is produced).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..activations import cache
from ..layers import LayerSpec, resolve_layers
from ..models import LoadedModel
from .linear import SweepResult, layer_sweep


@dataclass
class SelfPredictionResult:
    """What `self_prediction_probe` returns: the per-layer probes and the labels they were fit to."""

    sweep: SweepResult
    labels: list[str]
    answers: list[str] = field(repr=False)
    chance: float = 0.0
    dropped: int = 0  # rows whose answer lacked the property or whose class was too rare

    def rows(self) -> list[dict[str, Any]]:
        """The sweep's rows (one per layer)."""
        return self.sweep.rows()


def self_prediction_probe(
    model: LoadedModel,
    rows: Sequence[dict],
    *,
    layers: LayerSpec = None,
    source: str = "hypothetical",
    answers: dict[str, str] | None = None,
    max_new_tokens: int = 12,
    min_class: int = 5,
    batch_size: int = 8,
    cv: int = 5,
    seed: int = 0,
    progress: bool = True,
) -> SelfPredictionResult:
    """Per-layer probes predicting the property of the model's own greedy object-level answer.

    Args:
        model: the model probed (and whose answers are labelled).
        rows: introspection rows (`evals.load_task(name)`) of one behavioural property.
        layers: a `LayerSpec` (default: every block).
        source: read the last prompt token of the "hypothetical" or the "object" prompt.
        answers: {object key: answer}, as `evals.object_level_answers` returns, to reuse answers
            of an earlier run instead of generating (greedy).
        max_new_tokens: length of generated answers.
        min_class: classes with fewer rows are dropped (counted in `dropped`).
        batch_size: batch size of generation and caching.
        cv: cross-validation folds.
        seed: fold seed.
        progress: show tqdm bars.

    Returns:
        A `SelfPredictionResult`; labels come from `evals.extract_property`, non-compliant answers
        are dropped.
    """
    from ..evals.properties import extract_property
    from ..evals.self_prediction import _object_key, object_level_answers

    if source not in ("hypothetical", "object"):
        raise ValueError(f"source must be 'hypothetical' or 'object', got {source!r}")
    props = {r["behavioral_property"] for r in rows}
    if len(props) != 1:
        raise ValueError(f"rows mix behavioral properties {sorted(props)}; probe one property at a time")
    prop = props.pop()
    by_key = answers if answers is not None else object_level_answers(model, rows, max_new_tokens=max_new_tokens,
                                                                     batch_size=batch_size)
    got = [by_key.get(_object_key(r)) for r in rows]
    labels = [extract_property(a, prop, r.get("option_matching_ethical_stance")) for a, r in zip(got, rows)]
    counts = Counter(l for l in labels if l is not None)
    keep = [i for i, l in enumerate(labels) if l is not None and counts[l] >= min_class]
    if len({labels[i] for i in keep}) < 2:
        raise RuntimeError(f"self_prediction_probe: the model's answers give classes {dict(counts)}; "
                           f"need >= 2 classes with >= {min_class} rows each")
    layer_ids = resolve_layers(layers, model.n_layers)
    key = "hypothetical_prompt" if source == "hypothetical" else "object_level_prompt"
    acts = cache(model, [rows[i][key] for i in keep], layers=layer_ids, positions="last_prompt",
                 batch_size=batch_size, progress=progress)
    y = [labels[i] for i in keep]
    sweep = layer_sweep(acts, y, layer_ids, cv=cv, seed=seed, progress=progress)
    chance = max(Counter(y).values()) / len(y)
    return SelfPredictionResult(sweep, y, [got[i] for i in keep], chance, len(rows) - len(keep))
