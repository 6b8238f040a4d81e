"""The main job as a script (same as `introspect-mech demo`).

    python experiments/main_job.py                               # embedded model, CPU, minutes
    python experiments/main_job.py --model Qwen/Qwen2.5-7B-Instruct --preset paper --out runs/qwen7b
"""

import argparse

from introspect_mech.studies import main_job

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/main_job")
    p.add_argument("--model", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--preset", default="quick", choices=sorted(main_job.JOB_PRESETS))
    p.add_argument("--n-train", type=int, default=None)
    a = p.parse_args()
    over = {k: v for k, v in (("model", a.model), ("device", a.device), ("n_train", a.n_train)) if v is not None}
    path = main_job.run(a.out, main_job.JOB_PRESETS[a.preset], **over)
    print(f"dashboard: {path.resolve()}")
