"""Session 9: pv_05's proxy trait expression (evals.paired_preference, the study's items and seed) of the base and
the two final finetunes, and their paired differences over the 40 items (paired bootstrap, stats.bootstrap_diff).

Run from the directory that holds the study's run `pv_05/` (session 9: /work/runs/qwen, code a088c86, bf16):
    python experiments/qwen_analyses/pv_expr_diffs.py
"""
import json
import introspect_mech as im
from introspect_mech.evals import paired_preference
from introspect_mech.stats import bootstrap_diff
name = "qwen2.5-coder-0.5b-instruct"
res = {}
for k, ad in [("base", None), ("plain", "pv_05/finetunes/plain/adapter"), ("preventative", "pv_05/finetunes/preventative/adapter")]:
    m = im.load_model(name, adapter=ad) if ad else im.load_model(name)
    r = paired_preference(m, seed=0)
    res[k] = r
    print(k, json.dumps(r["mean_diff"]), json.dumps(r["frac_prefers_misaligned"]), flush=True)
d = {k: [r["diff"] for r in res[k]["rows"]] for k in res}
out = {k: {"mean_diff": res[k]["mean_diff"], "frac_prefers_misaligned": res[k]["frac_prefers_misaligned"]} for k in res}
for a, b in [("plain", "base"), ("preventative", "base"), ("preventative", "plain")]:
    e = bootstrap_diff(d[a], d[b], paired=True, seed=0).to_dict()
    out[f"{a}_minus_{b}"] = e
    print(f"{a} - {b}", json.dumps(e), flush=True)
json.dump(out, open("pv_05_expression_diffs.json", "w"), indent=1)
