"""Persona vectors (Chen et al. 2025) on the trait files in `<data>/persona/trait_data_extract/<trait>.json`.

Recipe: every question is answered under each of the trait's pos and neg system prompts; pairs the
filter separates are kept; activations are averaged over response tokens (with the system prompt
in context, as the answer was generated); the direction is the per-layer mean difference pos - neg.

Filters:
  * `filter="judge"`: `scores=` maps each answer to a judge's trait score 0-100 (upstream: keep
    pairs with pos >= 50 and neg < 50).
  * `filter="instruction_likelihood"` (judge-free, default; what runs on the embedded model): an
    answer's trait score is the model's own log-likelihood ratio of the answer under the trait's
    *other* instruction pairs, averaged per answer token:
        s(a) = mean over pairs j != i of [log p(a | pos_j, q) - log p(a | neg_j, q)] / len(a)
    where i is the pair the answer was generated under (held out so the score is not just "the
    prompt it came from"). A pair is kept when s(pos answer) > 0 > s(neg answer): the pos answer
    reads as more trait-expressing than trait-denying to other phrasings of the instruction, and
    the neg answer the reverse.
  * `filter=None`: keep every pair.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jaxtyping import Float
from torch import Tensor

from ..activations import cache
from ..direction import Direction
from ..layers import LayerSpec, resolve_layers
from ..models import LoadedModel
from .linear import mean_diff

FILTERS = ("instruction_likelihood", "judge", None)


def load_trait(trait: str, data_dir: str | os.PathLike | None = None, split: str = "extract") -> dict[str, Any]:
    """Read and check a persona-vectors trait file.

    Args:
        trait: a trait name ("evil", "sycophantic", ...) or a path to a `.json` trait file.
        data_dir: the data directory (default: `paths.data_dir()`).
        split: "extract" (direction extraction) or "eval".

    Returns:
        The trait dict: "instruction" (pos/neg system-prompt pairs), "questions", "eval_prompt".

    Raises:
        FileNotFoundError: no such trait file (the available traits are listed).
        ValueError: a malformed file, naming the file and the field.
    """
    from ..paths import data_dir as _data_dir

    path = Path(trait) if str(trait).endswith(".json") else _data_dir(data_dir) / "persona" / f"trait_data_{split}" / f"{trait}.json"
    if not path.exists():
        avail = sorted(p.stem for p in path.parent.glob("*.json")) if path.parent.exists() else []
        raise FileNotFoundError(f"{path}: no such trait file (available: {avail})")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    for key in ("instruction", "questions"):
        if key not in d:
            raise ValueError(f"{path}: missing field '{key}'")
    for i, ins in enumerate(d["instruction"]):
        if not isinstance(ins, dict) or not isinstance(ins.get("pos"), str) or not isinstance(ins.get("neg"), str):
            raise ValueError(f"{path}: field 'instruction[{i}]' needs string 'pos' and 'neg'")
    if not all(isinstance(q, str) for q in d["questions"]):
        raise ValueError(f"{path}: field 'questions' must be a list of strings")
    d["path"] = str(path)
    return d


def instruction_likelihood_scores(model: LoadedModel, trait: dict, rows: list[dict], max_heldout: int | None = None,
                                  batch_size: int = 8) -> list[float]:
    """The judge-free trait score s(a) of the module docstring for each generated row.

    Args:
        model: the model that generated the rows.
        trait: a trait dict from `load_trait`.
        rows: generated rows with "instruction" (index of the pair used), "question", "response".
        max_heldout: at most this many held-out instruction pairs per row (default: all others).
        batch_size: conversations per forward.

    Returns:
        One score per row.
    """
    pairs = trait["instruction"]
    convs, owners = [], []
    for r, row in enumerate(rows):
        others = [j for j in range(len(pairs)) if j != row["instruction"]][:max_heldout]
        for j in others:
            for side in ("pos", "neg"):
                convs.append([{"role": "system", "content": pairs[j][side]}, {"role": "user", "content": row["question"]},
                              {"role": "assistant", "content": row["response"]}])
                owners.append((r, side))
    from ..evals.metrics import answer_logprobs

    lps = [r["sum"] / max(r["n"], 1) for r in answer_logprobs(model, convs, batch_size=batch_size)]
    acc: dict[int, list[float]] = {}
    for (r, side), lp in zip(owners, lps):
        acc.setdefault(r, []).append(lp if side == "pos" else -lp)
    # each held-out pair contributed +pos and -neg terms: sum per pair, mean over pairs
    return [2 * sum(acc[r]) / len(acc[r]) for r in range(len(rows))]


@dataclass
class PersonaResult:
    """What `persona_data` returns: the direction, the activations it came from and the kept rows."""

    direction: Direction
    pos_acts: Float[Tensor, "n layer d_model"]
    neg_acts: Float[Tensor, "n layer d_model"]
    rows: list[dict] = field(repr=False, default_factory=list)  # one per (instruction, question, sample)
    kept: list[tuple[int, int, int]] = field(default_factory=list)  # (instruction, question, sample) kept


def persona_data(
    model: LoadedModel,
    trait: str = "evil",
    *,
    layers: LayerSpec = None,
    n_questions: int | None = None,
    n_instructions: int | None = None,
    samples_per_prompt: int = 1,
    max_new_tokens: int = 96,
    temperature: float = 1.0,
    seed: int = 0,
    filter: str | None = "instruction_likelihood",
    scores: dict[tuple[int, int, int, str], float] | None = None,
    threshold: float = 50.0,
    max_heldout: int | None = None,
    batch_size: int = 8,
    data_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> PersonaResult:
    """Generate, filter, cache and take the mean difference (the persona-vectors pipeline).

    Args:
        model: the model whose persona direction is extracted.
        trait: a trait name or `.json` path (`load_trait`).
        layers: a `LayerSpec` (default: every block).
        n_questions: use the first n questions (default: all).
        n_instructions: use the first n instruction pairs (default: all).
        samples_per_prompt: samples per (instruction, question, side).
        max_new_tokens: length of each sample.
        temperature: sampling temperature.
        seed: sampling seed.
        filter: "instruction_likelihood" (judge-free), "judge" (needs `scores`) or None.
        scores: for `filter="judge"`: (instruction, question, sample, "pos"|"neg") -> 0-100.
        threshold: trait-score threshold of the filter.
        max_heldout: held-out instruction pairs per row for the judge-free filter.
        batch_size: batch size of sampling and caching.
        data_dir: the data directory.
        out: a run directory: samples go to `out/samples_{pos,neg}.jsonl` (resumable), filter
            scores to `out/pairs.jsonl`, the direction to `out/direction.*`.
        progress: show tqdm bars.

    Returns:
        A `PersonaResult` (direction, `[n, layer, d_model]` pos / neg activations, rows, kept ids).
    """
    from ..evals import sample
    from ..runs import RunDir, file_sha256

    if filter not in FILTERS:
        raise ValueError(f"filter must be one of {FILTERS}, got {filter!r}")
    if filter == "judge" and scores is None:
        raise ValueError("filter='judge' needs scores={(instruction, question, sample, side): score}")
    t = load_trait(trait, data_dir)
    pairs = t["instruction"][:n_instructions]
    questions = t["questions"][:n_questions]
    if filter == "instruction_likelihood" and len(pairs) < 2:
        raise ValueError("filter='instruction_likelihood' scores with held-out instruction pairs: needs n_instructions >= 2")
    layer_ids = resolve_layers(layers, model.n_layers)
    run = RunDir(out) if out is not None else None
    if run is not None:
        run.write_manifest(stage="persona_direction", model=model.name, adapter=model.meta.get("adapter"),
                           trait=trait, trait_file=t["path"], trait_sha256=file_sha256(t["path"]),
                           seed=seed, filter=filter, judge=None if filter != "judge" else "external scores",
                           settings=dict(n_questions=len(questions), n_instructions=len(pairs),
                                         samples_per_prompt=samples_per_prompt, max_new_tokens=max_new_tokens,
                                         temperature=temperature, layers=layer_ids, max_heldout=max_heldout))
    gen: dict[str, list[dict]] = {}
    for side in ("pos", "neg"):
        prompts = [{"id": f"{i}:{q}", "messages": [{"role": "system", "content": p[side]}, {"role": "user", "content": qu}]}
                   for i, p in enumerate(pairs) for q, qu in enumerate(questions)]
        res = sample(model, prompts, n=samples_per_prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                      seed=seed + (0 if side == "pos" else 1), batch_size=batch_size,
                      out=None if run is None else run.path / f"samples_{side}.jsonl", progress=progress)
        gen[side] = []
        for r in res:
            i, q = map(int, str(r["prompt_id"]).split(":"))
            gen[side].append({"instruction": i, "question": q, "sample": int(r["sample"]), "side": side,
                              "system": pairs[i][side], "question_text": questions[q], "response": r["response"]})
    for side in gen:
        for r in gen[side]:
            r["question"] = r.pop("question_text")
    if filter == "instruction_likelihood":
        t_used = {**t, "instruction": pairs}
        for side in gen:
            for r, s in zip(gen[side], instruction_likelihood_scores(model, t_used, gen[side], max_heldout, batch_size)):
                r["score"] = s
    elif filter == "judge":
        for side in gen:
            for r in gen[side]:
                r["score"] = scores.get((r["instruction"], questions.index(r["question"]), r["sample"], side))
    kept_idx = []
    for k, (rp, rn) in enumerate(zip(gen["pos"], gen["neg"])):
        if filter is None:
            keep = True
        elif filter == "judge":
            keep = rp["score"] is not None and rn["score"] is not None and rp["score"] >= threshold > rn["score"]
        else:
            keep = rp["score"] > 0 > rn["score"]
        rp["kept"] = rn["kept"] = keep
        if keep and rp["response"].strip() and rn["response"].strip():
            kept_idx.append(k)
    if len(kept_idx) < 2:
        raise RuntimeError(f"persona_direction({trait!r}): the filter kept {len(kept_idx)} of {len(gen['pos'])} pairs; "
                           "generate more (n_questions/samples_per_prompt) or loosen the filter")

    def convs(side):
        return [[{"role": "system", "content": r["system"]}, {"role": "user", "content": r["question"]},
                 {"role": "assistant", "content": r["response"]}] for r in (gen[side][k] for k in kept_idx)]

    pos = cache(model, convs("pos"), layers=layer_ids, positions="response_mean", batch_size=batch_size, progress=progress)
    neg = cache(model, convs("neg"), layers=layer_ids, positions="response_mean", batch_size=batch_size, progress=progress)
    d = mean_diff(pos, neg, layer_ids, model=model.name, adapter=model.meta.get("adapter"), trait=trait,
                  recipe="persona_vectors", filter=filter, n_pairs=len(gen["pos"]), n_kept=len(kept_idx), seed=seed,
                  max_new_tokens=max_new_tokens, temperature=temperature)
    d.meta["method"] = "persona_mean_diff"
    rows = gen["pos"] + gen["neg"]
    if run is not None:
        log = run.log("pairs.jsonl", ("filter", "instruction", "question", "sample", "side"))
        done = log.done_keys()
        log.extend(r for r in ({**r, "filter": filter} for r in rows) if log.key(r) not in done)
        d.save(run.path / "direction")
        run.write_manifest(result={"n_pairs": len(gen["pos"]), "n_kept": len(kept_idx)})
    kept = [(gen["pos"][k]["instruction"], questions.index(gen["pos"][k]["question"]), gen["pos"][k]["sample"]) for k in kept_idx]
    return PersonaResult(d, pos, neg, rows, kept)


def persona_direction(model: LoadedModel, trait: str = "evil", **kw: Any) -> Direction:
    """The persona vector for `trait` (e.g. "evil": the malicious-persona direction).

    Args:
        model: the model whose persona direction is extracted.
        trait: a trait name or `.json` path.
        **kw: the keyword arguments of `persona_data`.

    Returns:
        `persona_data(model, trait, **kw).direction`.
    """
    return persona_data(model, trait, **kw).direction
