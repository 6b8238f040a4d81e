"""bf16 0.5B, 1 thread: forward 4x128 before and after one LoRA step (batch 4) + unload, in one process (run with PYTHONPATH=src:benchmarks)."""
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
def fwd(tag):
    with torch.no_grad():
        m.model(input_ids=ids)
        t0 = time.perf_counter()
        m.model(input_ids=ids)
    info = dict(dtypes=sorted({str(p.dtype) for p in m.model.parameters()}), contig=all(p.is_contiguous() for p in m.model.parameters()),
                grad_mode=torch.is_grad_enabled(), autocast=torch.is_autocast_enabled("cpu"), type=type(m.model).__name__)
    print(f"{tag}: forward 4x128 {time.perf_counter() - t0:5.2f} s load {os.getloadavg()[0]:.1f} {info}", flush=True)
fwd("before")
with tempfile.TemporaryDirectory() as tmp:
    train(m, bench_cpu.em_rows(4), TrainConfig(batch_size=4, max_steps=1, warmup_steps=0, progress=False), Path(tmp) / "run")
    m.model = m.model.unload()
fwd("after train+unload")
fwd("again")
