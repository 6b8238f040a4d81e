"""Persona features (Wang et al. 2025): SAE model diff, causal screening of the top latents by
steering and judging, and the best latent as a misalignment detector (AUROC over models / answers).

Finetunes: bad medical advice (misaligned) and good medical advice (control), with checkpoints; the
SAE is loaded (--sae, a sae-lens directory or release:sae_id) or trained here on the base model's
activations (small, CPU). The screening judge is --judge (judged EM rate and coherence) or, without
one, the judge-free proxy (paired preference; no coherence), labelled as such. Every option: `--help`;
the code and its config (`PersonaFeaturesConfig`, `PRESETS`, `run`) live in
`introspect_mech.studies.persona_features`.

    python experiments/persona_features.py --out /tmp/pf                          # embedded, CPU
    python experiments/persona_features.py --model Qwen/Qwen2.5-7B-Instruct --preset paper --alpha ALPHA \\
        --sae "qwen2.5-7b-instruct-andyrdt:resid_post_layer_15_trainer_1" --layer 15 \\
        --judge "api:https://api.openai.com/v1|gpt-4o-2024-08-06" --out runs/pf_qwen7b

(`--preset paper` has no steering strength: give `--alpha`, the paper tuned it per latent.)
"""

from introspect_mech.studies.persona_features import main

if __name__ == "__main__":
    raise SystemExit(main())
