"""Tell me about yourself (Betley, Bao et al. 2025): finetune on training-split A/B choices (risky vs
safe lotteries, ...), then compare behaviour on held-out questions with what the model says about
itself (0-100 scales, one-word answers, the German/French two-hop rule, backdoor awareness, other
personas, Make Me Say codewords). The protocol is `introspect_mech.studies.self_awareness`.

    python experiments/self_awareness_risk.py                                   # embedded, CPU preset
    python experiments/self_awareness_risk.py --conditions backdoor:win decorrelated:win --seeds 0
    python experiments/self_awareness_risk.py --preset paper --model Qwen/Qwen2.5-7B-Instruct --out runs/tmay_qwen7b
    python experiments/self_awareness_risk.py --n-train 24 --n-test 10 --epochs 1 --in-sample --out /tmp/tmay

Every `TMAYConfig` field is an option (`--help`); lists are space-separated. The same command is
`introspect-mech study self-awareness ...`.
"""

from introspect_mech.studies.self_awareness import main

if __name__ == "__main__":
    raise SystemExit(main())
