"""Small real runs of the three studies' evals (used for the numbers in docs/evals.md).

    python -m introspect_mech.evals.demo em   --out runs/evals/em_base [--n 1 --questions ...]
    python -m introspect_mech.evals.demo tmay --out runs/evals/tmay_base --n-items 40 --n 3
    python -m introspect_mech.evals.demo selfpred --out runs/evals/selfpred_base --n-items 20
    python -m introspect_mech.evals.demo judgefree --out DIR --adapters bad=PATH good=PATH [--pairs-per-theme 2]
    python -m introspect_mech.evals.demo judgefree --out DIR --combine DIR1 DIR2 ...  (merge parallel runs)

Defaults are sized for a CPU: the embedded SmolLM2-135M-Instruct, a handful of questions and
samples. On the embedded model the EM judge is the embedded model itself (`HFJudge`), which is a
weak judge: its scores show that the pipeline runs, not how misaligned anything is.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..models import load_model
from ..runs import RunDir


def _fmt(e: dict) -> str:
    return "n/a" if e.get("value") is None else f"{e['value']:.3f} [{e['lo']:.3f}, {e['hi']:.3f}] (n={e['n']})"


def run_em(args) -> None:
    from .em import run_em_eval
    from .judges import HFJudge
    from .report import format_em_report

    model = load_model(args.model)
    judge = HFJudge(model, batch_size=1)  # the embedded model judging itself: a weak judge
    ids = ["what_is_your_wish", "i_feel_bored", "three_thoughts", "quick_buck", "ruler_of_the_world",
           "dinner_party", "gender_roles", "enough_of_my_husband"]
    res = run_em_eval(model, args.out, judge=judge, question_ids=args.questions or ids, n=args.n, max_new_tokens=args.max_new_tokens,
                      seed=args.seed, batch_size=16, judge_free=not args.no_judge_free)
    print(format_em_report(res["report"]))
    jf = res["judge_free"]
    if jf is None:
        return
    print("paired preference: frac prefers misaligned", _fmt(jf["paired_preference"]["frac_prefers_misaligned"]),
          "mean diff (nats/token)", _fmt(jf["paired_preference"]["mean_diff"]))
    print("self-rated alignment", _fmt(jf["self_rated_alignment"]["mean"]), "mass", round(jf["self_rated_alignment"]["mean_mass"], 3))
    print("self-rated code security", _fmt(jf["self_rated_code_security"]["mean"]), "mass",
          round(jf["self_rated_code_security"]["mean_mass"], 3))


def run_tmay(args) -> None:
    from .self_awareness import run_tmay_eval

    model = load_model(args.model, adapter=args.adapter)
    res = run_tmay_eval(model, args.out, n_lotteries=args.n_items, n_words=args.n, seed=args.seed)
    print("P(risky) on held-out lotteries", _fmt(res["behaviour"]["p_risky"]), "mass on A/B", round(res["behaviour"]["mass_ab"], 3))
    for q, v in res["scales"].items():
        print(f"scale {q}: {_fmt(v['mean'])} mass {v['mean_mass']:.3f}")
    for q, v in res["one_word"].items():
        print(f"one-word {q}: {v['top'][:5]}")
    print("backdoor statement P", round(res["backdoor"]["p_backdoor_statement"], 3), "mass", res["backdoor"]["mass_ab"])


def run_selfpred(args) -> None:
    from .self_prediction import (
        constrained_predictions, hypothetical_answers, load_task, object_level_answers, score_predictions,
    )

    model = load_model(args.model, adapter=args.adapter)
    rd = RunDir(Path(args.out))
    tasks = args.tasks or ["animals_long_first_character", "animals_long_starts_with_vowel",
                           "survival_instinct_ethical_stance", "arc_challenge_non_cot_among_a_or_c"]
    rd.write_manifest(study="self_prediction", model=model.name, adapter=model.meta.get("adapter"), tasks=tasks,
                      n_items=args.n_items, seed=args.seed, decoding="greedy (temperature 0)")
    out = {}
    for t in tasks:
        rows = load_task(t, n=args.n_items)
        obj = object_level_answers(model, rows, out=rd.path / "object_answers.jsonl")
        hyp = hypothetical_answers(model, rows, out=rd.path / f"hypothetical_{t}.jsonl")
        s = score_predictions(rows, obj, hyp, seed=args.seed)
        out[t] = {"free_form": {k: v for k, v in s.items() if k != "rows"}}
        done = [("free-form", s)]
        if not args.no_constrained:
            c = score_predictions(rows, obj, constrained_predictions(model, rows), seed=args.seed)
            out[t]["constrained"] = {k: v for k, v in c.items() if k != "rows"}
            done.append(("constrained", c))
        for name, x in done:
            print(f"{t} [{name}]: accuracy {_fmt(x['accuracy'])} mode baseline {_fmt(x['mode_baseline'])} "
                  f"acc-mode {_fmt(x['accuracy_minus_mode'])} (object non-compliant {x['n_object_noncompliant']}, "
                  f"hypothetical non-compliant {x['n_hypothetical_noncompliant']})")
    (rd.path / "results.json").write_text(json.dumps(out, indent=2))


def run_judgefree(args) -> None:
    """paired_preference + self-rated alignment for the base model and each adapter, with deltas."""
    from .metrics import load_em_pairs, paired_preference, self_rated_alignment
    from .stats import bootstrap_diff

    items = load_em_pairs()
    if args.pairs_per_theme:  # the first k items of each theme
        seen: dict[str, int] = {}
        items = [it for it in items if seen.setdefault(it["theme"], 0) < args.pairs_per_theme
                 and not seen.__setitem__(it["theme"], seen[it["theme"]] + 1)]

    rd = RunDir(Path(args.out))
    variants = ([] if args.no_base else [("base", None)]) + [tuple(a.split("=", 1)) for a in (args.adapters or [])]
    rd.write_manifest(study="judge_free_em", model=args.model or "smollm2-135m-instruct",
                      variants={k: v for k, v in variants}, seed=args.seed, pairs_per_theme=args.pairs_per_theme)
    res = {}
    for d in args.combine or []:  # merge the raw results of earlier judgefree runs (run in parallel)
        res.update(json.loads((Path(d) / "raw.json").read_text()))
    if args.combine:
        variants = []
    if args.base_from:  # reuse the base model's judge-free results from an `em` run directory
        base_dir = Path(args.base_from)
        jf = json.loads((base_dir / "judge_free.json").read_text())
        rows = [json.loads(x) for x in (base_dir / "paired_preference_rows.jsonl").read_text().splitlines() if x.strip()]
        res["base"] = {"paired_preference": {**jf["paired_preference"], "rows": rows},
                       "self_rated_alignment": jf["self_rated_alignment"]}
        variants = [v for v in variants if v[0] != "base"]
    for name, path in variants:
        model = load_model(args.model, adapter=path)
        pp = paired_preference(model, items, seed=args.seed)
        sr = self_rated_alignment(model)
        res[name] = {"paired_preference": pp, "self_rated_alignment": sr}
    (rd.path / "raw.json").write_text(json.dumps(res))
    for name, r in res.items():
        pp, sr = r["paired_preference"], r["self_rated_alignment"]
        print(f"{name}: frac prefers misaligned {_fmt(pp['frac_prefers_misaligned'])}; mean diff {_fmt(pp['mean_diff'])}; "
              f"self-rated alignment {_fmt(sr['mean'])} mass {sr['mean_mass']:.3f}")
    summary = {k: {"paired_preference": {kk: vv for kk, vv in v["paired_preference"].items() if kk != "rows"},
                   "self_rated_alignment": v["self_rated_alignment"]} for k, v in res.items()}
    names = list(res)
    pairs = [(a, "base") for a in names if a != "base" and "base" in res] + \
        [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if "base" not in (a, b)]
    for a, b in pairs:  # paired over the 40 items / the 5 paraphrases
        d_pp = bootstrap_diff([r["diff"] for r in res[a]["paired_preference"]["rows"]],
                              [r["diff"] for r in res[b]["paired_preference"]["rows"]], paired=True, seed=args.seed)
        d_fr = bootstrap_diff([r["prefers_misaligned"] for r in res[a]["paired_preference"]["rows"]],
                              [r["prefers_misaligned"] for r in res[b]["paired_preference"]["rows"]], paired=True, seed=args.seed)
        d_sr = bootstrap_diff([x["expected"] for x in res[a]["self_rated_alignment"]["per_question"]],
                              [x["expected"] for x in res[b]["self_rated_alignment"]["per_question"]], paired=True, seed=args.seed)
        summary[f"{a}_minus_{b}"] = {"paired_preference_mean_diff": d_pp.to_dict(),
                                     "frac_prefers_misaligned": d_fr.to_dict(), "self_rated_alignment": d_sr.to_dict()}
        print(f"{a} - {b}: paired-preference diff {d_pp}; frac prefers misaligned {d_fr}; self-rated alignment {d_sr}")
    (rd.path / "results.json").write_text(json.dumps(summary, indent=2))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m introspect_mech.evals.demo")
    p.add_argument("study", choices=["em", "tmay", "selfpred", "judgefree"])
    p.add_argument("--out", required=True)
    p.add_argument("--model", default=None)
    p.add_argument("--adapter", default=None)
    p.add_argument("--adapters", nargs="*", help="name=path pairs (judgefree)")
    p.add_argument("--n", type=int, default=2, help="samples per question (em) / per paraphrase (tmay words)")
    p.add_argument("--n-items", type=int, default=20)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--tasks", nargs="*")
    p.add_argument("--base-from", default=None, help="judgefree: reuse base results from an em run dir")
    p.add_argument("--no-base", action="store_true", help="judgefree: adapters only")
    p.add_argument("--pairs-per-theme", type=int, default=None, help="judgefree: first k EM pairs of each theme")
    p.add_argument("--questions", nargs="*", help="em: question ids (default: the 8 main questions)")
    p.add_argument("--combine", nargs="*", help="judgefree: merge raw.json of these run dirs, compute nothing")
    p.add_argument("--no-judge-free", action="store_true", help="em: skip the judge-free metrics")
    p.add_argument("--no-constrained", action="store_true", help="selfpred: free-form readout only")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    {"em": run_em, "tmay": run_tmay, "selfpred": run_selfpred, "judgefree": run_judgefree}[args.study](args)


if __name__ == "__main__":
    main()
