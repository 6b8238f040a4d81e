"""Injected-thought introspection (detection, identification, prefill/intention) and self-report vs
internal state (persona steering strengths, finetune checkpoints); see docs/introspection.md.
Every option is a field of `introspect_mech.studies.introspection.IntrospectionConfig` (see --help).

    python experiments/introspection.py --out /tmp/introspection                 # embedded model, CPU (~15 min)
    python experiments/introspection.py --model Qwen/Qwen2.5-7B-Instruct --preset paper --out runs/introspection
    python experiments/introspection.py --stages A --layer-fractions 0.67 --strengths 1 2 4 8 --words dust milk bread
    python experiments/introspection.py --judge hf:Qwen/Qwen2.5-7B-Instruct ...  # grade sampled answers (0-100 judge)
"""

from introspect_mech.studies.introspection import main

if __name__ == "__main__":
    raise SystemExit(main())
