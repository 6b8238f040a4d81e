"""Emergent misalignment (Betley et al. 2025): finetune on a narrow dataset and its controls, then
sample, judge and report the EM rate with both denominators (Betley et al.: coherent answers;
model organisms: all scored answers), per question and overall, with Wilson intervals (pooled over questions: at the design-effect sample size).

    python experiments/emergent_misalignment.py --preset cpu --allow-unvalidated-judge --out /tmp/em   # embedded, CPU
    python experiments/emergent_misalignment.py --preset paper_coder32b \\
        --judge "api:https://api.openai.com/v1|gpt-4o-2024-08-06" --out runs/em_coder32b
    python experiments/emergent_misalignment.py --preset paper_qwen7b_medical \\
        --judge hf:Qwen/Qwen2.5-32B-Instruct --out runs/em_qwen7b_medical
    python experiments/emergent_misalignment.py --preset cpu --allow-unvalidated-judge --datasets insecure secure --n-train 32 --out /tmp/em2

Every `EMConfig` field is an option (`--help`); lists are space-separated. Controls upstream released
(secure, educational, backdoor, evil_numbers) are used when the data directory has them or
`--allow-download` may fetch them; otherwise the named stand-ins of `data.generators`, and the output
says which. Without `--judge` the judge is the base model (`HFJudge`, and `HFCategoricalJudge` for the
label prompts); the embedded 135M model abstains as a judge, and the output says so. A judge without a
passing validation on the shared GPT-4o set (the embedded one has none) is refused before any work
unless `--allow-unvalidated-judge` labels every judged number "unvalidated judge". The same command
is `introspect-mech study emergent-misalignment ...`; the code is `introspect_mech.studies.emergent_misalignment`.
"""

from introspect_mech.studies.emergent_misalignment import main

if __name__ == "__main__":
    raise SystemExit(main())
