"""The random-direction control for pv_05's preventative steering (docs/results.md, persona vectors on the 0.5B).

The study's exact finetune (its records, TrainConfig, block 12, coef 2.0, scale "norm") with
steering.random_like(persona direction, seed) in place of the persona direction, for seeds 1 and 2; then the same
proxy expression (evals.paired_preference, seed 0; every expression in float32, as the study measures its
checkpoints), paired over the 40 items against the base and the study's plain and preventative finetunes (their
expressions recomputed here).

Since session 10 the study's own `controls` stage does this (and the base comparison of pv_expr_diffs.py); this
script is what produced the session-9 numbers in docs/results.md.

Run from the directory that holds the study's run `pv_05/` (session 9: /work/runs/qwen, code a088c86); it writes
`pv_05_random_prev/` (the two finetunes) and `pv_05_random_prev.json` there:
    python experiments/qwen_analyses/pv_random_prev.py
"""
import json
from pathlib import Path
import torch
import introspect_mech as im
from introspect_mech.data.specs import load_records
from introspect_mech.direction import Direction
from introspect_mech.evals import paired_preference
from introspect_mech.finetune import preset as train_preset
from introspect_mech.stats import bootstrap_diff
from introspect_mech.steering import random_like
from introspect_mech.studies.persona_vectors.measures import finetune_and_express
name, out = "qwen2.5-coder-0.5b-instruct", Path("pv_05_random_prev")
d = Direction.load("pv_05/extract/direction")
records = load_records("bad_medical_advice")[:48]
tcfg = train_preset("em", lr=2e-4, batch_size=4, warmup_steps=2, max_seq_len=384, max_steps=12, save_every=4, seed=0,
                    epochs=100)
diffs = {}
for k, ad in [("base", None), ("plain", "pv_05/finetunes/plain/adapter"), ("preventative", "pv_05/finetunes/preventative/adapter")]:
    m = im.load_model(name, adapter=ad, dtype=torch.float32) if ad else im.load_model(name, dtype=torch.float32)
    diffs[k] = [r["diff"] for r in paired_preference(m, seed=0)["rows"]]
    del m
res = {}
for s in (1, 2):
    fdir = out / f"random{s}"
    if not (fdir / "adapter" / "complete").exists():
        finetune_and_express(lambda: im.load_model(name, dtype=torch.float32), records, tcfg, fdir, evaluate=lambda m: {},
                             preventative={"direction": random_like(d, seed=s), "layer": 12, "coef": 2.0})
    m = im.load_model(name, adapter=fdir / "adapter", dtype=torch.float32)
    r = paired_preference(m, seed=0)
    diffs[f"random{s}"] = [x["diff"] for x in r["rows"]]
    res[f"random{s}"] = r["mean_diff"]
    for b in ("base", "plain", "preventative"):
        res[f"random{s}_minus_{b}"] = bootstrap_diff(diffs[f"random{s}"], diffs[b], paired=True, seed=0).to_dict()
    print(s, json.dumps({k: v for k, v in res.items() if k.startswith(f"random{s}")}), flush=True)
mean_rand = [sum(v) / 2 for v in zip(diffs["random1"], diffs["random2"])]
for b in ("base", "plain", "preventative"):
    res[f"random_mean_minus_{b}"] = bootstrap_diff(mean_rand, diffs[b], paired=True, seed=0).to_dict()
print(json.dumps({k: v for k, v in res.items() if k.startswith("random_mean")}))
json.dump(res, open("pv_05_random_prev.json", "w"), indent=1)
