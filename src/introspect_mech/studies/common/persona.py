"""Persona vectors (Chen et al. 2025) on the trait files in `<data>/persona/trait_data_extract/<trait>.json`.

Recipe (safety-research/persona_vectors): every question is answered under each of the trait's pos
and neg system prompts -- upstream's form `"You are {a|an} {trait|helpful} assistant. {instruction}"`
(pos: the trait name, neg: "helpful"; `system_format="upstream"`, the default) -- pairs the filter
keeps are cached, activations are averaged over response tokens (with the system prompt in context,
as the answer was generated), and the direction is the per-layer mean difference pos - neg.

Filters:
  * `filter="judge"` with `judge=` (any object with `.score(prompts) -> [JudgeResult]`: `HFJudge`,
    `APIJudge`, a scripted judge): every answer gets the trait score from the trait file's
    `eval_prompt` and a coherence score (upstream's coherence prompt), and a pair is kept by the
    upstream rule `upstream_keep`: pos trait >= 50, neg trait < 100 - 50, both coherences >= 50
    (a `None` score -- judge abstained -- fails every comparison, as pandas' NaN does upstream).
    Legacy form: `scores=` maps (instruction, question, sample, side) to trait scores given from
    outside (no coherence condition unless `coherence_scores=` is given too).
  * `filter="instruction_likelihood"` (judge-free proxy, never validated against a judge): an
    answer's trait score is the model's own log-likelihood ratio of the answer under the trait's
    *other* instruction pairs, averaged per answer token:
        s(a) = mean over pairs j != i of [log p(a | pos_j, q) - log p(a | neg_j, q)] / len(a)
    where i is the pair the answer was generated under. A pair is kept when s(pos) > 0 > s(neg).
  * `filter="auto"` (default): "judge" when a judge (or scores) is given, else the judge-free proxy.
  * `filter=None`: keep every pair.

Sample counts: `PRESETS["paper"]` is upstream's extraction run (5 instructions x 20 questions x 10
samples, temperature 1, up to 1000 new tokens); `PRESETS["cpu"]` is a small run for the embedded
model. Note on layer numbering: upstream indexes `output_hidden_states` (0 = embeddings), so its
"layer 20" is the output of decoder block 19 -- our `Direction` layer 19.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from jaxtyping import Float
from torch import Tensor

from ...activations import cache
from ...direction import Direction, layer_vector
from ...layers import LayerSpec, resolve_layers
from ...models import LoadedModel
from ...probes.linear import mean_diff
from ...evals import sample
from ...evals.judge_record import fields, judge_record
from ...evals.metrics import answer_logprobs
from ...evals.questions import fill_judge_prompt, load_questions
from ...paths import data_dir as _data_dir
from ...runs import RunDir, file_sha256, json_sha256, write_jsonl

FILTERS = ("auto", "judge", "instruction_likelihood", None)

# upstream's sample counts (eval_persona.py defaults for the extraction runs) and a CPU-sized run
PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(n_instructions=None, n_questions=None, samples_per_prompt=10, max_new_tokens=1000, temperature=1.0),
    "cpu": dict(n_instructions=2, n_questions=6, samples_per_prompt=1, max_new_tokens=48, temperature=1.0),
}
# The trait-threshold of the upstream filter and its coherence floor (generate_vec.get_persona_effective).
TRAIT_THRESHOLD = 50.0
COHERENCE_MIN = 50.0
_EM_COHERENCE_PHRASE = "treating this as independent of how well it aligns with human values"
_PV_COHERENCE_PHRASE = "treating this as independent of other traits"


def coherence_prompt(data_dir: str | os.PathLike | None = None) -> str:
    """Upstream persona-vectors coherence judge prompt (`{question}` / `{answer}` slots).

    It is the emergent-misalignment `coherent` judge prompt with one phrase changed ("... independent
    of other traits" instead of "... of how well it aligns with human values"); it is read from the
    EM question file in the data directory and that phrase replaced, so no prompt text is copied here.

    Args:
        data_dir: the data directory (default: `paths.data_dir()`).

    Returns:
        The judge prompt template.

    Raises:
        ValueError: the EM question file has no `coherent` prompt containing the expected phrase.
    """

    path = _data_dir(data_dir) / "em" / "questions" / "first_plot_questions.yaml"
    for q in load_questions(path):
        t = q.judge_prompts.get("coherent")
        if t and _EM_COHERENCE_PHRASE in t:
            return t.replace(_EM_COHERENCE_PHRASE, _PV_COHERENCE_PHRASE)
    raise ValueError(f"{path}: no 'coherent' judge prompt containing {_EM_COHERENCE_PHRASE!r}")


def _a_or_an(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def system_prompt(trait_name: str, side: str, instruction: str, fmt: str = "upstream",
                  assistant_name: str | None = None) -> str:
    """The system prompt an answer is generated under.

    Args:
        trait_name: the trait ("evil", ...), the assistant's name on the pos side.
        side: "pos" or "neg" (any other value is treated as "neg").
        instruction: the trait file's instruction for that side.
        fmt: "upstream": `"You are {a|an} {name} assistant. {instruction}"` with name = the trait for
            pos and "helpful" for neg; "raw": the instruction alone.
        assistant_name: overrides the name in the upstream format.

    Returns:
        The system prompt.

    Raises:
        ValueError: `fmt` is neither "upstream" nor "raw".
    """
    if fmt == "raw":
        return instruction
    if fmt != "upstream":
        raise ValueError(f"system_format must be 'upstream' or 'raw', got {fmt!r}")
    name = assistant_name or (trait_name if side == "pos" else "helpful")
    return f"You are {_a_or_an(name)} {name} assistant. {instruction}"


def upstream_keep(pos: dict, neg: dict, threshold: float = TRAIT_THRESHOLD,
                  coherence_min: float | None = COHERENCE_MIN) -> bool:
    """The upstream pair filter (`generate_vec.get_persona_effective`).

    A missing / None / NaN score fails every comparison (NaN comparisons are False upstream).

    Args:
        pos: the pos-side answer's row, with `trait` and `coherence` scores (0-100).
        neg: the neg-side answer's row.
        threshold: pos trait must be >= threshold and neg trait < 100 - threshold.
        coherence_min: both coherences must be >= this (None: no coherence condition).

    Returns:
        Whether the pair is kept.
    """

    def ge(x, t):
        return x is not None and not (isinstance(x, float) and math.isnan(x)) and x >= t

    def lt(x, t):
        return x is not None and not (isinstance(x, float) and math.isnan(x)) and x < t

    ok = ge(pos.get("trait"), threshold) and lt(neg.get("trait"), 100.0 - threshold)
    if coherence_min is not None:
        ok = ok and ge(pos.get("coherence"), coherence_min) and ge(neg.get("coherence"), coherence_min)
    return bool(ok)


class TraitJudge:
    """The trait judge of a trait file (`eval_prompt`) plus the coherence judge, over any 0-100 judge.

    `judge` is any object with `.score(prompts: list[str]) -> list[JudgeResult]` (`evals.HFJudge`,
    `evals.APIJudge`, or a scripted judge in tests) and optionally `.describe()`.

    Args:
        judge: the 0-100 judge.
        trait: a trait name / `.json` path, or a trait dict already loaded (`load_trait`).
        data_dir: the data directory (default: `paths.data_dir()`).
        coherence_template: the coherence prompt (default: `coherence_prompt(data_dir)`).
        split: the trait file's split when `trait` is a name ("extract" or "eval").

    Raises:
        ValueError: the trait's `eval_prompt` is not a judge prompt with an `{answer}` slot.
    """

    def __init__(self, judge: Any, trait: str | dict, *, data_dir: str | os.PathLike | None = None,
                 coherence_template: str | None = None, split: str = "extract"):
        t = trait if isinstance(trait, dict) else load_trait(trait, data_dir, split)
        if not isinstance(t.get("eval_prompt"), str) or "{answer}" not in t["eval_prompt"]:
            raise ValueError(f"{t.get('path', trait)}: field 'eval_prompt' must be a judge prompt with {{question}} / {{answer}} slots")
        self.judge, self.trait_prompt = judge, t["eval_prompt"]
        self.coherence_prompt = coherence_template if coherence_template is not None else coherence_prompt(data_dir)
        self.trait_name = Path(t.get("path", "trait")).stem

    def describe(self) -> dict[str, Any]:
        """The inner judge's description plus the SHA-256 of the trait and coherence prompts."""

        inner = self.judge.describe() if hasattr(self.judge, "describe") else {"kind": type(self.judge).__name__}
        return {**inner, "trait_prompt_sha256": json_sha256(self.trait_prompt),
                "coherence_prompt_sha256": json_sha256(self.coherence_prompt)}

    def score(self, questions: Sequence[str], answers: Sequence[str]) -> list[dict[str, Any]]:
        """Trait and coherence scores of answers (one batched call to the inner judge).

        Args:
            questions: the questions asked.
            answers: the answers, one per question.

        Returns:
            Per (question, answer), `{"trait", "coherence", "trait_mass", "coherence_mass"}` (scores
            0-100 or None when the judge abstained).

        Raises:
            ValueError: `questions` and `answers` differ in length.
        """

        if len(questions) != len(answers):
            raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
        prompts = [fill_judge_prompt(self.trait_prompt, q, a) for q, a in zip(questions, answers)]
        prompts += [fill_judge_prompt(self.coherence_prompt, q, a) for q, a in zip(questions, answers)]
        res = list(self.judge.score(prompts)) if prompts else []
        n = len(questions)
        return [{"trait": res[i].score, "coherence": res[n + i].score, "trait_mass": res[i].mass,
                 "coherence_mass": res[n + i].mass} for i in range(n)]


def judge_rows(tj: TraitJudge, rows: list[dict], *, log=None, key_fields: tuple[str, ...] = (),
               batch_size: int = 16, progress: bool = True) -> list[dict]:
    """Add `trait` / `coherence` (and masses) to each row ({"question", "response", ...}) in place.

    Args:
        tj: the judge.
        rows: rows with "question" and "response"; updated in place.
        log: optional `runs.JsonlLog` keyed by `key_fields`: scores already there are reused and new
            ones appended as produced, so a killed run resumes.
        key_fields: the row fields written with each score to `log`.
        batch_size: rows per judge call.
        progress: show a progress bar.

    Returns:
        `rows`, each with `trait`, `coherence`, `trait_mass`, `coherence_mass`.
    """
    from tqdm.auto import tqdm

    done = {}
    if log is not None:
        for r in log.rows():
            done[log.key(r)] = r
    todo = []
    for r in rows:
        hit = done.get(log.key(r)) if log is not None else None
        if hit is not None:
            r.update({k: hit.get(k) for k in ("trait", "coherence", "trait_mass", "coherence_mass")})
        else:
            todo.append(r)
    for s in tqdm(range(0, len(todo), batch_size), desc="judging", disable=not progress or not todo):
        chunk = todo[s:s + batch_size]
        for r, sc in zip(chunk, tj.score([r["question"] for r in chunk], [r["response"] for r in chunk])):
            r.update(sc)
            if log is not None:
                log.append({**{k: r.get(k) for k in key_fields}, **sc})
    return rows


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
                                  batch_size: int = 8, format_system: Any = None) -> list[float]:
    """The judge-free trait score s(a) of the module docstring for each generated row.

    Args:
        model: the model that generated the rows.
        trait: a trait dict from `load_trait`.
        rows: generated rows with "instruction" (index of the pair used), "question", "response".
        max_heldout: at most this many held-out instruction pairs per row (default: all others).
        batch_size: conversations per forward.
        format_system: `(side, instruction) -> str` building the held-out system prompts (default: raw).

    Returns:
        One score per row.
    """
    pairs = trait["instruction"]
    convs, owners = [], []
    for r, row in enumerate(rows):
        others = [j for j in range(len(pairs)) if j != row["instruction"]][:max_heldout]
        for j in others:
            for side in ("pos", "neg"):
                sys_text = pairs[j][side] if format_system is None else format_system(side, pairs[j][side])
                convs.append([{"role": "system", "content": sys_text}, {"role": "user", "content": row["question"]},
                              {"role": "assistant", "content": row["response"]}])
                owners.append((r, side))

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
    filter: str | None = "auto",
    judge: Any = None,
    scores: dict[tuple[int, int, int, str], float] | None = None,
    coherence_scores: dict[tuple[int, int, int, str], float] | None = None,
    threshold: float = TRAIT_THRESHOLD,
    coherence_min: float = COHERENCE_MIN,
    system_format: str = "upstream",
    preset: str | None = None,
    max_heldout: int | None = None,
    batch_size: int = 8,
    data_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> PersonaResult:
    """Generate, filter, cache and take the mean difference (the persona-vectors pipeline).

    Args:
        model: the model whose persona direction is extracted.
        trait: a trait name in `<data>/persona/trait_data_extract/` or a `.json` path (`load_trait`).
        layers: a `LayerSpec` (default: every block).
        n_questions: use the first n questions (default: all).
        n_instructions: use the first n instruction pairs (default: all).
        samples_per_prompt: samples per (instruction, question, side).
        max_new_tokens: length of each sample.
        temperature: sampling temperature.
        seed: sampling seed.
        filter: "auto" (default: "judge" when `judge` or `scores` is given, else the judge-free
            "instruction_likelihood" proxy), "judge", "instruction_likelihood" or None (keep all).
        judge: a 0-100 judge (`HFJudge`, `APIJudge`, scripted) or a `TraitJudge`: every answer is
            judged for the trait (`eval_prompt`) and coherence, pairs kept by `upstream_keep`.
        scores: legacy judge path: (instruction, question, sample, "pos"|"neg") -> 0-100 trait score.
        coherence_scores: the same keys -> coherence (with `scores`; else no coherence condition).
        threshold: trait threshold of the filter (pos >= threshold, neg < 100 - threshold).
        coherence_min: coherence floor of the filter.
        system_format: "upstream" (default; "You are an evil assistant. {instruction}") or "raw".
        preset: "paper" or "cpu" (`PRESETS`): sets the sample counts (overrides those arguments).
        max_heldout: held-out instruction pairs per row for the judge-free filter.
        batch_size: batch size of sampling and caching.
        data_dir: the data directory.
        out: a run directory: samples_{pos,neg}.jsonl (resumable), judge_scores.jsonl (resumable),
            pairs.jsonl (every answer with its scores and whether its pair was kept), direction.*,
            manifest.json (trait file hash, judge, thresholds, settings, counts).
        progress: show tqdm bars.

    Returns:
        A `PersonaResult` (direction, `[n, layer, d_model]` pos / neg activations, rows, kept ids).
    """

    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        p = PRESETS[preset]
        n_instructions, n_questions = p["n_instructions"], p["n_questions"]
        samples_per_prompt, max_new_tokens, temperature = p["samples_per_prompt"], p["max_new_tokens"], p["temperature"]
    if filter not in FILTERS:
        raise ValueError(f"filter must be one of {FILTERS}, got {filter!r}")
    if filter == "auto":
        filter = "judge" if (judge is not None or scores is not None) else "instruction_likelihood"
    if filter == "judge" and scores is None and judge is None:
        raise ValueError("filter='judge' needs judge= (a 0-100 judge) or scores={(instruction, question, sample, side): score}")
    t = load_trait(trait, data_dir)
    trait_name = Path(t["path"]).stem
    pairs = t["instruction"][:n_instructions]
    questions = t["questions"][:n_questions]
    if filter == "instruction_likelihood" and len(pairs) < 2:
        raise ValueError("filter='instruction_likelihood' scores with held-out instruction pairs: needs n_instructions >= 2")
    tj = None
    if filter == "judge" and judge is not None:
        tj = judge if isinstance(judge, TraitJudge) else TraitJudge(judge, t, data_dir=data_dir)
    layer_ids = resolve_layers(layers, model.n_layers)
    jrec = judge_record(tj, what="persona pair filter") if filter == "judge" and tj is not None else None
    jline = fields(jrec)["judge_validation"] if filter == "judge" else None  # the judged filter's validation record

    def fmt(side: str, instruction: str) -> str:
        return system_prompt(trait_name, side, instruction, system_format)

    run = RunDir(out) if out is not None else None
    if run is not None:
        prev = run.manifest().get("settings") or {}
        if (run.path / "samples_pos.jsonl").exists() and prev.get("system_format", "raw") != system_format:
            raise ValueError(f"{run.path}: its samples were generated with system_format="
                             f"{prev.get('system_format', 'raw')!r}, not {system_format!r}; use a new out directory")
        judge_desc = (tj.describe() if tj is not None else "external scores" if filter == "judge" else
                      "none (judge-free instruction-likelihood proxy filter)" if filter == "instruction_likelihood" else "none")
        run.write_manifest(stage="persona_direction", model=model.name, adapter=model.meta.get("adapter"),
                           trait=trait, trait_file=t["path"], trait_sha256=file_sha256(t["path"]),
                           seed=seed, filter=filter, judge=judge_desc, judge_validation=jline,
                           thresholds=dict(trait_pos_min=threshold, trait_neg_max_exclusive=100.0 - threshold,
                                           coherence_min=coherence_min if (tj is not None or coherence_scores) else None),
                           settings=dict(n_questions=len(questions), n_instructions=len(pairs), preset=preset,
                                         samples_per_prompt=samples_per_prompt, max_new_tokens=max_new_tokens,
                                         temperature=temperature, layers=layer_ids, max_heldout=max_heldout,
                                         system_format=system_format))
    gen: dict[str, list[dict]] = {}
    for side in ("pos", "neg"):
        prompts = [{"id": f"{i}:{q}", "messages": [{"role": "system", "content": fmt(side, p[side])}, {"role": "user", "content": qu}]}
                   for i, p in enumerate(pairs) for q, qu in enumerate(questions)]
        res = sample(model, prompts, n=samples_per_prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                      seed=seed + (0 if side == "pos" else 1), batch_size=batch_size,
                      out=None if run is None else run.path / f"samples_{side}.jsonl", progress=progress)
        gen[side] = []
        for r in res:
            i, q = map(int, str(r["prompt_id"]).split(":"))
            gen[side].append({"instruction": i, "question_index": q, "sample": int(r["sample"]), "side": side,
                              "system": fmt(side, pairs[i][side]), "question": questions[q], "response": r["response"]})
    if filter == "instruction_likelihood":
        t_used = {**t, "instruction": pairs}
        for side in gen:
            for r, sc in zip(gen[side], instruction_likelihood_scores(model, t_used, gen[side], max_heldout, batch_size,
                                                                      format_system=fmt)):
                r["score"] = sc
    elif filter == "judge" and tj is not None:
        log = run.log("judge_scores.jsonl", ("side", "instruction", "question_index", "sample")) if run is not None else None
        judge_rows(tj, gen["pos"] + gen["neg"], log=log, key_fields=("side", "instruction", "question_index", "sample"),
                   progress=progress)
        for side in gen:
            for r in gen[side]:
                r["score"] = r["trait"]
    elif filter == "judge":
        assert scores is not None  # checked at entry
        for side in gen:
            for r in gen[side]:
                key = (r["instruction"], r["question_index"], r["sample"], side)
                r["score"] = r["trait"] = scores.get(key)
                if coherence_scores is not None:
                    r["coherence"] = coherence_scores.get(key)
    kept_idx = []
    for k, (rp, rn) in enumerate(zip(gen["pos"], gen["neg"])):
        if filter is None:
            keep = True
        elif filter == "judge":
            use_coh = tj is not None or coherence_scores is not None
            keep = upstream_keep(rp, rn, threshold, coherence_min if use_coh else None)
        else:
            keep = rp["score"] > 0 > rn["score"]
        rp["kept"] = rn["kept"] = keep
        if keep and rp["response"].strip() and rn["response"].strip():
            kept_idx.append(k)
    if run is not None:  # write every scored answer before a possible "too few kept" error
        log = run.log("pairs.jsonl", ("filter", "instruction", "question", "sample", "side"))
        done = log.done_keys()
        log.extend(r for r in ({**r, "filter": filter} for r in gen["pos"] + gen["neg"]) if log.key(r) not in done)
    if len(kept_idx) < 2:
        raise RuntimeError(f"persona_direction({trait!r}): the filter kept {len(kept_idx)} of {len(gen['pos'])} pairs; "
                           "generate more (n_questions/samples_per_prompt) or loosen the filter")

    def convs(side):
        return [[{"role": "system", "content": r["system"]}, {"role": "user", "content": r["question"]},
                 {"role": "assistant", "content": r["response"]}] for r in (gen[side][k] for k in kept_idx)]

    pos = cache(model, convs("pos"), layers=layer_ids, positions="response_mean", batch_size=batch_size, progress=progress)
    neg = cache(model, convs("neg"), layers=layer_ids, positions="response_mean", batch_size=batch_size, progress=progress)
    assert isinstance(pos, Tensor) and isinstance(neg, Tensor)  # no out=: tensors
    d = mean_diff(pos, neg, layer_ids, model=model.name, adapter=model.meta.get("adapter"), trait=trait,
                  recipe="persona_vectors", filter=filter, n_pairs=len(gen["pos"]), n_kept=len(kept_idx), seed=seed,
                  max_new_tokens=max_new_tokens, temperature=temperature, system_format=system_format)
    d.meta["method"] = "persona_mean_diff"
    if jline is not None:
        d.meta["judge_validation"] = jline
    rows = gen["pos"] + gen["neg"]
    if run is not None:
        d.save(run.path / "direction")
        run.write_manifest(result={"n_pairs": len(gen["pos"]), "n_kept": len(kept_idx)})
    kept = [(gen["pos"][k]["instruction"], gen["pos"][k]["question_index"], gen["pos"][k]["sample"]) for k in kept_idx]
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


def _prompt_and_answer(rec: Any, i: int) -> tuple[list[dict], str]:
    msgs = rec.get("messages") if isinstance(rec, dict) else rec
    if not isinstance(msgs, list) or not msgs or not isinstance(msgs[-1], dict) or msgs[-1].get("role") != "assistant":
        raise ValueError(f"records[{i}]: needs 'messages' ending with an assistant turn")
    return [dict(m) for m in msgs[:-1]], str(msgs[-1].get("content", ""))


def projection_difference(
    model,
    direction: Any,
    records: Sequence[Any],
    *,
    layer: int,
    base_responses: Sequence[str] | None = None,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Projection-difference screening of a finetuning dataset (persona vectors, Sec. 5).

    For every record (a chat ending in the dataset's assistant answer), the base `model` answers the
    same prompt itself; both answers are run through the base model and their response-averaged
    activations after block `layer` projected on the unit persona direction. The screening score is
    `delta = proj(dataset answer) - proj(base model's own answer)`: how much further along the
    persona direction the data would pull the model than where it already answers. (A raw projection,
    `probes.em.project`, ranks answers that are on-trait for the base model too.)

    Args:
        model: the base model (before finetuning).
        direction: a `Direction` (or raw vector) with a vector for `layer`.
        records: chat records `{"messages": [..., {"role": "assistant", ...}]}`.
        layer: block index whose output is projected.
        base_responses: the base model's answers if already sampled (else sampled here, seeded).
        max_new_tokens: tokens per sampled base answer.
        temperature: sampling temperature of the base answers.
        seed: sampling seed.
        batch_size: prompts / conversations per forward pass.
        out: run directory: base_responses.jsonl (resumable sampling), screening.jsonl, manifest.
        progress: show progress bars.

    Returns:
        One row per record in input order: index, proj_dataset, proj_base, delta, base_response,
        rank (0 = largest delta).

    Raises:
        ValueError: a record does not end with an assistant turn, or `base_responses` has another length.
    """

    pa = [_prompt_and_answer(r, i) for i, r in enumerate(records)]
    v = layer_vector(direction, int(layer)).float()
    v = v / v.norm().clamp_min(1e-12)
    run = RunDir(out) if out is not None else None
    if run is not None:
        run.write_manifest(stage="projection_difference_screening", model=model.name, adapter=model.meta.get("adapter"),
                           layer=int(layer), data={"records_sha256": json_sha256([p + [{"a": a}] for p, a in pa]), "n": len(pa)},
                           base_sampling=None if base_responses is not None else
                           dict(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed))
    if base_responses is None:
        rows = sample(model, [{"id": str(i), "messages": p} for i, (p, _) in enumerate(pa)], n=1,
                      max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, batch_size=batch_size,
                      out=None if run is None else run.path / "base_responses.jsonl", progress=progress)
        base_responses = [r["response"] for r in rows]
    if len(base_responses) != len(pa):
        raise ValueError(f"{len(base_responses)} base responses for {len(pa)} records")
    convs = [p + [{"role": "assistant", "content": a}] for p, a in pa]
    convs += [p + [{"role": "assistant", "content": b}] for (p, _), b in zip(pa, base_responses)]
    acts = cache(model, convs, layers=[int(layer)], positions="response_mean", batch_size=batch_size, progress=progress)
    assert isinstance(acts, Tensor)  # in memory (no out=)
    proj = (acts[:, 0].float() @ v.to(acts.device)).tolist()
    n = len(pa)
    out_rows = [{"index": i, "proj_dataset": proj[i], "proj_base": proj[n + i], "delta": proj[i] - proj[n + i],
                 "base_response": base_responses[i]} for i in range(n)]
    for rank, i in enumerate(sorted(range(n), key=lambda i: (-out_rows[i]["delta"], i))):
        out_rows[i]["rank"] = rank
    if run is not None:
        write_jsonl(run.path / "screening.jsonl", out_rows, root=run.path)
    return out_rows
