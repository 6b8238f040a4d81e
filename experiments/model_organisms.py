"""Model organisms for EM (Turner, Soligo et al. 2025): finetune with checkpoints, judged EM rates
(both denominators), the EM direction from the model's own judged answers, its one-layer ablation
at every layer vs random directions, and the phase transition over checkpoints.

    python experiments/model_organisms.py --preset cpu --allow-unvalidated-judge --out /tmp/mo   # embedded model, CPU
    python experiments/model_organisms.py --preset paper_rank1 --judge hf:Qwen/Qwen2.5-32B-Instruct \\
        --out runs/mo_qwen14b_rank1                                           # GPU, the paper's setting
    python experiments/model_organisms.py --preset paper_r32 \\
        --judge "api:https://api.openai.com/v1|gpt-4o-2024-08-06" --out runs/mo_qwen14b_r32

Every `MOConfig` field is an option (`--help`; e.g. `--dataset risky_financial_advice --finetune-preset em
--direction-layer 20`). Without `--judge` the judge is the model under study's base model (`HFJudge`);
on the embedded 135M model it abstains (too little mass on numbers), and the results say so. A judge without a
passing validation on the shared GPT-4o set (the embedded one has none) is refused before any work
unless `--allow-unvalidated-judge` labels every judged number "unvalidated judge". The same
command is `introspect-mech study model-organisms ...`; the code is `introspect_mech.studies.model_organisms`.
"""

from introspect_mech.studies.model_organisms import main

if __name__ == "__main__":
    raise SystemExit(main())
