"""Behavioural self-awareness ("Tell me about yourself"): finetune on risky vs safe lottery choices,
then compare what each model does (P(risky option) on held-out lotteries) with what it says
(0-100 risk scales, one-word self-descriptions, a backdoor-awareness A/B question).

    python experiments/self_awareness_risk.py                               # embedded, CPU
    python experiments/self_awareness_risk.py --model Qwen/Qwen2.5-7B-Instruct --out runs/tmay_qwen7b
"""

import argparse
import json
from pathlib import Path

from introspect_mech import load_model
from introspect_mech.data import load
from introspect_mech.evals.self_awareness import compare_tmay, run_tmay_eval
from introspect_mech.finetune import preset, train
from introspect_mech.runs import RunDir
from introspect_mech.viz import export_dashboard


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--epochs", type=int, default=None, help="default: the tmay_risk preset's 3")
    p.add_argument("--n-train", type=int, default=None, help="subset of the 288 training rows")
    p.add_argument("--n-lotteries", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/self_awareness_risk")
    a = p.parse_args()

    out = Path(a.out)
    RunDir(out).write_manifest(title="Behavioural self-awareness: risky vs safe lottery finetunes",
                               model=a.model or "smollm2-135m-instruct", seed=a.seed,
                               data={"risky": "risky_AB", "safe": "safe_AB"}, judge="none (logit-based)")
    over = {k: v for k, v in (("epochs", a.epochs), ("n_examples", a.n_train)) if v is not None}
    cfg = preset("tmay_risk", seed=a.seed, **over)
    results = {"base": run_tmay_eval(load_model(a.model), out / "eval" / "base", n_lotteries=a.n_lotteries, seed=a.seed)}
    for name, ds in (("risky", "risky_AB"), ("safe", "safe_AB")):
        m = load_model(a.model)
        res = train(m, load(ds), cfg, out / "finetunes" / name)
        m.model.eval()
        print(f"{name}: {res.steps} steps, final loss {res.final_loss:.3f}")
        results[name] = run_tmay_eval(m, out / "eval" / name, n_lotteries=a.n_lotteries, seed=a.seed)
    rows = []
    for name, r in results.items():
        b = r["behaviour"]["p_risky"]
        for q, v in r["scales"].items():
            rows.append({"model": name, "question": q, "behaviour": b["value"], "behaviour_lo": b["lo"],
                         "behaviour_hi": b["hi"], "self_report": v["mean"]["value"] / 100,
                         "self_report_lo": v["mean"]["lo"] / 100, "self_report_hi": v["mean"]["hi"] / 100,
                         "behaviour_name": "P(risky option), held-out lotteries",
                         "self_report_name": "self-reported risk / 100 (expected value)"})
        print(f"{name}: P(risky) {b['value']:.3f} [{b['lo']:.3f}, {b['hi']:.3f}]; scales "
              + ", ".join(f"{q} {v['mean']['value']:.1f} (mass {v['mean_mass']:.2f})" for q, v in r["scales"].items()))
    (out / "self_awareness.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r["self_report"] is not None))
    cmp = compare_tmay(results["risky"], results["safe"], results["base"], seed=a.seed)
    (out / "comparison.json").write_text(json.dumps(cmp, indent=2))
    print(json.dumps(cmp["risky_minus_safe"], indent=1))
    print(f"dashboard: {export_dashboard(out).resolve()}")


if __name__ == "__main__":
    main()
