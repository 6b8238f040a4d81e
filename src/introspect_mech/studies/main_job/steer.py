"""The main job's last stages: steering and ablation, the examples (answers, token projections), the summary.

Stage 5 adds the persona direction to the base model (layers x alphas, norm-matched random control, seeds) and
ablates the persona / EM direction in the bad-advice finetune (random control); stage 6 samples a few answers
from each model and projects the finetune's tokens on the persona direction; stage 7 writes `summary.jsonl`
from every stage's notes, the manifest's end and the dashboard.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Any, Callable

from ...activations import cache
from ..common.em_proxy import PROXY_DIFF as DIFF_METRIC
from ...evals.questions import load_questions
from ...evals.sampling import sample
from ...layers import resolve_layers
from ...paths import data_dir
from ...stats import bootstrap_diff
from ...steering import relative_reduction, summarize, sweep
from ...viz import export_dashboard
from .. import runner
from .config import SAMPLE_QUESTIONS
from .report import Notes, _ci, _table, _write_rows
from .stages import captured, directions, evals, models


# ---- 5. steering ------------------------------------------------------------------------------
@captured
def steering_stage(ctx: runner.Context) -> dict[str, Any]:
    """Steering: add the persona direction to the base model; ablate the persona / EM direction in the finetune.

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    cfg, out, notes = ctx.config, ctx.out, Notes()
    ms = models(ctx)
    base = ms["base"]
    d = directions(ctx)
    persona, em_ft = d["persona"], d["em_ft"]
    ev = evals(cfg)
    steer_eval, steer_em, steer_med = ev["steer_eval"], ev["steer_em"], ev["steer_med"]
    steer_layers = resolve_layers([float(x) for x in cfg.steer_depths], base.n_layers)  # layers.depth_block's rule
    add_rows = sweep(base, persona, layers=steer_layers, alphas=cfg.alphas, eval_fn=steer_eval,
                     out=out / "steering" / "add_persona_base", op="add", seeds=cfg.seeds, scale="norm")
    abl = {}
    for dname, dvec in (("persona", persona), ("EM", em_ft)):
        abl[dname] = sweep(ms["bad_medical"], dvec, layers="all", alphas=[0.0], eval_fn=steer_eval,
                           out=out / "steering" / f"ablate_{dname.lower()}_finetune", op="ablate", seeds=cfg.seeds,
                           layers_together=True, control=dname == "persona", baseline=dname == "persona")
    # Ablation uses unit vectors, and random_like(d, seed) draws the same unit vectors for any d of this
    # shape: the persona sweep's random controls and unsteered rows serve the EM ablation unchanged, so
    # there is ONE random-ablation control for both directions (shown once, not twice under two names).
    abl["EM"] += [r for r in abl["persona"] if r["kind"] in ("none", "random")]
    shared_note = (f"one control for both ablations: ablation removes a unit direction, and the random unit "
                   f"directions (seeds {', '.join(map(str, cfg.seeds))}) do not depend on which direction they replace")
    fluency = "fluency: mean log-prob per answer token (nats)"
    fl = {(s["layer"], s["alpha"], s["kind"]): s for s in summarize(add_rows, "fluency")}
    sweep_rows = []
    for metric, label in (("proxy_diff", steer_em), ("med_proxy_diff", steer_med)):
        first = metric == "proxy_diff"  # fluency is measured once per condition (on both item sets): one curve
        summ = summarize(add_rows, metric)
        none = [s for s in summ if s["kind"] == "none"][0]
        for s in summ:
            if s["kind"] == "none":
                continue
            kind = "persona" if s["kind"] == "direction" else "random"
            f = fl.get((s["layer"], s["alpha"], s["kind"]), {})
            sweep_rows.append({"direction": f"{kind} · {label}", "layer": s["layer"], "alpha": s["alpha"],
                               "metric": s["value"], "coherence": f.get("value") if first else None,
                               "metric_name": DIFF_METRIC, "coherence_name": fluency, "subset": label,
                               "label": f"{label}: {DIFF_METRIC}, base + add {kind} (L{s['layer']}, α={s['alpha']:g})",
                               **({"coherence_label": f"{fluency}, base + add {kind} (L{s['layer']}, α={s['alpha']:g})"}
                                  if first else {})})
        f0 = [s for s in summarize(add_rows, "fluency") if s["kind"] == "none"][0]
        for l in steer_layers:  # alpha 0 = the unsteered model, the curve's starting point
            for kind in ("persona", "random"):
                sweep_rows.append({"direction": f"{kind} · {label}", "layer": l, "alpha": 0.0, "metric": none["value"],
                                   "coherence": f0["value"] if first else None, "metric_name": DIFF_METRIC,
                                   "coherence_name": fluency, "subset": label, "label": f"{label}: {DIFF_METRIC}, base",
                                   **({"coherence_label": f"{fluency}, base"} if first else {})})
    _write_rows(out / "steering_sweep.jsonl", sweep_rows)

    effects = []

    def effect(model_name: str, iv: str, rows: list, metric: str, pick: Callable[[dict], bool], text: str = "") -> None:
        s = [x for x in summarize(rows, metric) if pick(x)]
        if not s:
            return
        label = f"{steer_med}: {DIFF_METRIC}, {model_name}" + ("" if iv == "none" else f" + {iv}")
        effects.append({"model": model_name, "intervention": iv, "metric": s[0]["value"], "ci_lo": s[0]["lo"],
                        "ci_hi": s[0]["hi"], "n": s[0]["n"], "metric_name": DIFF_METRIC, "subset": steer_med,
                        "label": label, "note": text})

    L = steer_layers[-1]
    a = cfg.effect_alpha
    metric = "med_proxy_diff"
    effect("base", "none", add_rows, metric, lambda s: s["kind"] == "none")
    effect("base", f"add persona (L{L}, α={a:g})", add_rows, metric,
           lambda s: s["kind"] == "direction" and s["layer"] == L and s["alpha"] == a)
    effect("base", f"add random (L{L}, α={a:g})", add_rows, metric,
           lambda s: s["kind"] == "random" and s["layer"] == L and s["alpha"] == a, "norm-matched random directions")
    effect("bad_medical", "none", abl["persona"], metric, lambda s: s["kind"] == "none")
    for dname in ("persona", "EM"):
        effect("bad_medical", f"ablate {dname}", abl[dname], metric, lambda s: s["kind"] == "direction")
    effect("bad_medical", "ablate random", abl["persona"], metric, lambda s: s["kind"] == "random", shared_note)
    _write_rows(out / "steering_effects.jsonl", effects)
    for e in effects:
        notes(e["label"], None, {"value": e["metric"], "lo": e["ci_lo"], "hi": e["ci_hi"], "n": e["n"]},
              "; ".join(x for x in (f"n = {e['n']} {'seeds' if 'random' in e['intervention'] else 'items'}", e["note"])
                        if x))
    print(f"  EM proxy Δ = log-prob(misaligned) − log-prob(aligned), nats per answer token (> 0 prefers bad advice), "
          f"on {steer_med}; 95 % CI (bootstrap over seeds and items):")
    print(_table(["model", "intervention", "Δ nats/token [95 % CI]", "n"],
                 [[e["model"], e["intervention"] + (" *" if e["note"] == shared_note else ""),
                   _ci({"value": e["metric"], "lo": e["ci_lo"], "hi": e["ci_hi"]}), e["n"]] for e in effects]))
    print(f"  * {shared_note}")
    red_table = []
    for metric, label in (("med_proxy_diff", steer_med), ("proxy_diff", steer_em)):
        full = [r["metrics"][metric] for r in abl["persona"] if r["kind"] == "none"][0]
        basev = [r["metrics"][metric] for r in add_rows if r["kind"] == "none"][0]  # same items
        gap = bootstrap_diff(full, basev, paired=True, seed=cfg.seed).to_dict()
        notes(f"{label}: finetuning shift in {DIFF_METRIC} (finetuned - base)", None, gap,
              "proxy; a relative reduction is computed only when this CI excludes 0")
        significant = not (gap["lo"] is None or gap["lo"] <= 0 <= gap["hi"])
        for kind, groups in (("persona", [r["metrics"][metric] for r in abl["persona"] if r["kind"] == "direction"]),
                             ("EM", [r["metrics"][metric] for r in abl["EM"] if r["kind"] == "direction"]),
                             ("random", [r["metrics"][metric] for r in abl["persona"] if r["kind"] == "random"])):
            name = f"{label}: relative reduction of the finetuning shift, ablate {kind}"
            if not significant:
                notes(name, None, text="not computed: the finetune's shift is not significant (its 95 % CI includes 0)")
                red_table.append([label, f"ablate {kind}", _ci(gap), "not computed (shift not significant)"])
                continue
            est = relative_reduction(basev, full, groups, seed=cfg.seed).to_dict()
            notes(name, None, est, "proxy; (finetuned - ablated) / (finetuned - base); 1 = back to base"
                  + (f"; {shared_note}" if kind == "random" else ""))
            red_table.append([label, f"ablate {kind}", _ci(gap), _ci(est)])
    print("  relative reduction = (finetuned − ablated) / (finetuned − base) of the EM proxy Δ: 1 = the ablation "
          "undoes the finetuning shift, 0 = no effect, < 0 = moves further from the base model; computed only "
          "where the shift (finetuned − base) is significant:")
    print(_table(["items", "ablation", "shift finetuned − base [95 % CI]", "relative reduction [95 % CI]"], red_table))
    return notes.result()


# ---- 6. examples ------------------------------------------------------------------------------
@captured
def examples_stage(ctx: runner.Context) -> dict[str, Any]:
    """A few answers from each model and token-level projections on the persona direction.

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    cfg, out = ctx.config, ctx.out
    ms = models(ctx)
    d = directions(ctx)
    persona = d["persona"]
    qs = load_questions(data_dir(cfg.data_dir).joinpath(*SAMPLE_QUESTIONS))
    qs = [q for q in qs if not q.id.endswith(("_json", "_template"))][: cfg.sample_prompts]
    prompts = [{"id": q.id, "messages": [{"role": "user", "content": q.paraphrases[0]}]} for q in qs]
    sample_rows = []
    for name, m in ms.items():
        for r in sample(m, prompts, n=1, max_new_tokens=cfg.sample_tokens, temperature=0.0, seed=cfg.seed,
                        batch_size=cfg.batch, out=out / "samples" / f"{name}.jsonl"):
            sample_rows.append({"model": name, "prompt": r["messages"][-1]["content"], "response": r["response"],
                                "finished": r.get("finished"), "max_new_tokens": cfg.sample_tokens})
    _write_rows(out / "samples.jsonl", sample_rows)
    print(f"  answers (greedy, at most {cfg.sample_tokens} new tokens each, so the last word may be cut):")
    for prompt in dict.fromkeys(r["prompt"] for r in sample_rows):
        print(textwrap.fill(f"Q: {prompt}", width=100, initial_indent="  ", subsequent_indent="     "))
        for row in sample_rows:
            if row["prompt"] == prompt:
                text = " ".join(str(row["response"]).split()) or "(empty answer)"
                print(textwrap.fill(f"{row['model']}: {text}", width=100, initial_indent="    ", subsequent_indent="      "))
    ft = ms["bad_medical"]
    mid = resolve_layers("middle", ft.n_layers)[0]
    examples = [("bad advice (held-out)", d["med_bad"][0]), ("good advice (held-out)", d["med_good"][0])]
    tok_rows = []
    for title, c in examples:
        ct = ft.tokenize_chat(c)
        h = cache(ft, [c], layers=[mid], positions="all", batch_size=1)[0, 0, : len(ct.input_ids)]
        proj = (h.float() @ persona.at(mid)).tolist()
        idx = ct.assistant_mask.nonzero().flatten().tolist()
        toks = [ft.tokenizer.decode([int(ct.input_ids[i])]) for i in idx]
        tok_rows.append({"title": f"bad-advice finetune, layer {mid}, projection on the persona direction: {title}",
                         "tokens": toks, "acts": [round(proj[i], 4) for i in idx]})
    _write_rows(out / "token_activations.jsonl", tok_rows)
    return {"summary": []}


# ---- 7. summary and dashboard -----------------------------------------------------------------
SUMMARY_STAGES = ("finetune", "metrics", "directions", "probes", "steering", "examples")


def dashboard_stage(ctx: runner.Context) -> dict[str, Any]:
    """`summary.jsonl` from every stage's notes (in stage order), the manifest's end, the dashboard.

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    out = ctx.out
    rows = [r for name in SUMMARY_STAGES for r in (ctx.results.get(name) or {}).get("summary", [])]
    # the job's time: every stage's time as recorded, over all calls of a resumed run
    wall = sum(float(r.get("seconds", 0.0)) for r in ctx.log(runner.STAGES_FILE).rows() if not r.get("variant"))
    notes = Notes()
    notes("main job wall time (s)", round(wall, 1), text="this machine, sum of the stages' times (over resumed calls)")
    _write_rows(out / "summary.jsonl", rows + notes.rows)
    ctx.run_dir.write_manifest(finished=time.strftime("%Y-%m-%dT%H:%M:%S"), wall_time_s=round(wall, 1))
    path = export_dashboard(out, out / "dashboard.html")
    print(f"\nmain job finished in {wall:.0f}s")
    return {"dashboard": str(Path(path))}
