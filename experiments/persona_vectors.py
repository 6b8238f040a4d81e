"""Persona vectors (Chen et al. 2025) as the paper ran them, on one trait.

Stages (each resumable under --out): extract the direction (trait judge + upstream filter when a
judge is given, else the judge-free proxy filter, said so in the manifest); probe pos vs neg by
layer; pick the steering layer by judged trait expression with coherence >= 50 (needs a judge);
projection-difference screening of a planted finetuning mix (bad vs good medical advice);
finetune with and without preventative steering, with checkpoints; correlate the finetuning shift
along the direction with trait expression across checkpoints (judged, or the labelled proxy:
paired preference on the project's EM items). Every option: `--help`; the code and its config
(`PVConfig`, `PRESETS`, `run`) live in `introspect_mech.studies.persona_vectors`.

    python experiments/persona_vectors.py --out /tmp/pv                        # embedded, CPU preset
    python experiments/persona_vectors.py --stages extract probes screen --layer 15 --out /tmp/pv
    python experiments/persona_vectors.py --model Qwen/Qwen2.5-7B-Instruct --preset paper \\
        --judge "api:https://api.openai.com/v1|gpt-4.1-mini-2025-04-14" --layers 10 15 20 25 --out runs/pv_qwen7b
"""

from introspect_mech.studies.persona_vectors import main

if __name__ == "__main__":
    raise SystemExit(main())
