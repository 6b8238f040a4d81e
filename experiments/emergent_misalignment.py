"""Emergent misalignment (Betley et al. 2025): finetune on a narrow dataset and its controls, then
sample, judge and report the EM rate with both denominators (Betley et al.: coherent answers;
model organisms: all scored answers), per question and overall, with bootstrap CIs.

    python experiments/emergent_misalignment.py --preset cpu --out /tmp/em             # embedded, CPU
    python experiments/emergent_misalignment.py --preset paper_coder32b \\
        --api-base https://api.openai.com/v1 --api-model gpt-4o-2024-08-06 --out runs/em_coder32b
    python experiments/emergent_misalignment.py --preset paper_qwen7b_medical \\
        --judge-model Qwen/Qwen2.5-32B-Instruct --out runs/em_qwen7b_medical

Controls upstream released (secure, educational, backdoor, evil_numbers) are used when the data
directory has them or `--allow-download` may fetch them; otherwise the named stand-ins of
`data.generators`, and the output says which. Without a judge option the judge is the base model
(`HFJudge`); the embedded 135M model abstains as a judge, and the output says so.
"""

import argparse
import dataclasses

from introspect_mech.studies import emergent_misalignment as em


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu", choices=sorted(em.PRESETS))
    p.add_argument("--model", default=None)
    p.add_argument("--datasets", default=None, help=f"comma-separated, from: {', '.join(em.DATASETS)}")
    p.add_argument("--question-sets", default=None, help=f"comma-separated, from: {', '.join(em.QUESTION_SETS)}")
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-samples", type=int, default=None, help="samples per paraphrase (paper: the file's, 50-100)")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--allow-download", action="store_true", help="fetch upstream control files (online)")
    p.add_argument("--judge-model", default=None, help="local HF judge (0-100 and label prompts)")
    p.add_argument("--api-base", default=None, help="OpenAI-compatible endpoint for the 0-100 judge")
    p.add_argument("--api-model", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", default="runs/emergent_misalignment")
    a = p.parse_args()
    over = {k: v for k, v in (("model", a.model), ("n_train", a.n_train), ("n_samples", a.n_samples),
                              ("max_new_tokens", a.max_new_tokens), ("device", a.device), ("seed", a.seed)) if v is not None}
    if a.datasets:
        over["datasets"] = tuple(a.datasets.split(","))
    if a.question_sets:
        over["question_sets"] = tuple(a.question_sets.split(","))
    if a.allow_download:
        over["allow_download"] = True
    cfg = dataclasses.replace(em.PRESETS[a.preset], **over)
    judge = categorical = None
    if a.api_base:
        from introspect_mech.evals.judges import APIJudge

        judge = APIJudge(a.api_base, a.api_model)
    elif a.judge_model:
        from introspect_mech import load_model
        from introspect_mech.evals.em import HFCategoricalJudge
        from introspect_mech.evals.judges import HFJudge

        jm = load_model(a.judge_model, device=a.device)
        judge, categorical = HFJudge(jm), HFCategoricalJudge(jm)
    res = em.run(a.out, cfg, judge=judge, categorical_judge=categorical)
    print(em.format_results(res))


if __name__ == "__main__":
    main()
