"""The body of the injected-thought study: protocol A-B (concept vectors, the detection / identification /
intention grid, sampled answers), C (self-report vs the persona direction across steering strengths and
finetune checkpoints) and D (the same for risk)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from torch import Tensor

from ... import runs as _runs
from ... import steering
from ...direction import Direction, DirectionLike
from ...layers import depth_of
from ...models import LoadedModel
from ...stats import bootstrap_ci
from ..common.coherence import NEUTRAL_PROMPTS, reference_answers
from .analysis import (
    _by_word_ci,
    _key_track,
    identification_controls,
    self_report_point,
    summarize_detection,
    track_correlations,
)
from .config import IntrospectionConfig
from .prompts import JUDGE_THRESHOLD, SENTENCES, VARIANTS, Message, detection_messages, layer_at
from .trials import (
    DetectionScorer,
    Injection,
    IntentionScorer,
    TrialSpec,
    coherence_nll,
    grade_answers,
    injection_start,
    render_prompt,
    sample_answers,
)
from ... import load_model
from ...activations import cache
from ...data import load as load_data
from ...evals import judge_record as _jr
from ...evals.metrics import ALIGNMENT_QUESTIONS, load_em_pairs, scale_expectations
from ...evals.questions import load_questions
from ...finetune import preset
from ...paths import data_dir
from ...probes.concepts import concept_vectors, load_words
from ...probes.linear import mean_diff
from ...runs import RunDir, json_sha256
from ..common.ab_pairs import lotteries, risk_behaviour
from ..common.persona import persona_direction


def _resolve_words(spec: Any, n: int | None) -> list[str]:

    words = load_words(spec) if isinstance(spec, (str, os.PathLike)) else list(spec)
    return list(words[:n] if n else words)


def _write(path: Path, rows: Sequence[dict]) -> None:
    _runs.write_jsonl(path, rows, default=_json_default)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Tensor):
        return o.tolist()
    return str(o)


def _introspection(out: str | os.PathLike, config: IntrospectionConfig | None = None, *, model: LoadedModel | None = None,
        judge: Any = None, progress: bool = True) -> dict[str, Any]:
    """Run the study into the run directory `out` (resumable: per-trial rows are appended to JSONL
    logs and skipped on a rerun).

    Writes `trials.jsonl`, `introspection_summary.jsonl`, `introspection_grid.jsonl`, `coherence.jsonl`,
    `samples.jsonl` (A), `intention.jsonl` (B), `self_report_points*.jsonl` and
    `self_report_track.jsonl` (C, D), `summary.jsonl` (the headline numbers) and `summary.json`.

    Args:
        out: the run directory.
        config: the study's options (default `IntrospectionConfig()`); `stages` picks A-D.
        model: an already loaded model (default: `load_model(config.model)`); stages C and D's
            finetunes always start from `config.model`.
        judge: a 0-100 judge of the sampled answers (`JudgeOptions.build()`; None: keyword proxy only).
        progress: show progress bars.

    Returns:
        The summary dict (merged with an earlier run's stages in the same directory), also written
        to `out/summary.json`.

    Raises:
        ValueError: `stages` has a letter outside "ABCD", or a variant is unknown.
    """
    from tqdm.auto import tqdm


    cfg = config or IntrospectionConfig()
    for stage in cfg.stages:
        if stage not in "ABCD":
            raise ValueError(f"stages must be letters from 'ABCD', got {cfg.stages!r}")
    for v in cfg.variants:
        if v not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {v!r}")
    # the one gate: judged rates (stage A's graded answers) only from a judge with a passing validation, unless allowed
    jrec = _jr.gate(judge if "A" in cfg.stages else None, what="judged detection / identification rates",
                    allow_unvalidated=cfg.allow_unvalidated_judge)
    m = model or load_model(cfg.model)
    m.model.eval()
    words = _resolve_words(cfg.words, cfg.n_words)
    baseline = load_words(cfg.baseline)
    run_dir = RunDir(out)
    out = run_dir.path
    run_dir.write_manifest(
        title="Injected-thought introspection and self-report vs internal state", stage="introspection",
        model=m.name, adapter=m.meta.get("adapter"), config=cfg.to_dict(), words=words,
        words_sha256=json_sha256(words), baseline_sha256=json_sha256(baseline), seeds={"study": cfg.seed,
        "random_controls": cfg.random_seed}, judge=(judge.describe() if judge is not None and hasattr(judge, "describe")
                                                   else "none: judge-free scores (P(yes), identification rank)"),
        judge_threshold=JUDGE_THRESHOLD if judge is not None else None, judge_validation=jrec)
    summary: dict[str, Any] = {"model": m.name, "n_layers": m.n_layers, "words": words}
    key_rows: list[dict[str, Any]] = []

    def key(name: str, est: Any, note: str = "") -> None:
        extra: dict[str, Any] = {}
        if note == "judge":  # a judged number: its judge's validation record travels with it
            name, extra = _jr.tag(jrec) + name, _jr.fields(jrec)
            note = f"judge ({extra['judge_label']})"
        if isinstance(est, dict):
            key_rows.append({"name": name, "value": est.get("value"), "ci_lo": est.get("lo"), "ci_hi": est.get("hi"),
                             "n": est.get("n"), "note": note, **extra})
        else:
            key_rows.append({"name": name, "value": est, "note": note, **extra})

    layers = sorted({layer_at(m, f) for f in cfg.layer_fractions} | {layer_at(m, cfg.headline_fraction)})
    concepts = None
    if "A" in cfg.stages or "B" in cfg.stages:
        concepts = concept_vectors(m, words, baseline, layers=layers, positions=cfg.concept_positions,
                                   batch_size=cfg.batch_size)
        summary["concept_norms"] = {w: dict(zip(map(str, d.layers), d.norms.tolist())) for w, d in concepts.items()}

    # ---- A: detection / identification -------------------------------------------------------------
    if "A" in cfg.stages:
        assert concepts is not None  # computed above for stages A and B
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

    # ---- B: prefill / intention ---------------------------------------------------------------------
    if "B" in cfg.stages:
        assert concepts is not None  # computed above for stages A and B
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

    # ---- C: self-report vs internal state -----------------------------------------------------------
    if "C" in cfg.stages:
        summary["self_report"] = _self_report_stage(m, cfg, run_dir, key, progress)
    if "D" in cfg.stages:
        summary["self_report_risk"] = _risk_stage(m, cfg, run_dir, key, progress)

    # a run of some stages keeps the other stages' numbers from earlier runs into the same directory
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


def _log_checkpoint_points(model_name: str | None, base: LoadedModel, ckpts: Sequence[tuple[int, Path | None]],
                           log: Any, done: set, source: str, point: Callable[[LoadedModel], dict[str, Any]]) -> None:
    """Append one row per finetune checkpoint not yet in `log`: `point(model at that checkpoint)`
    (step 0, path None: the base model itself), labelled with `source` and the step."""
    from ...models import load_model

    for step, path in ckpts:
        r = {"source": source, "label": f"step {step}", "x": float(step)}
        if log.key(r) in done:
            continue
        mm = base if path is None else load_model(model_name, adapter=str(path))
        mm.model.eval()
        log.append({**r, "adapter": None if path is None else str(path), **point(mm)})


def _finetune_checkpoints(model_name: str | None, records: Sequence[dict], tcfg: Any,
                          fdir: Path) -> list[tuple[int, Path | None]]:
    """Finetune a fresh copy of the model into `fdir` unless that finished already (resumes after a
    kill); returns (0, None) for the untrained model plus (step, adapter dir) for every checkpoint."""
    from ...finetune import train

    if not (fdir / "adapter" / "complete").exists():
        ft = load_model(model_name)
        train(ft, records, tcfg, fdir)
        del ft
    return [(0, None)] + sorted((int(p.name.split("_")[1]), p / "adapter") for p in (fdir / "checkpoints").glob("step_*")
                                if (p / "adapter").exists())


def _coherence_refs(model: LoadedModel, cfg: IntrospectionConfig) -> list[list[Message]]:

    return reference_answers(model, NEUTRAL_PROMPTS[:cfg.coherence_prompts], max_new_tokens=32,
                             batch_size=cfg.batch_size)


def _sample_stage(m, cfg, run_dir, concepts, words, hl, hs, judge, key) -> None:
    log = run_dir.log("samples.jsonl", ("variant", "condition", "word", "sample"))
    done = log.done_keys()
    for v in cfg.variants:
        msgs = detection_messages(cfg.trials[0], v)
        p = render_prompt(m, msgs)
        start = injection_start(p, cfg.inject_from)
        jobs = [("none", None, None)] + [("concept", w, concepts[w]) for w in words[:cfg.sample_words]]
        for cond, w, d in jobs:
            if all(log.key({"variant": v, "condition": cond, "word": w, "sample": k}) in done for k in range(cfg.n_samples)):
                continue
            inj = None if d is None else Injection(d, hl, hs, start)
            texts = sample_answers(m, msgs, inject=inj, n=cfg.n_samples, max_new_tokens=cfg.max_new_tokens,
                                   seed=cfg.seed + (0 if w is None else words.index(w) + 1))
            rows = [{"variant": v, "condition": cond, "word": w, "sample": k, "layer": hl if d is not None else None,
                     "strength": hs if d is not None else None, "answer": t, "response": t,
                     "model": f"{v} / {cond}" + (f" ({w})" if w else ""), "prompt": msgs[-1]["content"]}
                    for k, t in enumerate(texts)]
            log.extend(grade_answers(rows, judge))
    rows = log.read()
    for v in cfg.variants:
        injected = [r for r in rows if r["variant"] == v and r["condition"] == "concept"]
        key(f"[{v}] sampled answers mentioning the injected word", _by_word_ci(injected, "mentions_word", cfg.seed),
            "keyword proxy, not a judge")
        if judge is not None:
            ctl = [r for r in rows if r["variant"] == v and r["condition"] == "none"]
            key(f"[{v}] judged detection rate, injected", _by_word_ci(injected, "detected", cfg.seed), "judge")
            key(f"[{v}] judged false-positive rate", bootstrap_ci([r.get("detected") for r in ctl]).to_dict(), "judge")
            key(f"[{v}] judged identification rate", _by_word_ci(injected, "identified", cfg.seed), "judge")


def _self_report_stage(m: LoadedModel, cfg: IntrospectionConfig, run_dir, key, progress: bool) -> dict[str, Any]:

    out = run_dir.path
    pdir = out / "persona"
    if (pdir / "direction.safetensors").exists():
        d = Direction.load(pdir / "direction")
    else:
        pkw = dict(n_questions=cfg.persona_questions, n_instructions=cfg.persona_instructions,
                   max_new_tokens=cfg.persona_tokens, max_heldout=1, seed=cfg.seed, batch_size=cfg.batch_size,
                   progress=progress)
        try:
            d = persona_direction(m, cfg.persona_trait, filter=cfg.persona_filter, out=pdir, **pkw)
        except RuntimeError as e:  # the filter kept < 2 pairs: fall back to every pair, and say so
            print(f"persona direction: {e}; falling back to filter=None")
            d = persona_direction(m, cfg.persona_trait, filter=None, out=out / "persona_unfiltered", **pkw)
            d.save(pdir / "direction")
    steer_l, read_l = layer_at(m, cfg.steer_fraction), layer_at(m, cfg.read_fraction)
    items = load_em_pairs()
    if cfg.n_em_items:  # balanced over themes
        by: dict[str, list] = {}
        for it in items:
            by.setdefault(it.get("theme", ""), []).append(it)
        per = max(1, cfg.n_em_items // max(len(by), 1))
        items = [it for t in sorted(by) for it in by[t][:per]]
    kw: dict[str, Any] = dict(read_layer=read_l, questions=ALIGNMENT_QUESTIONS, items=items, batch_size=cfg.batch_size)
    log = run_dir.log("self_report_points.jsonl", ("source", "label"))
    done = log.done_keys()
    for a in cfg.alphas:
        r = {"source": "steering", "label": f"alpha={a:g}", "x": float(a)}
        if log.key(r) in done:
            continue
        with steering.add(m, d, layers=[steer_l], alpha=float(a), scale="norm", positions="all"):
            log.append({**r, **self_report_point(m, d, **kw)})
    # finetune checkpoints
    if cfg.finetune_steps > 0:
        fdir = out / "finetune"
        records = load_data(cfg.finetune_dataset)[:6000]
        tcfg = preset("em", n_examples=cfg.finetune_examples, max_steps=cfg.finetune_steps, lr=cfg.finetune_lr,
                      batch_size=cfg.finetune_batch, warmup_steps=cfg.finetune_warmup, save_every=cfg.finetune_every,
                      keep_checkpoints=True, seed=cfg.seed, max_seq_len=512, progress=progress)
        _log_checkpoint_points(cfg.model, m, _finetune_checkpoints(cfg.model, records, tcfg, fdir), log, done,
                               "finetune", lambda mm: self_report_point(mm, d, **kw))
    rows = log.read()
    res: dict[str, Any] = {"steer_layer": steer_l, "read_layer": read_l, "direction": d.meta.get("method"),
                           "trait": cfg.persona_trait, "persona_filter": d.meta.get("filter"),
                           "persona_pairs_kept": d.meta.get("n_kept"), "persona_pairs": d.meta.get("n_pairs")}
    for src in ("steering", "finetune"):
        pts = sorted([r for r in rows if r["source"] == src], key=lambda r: r["x"])
        if len(pts) >= 3:
            res[src] = {"points": [{k: p[k] for k in ("label", "x", "self_report", "mass", "projection", "behaviour")}
                                   for p in pts], "correlations": track_correlations(pts)}
            _key_track(key, src, res[src]["correlations"])
    _write_track(run_dir)
    return res


TRACK_LOGS = ("self_report_points.jsonl", "self_report_points_risk.jsonl")


def _write_track(run_dir) -> None:
    """`self_report_track.jsonl` (the dashboard's rows) from every self-report log present."""
    track = []
    for name in TRACK_LOGS:
        for r in run_dir.log(name).read():
            track.append({k: r.get(k) for k in ("source", "label", "x", "self_report", "mass", "projection", "behaviour")})
    _write(run_dir.path / "self_report_track.jsonl", track)


def risk_direction(model: LoadedModel, items: Sequence[dict], *, layers: Sequence[int], batch_size: int = 8) -> Direction:
    """Mean difference of the residual stream over the answer letter when the risky vs the safe
    option of the same lotteries is answered (`studies.common.ab_pairs.lotteries` items).

    Args:
        model: a `LoadedModel`.
        items: lottery items (`messages`, `risky`, `safe`).
        layers: the decoder blocks of the direction.
        batch_size: prompts per forward pass.

    Returns:
        The risky-minus-safe mean-difference `Direction` (`meta["method"] = "risk_mean_diff"`).
    """

    conv = lambda it, side: it["messages"] + [{"role": "assistant", "content": it[side]}]  # noqa: E731
    pos = cache(model, [conv(it, "risky") for it in items], layers=list(layers), positions="response_mean",
                batch_size=batch_size, progress=False)
    neg = cache(model, [conv(it, "safe") for it in items], layers=list(layers), positions="response_mean",
                batch_size=batch_size, progress=False)
    d = mean_diff(pos, neg, list(layers), model=model.name, recipe="risky minus safe answer, same lotteries",
                  n=len(items))
    d.meta["method"] = "risk_mean_diff"
    return d


def risk_report_point(model: LoadedModel, direction: Direction, *, read_layer: int, questions: Sequence[str],
                      items: Sequence[dict], batch_size: int = 8) -> dict[str, Any]:
    """Self-reported risk-seeking (exact expected 0-100 + mass), projection of the self-report
    prompts' last token on the risk direction at `read_layer`, and behaviour P(risky) on lotteries.

    Args:
        model: a `LoadedModel` (steered or finetuned as the point requires).
        direction: the risk direction (must cover `read_layer`).
        read_layer: the block whose last-prompt-token activation is projected.
        questions: the risk-predisposition questions (0-100 scale).
        items: held-out lottery items of the behaviour P(risky).
        batch_size: prompts per forward pass.

    Returns:
        `self_report`, `self_report_per_question`, `mass`, `projection`, `projection_per_question`,
        `behaviour` (P(risky)) and `mass_ab` (probability on the answer letters).
    """

    sr = scale_expectations(model, list(questions))
    acts = cache(model, [[{"role": "user", "content": q}] for q in questions], layers=[read_layer],
                 positions="last_prompt", batch_size=batch_size, progress=False)[:, 0].float()
    proj = (acts @ direction.at(read_layer)).tolist()
    beh = risk_behaviour(model, list(items))
    exp = [r.expected for r in sr]
    return {"self_report": float(np.mean([e for e in exp if e is not None])) if any(e is not None for e in exp) else None,
            "self_report_per_question": exp, "mass": float(np.mean([r.mass for r in sr])),
            "mass_per_question": [float(r.mass) for r in sr],
            "projection": float(np.mean(proj)), "projection_per_question": proj,
            "behaviour": beh["p_risky"]["value"], "mass_ab": beh["mass_ab"]}


def _risk_stage(m: LoadedModel, cfg: IntrospectionConfig, run_dir, key, progress: bool) -> dict[str, Any]:
    """Stage D: the self-awareness analogue of stage C -- self-reported risk (0-100 risk scale) vs the
    projection on a risk direction vs P(risky), across steering strengths of that direction and the
    checkpoints of a small finetune on risky lottery answers (train split only)."""

    out = run_dir.path
    steer_l, read_l = layer_at(m, cfg.steer_fraction), layer_at(m, cfg.read_fraction)
    train_items, test_items = lotteries("train"), lotteries("test")[:cfg.n_lotteries]
    rdir = out / "risk_direction"
    if (rdir.with_suffix(".safetensors")).exists():
        d = Direction.load(rdir)
    else:
        d = risk_direction(m, train_items[:cfg.risk_direction_items], layers=sorted({steer_l, read_l}),
                           batch_size=cfg.batch_size)
        d.save(rdir)
    qfile = data_dir() / "self_awareness" / "questions" / "risk_predisposition_scale.yaml"
    questions = [p for q in load_questions(qfile) for p in q.paraphrases]
    kw: dict[str, Any] = dict(read_layer=read_l, questions=questions, items=test_items, batch_size=cfg.batch_size)
    log = run_dir.log("self_report_points_risk.jsonl", ("source", "label"))
    done = log.done_keys()
    for a in cfg.alphas:
        r = {"source": "steering (risk)", "label": f"alpha={a:g}", "x": float(a)}
        if log.key(r) not in done:
            with steering.add(m, d, layers=[steer_l], alpha=float(a), scale="norm", positions="all"):
                log.append({**r, **risk_report_point(m, d, **kw)})
    if cfg.finetune_steps > 0:
        fdir = out / "finetune_risky"
        held = {it["messages"][0]["content"] for it in test_items}
        records = [{"messages": it["messages"] + [{"role": "assistant", "content": it["risky"]}]} for it in train_items
                   if it["messages"][0]["content"] not in held]
        tcfg = preset("tmay_risk", n_examples=min(cfg.finetune_examples, len(records)), max_steps=cfg.finetune_steps,
                      lr=cfg.finetune_lr, batch_size=cfg.finetune_batch, warmup_steps=cfg.finetune_warmup,
                      save_every=cfg.finetune_every, keep_checkpoints=True, seed=cfg.seed, max_seq_len=512,
                      progress=progress)
        _log_checkpoint_points(cfg.model, m, _finetune_checkpoints(cfg.model, records, tcfg, fdir), log, done,
                               "finetune (risk)", lambda mm: risk_report_point(mm, d, **kw))
    rows = log.read()
    res: dict[str, Any] = {"steer_layer": steer_l, "read_layer": read_l, "direction": d.meta.get("method"),
                           "n_questions": len(questions), "n_lotteries": len(test_items)}
    for src in ("steering (risk)", "finetune (risk)"):
        pts = sorted([r for r in rows if r["source"] == src], key=lambda r: r["x"])
        if len(pts) >= 3:
            res[src] = {"points": [{k: p[k] for k in ("label", "x", "self_report", "mass", "projection", "behaviour",
                                                      "mass_ab")} for p in pts], "correlations": track_correlations(pts)}
            _key_track(key, src, res[src]["correlations"])
    _write_track(run_dir)
    return res
