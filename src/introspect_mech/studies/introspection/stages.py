"""The study's runner stages, in order: `concepts` (concept vectors, for A and B), `detection` (A),
`intention` (B), `self_report` (C), `risk_report` (D) and `summary` (`summary.jsonl`, `summary.json`, the
manifest's result). A stage whose letter `config.stages` does not pick returns at once; the letters select
work (`Study.unbound`), so the stage records are keyed by them.

What the stages share (the model, the words, the layers, the judge's gate record) is built once per run
call (`setup(ctx)`); the concept vectors are saved under `concepts/` and read back by a stage resumed in a
new process. Every stage returns its part of `summary.json` and its headline rows of `summary.jsonl`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from functools import partial
from typing import Any

from tqdm.auto import tqdm

from ... import load_model
from ... import runs as _runs
from ... import steering
from ...direction import Direction, DirectionLike
from ...evals import judge_record as _jr
from ...layers import depth_of
from .concepts import concept_vectors, load_words
from ...runs import json_sha256
from ...stats import bootstrap_ci
from .. import runner
from .analysis import _by_word_ci, identification_controls, summarize_detection
from .prompts import JUDGE_THRESHOLD, SENTENCES, layer_at
from .trials import DetectionScorer, Injection, IntentionScorer, TrialSpec, coherence_nll
from .pipeline import (_coherence_refs, _json_default, _resolve_words, _risk_stage, _sample_stage, _self_report_stage,
                       _write)

STATE = "_introspection"  # ctx.resources key: what this run call already built


class _Keys:
    """The headline rows of one stage (`summary.jsonl`); a judged number carries its judge's validation record."""

    def __init__(self, jrec: Any):
        self.jrec = jrec
        self.rows: list[Any] = []

    def __call__(self, name: str, est: Any, note: str = "") -> None:
        extra: dict[str, Any] = {}
        if note == "judge":  # a judged number: its judge's validation record travels with it
            name, extra = _jr.tag(self.jrec) + name, _jr.fields(self.jrec)
            note = f"judge ({extra['judge_label']})"
        if isinstance(est, dict):
            self.rows.append({"name": name, "value": est.get("value"), "ci_lo": est.get("lo"), "ci_hi": est.get("hi"),
                              "n": est.get("n"), "note": note, **extra})
        else:
            self.rows.append({"name": name, "value": est, "note": note, **extra})


def _plain(x: Any) -> Any:
    """`x` as the JSON `summary.json` holds (`_json_default` for numpy values and tensors)."""
    return json.loads(json.dumps(x, default=_json_default))


def _result(part: dict[str, Any], keys: _Keys) -> dict[str, Any]:
    return {"summary": _plain(part), "key_rows": _plain(keys.rows)}


def setup(ctx: runner.Context) -> dict[str, Any]:
    """The judge's gate (before any work), the model, the words, the layers and the manifest.

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    st = ctx.resources.setdefault(STATE, {})
    if st:
        return st
    cfg, judge = ctx.config, ctx.resources.get("judge")
    # the one gate: judged rates (stage A's graded answers) only from a judge with a passing validation, unless allowed
    jrec = _jr.gate(judge if "A" in cfg.stages else None, what="judged detection / identification rates",
                    allow_unvalidated=cfg.allow_unvalidated_judge)
    m = ctx.resources.get("model") or load_model(cfg.model)
    m.model.eval()
    words = _resolve_words(cfg.words, cfg.n_words)
    baseline = load_words(cfg.baseline)
    ctx.run_dir.write_manifest(
        title="Injected-thought introspection and self-report vs internal state", stage="introspection",
        model=m.name, adapter=m.meta.get("adapter"), config=cfg.to_dict(), words=words,
        words_sha256=json_sha256(words), baseline_sha256=json_sha256(baseline), seeds={"study": cfg.seed,
        "random_controls": cfg.random_seed}, judge=(judge.describe() if judge is not None and hasattr(judge, "describe")
                                                   else "none: judge-free scores (P(yes), identification rank)"),
        judge_threshold=JUDGE_THRESHOLD if judge is not None else None, judge_validation=jrec)
    layers = sorted({layer_at(m, f) for f in cfg.layer_fractions} | {layer_at(m, cfg.headline_fraction)})
    st.update(jrec=jrec, judge=judge, m=m, words=words, baseline=baseline, layers=layers)
    return st


def concepts_of(ctx: runner.Context) -> dict[str, Direction]:
    """The concept vectors: this call's, or read back from `concepts/` (saved by the concepts stage).

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    st = setup(ctx)
    if "concepts" not in st:
        d = ctx.out / "concepts"
        st["concepts"] = {w: Direction.load(d / f"{i:03d}") for i, w in enumerate(st["words"])}
    return st["concepts"]


def concepts_stage(ctx: runner.Context) -> dict[str, Any]:
    """Concept vectors: the last prompt token on "Tell me about {word}" minus the baseline words' mean, per layer.

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    cfg, st = ctx.config, setup(ctx)
    m, words = st["m"], st["words"]
    part: dict[str, Any] = {"model": m.name, "n_layers": m.n_layers, "words": words}
    if "A" in cfg.stages or "B" in cfg.stages:
        concepts = concept_vectors(m, words, st["baseline"], layers=st["layers"], positions=cfg.concept_positions,
                                   batch_size=cfg.batch_size)
        for i, w in enumerate(words):  # read back by a later stage resumed in a new process
            concepts[w].save(ctx.out / "concepts" / f"{i:03d}")
        st["concepts"] = concepts
        part["concept_norms"] = {w: dict(zip(map(str, d.layers), d.norms.tolist())) for w, d in concepts.items()}
    return {"summary": _plain(part), "key_rows": []}


def detection_stage(ctx: runner.Context) -> dict[str, Any]:
    """A: injected-thought detection and identification (trials, controls, coherence, sampled answers).

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    cfg, st = ctx.config, setup(ctx)
    key = _Keys(st["jrec"])
    if "A" not in cfg.stages:
        return _result({}, key)
    m, words, layers, judge, run_dir, out = st["m"], st["words"], st["layers"], st["judge"], ctx.run_dir, ctx.out
    concepts, progress = concepts_of(ctx), ctx.progress
    summary: dict[str, Any] = {}
    scorer = DetectionScorer(m, words, inject_from=cfg.inject_from)
    log = run_dir.log("trials.jsonl", ("variant", "trial", "condition", "word", "layer", "strength"))
    done = log.done_keys()
    specs: list[tuple[TrialSpec, Any]] = []
    for v in cfg.variants:
        for t in sorted({*cfg.trials, *cfg.control_trials}):
            specs.append((TrialSpec(v, t, "none"), None))
        for L in layers:
            for s in cfg.strengths:
                for i, w in enumerate(words):
                    for t in cfg.trials:
                        specs.append((TrialSpec(v, t, "concept", w, L, s), ("concept", w)))
                        specs.append((TrialSpec(v, t, "random", w, L, s), ("random", w, i)))
    todo = [(s, d) for s, d in specs if log.key(asdict(s)) not in done]
    for spec, what in tqdm(todo, desc="injected-thought trials", disable=not progress or not todo):
        d: DirectionLike | None = None
        if what is not None:
            d = concepts[what[1]]
            if what[0] == "random":
                d = steering.random_like(d, seed=cfg.random_seed + 1000 * what[2])
        log.append(scorer.score(spec, d))
    rows = log.read()
    table = summarize_detection(rows, seed=cfg.seed)
    _write(out / "introspection_summary.jsonl", table)
    # identification controls and coherence, per cell
    ctrl = {v: [r for r in rows if r["variant"] == v and r["condition"] == "none"] for v in cfg.variants}
    refs = _coherence_refs(m, cfg)
    coh_log = run_dir.log("coherence.jsonl", ("layer", "strength", "condition"))
    coh_done = coh_log.done_keys()
    base_nll = None
    for L in layers:
        for s in [0.0] + list(cfg.strengths):
            for cond in (("none",) if s == 0 else ("concept", "random")):
                coh_key = {"layer": L, "strength": s, "condition": cond}
                if coh_log.key(coh_key) in coh_done:
                    continue
                vals = []
                for i, w in enumerate(words[:max(1, cfg.coherence_words)]):
                    d = concepts[w] if cond == "concept" else steering.random_like(concepts[w], seed=cfg.random_seed + 1000 * i)
                    if cond == "none":
                        vals = coherence_nll(m, refs)
                        break
                    vals += coherence_nll(m, refs, inject=partial(Injection, d, L, s))
                coh_log.append({**coh_key, "nll": bootstrap_ci(vals, seed=cfg.seed).to_dict()})
    coh = coh_log.read()
    base_nll = next((r["nll"]["value"] for r in coh if r["condition"] == "none"), None)
    grid = []
    for c in table:
        if c["condition"] == "none":
            continue
        ctl = next(x for x in table if x["variant"] == c["variant"] and x["condition"] == "none")
        inj = [r for r in rows if r["variant"] == c["variant"] and r["layer"] == c["layer"]
               and r["strength"] == c["strength"] and r["condition"] == c["condition"]]
        ident = identification_controls(inj, ctrl[c["variant"]], seed=cfg.seed)
        rnd = {(r["word"], r["trial"]): r["p_yes"] for r in rows if r["variant"] == c["variant"]
               and r["layer"] == c["layer"] and r["strength"] == c["strength"] and r["condition"] == "random"}
        vs_random = _by_word_ci([{"word": r["word"], "v": r["p_yes"] - rnd[(r["word"], r["trial"])]} for r in inj
                                 if (r["word"], r["trial"]) in rnd], "v", cfg.seed) if c["condition"] == "concept" else None
        nll = next((r["nll"] for r in coh if r["layer"] == c["layer"] and r["strength"] == c["strength"]
                    and r["condition"] == c["condition"]), None)
        grid.append({"variant": c["variant"], "layer": c["layer"], "layer_fraction": depth_of(c["layer"], m.n_layers),
                     "strength": c["strength"], "condition": c["condition"], "p_yes": c["p_yes"]["value"],
                     "p_yes_lo": c["p_yes"]["lo"], "p_yes_hi": c["p_yes"]["hi"], "claims": c["claims"]["value"],
                     "claims_lo": c["claims"]["lo"], "claims_hi": c["claims"]["hi"],
                     "control_p_yes": ctl["p_yes"]["value"], "control_claims": ctl["claims"]["value"],
                     "top1": ident["matched_top1"]["value"], "top1_lo": ident["matched_top1"]["lo"],
                     "top1_hi": ident["matched_top1"]["hi"], "wrong_concept_top1": ident["wrong_concept_top1"]["value"],
                     "no_injection_top1": ident["no_injection_top1"]["value"], "chance_top1": ident["chance"],
                     "logprob_shift": ident["logprob_shift"]["value"],
                     "p_yes_minus_random": None if vs_random is None else vs_random["value"],
                     "p_yes_minus_random_lo": None if vs_random is None else vs_random["lo"],
                     "p_yes_minus_random_hi": None if vs_random is None else vs_random["hi"],
                     "coherence_nll": None if nll is None else nll["value"], "coherence_nll_base": base_nll})
    _write(out / "introspection_grid.jsonl", grid)
    summary["detection"] = {"cells": table, "grid": grid, "coherence": coh}
    hl, hs = layer_at(m, cfg.headline_fraction), cfg.headline_strength
    for v in cfg.variants:
        cell = {c["condition"]: c for c in table if c["variant"] == v and c["layer"] in (hl, None)
                and c["strength"] in (hs, None)}
        if "concept" in cell:
            key(f"[{v}] P(yes) with injection (L{hl}, strength {hs})", cell["concept"]["p_yes"], "judge-free proxy")
            key(f"[{v}] detection claims, injected (greedy Yes>No)", cell["concept"]["claims"], "proxy detection rate")
            key(f"[{v}] false-positive claims, no injection", cell["none"]["claims"], "proxy FP rate")
            key(f"[{v}] P(yes) with a random vector", cell["random"]["p_yes"], "norm-matched control")
            g = next((x for x in grid if x["variant"] == v and x["layer"] == hl and x["strength"] == hs
                      and x["condition"] == "concept"), None)
            if g is not None and g["p_yes_minus_random"] is not None:
                key(f"[{v}] P(yes): concept - random vector (paired)", {"value": g["p_yes_minus_random"],
                    "lo": g["p_yes_minus_random_lo"], "hi": g["p_yes_minus_random_hi"], "n": len(words)},
                    "concept-specific part of the P(yes) change")
            key(f"[{v}] identification top-1 (of {len(words)})", cell["concept"]["top1"], f"chance {1 / len(words):.3f}")
    # sampled answers at the headline cell
    if cfg.n_samples > 0:
        _sample_stage(m, cfg, run_dir, concepts, words, hl, hs, judge, key)
    return _result(summary, key)


def intention_stage(ctx: runner.Context) -> dict[str, Any]:
    """B: prefill / intention -- "did you mean to say that?" with and without the prefilled word's concept.

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    cfg, st = ctx.config, setup(ctx)
    key = _Keys(st["jrec"])
    if "B" not in cfg.stages:
        return _result({}, key)
    m, words, run_dir, progress = st["m"], st["words"], ctx.run_dir, ctx.progress
    concepts = concepts_of(ctx)
    summary: dict[str, Any] = {}
    hl, hs = layer_at(m, cfg.headline_fraction), cfg.headline_strength
    isc = IntentionScorer(m)
    log = run_dir.log("intention.jsonl", ("sentence", "word", "condition", "layer", "strength"))
    done = log.done_keys()
    sents = list(SENTENCES[:cfg.n_sentences])
    istr = sorted({hs, *(cfg.intention_strengths or ())})
    intention_todo = []
    for k, sent in enumerate(sents):
        w = words[k % len(words)]
        wrong = words[(k + 1) % len(words)]
        for cond, d in (("none", None), ("matched", concepts[w]), ("wrong_concept", concepts[wrong]),
                        ("random", steering.random_like(concepts[w], seed=cfg.random_seed + 7 + k))):
            for s in istr if cond != "none" else [0.0]:
                row = {"sentence": sent, "word": w, "condition": cond, "layer": hl if cond != "none" else None,
                       "strength": s, "injected": None if cond in ("none", "random") else (w if cond == "matched" else wrong)}
                if log.key(row) not in done:
                    intention_todo.append((row, d))
    for row, d in tqdm(intention_todo, desc="prefill/intention trials", disable=not progress or not intention_todo):
        log.append({**row, **isc.score(row["sentence"], row["word"], direction=d, layer=row["layer"],
                                       strength=row["strength"])})
    rows = log.read()
    none = {r["sentence"]: r["p_disown"] for r in rows if r["condition"] == "none"}
    res: dict[str, Any] = {"none": bootstrap_ci(list(none.values()), seed=cfg.seed).to_dict(), "by_strength": {}}
    for s in istr:
        entry = {}
        for cond in ("matched", "wrong_concept", "random"):
            rs = [r for r in rows if r["condition"] == cond and r["strength"] == s]
            entry[cond] = bootstrap_ci([r["p_disown"] for r in rs], seed=cfg.seed).to_dict()
            entry[f"{cond}_minus_none"] = bootstrap_ci([r["p_disown"] - none[r["sentence"]] for r in rs],
                                                       seed=cfg.seed).to_dict()
        m_rows = {r["sentence"]: r["p_disown"] for r in rows if r["condition"] == "matched" and r["strength"] == s}
        w_rows = {r["sentence"]: r["p_disown"] for r in rows if r["condition"] == "wrong_concept" and r["strength"] == s}
        entry["matched_minus_wrong"] = bootstrap_ci([m_rows[k] - w_rows[k] for k in m_rows if k in w_rows],
                                                    seed=cfg.seed).to_dict()
        res["by_strength"][str(s)] = entry
    summary["intention"] = res
    key("P(disown prefilled word), no injection", res["none"], "judge-free")
    e = res["by_strength"][str(hs)]
    key(f"P(disown), matched concept injected (L{hl}, strength {hs})", e["matched"], "judge-free")
    key("P(disown): matched - none (paired)", e["matched_minus_none"], "< 0: disowns less when injected")
    key("P(disown): matched - wrong concept (paired)", e["matched_minus_wrong"], "specificity")
    return _result(summary, key)


def self_report_stage(ctx: runner.Context) -> dict[str, Any]:
    """C: self-rated alignment vs the persona direction's projection vs behaviour (steering, checkpoints).

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    cfg, st = ctx.config, setup(ctx)
    key = _Keys(st["jrec"])
    if "C" not in cfg.stages:
        return _result({}, key)
    part = {"self_report": _self_report_stage(st["m"], cfg, ctx.run_dir, key, ctx.progress,
                                              data_dir=ctx.resources.get("data_dir"))}
    return _result(part, key)


def risk_report_stage(ctx: runner.Context) -> dict[str, Any]:
    """D: self-reported risk vs the risk direction's projection vs P(risky) (steering, checkpoints).

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    cfg, st = ctx.config, setup(ctx)
    key = _Keys(st["jrec"])
    if "D" not in cfg.stages:
        return _result({}, key)
    part = {"self_report_risk": _risk_stage(st["m"], cfg, ctx.run_dir, key, ctx.progress,
                                            data_dir=ctx.resources.get("data_dir"))}
    return _result(part, key)


PARTS = ("concepts", "detection", "intention", "self_report", "risk_report")


def summary_stage(ctx: runner.Context) -> dict[str, Any]:
    """`summary.jsonl` and `summary.json` from every stage's part (a run of some letters keeps the other letters'
    numbers from earlier runs into the same directory) and the manifest's result.

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    out, run_dir = ctx.out, ctx.run_dir
    summary: dict[str, Any] = {}
    key_rows: list[dict[str, Any]] = []
    for name in PARTS:
        r = ctx.results.get(name) or {}
        summary.update(r.get("summary", {}))
        key_rows += r.get("key_rows", [])
    old_rows = [json.loads(x) for x in (out / "summary.jsonl").read_text().splitlines() if x.strip()] \
        if (out / "summary.jsonl").exists() else []
    names = {r["name"] for r in key_rows}
    key_rows = [r for r in old_rows if r["name"] not in names] + key_rows
    if (out / "summary.json").exists():
        summary = {**json.loads((out / "summary.json").read_text()), **summary}
    _write(out / "summary.jsonl", key_rows)
    _runs.write_json(out / "summary.json", summary, indent=1, default=_json_default)
    run_dir.write_manifest(result={r["name"]: r["value"] for r in key_rows})
    return summary
