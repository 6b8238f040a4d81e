"""Run every benchmark in one process and print every ratio.

    python benchmarks/run_all.py --quick            # CPU, a few minutes: tiny Qwen (+ a little of the embedded model)
    python benchmarks/run_all.py                    # CPU: the embedded model at the issue's shapes (long)
    python benchmarks/run_all.py --gpu --models qwen2.5-0.5b,qwen2.5-7b   # GPU: random weights, real configs, bf16
    python benchmarks/run_all.py --quick --only cache,judge --out results.jsonl
    python benchmarks/run_all.py --cpu              # CPU limits + the real Qwen2.5-Coder-0.5B against them

Each benchmark measures its contenders interleaved in this process (see common.py); the summary at
the end lists every ratio with its target and MET / MISSED.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_cache  # noqa: E402
import bench_cpu  # noqa: E402
import bench_finetune  # noqa: E402
import bench_generate  # noqa: E402
import bench_judge  # noqa: E402
import common  # noqa: E402

BENCHES = ("cache", "judge", "steer", "sample", "finetune", "cpu")

# per profile and model: the sizes each benchmark runs at
PLANS = {
    # the CI smoke test: every benchmark once on tiny Qwen, the smallest sizes (seconds)
    "smoke": {
        "tiny": dict(cache=dict(shapes=[(1, 64)], repeats=1),
                     judge=dict(sizes=[1], repeats=1, answer_words=20),
                     steer=dict(batch=2, new=4, repeats=1),
                     sample=dict(n_prompts=2, n=2, new=4, repeats=1, hf_batch=4),
                     finetune=dict(steps=1, batch=4, trl_micro=2, repeats=1),
                     cpu=dict(forward=(1, 32), train_batch=2, sample_batches=(2,), new_tokens=4, repeats=1,
                              limit_repeats=1, judge=(2, 10))),
    },
    # the machine's limits and the real Qwen2.5-Coder-0.5B-Instruct in float32 and bfloat16, side by side, against them
    "cpu": {
        "qwen2.5-coder-0.5b-instruct": dict(cpu=dict(forward=(4, 128), train_batch=16, sample_batches=(16, 32),
                                                     new_tokens=16, repeats=2, dtypes=("float32", "bfloat16"),
                                                     judge=(4, 60))),
    },
    "quick": {
        "tiny": dict(cache=dict(shapes=[(1, 128), (4, 256)], repeats=5),
                     judge=dict(sizes=[1, 4], repeats=5, answer_words=60),
                     steer=dict(batch=4, new=16, repeats=5),
                     sample=dict(n_prompts=8, n=2, new=16, repeats=3, hf_batch=16),
                     finetune=dict(steps=2, batch=8, trl_micro=4, repeats=1)),
        "embedded": dict(cache=dict(shapes=[(1, 128)], repeats=3, tl=False)),
    },
    "full": {
        "tiny": dict(cache=dict(shapes=[(1, 128), (8, 512)], repeats=7),
                     steer=dict(batch=4, new=32, repeats=5),
                     sample=dict(n_prompts=8, n=2, new=32, repeats=3, hf_batch=16),
                     finetune=dict(steps=4, batch=16, trl_micro=8, repeats=2),
                     judge=dict(sizes=[1, 8], repeats=7)),
        "embedded": dict(cache=dict(shapes=[(1, 128), (8, 512)], repeats=5),
                         steer=dict(batch=4, new=32, repeats=3),
                         sample=dict(n_prompts=8, n=2, new=32, repeats=3, hf_batch=16),
                         finetune=dict(steps=2, batch=16, trl_micro=8, repeats=2),
                         judge=dict(sizes=[1, 4], repeats=5)),
    },
    "gpu": {
        "qwen2.5-0.5b": dict(cache=dict(shapes=[(1, 128), (8, 512)], repeats=15),
                             steer=dict(batch=16, new=64, repeats=9),
                             sample=[dict(n_prompts=16, n=1, new=128, repeats=3, hf_batch=16, with_naive=False,
                                          with_compile=True),
                                     dict(n_prompts=16, n=4, new=128, repeats=2, hf_batch=16, with_naive=False,
                                          ours_batch=64)],
                             finetune=dict(steps=6, batch=16, trl_micro=8, repeats=2, merge=[1, 4]),
                             judge=dict(sizes=[1, 8], repeats=15)),
        "qwen2.5-7b": dict(cache=dict(shapes=[(1, 128), (8, 512)], repeats=10),
                           steer=dict(batch=16, new=32, repeats=3),
                           sample=dict(n_prompts=16, n=1, new=64, repeats=2, hf_batch=16, with_naive=False),
                           finetune=dict(steps=3, batch=16, trl_micro=4, repeats=1, merge=[4]),
                           judge=dict(sizes=[1, 8], repeats=10)),
    },
}


def run_model(report: common.Report, spec: str, device: torch.device, plan: dict, only: set[str]) -> None:
    for bench in BENCHES:
        if bench not in plan or bench not in only:
            continue
        t0 = time.perf_counter()
        print(f"\n--- {bench} on {spec} ---", flush=True)
        for p in (plan[bench] if isinstance(plan[bench], list) else [plan[bench]]):
            _run_one(report, bench, spec, device, dict(p))
        report.note(bench, spec, f"took {time.perf_counter() - t0:.1f} s")
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _run_one(report: common.Report, bench: str, spec: str, device: torch.device, p: dict) -> None:
    try:
        if bench == "cache":
            bench_cache.run(report, spec, device, p["shapes"], p["repeats"], with_tl=p.get("tl", True))
        elif bench == "steer":
            bench_generate.run_steering(report, spec, device, p["batch"], p["new"], p["repeats"])
        elif bench == "sample":
            bench_generate.run_sampling(report, spec, device, p.pop("n_prompts"), p.pop("n"), p.pop("new"),
                                        p.pop("repeats"), **p)
        elif bench == "finetune":
            for merge in p.get("merge", [1]):
                bench_finetune.run(report, spec, device, p["steps"] * p["batch"], p["steps"], p["repeats"],
                                   p["batch"], p["trl_micro"], merge)
        elif bench == "cpu":
            bench_cpu.run(report, spec, None, **p)
        elif bench == "judge":
            bench_judge.run(report, spec, device, p["sizes"], p["repeats"], answer_words=p.get("answer_words", 150))
    except Exception as e:  # one failing benchmark must not hide the others' numbers
        traceback.print_exc()
        report.note(bench, spec, f"FAILED: {type(e).__name__}: {str(e)[:300]}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CPU, a few minutes")
    ap.add_argument("--smoke", action="store_true", help="every benchmark once on tiny Qwen (the CI test)")
    ap.add_argument("--gpu", action="store_true", help="random-weight Qwen2.5 shapes in bf16 on CUDA")
    ap.add_argument("--cpu", action="store_true", help="CPU limits and the real Qwen2.5-Coder-0.5B against them")
    ap.add_argument("--cpu-phases", default=None, help="with --cpu: a subset of forward,train,sample,judge "
                    "(default all), e.g. --cpu-phases sample for the limits and decoding alone")
    ap.add_argument("--models", default=None, help="comma-separated model specs (default per profile)")
    ap.add_argument("--only", default=",".join(BENCHES), help=f"subset of {BENCHES}")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", type=Path, default=None, help="append every timing/ratio as JSON lines")
    a = ap.parse_args(argv)
    profile = "gpu" if a.gpu else "cpu" if a.cpu else ("smoke" if a.smoke else ("quick" if a.quick else "full"))
    plans = PLANS[profile]
    if a.cpu_phases:
        plans = {k: {b: ({**p, "phases": tuple(a.cpu_phases.split(","))} if b == "cpu" else p) for b, p in v.items()}
                 for k, v in plans.items()}
    models = a.models.split(",") if a.models else list(plans)
    device = common.pick_device(a.device or ("cuda" if a.gpu else "cpu"))
    only = set(a.only.split(","))
    report = common.Report(a.out)
    report.header(profile=profile, models=models, machine=common.machine(device), versions=common.versions(),
                  command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]))
    t0 = time.perf_counter()
    for spec in models:
        plan = plans.get(spec) or plans[next(iter(plans))]
        run_model(report, spec, device, plan, only)
    report.summary()
    print(f"\nrun_all ({profile}) finished in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
