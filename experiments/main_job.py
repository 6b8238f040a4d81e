"""The main job as a script (same as `introspect-mech demo`): finetune on bad medical advice and the
good-advice control, judge-free EM proxies, persona and EM directions, probes, steering, dashboard.

    python experiments/main_job.py                               # embedded model, CPU, minutes
    python experiments/main_job.py --model Qwen/Qwen2.5-7B-Instruct --preset paper --out runs/qwen7b
    python experiments/main_job.py --n-train 32 --alphas 1 2 4 --seeds 0 1 --out runs/main_job_small

Every `JobConfig` field is an option (`--help`); lists are space-separated. The code is
`introspect_mech.studies.main_job`.
"""

from introspect_mech.studies.main_job import main

if __name__ == "__main__":
    raise SystemExit(main())
