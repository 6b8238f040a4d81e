"""The steps of persona vectors over the library's pieces: extraction (`extract`), trait expression
(`trait_expression`, upstream's `eval_persona.py`), layer selection (`select_layer`), finetuning with optional
preventative steering (`finetune_and_express`), projection-difference screening (`screen_dataset`) and the
finetuning shift along the direction against trait expression (`shift_correlation`)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ... import runs as _runs
from ...activations import Pooling, cache
from ...evals import judge_record as _jr
from ...evals import sample
from ...layers import resolve_layer
from ...runs import RunDir, file_sha256
from ...stats import bootstrap_ci
from ...steering import add, preventative_steering
from ...steering.hooks import Positions, layer_vector
from ..common.persona import TraitJudge, judge_rows, load_trait, persona_data, projection_difference
from .config import COHERENCE_MIN, PAPER_SHIFT_R, PRESETS, UPSTREAM_POSITIONS, PVConfig


def shift_correlation_note(n: int, *, judged: bool) -> str:
    """The note beside the finetuning-shift correlation: the paper's judged r only beside a judged
    expression; a proxy expression is never printed with the paper's number.

    Args:
        n: checkpoints correlated.
        judged: whether trait expression came from a judge.

    Returns:
        The note text.
    """
    if judged:
        return f"n = {n} checkpoints of two finetunes; judged expression (paper: r = {PAPER_SHIFT_R}, judged)"
    return f"n = {n} checkpoints of two finetunes; PROXY expression (paired preference), not a judged trait score"


def steering_layer_plan(cfg: "PVConfig", n_layers: int, *, have_judge: bool) -> dict[str, Any]:
    """Which block the study steers / projects at, and why.

    Layer selection (`select_layer`) runs over `cfg.layers`, or over `cfg.layer_fractions` of the
    depth, when a judge is given; otherwise the study uses `cfg.layer` or the middle block and says so.

    Args:
        cfg: the configuration.
        n_layers: blocks of the model.
        have_judge: whether a trait judge is at hand (selection needs one).

    Returns:
        {"select": run the selection, "candidates": blocks, "layer": the block used until a
        selection picks one, "reason": one line for the summary}.
    """
    cands = list(cfg.layers) if cfg.layers else sorted({resolve_layer(float(f), n_layers)
                                                        for f in (cfg.layer_fractions or ())})
    layer = cfg.layer if cfg.layer is not None else resolve_layer(0.5, n_layers)
    why = f"block {layer} ({'--layer' if cfg.layer is not None else 'the middle block'})"
    if cands and have_judge:
        return {"select": True, "candidates": cands, "layer": layer,
                "reason": f"layer selection over blocks {cands} (judged trait, coherence >= {COHERENCE_MIN:g}); "
                          f"{why} until it picks one"}
    if cands:
        return {"select": False, "candidates": cands, "layer": layer,
                "reason": f"no judge: no layer selection over blocks {cands}; steering {why}"}
    return {"select": False, "candidates": [], "layer": layer, "reason": f"no candidate layers configured; steering {why}"}


def extract(model, trait: str, *, judge: Any = None, preset: str | PVConfig = "cpu",
            out: str | os.PathLike | None = None, **kw: Any):
    """Step 1: `common.persona.persona_data` with the preset's sample counts and the upstream judge filter
    when `judge` is given (else the judge-free proxy filter, recorded as such in the manifest).

    Args:
        model: the model whose persona direction is extracted.
        trait: a trait name (`persona/trait_data_extract/<trait>.json`) or a trait file path.
        judge: a 0-100 judge or a `TraitJudge`; None = the judge-free proxy filter.
        preset: a key of `PRESETS` or a `PVConfig` (its `extract` names the sample counts).
        out: run directory (samples, scores and the direction; resumable), or None.
        **kw: passed to `common.persona.persona_data` (seed, max_heldout, ...).

    Returns:
        The `common.persona.persona_data` result (direction, rows, kept pairs).

    Raises:
        ValueError: `preset` is a string that is not a key of `PRESETS`.
    """
    if isinstance(preset, PVConfig):
        return persona_data(model, trait, judge=judge, preset=preset.extract, out=out, **kw)
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    return persona_data(model, trait, judge=judge, preset=PRESETS[preset].extract, out=out, **kw)


def _steer_ctx(model, steer: Mapping[str, Any] | None, positions: Positions):
    if not steer:
        import contextlib

        return contextlib.nullcontext()
    return add(model, steer["direction"], layers=[int(steer["layer"])], alpha=float(steer["coef"]),
               positions=positions, scale=steer.get("scale", "norm"))


def trait_expression(
    model,
    trait: str,
    judge: Any,
    *,
    n_questions: int | None = None,
    n_per_question: int = 10,
    max_new_tokens: int = 1000,
    temperature: float = 1.0,
    seed: int = 0,
    steer: Mapping[str, Any] | None = None,
    positions: Positions = UPSTREAM_POSITIONS,
    batch_size: int = 8,
    data_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Step 2: sample answers to the trait's eval-split questions (no system prompt) and judge them.

    Args:
        model: the model that answers.
        trait: a trait name (`persona/trait_data_eval/<trait>.json`) or a trait file path.
        judge: a 0-100 judge or a `TraitJudge` (trait prompt from the eval-split file + coherence).
        n_questions: use the first n eval questions (None = all).
        n_per_question: samples per question (upstream: 10).
        max_new_tokens: tokens per answer (upstream: 1000).
        temperature: sampling temperature.
        seed: sampling and bootstrap seed.
        steer: optional {"direction", "layer", "coef", "scale"?}: add `coef * v` at block `layer`
            while sampling, at `positions` (default: upstream's rule, see the module docstring).
        positions: where the steering vector is added (a steering `positions` mode).
        batch_size: prompts per generation batch.
        data_dir: where the trait files are looked up first (None = the default data directory).
        out: run directory (samples.jsonl and judge_scores.jsonl resumable, manifest).
        progress: show progress bars.

    Returns:
        {"trait": Estimate dict, "coherence": Estimate dict, "n", "n_trait_none", "n_coherence_none", "rows",
        "judge_validation"} -- means over answers the judge scored (None = the judge abstained, counted);
        `judge_validation` is the judge's record on the shared GPT-4o set (`evals.judge_record`).
    """
    t = load_trait(trait, data_dir, split="eval")
    tj = judge if isinstance(judge, TraitJudge) else TraitJudge(judge, t, data_dir=data_dir)
    jrec = _jr.judge_record(tj, what="trait scores")  # travels with the scores (manifest and result)
    qs = t["questions"][:n_questions]
    run = RunDir(out) if out is not None else None
    if run is not None:
        run.write_manifest(stage="trait_expression", model=model.name, adapter=model.meta.get("adapter"),
                           trait=trait, trait_file=t["path"], trait_sha256=file_sha256(t["path"]),
                           judge=tj.describe(), judge_validation=jrec, seed=seed,
                           steer=None if not steer else {"layer": int(steer["layer"]), "coef": float(steer["coef"]),
                                                         "scale": steer.get("scale", "norm"), "positions": positions},
                           settings=dict(n_questions=len(qs), n_per_question=n_per_question,
                                         max_new_tokens=max_new_tokens, temperature=temperature))
    prompts = [{"id": str(i), "messages": [{"role": "user", "content": q}]} for i, q in enumerate(qs)]
    with _steer_ctx(model, steer, positions):
        rows = sample(model, prompts, n=n_per_question, max_new_tokens=max_new_tokens, temperature=temperature,
                      seed=seed, batch_size=batch_size, out=None if run is None else run.path / "samples.jsonl",
                      progress=progress)
    rows = [{"prompt_id": r["prompt_id"], "sample": r["sample"], "question": qs[int(r["prompt_id"])],
             "response": r["response"]} for r in rows]
    log = run.log("judge_scores.jsonl", ("prompt_id", "sample")) if run is not None else None
    judge_rows(tj, rows, log=log, key_fields=("prompt_id", "sample"), progress=progress)
    res = {**summarize_scores(rows, seed=seed), "judge_validation": jrec}
    if run is not None:
        run.write_manifest(result={k: v for k, v in res.items() if k != "rows"})
    return res


def summarize_scores(rows: Sequence[dict], seed: int = 0) -> dict[str, Any]:
    """Mean trait and coherence scores with bootstrap CIs over the answers the judge scored.

    Args:
        rows: judged rows with "trait" / "coherence" (0-100, or None when the judge abstained).
        seed: bootstrap seed.

    Returns:
        {"trait", "coherence" (Estimate dicts), "n", "n_trait_none", "n_coherence_none", "rows"}.
    """
    tr = [r["trait"] for r in rows if r.get("trait") is not None]
    co = [r["coherence"] for r in rows if r.get("coherence") is not None]
    return {"trait": bootstrap_ci(tr, seed=seed).to_dict(), "coherence": bootstrap_ci(co, seed=seed).to_dict(),
            "n": len(rows), "n_trait_none": len(rows) - len(tr), "n_coherence_none": len(rows) - len(co),
            "rows": list(rows)}


def pick_layer(results: Mapping[int, Mapping[str, Any]], coherence_min: float = COHERENCE_MIN) -> int | None:
    """The layer with the largest mean trait score among layers whose mean coherence >= `coherence_min`.

    A layer with a missing (None / nan) score is not eligible; ties go to the lower layer.

    Args:
        results: {layer: {"trait", "coherence"}}, each a number or an Estimate dict with "value".
        coherence_min: the least mean coherence a layer needs (default 50).

    Returns:
        The chosen block index, or None when no layer qualifies.
    """

    def val(x):
        x = x.get("value") if isinstance(x, Mapping) else x
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)

    ok = [(val(r["trait"]), -int(l)) for l, r in results.items()
          if val(r.get("trait")) is not None and val(r.get("coherence")) is not None and val(r["coherence"]) >= coherence_min]
    return -max(ok)[1] if ok else None


def select_layer(model, trait: str, direction: Any, judge: Any, *, layers: Sequence[int], coef: float,
                 coherence_min: float = COHERENCE_MIN, out: str | os.PathLike | None = None,
                 **kw: Any) -> dict[str, Any]:
    """Step 3: steer with `coef * v` at each of `layers` in turn, measure trait expression and
    coherence (`trait_expression`), and pick the layer (`pick_layer`). Rows go to
    `out/layer_{l}/` (resumable) and `out/steering_sweep.jsonl` (the dashboard's sweep panel).

    Args:
        model: the model to steer.
        trait: the trait name or file.
        direction: the persona direction (a `Direction` or raw vector; see `steering.hooks.layer_vector`).
        judge: a 0-100 judge or a `TraitJudge`.
        layers: candidate blocks.
        coef: steering coefficient (times the raw mean difference with the default `scale="norm"`).
        coherence_min: the least mean coherence a layer needs (default 50).
        out: run directory, or None (nothing written).
        **kw: passed to `trait_expression` (n_questions, n_per_question, max_new_tokens, seed, ...).

    Returns:
        {"per_layer": {layer: {"trait", "coherence", "n_trait_none"}}, "selected_layer" (None when no
        layer is coherent enough), "coherence_min", "coef", "judge_validation"}.
    """
    results = {}
    jrec = _jr.judge_record(judge, what="trait scores (layer selection)")
    for l in layers:
        sub = None if out is None else Path(out) / f"layer_{l}"
        r = trait_expression(model, trait, judge, steer={"direction": direction, "layer": l, "coef": coef},
                             out=sub, **kw)
        results[int(l)] = {"trait": r["trait"], "coherence": r["coherence"], "n_trait_none": r["n_trait_none"]}
    best = pick_layer(results, coherence_min)
    if out is not None:
        rd = RunDir(out)
        rd.write_manifest(stage="persona_layer_selection", trait=trait, coef=coef, layers=list(map(int, layers)),
                          coherence_min=coherence_min, selected_layer=best, judge_validation=jrec)
        _runs.write_text(rd.path / "steering_sweep.jsonl", "".join(
            json.dumps({"direction": f"{trait} persona", "layer": l, "alpha": coef,
                                      "metric": r["trait"]["value"], "coherence": r["coherence"]["value"],
                                      "metric_name": f"trait score ({_jr.fields(jrec)['judge_label']})",
                                      "judge_validation": _jr.fields(jrec)["judge_validation"]}) + "\n"
            for l, r in results.items()
            if r["trait"]["value"] is not None))
    return {"per_layer": results, "selected_layer": best, "coherence_min": coherence_min, "coef": coef,
            "judge_validation": jrec}


def finetune_and_express(load: Callable[[], Any], records: Sequence[dict], config: Any, out: str | os.PathLike,
                         *, evaluate: Callable[[Any], dict[str, Any]],
                         preventative: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Step 4: finetune a fresh model on `records` (optionally with preventative steering) and return
    `evaluate(model)` afterwards (no hook at evaluation).

    Args:
        load: returns a fresh model to finetune.
        records: chat training records.
        config: the `finetune.train` config (a `TrainConfig`).
        out: the finetune's run directory (adapter, checkpoints).
        evaluate: called on the finetuned model; its result is returned.
        preventative: optional {"direction", "layer", "coef", "scale"?}: `coef * v` added at block
            `layer` at every position of every training forward.

    Returns:
        What `evaluate` returns.

    Raises:
        RuntimeError: a forward hook was left on the model after finetuning.
    """
    from ...finetune import train

    m = load()
    iv = None
    if preventative:
        iv = preventative_steering(m, preventative["direction"], layers=[int(preventative["layer"])],
                                   alpha=float(preventative["coef"]), scale=preventative.get("scale", "norm"))
    train(m, records, config, Path(out), intervention=iv)
    if any(l._forward_hooks for l in m.layers):
        raise RuntimeError("a hook was left on the model after finetuning")
    return evaluate(m)


def screen_dataset(model, direction: Any, records: Sequence[dict], *, layer: int, **kw: Any) -> list[dict]:
    """Step 5: projection-difference screening (see `common.persona.projection_difference`).

    Args:
        model: the base model (before finetuning).
        direction: the persona direction (a `Direction` or raw vector with a vector for `layer`).
        records: chat records ending in the dataset's assistant answer.
        layer: block whose output is projected.
        **kw: passed to `projection_difference` (base_responses, max_new_tokens, seed, out, ...).

    Returns:
        One row per record with its projection difference (see `projection_difference`).
    """
    return projection_difference(model, direction, records, layer=layer, **kw)


@torch.no_grad()
def mean_projection(model, direction: Any, prompts: Sequence[Sequence[dict]], *, layer: int,
                    positions: Pooling = "last_prompt", batch_size: int = 8) -> float:
    """Mean over prompts of the activation after block `layer` at `positions`, projected on the unit direction.

    Args:
        model: the model whose activations are read.
        direction: the persona direction (a `Direction` or raw vector; normalised here).
        prompts: chat message lists (no answer).
        layer: block index whose output is read.
        positions: token positions averaged per prompt (an `activations.cache` mode; default the last
            prompt token).
        batch_size: prompts per forward.

    Returns:
        The mean projection (in activation units).
    """
    v = layer_vector(direction, int(layer)).float()
    v = v / v.norm().clamp_min(1e-12)
    acts = cache(model, list(prompts), layers=[int(layer)], positions=positions, batch_size=batch_size, progress=False)
    return float(acts[:, 0].float().mean(0) @ v)


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation (nan when either side is constant or fewer than 3 points).

    Args:
        x: first values.
        y: second values, paired with `x`.

    Returns:
        r in [-1, 1], or nan.
    """
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def shift_correlation(base, models: Mapping[str, Any], direction: Any, *, layer: int,
                      prompts: Sequence[Sequence[dict]], expression: Mapping[str, float],
                      positions: Pooling = "last_prompt", batch_size: int = 8) -> dict[str, Any]:
    """Step 6: finetuning shift along the persona direction vs trait expression.

    Args:
        base: the model before finetuning.
        models: {name: finetuned model or checkpoint} (a zero-arg callable is loaded lazily).
        direction: the persona direction (a `Direction` or raw vector).
        layer: block whose output is projected.
        prompts: the eval prompts (chat message lists, no answer).
        expression: {name: trait expression} (judged, or a labelled proxy) for each model.
        positions: token positions averaged per prompt (default the last prompt token).
        batch_size: prompts per forward.

    Returns:
        {"rows": [{"model", "shift", "expression"}], "pearson_r", "n", "base_projection", "layer",
        "positions"}; shift = mean projection of the finetuned model minus that of the base.

    Raises:
        KeyError: a model has no entry in `expression`.
    """
    b = mean_projection(base, direction, prompts, layer=layer, positions=positions, batch_size=batch_size)
    rows: list[dict[str, Any]] = []
    for name, m in models.items():
        mm = m() if callable(m) and not hasattr(m, "layers") else m
        s = mean_projection(mm, direction, prompts, layer=layer, positions=positions, batch_size=batch_size) - b
        rows.append({"model": name, "shift": s, "expression": float(expression[name])})
    return {"rows": rows, "pearson_r": pearson([r["shift"] for r in rows], [r["expression"] for r in rows]),
            "n": len(rows), "base_projection": b, "layer": int(layer), "positions": positions}
