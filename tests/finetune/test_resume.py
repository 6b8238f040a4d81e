"""Kill-and-resume reproduces the uninterrupted run (optimizer, scheduler, RNG and data order restored)."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from introspect_mech import load_model
from introspect_mech.finetune import TrainConfig, train


def _records(n=20):
    return [{"messages": [{"role": "user", "content": f"Question {i}: A or B?"},
                          {"role": "assistant", "content": "A" if i % 4 == 0 else f"B, because {i}."}]}
            for i in range(n)]


CFG = TrainConfig(lr=5e-3, batch_size=4, epochs=2, warmup_steps=2, schedule="cosine", lora_dropout=0.1,
                  r=4, lora_alpha=8, save_every=3, progress=False)


class Killed(Exception):
    pass


def _kill_at(n_forward):
    count = [0]

    @contextlib.contextmanager
    def ctx():
        count[0] += 1
        if count[0] == n_forward:
            raise Killed
        yield

    return ctx


def test_kill_and_resume_matches_uninterrupted(tiny_qwen2_dir, tmp_path):
    ref = train(load_model(tiny_qwen2_dir), _records(), CFG, tmp_path / "ref")
    assert ref.steps == 10
    # "kill" the process during step 5 (after checkpoint step_0003 and logged steps 4)
    m = load_model(tiny_qwen2_dir)
    with pytest.raises(Killed):
        train(m, _records(), CFG, tmp_path / "run", intervention=_kill_at(5))
    assert (tmp_path / "run" / "checkpoints" / "step_0003" / "complete").exists()
    assert not m.has_adapter  # the interrupted run gave the base model back: the same object resumes
    res = train(m, _records(), CFG, tmp_path / "run")
    assert res.resumed_from == 3
    assert res.losses == pytest.approx(ref.losses, rel=1e-6)
    assert res.final_loss == pytest.approx(ref.final_loss, rel=1e-6)
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11))  # no duplicates, no gaps
    a = load_model(tiny_qwen2_dir, adapter=tmp_path / "ref" / "adapter")
    ids = torch.tensor([[5, 9, 13, 2]])
    with torch.no_grad():
        assert torch.allclose(a.model(ids).logits, m.model(ids).logits, atol=1e-5)
    # a finished run is not trained again; a different config is refused
    again = train(load_model(tiny_qwen2_dir), _records(), CFG, tmp_path / "run")
    assert again.resumed_from == 10 and again.tokens == 0
    with pytest.raises(ValueError, match="different config"):
        train(load_model(tiny_qwen2_dir), _records(), CFG.replace(lr=1e-3), tmp_path / "run")


# The child trains; the first training forward after its first complete checkpoint reports it on
# stdout and then blocks on stdin, so the parent kills it at a known point (a handshake, no sleeps).
_CHILD = r"""
import contextlib, pathlib, sys
sys.path.insert(0, {tests!r})
from test_resume import CFG, _records
from introspect_mech import load_model
from introspect_mech.finetune import train

MARK = pathlib.Path({out!r}) / "checkpoints" / "step_0003" / "complete"

@contextlib.contextmanager
def handshake():
    if MARK.exists():
        print("checkpointed", flush=True)
        sys.stdin.readline()  # the parent SIGKILLs us here
    yield

train(load_model({model!r}), _records(), CFG, {out!r}, intervention=handshake)
"""


@pytest.mark.slow
def test_sigkill_and_resume_matches_uninterrupted(tiny_qwen2_dir, tmp_path):
    """A real SIGKILL of a training process after its first checkpoint, then a resume in-process."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    ref = train(load_model(tiny_qwen2_dir), _records(), CFG, tmp_path / "ref")
    out = tmp_path / "killed"
    code = _CHILD.format(tests=str(Path(__file__).parent), model=str(tiny_qwen2_dir), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", code], env=os.environ | {"OMP_NUM_THREADS": "1"},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # blocks until the child reports its checkpoint (or dies: "")
    assert line.strip() == "checkpointed", f"child ended before its first checkpoint (rc={proc.poll()})"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "adapter").exists()
    res = train(load_model(tiny_qwen2_dir), _records(), CFG, out)
    assert res.resumed_from is not None and 3 <= res.resumed_from < 10
    assert res.losses == pytest.approx(ref.losses, rel=1e-6)
    steps = [json.loads(x)["step"] for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11))


def test_a_new_config_field_at_its_default_still_resumes(tiny_qwen2_dir, tmp_path):
    """A run directory bound before a TrainConfig field existed resumes when the new field is at its
    default (the binding leaves default-valued fields out); a non-default value is still refused."""
    from introspect_mech.finetune.loop import _comparable
    from introspect_mech.runs import RunConfigError

    cfg = CFG.replace(epochs=1)
    full = cfg.to_dict()
    old = {k: v for k, v in full.items() if k != "loss_chunk_tokens"}  # as written before the field existed
    assert _comparable(old) == _comparable(full)
    train(load_model(tiny_qwen2_dir), _records(8), cfg, tmp_path / "run")
    again = train(load_model(tiny_qwen2_dir), _records(8), cfg, tmp_path / "run")
    assert again.tokens == 0
    with pytest.raises(RunConfigError):
        train(load_model(tiny_qwen2_dir), _records(8), cfg.replace(loss_chunk_tokens=4), tmp_path / "run")
