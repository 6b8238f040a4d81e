"""Tell me about yourself (Betley, Bao et al. 2025): finetune on training-split A/B choices (risky vs
safe lotteries, ...), then compare behaviour on held-out questions with what the model says about
itself (0-100 scales, one-word answers, the German/French two-hop rule, backdoor awareness, other
personas, Make Me Say codewords). The protocol is `introspect_mech.studies.self_awareness`.

    python experiments/self_awareness_risk.py                                   # embedded, CPU preset
    python experiments/self_awareness_risk.py --conditions backdoor:win decorrelated:win --seeds 0
    python experiments/self_awareness_risk.py --preset paper --model Qwen/Qwen2.5-7B-Instruct --out runs/tmay_qwen7b
"""

import argparse
import json

from introspect_mech.studies import self_awareness as st


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu", choices=sorted(st.PRESETS))
    p.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    p.add_argument("--conditions", nargs="+", default=None,
                   help=f"{', '.join(st.CONDITIONS)}, backdoor:<kind>, decorrelated:<kind>, mms:<codeword>")
    p.add_argument("--seeds", nargs="+", type=int, default=None)
    p.add_argument("--n-train", type=int, default=None, help="training questions per condition (train split only)")
    p.add_argument("--n-test", type=int, default=None, help="held-out questions measured")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--n-samples", type=int, default=None, help="samples per paraphrase for sampled measurements")
    p.add_argument("--trigger-repeats", type=int, default=None, help="upstream: 10")
    p.add_argument("--trigger-other", choices=["normal", "safe"], default=None)
    p.add_argument("--in-sample", action="store_true", help="also report (labelled) in-sample behaviour")
    p.add_argument("--out", default="runs/self_awareness")
    a = p.parse_args()

    tup = lambda x: tuple(x) if x is not None else None  # noqa: E731
    over = {k: v for k, v in dict(model=a.model, conditions=tup(a.conditions), seeds=tup(a.seeds), n_train=a.n_train,
                                  n_test=a.n_test, epochs=a.epochs, lr=a.lr, n_samples=a.n_samples,
                                  trigger_repeats=a.trigger_repeats, trigger_other=a.trigger_other).items()
            if v is not None}
    if a.in_sample:
        over["in_sample"] = True
    cfg = st.preset(a.preset, **over)
    res = st.run_tmay(cfg, a.out)
    for name, comp in res["comparisons"].items():
        for metric in ("behaviour", "scale/risk_predisposition_scale", "behaviour_with_trigger"):
            if metric in comp:
                c = comp[metric]
                ci = c.get("item_ci") or c["seed_ci"]
                print(f"{name} {metric}: {ci['value']:+.3f} [{ci['lo']:+.3f}, {ci['hi']:+.3f}] "
                      f"(per seed A {[round(x, 3) for x in c['a_per_seed']]}, B {[round(x, 3) for x in c['b_per_seed']]})")
    bad = {c: s for c, by in res["format"].items() for s, f in by.items() if not f["ok"]}
    print("format check:", "ok" if not bad else json.dumps({c: list(res["format"][c][s]["flagged"]) for c, s in bad.items()}))
    try:
        from introspect_mech.viz import export_dashboard

        print(f"dashboard: {export_dashboard(a.out).resolve()}")
    except Exception as e:  # the dashboard is a convenience; the results are written already
        print(f"dashboard not written: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
