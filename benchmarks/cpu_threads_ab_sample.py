"""sampling (bf16 0.5B, batch 16 x 8 new tokens, temperature 1) with torch threads 2 vs 1, alternated in one process (run with PYTHONPATH=src:benchmarks)."""
import os
import time
import torch
import common
from introspect_mech.models import load_model
from introspect_mech.evals.sampling import sample
m = load_model("qwen2.5-coder-0.5b-instruct", dtype="bfloat16", device="cpu")
prompts = common.prompts(16)
sample(m, prompts[:2], max_new_tokens=2, batch_size=2, progress=False)  # warm-up
for th in (2, 1, 1, 2):
    torch.set_num_threads(th)
    l0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    rows = sample(m, prompts, max_new_tokens=8, temperature=1.0, batch_size=16, progress=False, seed=0)
    t = time.perf_counter() - t0
    n = sum(r["n_tokens"] for r in rows)
    print(f"threads={th} {t:7.1f} s  {n} tokens  {n / t:6.2f} tok/s  load {l0:.1f}->{os.getloadavg()[0]:.1f}", flush=True)
