"""The helpers of the injected-thought study's stages (`stages.py`): the words, the coherence references, the
sampled answers of A, and the bodies of C (self-report vs the persona direction across steering strengths and
finetune checkpoints) and D (the same for risk)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from torch import Tensor

from ... import runs as _runs
from ... import steering
from ...direction import Direction
from ...models import LoadedModel
from ...stats import bootstrap_ci
from ..common.coherence import NEUTRAL_PROMPTS, reference_answers
from .analysis import (
    _by_word_ci,
    _key_track,
    self_report_point,
    track_correlations,
)
from .config import IntrospectionConfig
from .prompts import Message, detection_messages, layer_at
from .trials import (
    Injection,
    grade_answers,
    injection_start,
    render_prompt,
    sample_answers,
)
from ... import load_model
from ...activations import cache
from ...data import load as load_data
from ...evals.metrics import ALIGNMENT_QUESTIONS, load_em_pairs, scale_expectations
from ...evals.questions import load_questions
from ...finetune import preset
from ...paths import data_dir as _data_dir
from .concepts import load_words
from ...probes.linear import mean_diff
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


def _self_report_stage(m: LoadedModel, cfg: IntrospectionConfig, run_dir, key, progress: bool,
                       data_dir: Any = None) -> dict[str, Any]:

    out = run_dir.path
    pdir = out / "persona"
    if (pdir / "direction.safetensors").exists():
        d = Direction.load(pdir / "direction")
    else:
        pkw = dict(n_questions=cfg.persona_questions, n_instructions=cfg.persona_instructions,
                   max_new_tokens=cfg.persona_tokens, max_heldout=1, seed=cfg.seed, batch_size=cfg.batch_size,
                   progress=progress, **({"data_dir": data_dir} if data_dir is not None else {}))
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
        records = load_data(cfg.finetune_dataset, data_dir)[:6000]
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


RISK_QUESTIONS = "risk_predisposition_scale.yaml"  # stage D's self-report scale, under self_awareness/questions
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


def _risk_stage(m: LoadedModel, cfg: IntrospectionConfig, run_dir, key, progress: bool,
                data_dir: Any = None) -> dict[str, Any]:
    """Stage D: the self-awareness analogue of stage C -- self-reported risk (0-100 risk scale) vs the
    projection on a risk direction vs P(risky), across steering strengths of that direction and the
    checkpoints of a small finetune on risky lottery answers (train split only)."""

    out = run_dir.path
    steer_l, read_l = layer_at(m, cfg.steer_fraction), layer_at(m, cfg.read_fraction)
    train_items, test_items = lotteries("train", data_dir), lotteries("test", data_dir)[:cfg.n_lotteries]
    rdir = out / "risk_direction"
    if (rdir.with_suffix(".safetensors")).exists():
        d = Direction.load(rdir)
    else:
        d = risk_direction(m, train_items[:cfg.risk_direction_items], layers=sorted({steer_l, read_l}),
                           batch_size=cfg.batch_size)
        d.save(rdir)
    qfile = _data_dir(data_dir) / "self_awareness" / "questions" / RISK_QUESTIONS
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
