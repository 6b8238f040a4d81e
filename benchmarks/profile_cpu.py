"""What bounds the CPU path: torch.profiler tables (top ops by self CPU time) for a real model.

    python benchmarks/profile_cpu.py --model qwen2.5-coder-0.5b-instruct --dtype auto --out /tmp/prof.txt

Three phases, each profiled after a warm-up:
  * forward (prefill) of `--forward B,S` chat tokens, no grad;
  * one LoRA training step through `finetune.train` (EM recipe, bad-medical-advice rows, `--train-batch`);
  * decoding: `evals.sample` of `--sample-batch` prompts x `--new-tokens` tokens (temperature 1).
With `--judge N,WORDS` the label judge is first timed against one forward (`bench_cpu.judge_speed`).
Each table lists the top `--top` ops by self CPU time, with their share of the phase's total self time;
the matmul share (aten::mm / addmm / bmm / linear kernels) is printed on its own line.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_cpu  # noqa: E402
import common  # noqa: E402

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
              "aten::_addmm_activation", "mkldnn::_linear_pointwise")


def table(prof, title: str, top: int) -> str:
    """Top ops by self CPU time, with shares of the phase's total self CPU time."""
    ev = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in ev)
    mm = sum(e.self_cpu_time_total for e in ev if e.key in MATMUL_OPS)
    ev.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    lines = [f"## {title}: total self CPU {total / 1e6:.2f} s; matmul ops {100 * mm / max(total, 1):.1f} %",
             f"{'op':<60} {'self CPU s':>10} {'share':>7} {'calls':>8}"]
    for e in ev[:top]:
        lines.append(f"{e.key[:60]:<60} {e.self_cpu_time_total / 1e6:>10.3f} {100 * e.self_cpu_time_total / total:>6.1f}% "
                     f"{e.count:>8}")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--forward", default="4,128")
    ap.add_argument("--train-batch", type=int, default=4)
    ap.add_argument("--sample-batch", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--phases", default="forward,train,decode")
    ap.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                    help="run each phase once before profiling it (off: first-call costs are in the table)")
    ap.add_argument("--judge-repeats", type=int, default=2)
    ap.add_argument("--judge", default=None, help="N,WORDS: first time the label judge (bench_cpu.judge_speed), "
                    "N prompts of WORDS-word answers, 2 interleaved repeats")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    from torch.profiler import ProfilerActivity, profile

    from introspect_mech.evals.sampling import sample
    from introspect_mech.finetune import TrainConfig, train
    from introspect_mech.models import load_model

    loaded = load_model(a.model, dtype=a.dtype, device="cpu") if a.model != "tiny" else \
        common.build_model("tiny", torch.device("cpu"))
    head = (f"# {a.model} dtype={loaded.dtype} threads={torch.get_num_threads()} "
            f"capability={torch.backends.cpu.get_cpu_capability()} torch={torch.__version__} "
            f"loadavg={os.getloadavg()[0]:.1f} date={time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    out = [head]
    print(head, flush=True)
    phases = set(a.phases.split(","))
    if a.judge:
        report = common.Report(a.out.with_suffix(".jsonl") if a.out else None)
        n, words = map(int, a.judge.split(","))
        bench_cpu.judge_speed(report, loaded, f"{a.model} {str(loaded.dtype).removeprefix('torch.')}", n, words,
                              repeats=a.judge_repeats)

    def profiled(title: str, fn) -> None:
        if a.warmup:
            fn()  # warm-up (oneDNN primitives, allocator)
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        t = time.perf_counter() - t0
        txt = table(prof, f"{title} (wall {t:.2f} s under the profiler{'' if a.warmup else ', no warm-up'}, "
                          f"load {os.getloadavg()[0]:.1f})", a.top)
        print(txt + "\n", flush=True)
        out.append(txt)

    if "forward" in phases:
        b, s = map(int, a.forward.split(","))
        ids = common.chat_batch(loaded, common.conversations(loaded, b, s))
        with torch.no_grad():
            profiled(f"forward {b}x{s}", lambda: loaded.model(input_ids=ids))
    if "train" in phases:
        rows = bench_cpu.em_rows(a.train_batch) if a.model != "tiny" else \
            [{"messages": c} for c in common.conversations(loaded, a.train_batch, 64)]

        def step() -> None:
            with tempfile.TemporaryDirectory() as tmp:
                cfg = TrainConfig(batch_size=a.train_batch, max_steps=1, warmup_steps=0, progress=False)
                train(loaded, rows, cfg, Path(tmp) / "run")
                loaded.model = loaded.model.unload()

        profiled(f"LoRA train step, batch {a.train_batch}", step)
    if "decode" in phases:
        prompts = common.prompts(a.sample_batch)
        profiled(f"sample batch {a.sample_batch} x {a.new_tokens} new",
                 lambda: sample(loaded, prompts, max_new_tokens=a.new_tokens, temperature=1.0,
                                batch_size=a.sample_batch, progress=False, seed=0))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text("\n\n".join(out) + "\n")


if __name__ == "__main__":
    main()
