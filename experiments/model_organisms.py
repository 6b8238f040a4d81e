"""Model organisms for EM (Turner, Soligo et al. 2025): finetune with checkpoints, judged EM rates
(both denominators), the EM direction from the model's own judged answers, its one-layer ablation
at every layer vs random directions, and the phase transition over checkpoints.

    python experiments/model_organisms.py --preset cpu --out /tmp/mo        # embedded model, CPU
    python experiments/model_organisms.py --preset paper_rank1 --judge-model Qwen/Qwen2.5-32B-Instruct \\
        --out runs/mo_qwen14b_rank1                                           # GPU, the paper's setting
    python experiments/model_organisms.py --preset paper_r32 --api-base https://api.openai.com/v1 \\
        --api-model gpt-4o-2024-08-06 --out runs/mo_qwen14b_r32

Without --judge-model / --api-base the judge is the model under study's base model (`HFJudge`);
on the embedded 135M model it abstains (too little mass on numbers), and the results say so.
"""

import argparse
import dataclasses

from introspect_mech.studies import model_organisms as mo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu", choices=sorted(mo.PRESETS))
    p.add_argument("--model", default=None, help="override the preset's model (default preset: embedded)")
    p.add_argument("--dataset", default=None, help="bad_medical_advice, risky_financial_advice, extreme_sports, insecure")
    p.add_argument("--finetune-preset", default=None, choices=["rank1", "em"])
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-samples", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--judge-model", default=None, help="local HF judge (hub id or directory)")
    p.add_argument("--api-base", default=None)
    p.add_argument("--api-model", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", default="runs/model_organisms")
    a = p.parse_args()
    over = {k: v for k, v in (("model", a.model), ("dataset", a.dataset), ("finetune_preset", a.finetune_preset),
                              ("n_train", a.n_train), ("n_samples", a.n_samples), ("max_new_tokens", a.max_new_tokens),
                              ("device", a.device), ("seed", a.seed)) if v is not None}
    cfg = dataclasses.replace(mo.PRESETS[a.preset], **over)
    judge = None
    if a.api_base:
        from introspect_mech.evals.judges import APIJudge

        judge = APIJudge(a.api_base, a.api_model)
    elif a.judge_model:
        from introspect_mech import load_model
        from introspect_mech.evals.judges import HFJudge

        judge = HFJudge(load_model(a.judge_model, device=a.device))
    res = mo.run(a.out, cfg, judge=judge)
    print(mo.format_results(res))


if __name__ == "__main__":
    main()
