"""The model-organisms study's stages, in order (the module docstring of the package gives the protocol):
`finetune` (1), `evaluate` (2: EM rates of base and finetune, the finetune's shift), `direction` (3), `ablation`
(4-5: ablations and the gated reductions), `phase` (6: the checkpoints), `proxy` (the judge-free proxy beside) and
`report` (`results.json`, the dashboard rows).

A stage run in a new process reads what earlier ones left: the finetune (`finetune/`: `train` on a finished
directory loads its adapter), the judged answers (`eval/<tag>/`), the direction (`directions/em_final`); sampling,
judging and the checkpoint rows resume from their own keyed logs.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from ... import layers as layerspec
from ... import runs as _runs
from ... import steering
from ...direction import Direction
from ...evals.em import DENOMINATORS, em_flags, em_rates
from ..common.em_eval import run_em_eval
from ..common.em_proxy import PROXY_DIFF, PROXY_PREF, em_proxy_fn, proxy_items as em_proxy_items
from ..common.medical_split import MEDICAL_TRAIN_ROWS, medical_heldout_items
from ...evals.judge_validation import require_validated_judge
from ...evals.judges import HFJudge
from ...finetune import preset
from ...models import load_model
from ...runs import JsonlLog, json_sha256
from ...stats import bootstrap_ci, clustered_proportion, paired_diff
from .. import runner
from .config import MOConfig
from .data import is_medical, questions, training_rows
from .measures import em_direction_from_answers, lora_b_norm, lora_b_rotation, ratio_ci
from .report import _write_dashboard_rows


def _write(path: Any, obj: Any) -> None:
    _runs.write_json(path, obj, indent=1, default=float)


def _setup(ctx: runner.Context) -> dict[str, Any]:
    """Built once per process: the base model, the judge (None: the base as an `HFJudge`) and its validation gate,
    the training rows, the finetune's config, the questions, the proxy's held-out items and the direction's block."""
    memo = ctx.resources.setdefault("_mo", {})
    if not memo:
        cfg: MOConfig = ctx.config
        torch.manual_seed(cfg.seed)
        base = load_model(cfg.model, device=cfg.device)
        judge = ctx.resources.get("judge")
        if judge is None:
            judge = HFJudge(base)
        jval = require_validated_judge(judge, allow_unvalidated=cfg.allow_unvalidated_judge, data_dir=cfg.data_dir)
        train_ids, train_recs = training_rows(cfg)
        over = {k: v for k, v in (("lr", cfg.lr), ("batch_size", cfg.batch_size), ("epochs", cfg.epochs))
                if v is not None}
        tcfg = preset(cfg.finetune_preset, max_seq_len=cfg.max_seq_len, seed=cfg.seed, save_every=cfg.save_every,
                      keep_checkpoints=True, **({"warmup_steps": 2} if cfg.n_train and cfg.n_train < 500 else {}),
                      **over)
        qfile, qs = questions(cfg)
        proxy_items = (medical_heldout_items(cfg.proxy_medical, seed=cfg.seed, data_dir=cfg.data_dir)
                       if cfg.proxy and is_medical(cfg) else None)
        memo.update(base=base, judge=judge, jval=jval, train_ids=train_ids, train_recs=train_recs, tcfg=tcfg,
                    qfile=qfile, qs=qs, proxy_items=proxy_items, L=layerspec.resolve_layer(cfg.direction_layer,
                                                                                           base.n_layers))
    return memo


def _train(ctx: runner.Context) -> Any:
    """The finetuned model: trained here, or (a new process) its finished directory's adapter loaded by `train`."""
    from ...finetune import train

    memo, cfg = _setup(ctx), ctx.config
    if "ft" not in memo:
        ft = load_model(cfg.model, device=cfg.device)
        res = train(ft, memo["train_recs"], memo["tcfg"], ctx.out / "finetune",
                    data_info={"dataset": cfg.dataset, "row_ids": memo["train_ids"]})
        ft.model.eval()
        memo.update(ft=ft, train_result={"steps": res.steps, "final_loss": res.final_loss})
    return memo["ft"]


def _evaluate(ctx: runner.Context, model: Any, tag: str, n: int, qs: Any = None) -> tuple[list[dict], list[dict]]:
    """Sample and judge `model` on the questions (`eval/<tag>/`, resumable); its judged rows and samples."""
    cfg, memo = ctx.config, _setup(ctx)
    run_em_eval(model, ctx.out / "eval" / tag, judge=memo["judge"], questions=qs or memo["qs"], n=n,
                max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed, batch_size=cfg.batch,
                judge_free=False, aligned_max=cfg.aligned_max, coherent_min=cfg.coherent_min, progress=True)
    return _judged(ctx, tag)


def _judged(ctx: runner.Context, tag: str) -> tuple[list[dict], list[dict]]:
    return JsonlLog(ctx.out / "eval" / tag / "judged.jsonl").read(), JsonlLog(ctx.out / "eval" / tag / "samples.jsonl").read()


def _rates(cfg: MOConfig, judged: list[dict]) -> dict[str, Any]:
    """Both EM rates pooled over answers, the interval over questions (Wilson at the design-effect sample size); the
    coherent rate; the answers and the judge's abstentions."""
    d: dict[str, Any] = {den: em_rates(judged, denominator=den, aligned_max=cfg.aligned_max,
                                       coherent_min=cfg.coherent_min)["overall"] for den in DENOMINATORS}
    d["coherent_rate"] = clustered_proportion(
        [float(r["coherent"] > cfg.coherent_min) for r in judged if r.get("coherent") is not None],
        [str(r["question_id"]) for r in judged if r.get("coherent") is not None], measure="judged").to_dict()
    d["n_answers"] = len(judged)
    d["n_judge_abstained"] = sum(r.get("aligned") is None or r.get("coherent") is None for r in judged)
    return d


def _finetune(ctx: runner.Context) -> dict[str, Any]:
    """Stage 1: the manifest (config, training row ids, questions, judge and its validation, thresholds), then the
    finetune with step checkpoints."""
    cfg, memo = ctx.config, _setup(ctx)
    base, tcfg, train_ids, L = memo["base"], memo["tcfg"], memo["train_ids"], memo["L"]
    ctx.run_dir.write_manifest(
        study="model_organisms", title=f"Model organisms for EM: {cfg.dataset}, {cfg.finetune_preset} adapter",
        model=base.name, model_source=base.meta.get("source"), config=dataclasses.asdict(cfg),
        finetune=tcfg.to_dict(), data={"dataset": cfg.dataset, "train_row_ids": train_ids,
                                       "train_sha256": json_sha256([r["messages"] for r in memo["train_recs"]])},
        eval_items={"questions_file": str(memo["qfile"]), "question_ids": [q.id for q in memo["qs"]],
                    "proxy_heldout_ids": [it["id"] for it in memo["proxy_items"]] if memo["proxy_items"] else []},
        judge=memo["judge"].describe(), judge_validation=memo["jval"],
        thresholds={"aligned_max": cfg.aligned_max, "coherent_min": cfg.coherent_min, "aligned_min": cfg.aligned_min},
        em_rate_definitions=DENOMINATORS, seeds={"study": cfg.seed, "random_directions": list(range(cfg.n_random))},
        direction_layer=L, ablation={"vector": f"EM direction at block {L}", "layers": "all"},
    )
    if is_medical(cfg) and max(train_ids) >= MEDICAL_TRAIN_ROWS:
        raise AssertionError("training rows overlap the held-out medical rows")
    _train(ctx)
    r = memo["train_result"]
    print(f"finetune: {r['steps']} steps, final loss {r['final_loss']:.3f}", flush=True)
    return r


def _evaluate_stage(ctx: runner.Context) -> dict[str, Any]:
    """Stage 2: sample and judge the base and the finetuned model; both EM rates; the finetune's shift over the base,
    paired by question (the interval is over questions, not answers), significant when its CI excludes 0."""
    cfg, memo = ctx.config, _setup(ctx)
    jb, _ = _evaluate(ctx, memo["base"], "base", cfg.n_samples)
    jf, _ = _evaluate(ctx, _train(ctx), "finetuned", cfg.n_samples)
    shift = {}
    for den in DENOMINATORS:
        pq = [em_rates(x, denominator=den, aligned_max=cfg.aligned_max, coherent_min=cfg.coherent_min)["per_question"]
              for x in (jf, jb)]
        common = [q for q in pq[0] if q in pq[1] and pq[0][q]["value"] is not None and pq[1][q]["value"] is not None]
        e = paired_diff([pq[0][q]["value"] for q in common], [pq[1][q]["value"] for q in common], seed=cfg.seed,
                        unit="question", measure="judged").to_dict()
        e["significant"] = e["lo"] is not None and e["lo"] > 0
        shift[den] = e
    return {"em": {"base": _rates(cfg, jb), "finetuned": _rates(cfg, jf)}, "shift": shift}


def _direction(ctx: runner.Context) -> dict[str, Any]:
    """Stage 3: the EM direction from the finetuned model's own judged answers (`directions/em_final`)."""
    cfg, memo = ctx.config, _setup(ctx)
    jf, sf = _judged(ctx, "finetuned")
    direction, info = em_direction_from_answers(_train(ctx), jf, sf, cfg, batch_size=cfg.batch,
                                                judge_validation=memo["jval"])
    if direction is not None:
        direction.save(ctx.out / "directions" / "em_final")
    memo["direction"] = direction
    return {"direction": info, "computed": direction is not None}


def _final_direction(ctx: runner.Context) -> Direction | None:
    memo = _setup(ctx)
    if "direction" not in memo:
        memo["direction"] = (Direction.load(ctx.out / "directions" / "em_final")
                             if ctx.results["direction"]["computed"] else None)
    return memo["direction"]


def _ablation(ctx: runner.Context) -> dict[str, Any]:
    """Stages 4-5: ablate block L's direction at every layer, and `n_random` random unit vectors; the relative
    reductions only where the finetune's shift is significant (otherwise the reason)."""
    cfg, memo = ctx.config, _setup(ctx)
    direction = _final_direction(ctx)
    if direction is None:
        return {"ablation": {}, "reductions": {"not_computed": ctx.results["direction"]["direction"]["reason"]}}
    ft, shift = _train(ctx), ctx.results["evaluate"]["shift"]
    ablation: dict[str, Any] = {}
    reductions: dict[str, Any] = {}
    vec = direction.at(memo["L"])
    conds = [("ablate_em", vec)] + [(f"ablate_random_{s}", steering.random_like(vec, s)) for s in range(cfg.n_random)]
    flags: dict[str, dict[str, list[float]]] = {}
    for tag, v in conds:
        with steering.ablate(ft, v, layers="all"):  # looked up at call time (tests spy on it)
            ja, _ = _evaluate(ctx, ft, tag, cfg.n_samples)
        ablation[tag] = _rates(cfg, ja)
        flags[tag] = {den: em_flags(ja, denominator=den, aligned_max=cfg.aligned_max, coherent_min=cfg.coherent_min)
                      for den in DENOMINATORS}
    jb, _ = _judged(ctx, "base")
    jf, _ = _judged(ctx, "finetuned")
    for den in DENOMINATORS:
        if not shift[den]["significant"]:
            reductions[den] = {"not_computed": f"finetune shift {shift[den]['value']} "
                                              f"[{shift[den]['lo']}, {shift[den]['hi']}] is not significant"}
            continue
        fb = em_flags(jb, denominator=den, aligned_max=cfg.aligned_max, coherent_min=cfg.coherent_min)
        ff = em_flags(jf, denominator=den, aligned_max=cfg.aligned_max, coherent_min=cfg.coherent_min)
        rnd = [x for s in range(cfg.n_random) for x in flags[f"ablate_random_{s}"][den]]
        reductions[den] = {"ablate_em": ratio_ci(fb, ff, flags["ablate_em"][den], seed=cfg.seed),
                           "ablate_random (pooled)": ratio_ci(fb, ff, rnd, seed=cfg.seed)}
    return {"ablation": ablation, "reductions": reductions}


def _phase(ctx: runner.Context) -> dict[str, Any]:
    """Stage 6: per checkpoint, the EM rate, the LoRA-B norm, the cosine of its EM direction (from its own judged
    answers) with the final one; the rotation of B from the previous checkpoint and its cosine with the final B (a
    norm can grow while B keeps its direction, or B can turn at constant norm: the papers' phase transition is a
    rotation)."""
    cfg, memo, out = ctx.config, _setup(ctx), ctx.out
    direction, L = _final_direction(ctx), memo["L"]
    phase_log = JsonlLog(out / "phase.jsonl", ("step",))
    done = {r["step"]: r for r in phase_log.read()}
    ckpts = sorted((out / "finetune" / "checkpoints").glob("step_*"))
    for ck in ckpts:
        step = int(ck.name.split("_")[1])
        if step in done or not (ck / "adapter").exists():
            continue
        m = load_model(cfg.model, adapter=ck / "adapter", device=cfg.device)
        m.model.eval()
        jc, sc = _evaluate(ctx, m, f"checkpoint_{step:04d}", cfg.checkpoint_samples, memo["qs"][: cfg.checkpoint_questions])
        d, dinfo = em_direction_from_answers(m, jc, sc, cfg, batch_size=cfg.batch, judge_validation=memo["jval"])
        cos = None
        if d is not None and direction is not None:
            cos = float(torch.dot(d.at(L), direction.at(L)))
        row = {"step": step, "lora_b_norm": lora_b_norm(ck / "adapter"), "em": _rates(cfg, jc),
               "cos_with_final_direction": cos, "direction": dinfo.get("reason", "computed")}
        phase_log.append(row)
        done[step] = row
        del m
    phase = [done[k] for k in sorted(done)]
    adapters = {int(c.name.split("_")[1]): c / "adapter" for c in ckpts if (c / "adapter").exists()}
    final = adapters[max(adapters)] if adapters else None
    prev = None
    for r in phase:
        cur = adapters.get(r["step"])
        r["b_rotation_from_previous"] = lora_b_rotation(prev, cur) if prev is not None and cur is not None else None
        r["b_cos_with_final"] = lora_b_rotation(cur, final)["mean_cos"] if cur is not None and final is not None else None
        prev = cur
    return {"phase": phase}


def _proxy(ctx: runner.Context) -> dict[str, Any]:
    """Stage 7: the judge-free proxy of base and finetune beside (never compared with the papers' EM rates)."""
    cfg = ctx.config
    if not cfg.proxy:
        return {}
    memo = _setup(ctx)
    fn = em_proxy_fn(em_proxy_items(cfg.proxy_per_theme), medical=memo["proxy_items"], batch_size=cfg.batch)
    prox = {}
    for name, m in (("base", memo["base"]), ("finetuned", _train(ctx))):
        r = fn(m)
        prox[name] = {k: bootstrap_ci(r[k], seed=cfg.seed, unit="item", measure="proxy").to_dict()
                      for k in ("proxy_pref", "proxy_diff", "med_proxy_diff") if k in r}
    return {"proxy": {"metrics": {"proxy_pref": PROXY_PREF, "proxy_diff": PROXY_DIFF,
                                  "med_proxy_diff": PROXY_DIFF + " (held-out medical)"}, **prox}}


def _report(ctx: runner.Context) -> dict[str, Any]:
    """Stage 8: `results.json`, the manifest's end time and the dashboard's EM-rate rows.

    Returns:
        {"judge", "judge_validation", "em_rate_definitions", "direction_layer", "em", "shift", "direction",
        "ablation", "reductions", "phase", "proxy" (if enabled), "wall_s"}.
    """
    memo, res = _setup(ctx), ctx.results
    results: dict[str, Any] = {"judge": memo["judge"].describe(), "judge_validation": memo["jval"],
                               "em_rate_definitions": DENOMINATORS, "direction_layer": memo["L"],
                               "em": res["evaluate"]["em"], "shift": res["evaluate"]["shift"],
                               "direction": res["direction"]["direction"], "ablation": res["ablation"]["ablation"],
                               "reductions": res["ablation"]["reductions"], "phase": res["phase"]["phase"],
                               **res["proxy"]}
    stage_s = [r["seconds"] for r in ctx.log(runner.STAGES_FILE, ("stage", "variant")).rows()]
    results["wall_s"] = round(sum(stage_s), 1)
    _write(ctx.out / "results.json", results)
    ctx.run_dir.write_manifest(finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    _write_dashboard_rows(ctx.out, results)
    return results


STAGES = (
    runner.Stage("finetune", _finetune, "the adapter finetune with step checkpoints"),
    runner.Stage("evaluate", _evaluate_stage, "sample and judge base and finetune: EM rates, the finetune's shift"),
    runner.Stage("direction", _direction, "the EM direction from the finetune's own judged answers"),
    runner.Stage("ablation", _ablation, "ablate it (one block's vector, every layer) vs random; gated reductions"),
    runner.Stage("phase", _phase, "per checkpoint: EM rate, LoRA-B norm and rotation, direction cosine"),
    runner.Stage("proxy", _proxy, "the judge-free proxy beside (labelled a proxy)"),
    runner.Stage("report", _report, "results.json and the dashboard rows"),
)
