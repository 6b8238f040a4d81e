"""Persona features (Wang et al. 2025): SAE model diff, causal screening of the top latents by
steering and judging, and the best latent as a misalignment detector (AUROC over models / answers).

Finetunes: bad medical advice (misaligned) and good medical advice (control), with checkpoints; the
SAE is loaded (--sae, a sae-lens directory or release) or trained here on the base model's
activations (small, CPU). The screening judge is --judge (judged EM rate and coherence) or, without
one, the judge-free proxy (paired preference; no coherence), labelled as such.

    python experiments/persona_features.py --out /tmp/pf                          # embedded, CPU
    python experiments/persona_features.py --model Qwen/Qwen2.5-7B-Instruct --preset paper \\
        --sae "qwen2.5-7b-instruct-andyrdt:resid_post_layer_15_trainer_1" --layer 15 \\
        --judge "api:https://api.openai.com/v1|gpt-4o-2024-08-06" --out runs/pf_qwen7b
"""

import argparse
import json
from pathlib import Path

import torch

from introspect_mech import load_model, sae as S
from introspect_mech.evals import sample
from introspect_mech.finetune import preset as train_preset
from introspect_mech.finetune import train
from introspect_mech.finetune.cli import load_records
from introspect_mech.runs import RunDir
from introspect_mech.studies import persona_features as pf
from introspect_mech.studies.persona_vectors import make_judge
from introspect_mech.viz import export_dashboard


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--preset", default="cpu", choices=sorted(pf.PRESETS))
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--sae", default=None, help="sae-lens dir, or release:sae_id (online); default: train one here")
    p.add_argument("--judge", default="none")
    p.add_argument("--n-train", type=int, default=64)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--save-every", type=int, default=8)
    p.add_argument("--n-eval", type=int, default=2, help="samples per EM question paraphrase for the diff")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--alpha", type=float, default=None)
    p.add_argument("--sae-texts", type=int, default=150, help="records per advice dataset to train the SAE on")
    p.add_argument("--bad-adapter", default=None, help="reuse a bad-medical-advice adapter (e.g. experiments/caft.py's plain finetune)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/persona_features")
    a = p.parse_args()
    pr = pf.PRESETS[a.preset]
    mnt = a.max_new_tokens or pr["max_new_tokens"]
    alpha = a.alpha if a.alpha is not None else pr["alpha"]
    if alpha is None:
        raise SystemExit("--alpha is required with this preset (the paper tuned it per latent)")
    out = Path(a.out)
    run = RunDir(out)
    load = lambda adapter=None: load_model(a.model, adapter=adapter, dtype=torch.float32)  # noqa: E731
    base = load()
    judge = make_judge(a.judge, judge_model=base if a.model is None else None)
    run.write_manifest(title="Persona features: SAE diff, causal screening, detector", model=base.name, preset=a.preset,
                       layer=a.layer, sae=a.sae or "trained here", alpha=alpha, seed=a.seed,
                       judge=judge.describe() if judge else "none: judge-free proxy (paired preference), no coherence")
    cfg = train_preset("em", lr=2e-4, batch_size=4, warmup_steps=2, max_seq_len=384, max_steps=a.steps,
                       save_every=a.save_every, seed=a.seed, epochs=100)
    tuned = {}
    for name in ("bad_medical_advice", "good_medical_advice"):
        d = out / "finetunes" / name
        if name == "bad_medical_advice" and a.bad_adapter:
            d = Path(a.bad_adapter).parent
            run.write_manifest(bad_adapter=str(Path(a.bad_adapter).resolve()))
        elif not (d / "adapter" / "complete").exists():
            train(load(), load_records(name)[: a.n_train], cfg, d)
        tuned[name] = d
    ft = load(tuned["bad_medical_advice"] / "adapter")
    qs = pf.em_questions()
    rows = sample(ft, [pr_ for q in qs for pr_ in q.prompts()], n=a.n_eval, max_new_tokens=mnt, seed=a.seed,
                  out=out / "eval_answers.jsonl")
    convs = [r["messages"] + [{"role": "assistant", "content": r["response"]}] for r in rows if r["response"].strip()]
    if a.sae and ":" in a.sae and not Path(a.sae).exists():
        release, sae_id = a.sae.split(":", 1)
        sae = S.load(release, sae_id)
    elif a.sae:
        sae = S.load_local(a.sae)
    elif (out / "sae" / "sae").exists():
        sae = S.load_local(out / "sae" / "sae")
    else:
        k = a.sae_texts
        texts = [r["messages"] for r in load_records("good_medical_advice")[6000:6000 + k]] + \
                [r["messages"] for r in load_records("bad_medical_advice")[6000:6000 + k]] + convs
        sae = S.train(base, a.layer, texts, S.SAETrainConfig(expansion=4, k=16, epochs=3.0), out / "sae").sae
    fn = (pf.em_judge_fn(judge, qs, n_per_question=1, max_new_tokens=mnt, seed=a.seed) if judge is not None
          else pf.proxy_fn())
    det = {"base": (base, 0)}
    for name, lab in (("bad_medical_advice", 1), ("good_medical_advice", 0)):
        cks = sorted(c for c in (tuned[name] / "checkpoints").glob("step_*") if (c / "adapter").exists())
        for ck in cks or [tuned[name]]:
            det[f"{name}/{ck.name}"] = (load(ck / "adapter"), lab)
    res = pf.run(base, ft, sae, convs, judge_fn=fn, alpha=alpha, top_k=pr["top_k"], detector_models=det, out=out)
    summary = [{"name": f"screened latent {r['latent']} (rank {r['rank']})", "value": r.get("misaligned"),
                "note": f"coherence {r.get('coherence')}; alpha {r['alpha']}; "
                        + ("judged EM rate" if judge else "PROXY: paired-preference mean diff, nats/token")}
               for r in res["table"]]
    if "detector" in res:
        dt = res["detector"]
        summary += [{"name": f"detector AUROC, latent {dt['latent']}, over models/checkpoints", "value": dt["auroc_models"],
                     "note": f"{dt['n_models']} models (misaligned = bad-advice checkpoints)"},
                    {"name": f"detector AUROC, latent {dt['latent']}, over single answers", "value": dt["auroc_answers"],
                     "note": f"{dt['n_answers']} answers"}]
    (out / "summary.jsonl").write_text("".join(json.dumps(r, default=str) + "\n" for r in summary))
    for r in summary:
        print(f"{r['name']}: {r['value']}  ({r['note']})")
    print(f"dashboard: {export_dashboard(out).resolve()}")


if __name__ == "__main__":
    main()
