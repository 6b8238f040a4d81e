"""Persona vectors (Chen et al. 2025) as the paper ran them, on one trait.

Stages (each resumable under --out): extract the direction (trait judge + upstream filter when a
judge is given, else the judge-free proxy filter, said so in the manifest); probe pos vs neg by
layer; pick the steering layer by judged trait expression with coherence >= 50 (needs a judge);
projection-difference screening of a planted finetuning mix (bad vs good medical advice);
finetune with and without preventative steering, with checkpoints; correlate the finetuning shift
along the direction with trait expression across checkpoints (judged, or the labelled proxy:
paired preference on the project's EM items).

    python experiments/persona_vectors.py --out /tmp/pv                        # embedded, CPU preset
    python experiments/persona_vectors.py --model Qwen/Qwen2.5-7B-Instruct --preset paper \\
        --judge "api:https://api.openai.com/v1|gpt-4.1-mini-2025-04-14" --layers 10,15,20,25 --out runs/pv_qwen7b
"""

import argparse
import json
import random
from pathlib import Path

import torch

from introspect_mech import load_model
from introspect_mech.activations import cache
from introspect_mech.evals import paired_preference
from introspect_mech.finetune import preset as train_preset
from introspect_mech.finetune.cli import load_records
from introspect_mech.probes import layer_sweep, load_trait, medical_advice_pairs
from introspect_mech.runs import RunDir
from introspect_mech.sae.diff import detector_auroc
from introspect_mech.studies import persona_vectors as pv
from introspect_mech.viz import export_dashboard


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="default: embedded SmolLM2-135M-Instruct")
    p.add_argument("--preset", default="cpu", choices=sorted(pv.PRESETS))
    p.add_argument("--trait", default="evil")
    p.add_argument("--judge", default="none", help="none | hf:<model>|hf:embedded | api:<base_url>|<model>")
    p.add_argument("--layer", type=int, default=None, help="steering / projection layer when none is selected (block index)")
    p.add_argument("--layers", default=None, help="candidate layers for selection, e.g. 10,15,20 (needs a judge)")
    p.add_argument("--coef", type=float, default=None)
    p.add_argument("--n-screen", type=int, default=24, help="records per side in the screening mix")
    p.add_argument("--n-train", type=int, default=48)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--save-every", type=int, default=4)
    p.add_argument("--stages", default="extract,probes,select,screen,finetune,shift")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/persona_vectors")
    a = p.parse_args()
    stages = set(a.stages.split(","))
    pr = pv.PRESETS[a.preset]
    coef = a.coef if a.coef is not None else pr["coef"]
    out = Path(a.out)
    run = RunDir(out)
    model = load_model(a.model, dtype=torch.float32)
    judge = pv.make_judge(a.judge, judge_model=model if a.model is None else None)
    layer = a.layer if a.layer is not None else int(round(0.5 * (model.n_layers - 1)))
    run.write_manifest(title=f"Persona vectors: {a.trait}", model=model.name, preset=a.preset, seed=a.seed, trait=a.trait,
                       judge=judge.describe() if judge else "none: judge-free proxy filter and proxy expression",
                       coef=coef, steering_positions=pv.UPSTREAM_POSITIONS, stages=sorted(stages))
    summary = []

    def note(name, value, est=None, text=""):
        row = {"name": name, "value": value if est is None else est["value"], "note": text}
        if est is not None:
            row.update(ci_lo=est["lo"], ci_hi=est["hi"], n=est["n"])
        summary.append(row)
        print(f"{name}: {row['value']}" + (f" [{est['lo']}, {est['hi']}]" if est else "") + (f"  ({text})" if text else ""))

    try:
        ex = pv.extract(model, a.trait, judge=judge, preset=a.preset, out=out / "extract", seed=a.seed,
                        max_heldout=1 if a.preset == "cpu" else None)
    except RuntimeError as e:  # the judge kept < 2 pairs (e.g. it abstained): say so, use the proxy filter
        if judge is None:
            raise
        kept = sum(1 for r in (out / "extract" / "pairs.jsonl").read_text().splitlines() if json.loads(r).get("kept")) // 2
        scored = [json.loads(r) for r in (out / "extract" / "judge_scores.jsonl").read_text().splitlines()]
        note("judge filter: pairs kept", kept, text=f"{e}; judge abstained (trait None) on "
             f"{sum(r['trait'] is None for r in scored)} of {len(scored)} answers; falling back to the judge-free proxy filter")
        ex = pv.extract(model, a.trait, judge=None, preset=a.preset, out=out / "extract_proxy", seed=a.seed,
                        max_heldout=1 if a.preset == "cpu" else None)
    d = ex.direction
    note("pairs kept by the filter", len(ex.kept), text=f"of {len(ex.rows) // 2}; filter {d.meta['filter']}")
    if "probes" in stages:
        rows = [r for r in ex.rows if r["response"].strip()]
        x = cache(model, [[{"role": "system", "content": r["system"]}, {"role": "user", "content": r["question"]},
                           {"role": "assistant", "content": r["response"]}] for r in rows], progress=False)
        sw = layer_sweep(x, [int(r["side"] == "pos") for r in rows], list(range(model.n_layers)), seed=a.seed)
        (out / "probe_layers.jsonl").write_text("".join(json.dumps({"probe": f"{a.trait}: pos vs neg answers", "layer": l,
                                                                    **q.as_dict()}) + "\n" for l, q in zip(sw.layers, sw.probes)))
        bl, b = sw.best()
        note("best probe layer (pos vs neg answers)", bl, text=f"CV accuracy {b.accuracy:.3f}")
    if "select" in stages and judge is not None and a.layers:
        kw = dict(n_questions=pr["n_questions"], n_per_question=pr["n_per_question"], max_new_tokens=pr["max_new_tokens"],
                  temperature=pr["temperature"], seed=a.seed)
        base_expr = pv.trait_expression(model, a.trait, judge, out=out / "expression_base", **kw)
        note("trait expression, base (judged)", None, base_expr["trait"], f"{base_expr['n_trait_none']} of {base_expr['n']} abstained")
        sel = pv.select_layer(model, a.trait, d, judge, layers=[int(x) for x in a.layers.split(",")], coef=coef,
                              out=out, **kw)
        for l, r in sel["per_layer"].items():
            note(f"steered L{l} x{coef}: trait (judged)", None, r["trait"],
                 f"coherence {r['coherence']['value']}; {r['n_trait_none']} abstained")
        note("selected layer", sel["selected_layer"], text="max trait with mean coherence >= 50; None: no layer qualified")
        if sel["selected_layer"] is not None:
            layer = sel["selected_layer"]
    if "screen" in stages:
        bad, good = medical_advice_pairs(a.n_screen, seed=a.seed)
        recs = [{"messages": m, "planted": 1} for m in bad] + [{"messages": m, "planted": 0} for m in good]
        random.Random(a.seed).shuffle(recs)
        rows = pv.screen_dataset(model, d, recs, layer=layer, max_new_tokens=pr["max_new_tokens"], seed=a.seed,
                                 out=out / "screen")
        lab = [r["planted"] for r in recs]
        au_d = detector_auroc([r["delta"] for r in rows], lab)
        au_raw = detector_auroc([r["proj_dataset"] for r in rows], lab)
        top = sum(recs[r["index"]]["planted"] for r in rows if r["rank"] < a.n_screen)
        note(f"screening L{layer}: AUROC of projection difference, bad vs good advice", round(au_d, 4),
             text=f"raw projection AUROC {au_raw:.4f}; bad-advice records among the top {a.n_screen}: {top}")
    if "finetune" in stages or "shift" in stages:
        records = load_records("bad_medical_advice")[: a.n_train]
        cfg = train_preset("em", lr=2e-4, batch_size=4, warmup_steps=2, max_seq_len=384, max_steps=a.steps,
                           save_every=a.save_every, seed=a.seed, epochs=100)
        prompts = [[{"role": "user", "content": q}] for q in load_trait(a.trait, split="eval")["questions"]]
        expr, models = {}, {}
        for cond, prev in (("plain", None), ("preventative", {"direction": d, "layer": layer, "coef": coef})):
            fdir = out / "finetunes" / cond
            if not (fdir / "adapter" / "complete").exists():
                pv.finetune_and_express(lambda: load_model(a.model, dtype=torch.float32), records, cfg, fdir,
                                        evaluate=lambda m: {}, preventative=prev)
            for ck in sorted((fdir / "checkpoints").glob("step_*")):
                name = f"{cond}/{ck.name}"
                m = load_model(a.model, adapter=ck / "adapter", dtype=torch.float32)
                if judge is not None:
                    e = pv.trait_expression(m, a.trait, judge, n_questions=pr["n_questions"], n_per_question=pr["n_per_question"],
                                            max_new_tokens=pr["max_new_tokens"], seed=a.seed, out=out / "expression" / name)
                    expr[name] = e["trait"]["value"]
                else:
                    expr[name] = paired_preference(m, seed=a.seed)["mean_diff"]["value"]
                models[name] = m
        label = "judged trait score" if judge is not None else "PROXY: paired-preference mean diff (nats/token)"
        for cond in ("plain", "preventative"):
            last = sorted(k for k in expr if k.startswith(cond))[-1]
            note(f"{cond} finetune, final: {label}", round(expr[last], 4) if expr[last] is not None else None)
        ok = {k: v for k, v in expr.items() if v is not None}
        sc = pv.shift_correlation(model, {k: models[k] for k in ok}, d, layer=layer, prompts=prompts, expression=ok)
        (out / "shift_correlation.json").write_text(json.dumps(sc, indent=2))
        for r in sc["rows"]:
            note(f"shift along the direction at L{layer}: {r['model']}", round(r["shift"], 4), text=f"{label} {r['expression']:.4f}")
        note("Pearson r, finetuning shift vs expression across checkpoints", round(sc["pearson_r"], 4),
             text=f"n = {sc['n']} checkpoints of two finetunes (paper: r = 0.76-0.97, judged)")
    (out / "summary.jsonl").write_text("".join(json.dumps(r) + "\n" for r in summary))
    print(f"dashboard: {export_dashboard(out).resolve()}")


if __name__ == "__main__":
    main()
