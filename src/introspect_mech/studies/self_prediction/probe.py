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

from jaxtyping import Float
from torch import Tensor

from ...activations import cache
from ...layers import LayerSpec, resolve_layers
from ...models import LoadedModel
from ...probes.linear import SweepResult, layer_sweep
from .properties import extract_property
from .tasks import object_key, object_level_answers


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
    shuffle_labels: bool = False,
    progress: bool = True,
) -> SelfPredictionResult:
    """Per-layer probes predicting the property of the model's own greedy object-level answer.

    Answers come from `evals.self_prediction.object_level_answers` (greedy) and labels from
    `evals.properties.extract_property`; non-compliant answers and classes with fewer than
    `min_class` rows are dropped (counted).

    Args:
        model: the model whose activations are probed (and, without `answers`, whose answers label them).
        rows: introspection rows of ONE behavioural property (`evals.self_prediction.load_task(name)`).
        layers: blocks to probe (a `LayerSpec`; None = every block).
        source: "hypothetical" (default: the last token of the hypothetical prompt, before the model
            answers) or "object" (the object-level prompt, a reference).
        answers: {object key: answer}, as `object_level_answers` returns: reuses answers from an earlier
            run instead of generating -- or gives ANOTHER model's answers (e.g. read the self-trained
            model's behaviour from the cross model's activations). None = generate them.
        max_new_tokens: answer budget when generating the answers.
        min_class: classes with fewer rows are dropped (default 5).
        batch_size: prompts per forward (generation and activation caching).
        cv: cross-validation folds of each probe.
        seed: fold seed, and the label permutation's seed.
        shuffle_labels: permute the labels (seeded) before probing: the control that shows what a probe
            reaches on activations with no relation to the labels.
        progress: show progress bars.

    Returns:
        The per-layer sweep (accuracy per layer), the labels probed, the answers they came from, the
        majority-class rate (`chance`) and the number of dropped rows.

    Raises:
        ValueError: `source` is neither "hypothetical" nor "object", or `rows` mix properties.
        RuntimeError: fewer than two classes with `min_class` rows remain.
    """

    if source not in ("hypothetical", "object"):
        raise ValueError(f"source must be 'hypothetical' or 'object', got {source!r}")
    props = {r["behavioral_property"] for r in rows}
    if len(props) != 1:
        raise ValueError(f"rows mix behavioral properties {sorted(props)}; probe one property at a time")
    prop = props.pop()
    by_key = answers if answers is not None else object_level_answers(model, rows, max_new_tokens=max_new_tokens,
                                                                     batch_size=batch_size)
    got = [by_key.get(object_key(r)) for r in rows]
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
    y = [str(labels[i]) for i in keep]  # kept labels are never None
    if shuffle_labels:
        import random

        random.Random(seed).shuffle(y)
    sweep = layer_sweep(acts, y, layer_ids, cv=cv, seed=seed, progress=progress)
    chance = max(Counter(y).values()) / len(y)
    return SelfPredictionResult(sweep, y, [a for i in keep if (a := got[i]) is not None], chance,
                                len(rows) - len(keep))


def probe_property_from_acts(
    acts: Float[Tensor, "n layer d_model"],
    rows: Sequence[dict],
    answers: dict[str, str],
    layer_ids: Sequence[int],
    *,
    shuffle_labels: bool = False,
    min_class: int = 3,
    cv: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Probe one property from precomputed activations (one row per row of `rows`).

    Args:
        acts: activations of the reader model on the rows'
            hypothetical prompts (last prompt token), layers in the order of `layer_ids`.
        rows: introspection rows of ONE property, aligned with `acts`.
        answers: {object key: object-level answer} of the model whose behaviour is the label.
        layer_ids: the block index of each layer column.
        shuffle_labels: the shuffled-label control (labels permuted, seeded).
        min_class: classes with fewer rows are dropped (counted in `dropped`).
        cv: folds of the cross-validation.
        seed: fold and shuffle seed.

    Returns:
        {"layers": [{layer, accuracy, auroc, chance, n}], "best_layer", "best_accuracy", "chance"
        (majority-class rate of the probed rows = their mode baseline), "n", "classes", "dropped"}.
        `best_accuracy` is the maximum over layers (selected on the same CV folds; the shuffled
        control goes through the same selection).

    Raises:
        ValueError: fewer than two classes with `min_class` rows.
    """

    props = {r["behavioral_property"] for r in rows}
    if len(props) != 1:
        raise ValueError(f"rows mix behavioral properties {sorted(props)}")
    prop = props.pop()
    labels = [extract_property(answers.get(object_key(r)), prop, r.get("option_matching_ethical_stance")) for r in rows]
    counts = Counter(l for l in labels if l is not None)
    keep = [i for i, l in enumerate(labels) if l is not None and counts[l] >= min_class]
    if len({labels[i] for i in keep}) < 2:
        raise ValueError(f"classes {dict(counts)}: need >= 2 classes with >= {min_class} rows each")
    y = [labels[i] for i in keep]
    if shuffle_labels:
        import random

        random.Random(seed).shuffle(y)
    sweep = layer_sweep(acts[keep], y, list(layer_ids), cv=cv, seed=seed)
    rows_out = sweep.rows()
    best = max(rows_out, key=lambda r: r["accuracy"])
    return {"layers": rows_out, "best_layer": best["layer"], "best_accuracy": best["accuracy"],
            "chance": max(Counter(y).values()) / len(y), "n": len(y), "classes": sorted(Counter(y)),
            "dropped": len(rows) - len(keep)}
