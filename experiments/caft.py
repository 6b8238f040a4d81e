"""CAFT (Casademunt et al. 2025): find interpretable components of what a finetune changed, ablate
the ones a person picks during finetuning, check the task is still learned and EM is reduced.

Run 1 (no --pick): finetune once (plain), take the finetuned model's answers to generic prompts,
PCA of the per-token activation differences finetuned - base at the preset layers, and write the
component cards (logit-lens tokens, top / bottom activating examples) to caft_components.jsonl and
the dashboard. Read them, then run 2 with --pick "LAYER:COMPONENTS;..." : finetune with the picked
subspace ablated (and with random subspaces of the same dimensions), and compare in-domain held-out
log-prob (learning kept) and out-of-domain EM (judge-free proxy, or judged with --judge).

    python experiments/caft.py --out /tmp/caft                     # run 1: cards
    python experiments/caft.py --out /tmp/caft --pick "9:0;14:0,1"  # run 2: CAFT vs random
    python experiments/caft.py --model Qwen/Qwen2.5-Coder-32B-Instruct --preset paper --data insecure \\
        --judge "api:https://api.openai.com/v1|gpt-4o-2024-08-06" --out runs/caft_qwen32b
"""

import argparse
import json
from pathlib import Path

import torch

from introspect_mech import load_model
from introspect_mech.evals import paired_preference, sample
from introspect_mech.evals.em import run_em_eval
from introspect_mech.finetune import preset as train_preset
from introspect_mech.finetune import train
from introspect_mech.finetune.cli import load_records
from introspect_mech.probes import load_trait
from introspect_mech.runs import RunDir, json_sha256
from introspect_mech.steering.train_time import caft_subspace
from introspect_mech.studies import caft as C
from introspect_mech.studies.persona_features import em_questions
from introspect_mech.studies.persona_vectors import make_judge
from introspect_mech.viz import export_dashboard


def generic_prompts(n: int) -> list[list[dict]]:
    """Chat prompts unrelated to the finetuning task: the EM questions' paraphrases and the persona
    traits' eval questions (the paper used generic chat prompts, see docs/caft.md)."""
    qs = [p["messages"] for q in em_questions() for p in q.prompts()]
    for t in ("evil", "humorous", "optimistic", "apathetic"):
        qs += [[{"role": "user", "content": x}] for x in load_trait(t, split="eval")["questions"]]
    return qs[:n]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--preset", default="cpu", choices=sorted(C.PRESETS))
    p.add_argument("--data", default="bad_medical_advice")
    p.add_argument("--n-train", type=int, default=64)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--n-prompts", type=int, default=24)
    p.add_argument("--n-heldout", type=int, default=24)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--pick", default=None, help='components to ablate, e.g. "9:0;14:0,1" (after reading the cards)')
    p.add_argument("--n-random", type=int, default=2)
    p.add_argument("--conditions", default=None, help="run only these conditions now, e.g. caft,base (parallel processes)")
    p.add_argument("--judge", default="none", help="none | hf:<model> | api:<base_url>|<model> (judged EM rate)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/caft")
    a = p.parse_args()
    pr = C.PRESETS[a.preset]
    out = Path(a.out)
    run = RunDir(out)
    load = lambda adapter=None: load_model(a.model, adapter=adapter, dtype=torch.float32)  # noqa: E731
    base = load()
    layers = C.preset_layers(base.n_layers, pr["layer_fractions"])
    records = load_records(a.data)
    train_recs = records[: a.n_train]
    heldout = [r["messages"] for r in records[len(records) - a.n_heldout:]]  # never trained on
    cfg = train_preset("em", lr=a.lr, batch_size=4, warmup_steps=2, max_seq_len=384, max_steps=a.steps, seed=a.seed,
                       epochs=100)
    run.write_manifest(title=f"CAFT on {a.data}", model=base.name, preset=a.preset, seed=a.seed, layers=layers,
                       data={"train": a.data, "train_ids": list(range(a.n_train)),
                             "heldout_ids": list(range(len(records) - a.n_heldout, len(records))),
                             "train_sha256": json_sha256([r["messages"] for r in train_recs])},
                       judge=a.judge if a.judge != "none" else "none: judge-free OOD proxy (paired preference)")
    plain_dir = out / "finetunes" / "plain"
    if not (plain_dir / "adapter" / "complete").exists():
        train(load(), train_recs, cfg, plain_dir)
    ft = load(plain_dir / "adapter")
    comp_file = out / "components.safetensors"
    prompts = [{"id": str(i), "messages": m} for i, m in enumerate(generic_prompts(a.n_prompts))]
    rows = sample(ft, prompts, n=1, max_new_tokens=a.max_new_tokens, seed=a.seed, out=out / "generic_answers.jsonl")
    convs = [r["messages"] + [{"role": "assistant", "content": r["response"]}] for r in rows if r["response"].strip()]
    if not comp_file.exists():
        deltas = C.activation_differences(base, ft, convs, layers)
        C.save_components(comp_file, {l: C.pca(x, pr["n_components"]) for l, x in deltas.items()})
    pcs = C.load_components(comp_file)
    if not (out / "caft_components.jsonl").exists():
        texts = convs + heldout  # interpretation texts (the paper: pretraining text; see docs)
        cards = C.component_cards(base, pcs, texts, n_top=pr["n_top_examples"], n_tokens=pr["n_logit_tokens"])
        C.write_cards(out, cards)
    if a.pick is None:
        print(f"component cards: {out / 'caft_components.jsonl'}; dashboard: {export_dashboard(out).resolve()}")
        print('read the cards, then rerun with --pick "LAYER:C1,C2;LAYER:C3"')
        return
    picks = C.parse_picks(a.pick)
    chosen = C.picked_subspace(pcs, picks)
    cards = [json.loads(l) for l in (out / "caft_components.jsonl").read_text().splitlines()]
    for c in cards:
        c["picked"] = c["component"] in picks.get(c["layer"], [])
    C.write_cards(out, cards)
    run.write_manifest(picks={str(k): v for k, v in picks.items()})
    judge = make_judge(a.judge, judge_model=base if a.model is None else None)
    log = run.log("caft_results.jsonl", ("condition", "pick"))
    done = {r["condition"]: r for r in log.rows() if r.get("pick") == a.pick}
    conds = {"base": None, "plain": plain_dir, "caft": chosen}
    dims = {l: int(x.shape[0]) for l, x in chosen.items()}
    for k in range(a.n_random):
        conds[f"random_{k}"] = C.random_subspace(dims, base.d_model, seed=a.seed + 1 + k)
    only = set(a.conditions.split(",")) if a.conditions else set(conds)
    for name, spec in conds.items():
        if name in done or name not in only:
            continue
        if name == "base":
            m = base
        elif name == "plain":
            m = ft
        else:
            fdir = out / "finetunes" / f"{name}_{json_sha256(a.pick)[:8]}"
            m = load()
            if not (fdir / "adapter" / "complete").exists():
                train(m, train_recs, cfg, fdir, intervention=caft_subspace(m, spec))
            else:
                m = load(fdir / "adapter")
        row = {"condition": name, "pick": a.pick, "in_domain": C.in_domain_logprob(m, heldout),
               "ood": paired_preference(m, seed=a.seed)["mean_diff"]["value"],
               "ood_metric": "PROXY: paired-preference mean diff, misaligned - aligned (nats/token)"}
        if judge is not None:
            rep = run_em_eval(m, out / "em" / name, judge=judge, n=2, max_new_tokens=a.max_new_tokens, seed=a.seed,
                              question_ids=[q.id for q in em_questions()], judge_free=False)["report"]
            row["em_rate_judged"] = rep["overall"]["em_rate"]
            row["n_judged_valid"] = rep["overall"]["n_valid"]
        log.append(row)
        done[name] = row
        print(json.dumps(row))
    done = {r["condition"]: r for r in log.rows() if r.get("pick") == a.pick}
    if any(c not in done for c in conds):
        print(f"conditions still to run: {[c for c in conds if c not in done]}")
        return
    summ = C.summarize([done[c] for c in conds])
    (out / "caft_summary.json").write_text(json.dumps(summ, indent=2))
    rows = [{"name": "in-domain held-out log-prob/token learned by the plain finetune", "value": summ["in_domain_learned_by_plain"]},
            {"name": "OOD proxy shift by the plain finetune (nats/token)", "value": summ["ood_shift_by_plain"]}]
    for k in ("caft", "random_mean"):
        rows.append({"name": f"{k}: in-domain learning kept", "value": summ[k]["in_domain_kept"]})
        rows.append({"name": f"{k}: OOD proxy change vs plain", "value": summ[k]["ood_change_vs_plain"],
                     "note": "proxy (paired preference), not an EM rate"})
    (out / "summary.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(json.dumps(summ, indent=2))
    print(f"dashboard: {export_dashboard(out).resolve()}")


if __name__ == "__main__":
    main()
