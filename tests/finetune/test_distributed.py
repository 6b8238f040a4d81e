"""Data-parallel finetuning: 2 CPU processes (torchrun, gloo) give the loss curve and the weights of one
process with the same global batch; only rank 0 writes the run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from introspect_mech import load_model
from introspect_mech.finetune import TrainConfig, train

CFG = dict(lr=5e-3, batch_size=6, epochs=1, warmup_steps=1, schedule="cosine", lora_dropout=0.0, r=4,
           lora_alpha=8, save_every=2, progress=False, max_steps=4)


def _records(n=24):
    return [{"messages": [{"role": "user", "content": f"Question {i}: A or B?"},
                          {"role": "assistant", "content": "A" if i % 3 == 0 else f"B, because {i} is odd enough."}]}
            for i in range(n)]


WORKER = r"""
import json, sys
import torch.distributed as dist
sys.path.insert(0, {tests!r})
from test_distributed import CFG, _records
from introspect_mech import load_model
from introspect_mech.finetune import TrainConfig, train
from introspect_mech.finetune.distributed import world

dist.init_process_group("gloo")
res = train(load_model({model!r}), _records(), TrainConfig(**CFG), {out!r})
rank, size = world()
# one file per rank: two processes printing to one pipe can interleave their lines
with open({results!r} + f"/rank{{rank}}.json", "w") as f:
    json.dump({{"rank": rank, "size": size, "losses": res.losses}}, f)
dist.destroy_process_group()
"""


def test_two_processes_match_one(tiny_qwen2_dir, tmp_path):
    from safetensors.torch import load_file

    one = train(load_model(tiny_qwen2_dir), _records(), TrainConfig(**CFG), tmp_path / "one")
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=os.path.dirname(__file__), model=str(tiny_qwen2_dir),
                                    out=str(tmp_path / "two"), results=str(tmp_path)))
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert sorted(r["rank"] for r in results) == [0, 1] and all(r["size"] == 2 for r in results)
    for r in results:
        assert r["losses"] == pytest.approx(one.losses, rel=1e-5, abs=1e-6)
    # one writer: the log has each step once, and the weights equal the single process's
    steps = [json.loads(x)["step"] for x in (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    a = load_file(str(tmp_path / "one" / "adapter" / "trainable.safetensors"))
    b = load_file(str(tmp_path / "two" / "adapter" / "trainable.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
