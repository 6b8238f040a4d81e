"""Looking Inward (Binder et al. 2024): self-prediction vs cross-prediction vs the mode baseline.

A thin CLI over `introspect_mech.studies.self_prediction` (the protocol and its deviations are
documented there and in docs/self_prediction.md; every option is a field of its `LIConfig`, see
--help). Model A is finetuned to predict properties of its own object-level answers; the ground
truth is A's behaviour AFTER that finetune; model B is finetuned on that behaviour
(cross-prediction); both directions run when B is given.

    # embedded SmolLM2-135M-Instruct; B = a differently-seeded twin (a control, see docs)
    python experiments/self_prediction.py --out /tmp/li_cpu
    # probes on their own draw of 16 test questions per dataset, one property
    python experiments/self_prediction.py --out /tmp/li_cpu --probe-n-test 16 --probe-properties first_word
    # a second, different model (Gemma-3-270M BASE with the fallback chat template: flagged)
    python experiments/self_prediction.py --other gemma3-270m --out /tmp/li_gemma
    # GPU, the paper-scale preset with two chat models
    python experiments/self_prediction.py --preset gpu --model Qwen/Qwen2.5-7B-Instruct --other Qwen/Qwen3-8B
"""

from introspect_mech.studies.self_prediction import main

if __name__ == "__main__":
    raise SystemExit(main())
