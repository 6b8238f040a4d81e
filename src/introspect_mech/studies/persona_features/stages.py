"""Persona features as runner stages, in order: `finetunes` (bad / good medical advice, with checkpoints; a
judged screen's gate first), `answers` (the bad-advice finetune's answers to the EM questions, split by
question into the selection half and the detector's held-out half), `sae` (loaded, or trained here), `diff`
(step 1), `screen` (step 2), `detect` (step 3) and `summary` (`summary.jsonl`, the dashboard).

What the stages share is kept in this process (`setup(ctx)`); a stage resumed in a new process rebuilds it
from the run directory: the finetunes and the SAE from their finished directories, the answers from
`eval_answers.jsonl`, the diff's latents from `model_diff/latents.jsonl`, the screen from its table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ... import runs as _runs
from ...data.specs import load_records
from ...evals import judge_record as _jr
from ...evals import sample
from ...finetune import preset as train_preset
from ...models import load_model
from ...runs import JsonlLog
from ...sae import SAETrainConfig, load_local, load_release, train_sae
from ...viz import export_dashboard
from .. import runner
from ..common.em_questions import em_questions
from .screening import check_held_out, detect, diff_latents, em_judge_fn, proxy_fn, screen, stored_increases

STATE = "_persona_features"  # ctx.resources key: what this process already loaded
DATASETS = ("bad_medical_advice", "good_medical_advice")


def setup(ctx: runner.Context) -> dict[str, Any]:
    """The loader, the base model, the judge's gate record, the EM questions and the finetunes' directories.

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    st = ctx.resources.setdefault(STATE, {})
    if st:
        return st
    cfg, out, judge = ctx.config, ctx.out, ctx.resources.get("judge")
    load = lambda adapter=None: load_model(cfg.model, adapter=adapter, dtype=torch.float32, device=cfg.device)  # noqa: E731
    # the one gate: a judged screen (EM rates) only from a judge with a passing validation, unless allowed
    jrec = _jr.gate(judge, what="a judged EM rate (causal screening of SAE latents)",
                    allow_unvalidated=cfg.allow_unvalidated_judge)
    base = ctx.resources.get("base") or load()
    tuned = {name: out / "finetunes" / name for name in DATASETS}
    if cfg.bad_adapter:
        tuned["bad_medical_advice"] = Path(cfg.bad_adapter).parent
    st.update(load=load, jrec=jrec, judge=judge, base=base, tuned=tuned,
              qs=em_questions(data_dir=ctx.resources.get("data_dir")))
    return st


def _finetuned(ctx: runner.Context) -> Any:
    st = setup(ctx)
    if "ft" not in st:
        st["ft"] = st["load"](st["tuned"]["bad_medical_advice"] / "adapter")
    return st["ft"]


def finetunes_stage(ctx: runner.Context) -> dict[str, Any]:
    """The manifest; finetunes on bad medical advice (misaligned; or `bad_adapter`) and good advice (control).

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    from ...finetune import train  # resolved at call time (tests replace it)

    cfg, st, judge = ctx.config, setup(ctx), ctx.resources.get("judge")
    ctx.run_dir.write_manifest(
        title="Persona features: SAE diff, causal screening, detector", model=st["base"].name,
        preset=ctx.resources.get("preset_name"), layer=cfg.layer, sae=cfg.sae or "trained here", alpha=cfg.alpha,
        seed=cfg.seed, judge=judge.describe() if judge else "none: judge-free proxy (paired preference), no coherence",
        judge_validation=st["jrec"])
    tcfg = train_preset("em", lr=2e-4, batch_size=4, warmup_steps=2, max_seq_len=384, max_steps=cfg.steps,
                        save_every=cfg.save_every, seed=cfg.seed, epochs=100)
    for name in DATASETS:
        d = st["tuned"][name]
        if name == "bad_medical_advice" and cfg.bad_adapter:
            ctx.run_dir.write_manifest(bad_adapter=str(Path(cfg.bad_adapter).resolve()))
        elif not (d / "adapter" / "complete").exists():
            train(st["load"](), load_records(name, data_dir=ctx.resources.get("data_dir"))[: cfg.n_train], config=tcfg,
                  out_dir=d)
    return {name: str(d) for name, d in st["tuned"].items()}


def answers(ctx: runner.Context) -> tuple[list[Any], list[Any]]:
    """(the diff's conversations, the detector's held-out conversations): the finetune's answers, split by question
    (the diff, the SAE and the screen see one half, the detector is scored on the other).

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    st = setup(ctx)
    if "convs" not in st:
        cfg = ctx.config
        prompts = [pr_ for q in st["qs"] for pr_ in q.prompts()]
        f = ctx.out / "eval_answers.jsonl"
        if "answers" in ctx.results and f.exists():  # written by the finished answers stage (another process)
            order = {p["id"]: i for i, p in enumerate(prompts)}
            rows = sorted(JsonlLog(f, ("prompt_id", "sample")).read(), key=lambda r: (order[r["prompt_id"]], r["sample"]))
        else:
            rows = sample(_finetuned(ctx), prompts, n=cfg.n_eval, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                          out=f)
        qids = sorted({r["prompt_id"].rsplit("/", 1)[0] for r in rows})
        held = set(qids[1::2])
        conv = lambda r: r["messages"] + [{"role": "assistant", "content": r["response"]}]  # noqa: E731
        st["convs"] = [conv(r) for r in rows if r["response"].strip() and r["prompt_id"].rsplit("/", 1)[0] not in held]
        st["held_convs"] = [conv(r) for r in rows if r["response"].strip() and r["prompt_id"].rsplit("/", 1)[0] in held]
        st["split"] = {"selection_questions": [q for q in qids if q not in held], "detector_questions": sorted(held)}
    return st["convs"], st["held_convs"]


def answers_stage(ctx: runner.Context) -> dict[str, Any]:
    """The bad-advice finetune's answers to the EM questions (`eval_answers.jsonl`), split by question.

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    convs, held = answers(ctx)
    ctx.run_dir.write_manifest(**setup(ctx)["split"])
    return {"n_selection": len(convs), "n_detector": len(held)}


def sae_of(ctx: runner.Context) -> Any:
    """The SAE: loaded (`sae`: a sae-lens directory or release:sae_id), or trained here at `layer` (small, CPU).

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    st, cfg, out = setup(ctx), ctx.config, ctx.out
    if "sae" not in st:
        if cfg.sae and ":" in cfg.sae and not Path(cfg.sae).exists():
            release, sae_id = cfg.sae.split(":", 1)
            st["sae"] = load_release(release, sae_id)
        elif cfg.sae:
            st["sae"] = load_local(cfg.sae)
        elif (out / "sae" / "sae").exists():
            st["sae"] = load_local(out / "sae" / "sae")
        else:
            k, ddir = cfg.sae_texts, ctx.resources.get("data_dir")
            texts = [r["messages"] for r in load_records("good_medical_advice", data_dir=ddir)[6000:6000 + k]] + \
                    [r["messages"] for r in load_records("bad_medical_advice", data_dir=ddir)[6000:6000 + k]] + \
                    answers(ctx)[0]
            st["sae"] = train_sae(st["base"], layer=cfg.layer, data=texts,
                                  config=SAETrainConfig(expansion=4, k=16, epochs=3.0), out_dir=out / "sae").sae
    return st["sae"]


def sae_stage(ctx: runner.Context) -> dict[str, Any]:
    """The SAE of the base model at `layer` (loaded, or trained here on advice records and the answers).

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    sae = sae_of(ctx)
    return {"sae": ctx.config.sae or str(ctx.out / "sae" / "sae"), "layer": int(sae.layer)}


def diff_stage(ctx: runner.Context) -> dict[str, Any]:
    """Step 1: rank the SAE latents by their mean activation increase, base -> misaligned finetune.

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    convs, held = answers(ctx)
    st = setup(ctx)
    check_held_out(convs, held, {"base": st["base"]})  # before any work: the detector's answers are held out
    diff = diff_latents(st["base"], _finetuned(ctx), sae_of(ctx), convs, top_k=ctx.config.top_k, out=ctx.out)
    st["increases"], st["diff_summary"] = diff.increases, diff.summary
    return {"latents": [c.latent for c in diff.increases], "diff_summary": diff.summary}


def screen_stage(ctx: runner.Context) -> dict[str, Any]:
    """Step 2: steer the base model with each increased latent; judged EM rate, or the labelled proxy.

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    cfg, st = ctx.config, setup(ctx)
    judge = st["judge"]
    fn = (em_judge_fn(judge, st["qs"], n_per_question=1, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
          if judge is not None else proxy_fn())
    st["table"] = screen(st["base"], sae_of(ctx), ctx.results["diff"]["latents"], judge_fn=fn, alpha=cfg.alpha,
                         out=ctx.out)
    return {"table": st["table"]}


def detect_stage(ctx: runner.Context) -> dict[str, Any]:
    """Step 3: the best latent that passed the screen scores base / bad-advice / good-advice checkpoints.

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    st = setup(ctx)
    det = {"base": (st["base"], 0)}
    for name, lab in (("bad_medical_advice", 1), ("good_medical_advice", 0)):
        cks = sorted(c for c in (st["tuned"][name] / "checkpoints").glob("step_*") if (c / "adapter").exists())
        for ck in cks or [st["tuned"][name]]:
            det[f"{name}/{ck.name}"] = (st["load"](ck / "adapter"), lab)
    increases = st.get("increases") or stored_increases(ctx.out)
    table = st.get("table") or ctx.results["screen"]["table"]  # this process's, or the stored one
    diff_summary = st.get("diff_summary") or ctx.results["diff"]["diff_summary"]
    st["result"] = detect(table, increases, diff_summary, sae_of(ctx), detector_models=det,
                          detector_conversations=answers(ctx)[1], out=ctx.out)
    return {k: v for k, v in st["result"].items() if k not in ("table", "diff_summary")}


def summary_stage(ctx: runner.Context) -> dict[str, Any]:
    """`summary.jsonl` (every screened latent, the detector's AUROCs) and the dashboard.

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    st, judge = setup(ctx), ctx.resources.get("judge")
    table = st.get("table") or ctx.results["screen"]["table"]
    res = st.get("result") or ctx.results["detect"]
    jrec = st["jrec"]
    judged = _jr.fields(jrec) if judge is not None else {}  # the judge's record beside every judged row
    pre = _jr.tag(jrec) if judge is not None else ""
    summary = [{"name": f"{pre}screened latent {r['latent']} (rank {r['rank']})", "value": r.get("misaligned"),
                "note": f"coherence {r.get('coherence')}; alpha {r['alpha']}; "
                        + (f"judged EM rate ({judged['judge_label']})" if judge else
                           "PROXY: paired-preference mean diff, nats/token"), **judged}
               for r in table]
    if "detector" in res:
        dt = res["detector"]
        chosen = f"; latent chosen by the judged screen ({judged['judge_label']})" if judge else ""
        summary += [{"name": f"detector AUROC, latent {dt['latent']}, over models/checkpoints", "value": dt["auroc_models"],
                     "note": f"{dt['n_models']} models (misaligned = bad-advice checkpoints){chosen}", **judged},
                    {"name": f"detector AUROC, latent {dt['latent']}, over single answers", "value": dt["auroc_answers"],
                     "note": f"{dt['n_answers']} answers{chosen}", **judged}]
    _runs.write_jsonl(ctx.out / "summary.jsonl", summary, default=str)
    if ctx.progress:
        for r in summary:
            print(f"{r['name']}: {r['value']}  ({r['note']})")
    return {"summary": summary, "dashboard": str(export_dashboard(ctx.out))}
