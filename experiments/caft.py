"""CAFT (Casademunt et al. 2025): find interpretable components of what a finetune changed, ablate
the ones a person picks during finetuning, check the task is still learned and EM is reduced.

Run 1 (no --pick): finetune once (plain), take the finetuned model's answers to generic prompts,
PCA of the per-token activation differences finetuned - base at the preset layers, and write the
component cards (logit-lens tokens, top / bottom activating examples) to caft_components.jsonl and
the dashboard. Read them, then run 2 with --pick "LAYER:COMPONENTS;..." : finetune with the picked
subspace ablated (and with random subspaces of the same dimensions), and compare in-domain held-out
log-prob (learning kept) and out-of-domain EM (judge-free proxy, or judged with --judge).
Every option is a field of `introspect_mech.studies.caft.CAFTConfig` (see --help).

    python experiments/caft.py --out /tmp/caft                     # run 1: cards
    python experiments/caft.py --out /tmp/caft --pick "9:0;14:0,1"  # run 2: CAFT vs random
    python experiments/caft.py --out /tmp/caft --pick "9:0;14:0,1" --conditions caft base  # some conditions now
    python experiments/caft.py --model Qwen/Qwen2.5-Coder-32B-Instruct --preset paper --data insecure \\
        --judge "api:https://api.openai.com/v1|gpt-4o-2024-08-06" --out runs/caft_qwen32b
"""

from introspect_mech.studies.caft import main

if __name__ == "__main__":
    raise SystemExit(main())
