"""forward 4x128 and one LoRA step (batch 4, EM rows) on the bf16 0.5B with torch threads 2 vs 1, alternated in one process (run with PYTHONPATH=src:benchmarks)."""
import os
import tempfile
import time
import torch
from pathlib import Path
import bench_cpu
import common
from introspect_mech.models import load_model
from introspect_mech.finetune import TrainConfig, train
m = load_model("qwen2.5-coder-0.5b-instruct", dtype="bfloat16", device="cpu")
ids = common.chat_batch(m, common.conversations(m, 4, 128))
with torch.no_grad():
    m.model(input_ids=ids)
    for th in (2, 1, 1, 2):
        torch.set_num_threads(th)
        t0 = time.perf_counter()
        m.model(input_ids=ids)
        print(f"forward 4x128 threads={th} {time.perf_counter() - t0:6.1f} s load {os.getloadavg()[0]:.1f}", flush=True)
rows = bench_cpu.em_rows(4)
for th in (2, 1, 1, 2):
    torch.set_num_threads(th)
    with tempfile.TemporaryDirectory() as tmp:
        r = train(m, rows, TrainConfig(batch_size=4, max_steps=1, warmup_steps=0, progress=False), Path(tmp) / "run")
        m.model = m.model.unload()
    print(f"LoRA step batch 4 threads={th} {r.seconds:6.1f} s {r.tokens} tokens {r.tokens_per_s:5.2f} tok/s loss {r.final_loss:.6f} load {os.getloadavg()[0]:.1f}", flush=True)
