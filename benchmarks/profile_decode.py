"""Where a decoding step's time goes on a CPU: torch.profiler over `evals.sample` and plain HF `generate`.

    OMP_NUM_THREADS=1 python benchmarks/profile_decode.py --model qwen2.5-coder-0.5b-instruct \
        --dtypes bfloat16,float32 --batches 16,32 --new-tokens 8

Every (dtype, batch, path) case runs once as warm-up, then once under the profiler. Forward pre/post hooks on
the model mark each forward as "prefill" (more than one token per row) or "decode" (one token per row);
profiled ops are assigned to the forward they ran in, and ops between decoding forwards are `generate`'s
own per-step work (logits processing and sampling). Each op is put in one class:

  * matmul: decoder Linear layers (aten::mm / addmm / bmm ...), the LM head (a 151,936-wide output) apart;
  * attention: the SDPA kernels; kv-cache: aten::cat / index_select (DynamicCache appends, reorder);
  * sampling: softmax, the multinomial's exponential_ / div / argmax, sort / cumsum (top-p), the float32
    copy of the logits, over the full vocabulary;
  * elementwise: RMSNorm, rotary, SwiGLU and the rest of the small ops;
  * python / dispatch: the self time of the forward's marker (`record_function`), i.e. the time inside a
    decoding forward not spent in any aten op (module calls, HF's Python, mask building).

Shares are of the decoding steps' profiled self time (the prefill is listed apart). Thread CPU time is
printed beside wall time: on a shared machine the wall time also holds waits for a core.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation",
          "mkldnn::_linear_pointwise")
SAMPLING = ("aten::exponential_", "aten::_softmax", "aten::softmax", "aten::argmax", "aten::div", "aten::div_",
            "aten::multinomial", "aten::sort", "aten::cumsum", "aten::topk", "aten::masked_fill", "aten::scatter",
            "aten::gather", "aten::log_softmax", "aten::_log_softmax")
KV = ("aten::cat", "aten::index_select")
CLASSES = ("matmul", "lm head", "attention", "kv-cache", "sampling", "elementwise", "python / dispatch")


def classify(name: str, shapes: list, vocab: int) -> str:
    wide = any(isinstance(s, list) and s and s[-1] == vocab for s in shapes)
    if name in MATMUL:
        return "lm head" if wide or any(isinstance(s, list) and vocab in s for s in shapes) else "matmul"
    if "scaled_dot_product" in name:
        return "attention"
    if name in KV:
        return "kv-cache"
    if name in SAMPLING or (wide and name in ("aten::copy_", "aten::to", "aten::_to_copy", "aten::clone")):
        return "sampling"
    return "elementwise"


class StepMarks:
    """Hooks on the model: the wall and thread-CPU interval of every forward, and whether it decoded."""

    def __init__(self, module: torch.nn.Module):
        self.steps: list[dict] = []
        self.handles = [module.register_forward_pre_hook(self._pre, with_kwargs=True),
                        module.register_forward_hook(self._post, with_kwargs=True)]

    def _pre(self, mod, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        kind = "decode" if ids is not None and ids.shape[-1] == 1 else "prefill"
        rf = torch.profiler.record_function(f"step:{kind}")
        rf.__enter__()
        self.steps.append({"kind": kind, "rf": rf, "c0": time.thread_time()})

    def _post(self, mod, args, kwargs, out):
        self.steps[-1]["rf"].__exit__(None, None, None)
        self.steps[-1]["c1"] = time.thread_time()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def breakdown(prof, marks: StepMarks, vocab: int) -> dict:
    """Self time per class in decoding forwards, between them (generate's sampling), and in the prefill."""
    all_ev = list(prof.events())
    spans = sorted((e.time_range.start, e.time_range.end, e.name.split(":")[1]) for e in all_ev
                    if e.name in ("step:decode", "step:prefill"))
    evs = [e for e in all_ev if e.self_cpu_time_total > 0 and not e.name.startswith("step:")]
    dec_spans = [s for s in spans if s[2] == "decode"]
    out = {"decode": defaultdict(float), "between": defaultdict(float), "prefill": defaultdict(float)}
    if not evs or not spans:
        return out
    for e in evs:
        t = e.time_range.start
        where = next((k for t0, t1, k in spans if t0 <= t <= t1), None)
        if where is None:  # outside any forward: generate's per-step work once decoding has begun
            where = "between" if dec_spans and t >= dec_spans[0][0] else "prefill"
        out[where][classify(e.name, e.input_shapes or [], vocab)] += e.self_cpu_time_total / 1e6
    dec = [s for s in marks.steps if s["kind"] == "decode" and "c1" in s]
    cpu_dec = sum(s["c1"] - s["c0"] for s in dec)
    # the marker's own self time: the forward's Python and dispatch between (not inside) the ops
    out["decode"]["python / dispatch"] = sum(e.self_cpu_time_total for e in all_ev if e.name == "step:decode") / 1e6
    out["n_decode"] = len(dec)
    out["decode_cpu_s"] = cpu_dec
    out["decode_wall_s"] = sum(t1 - t0 for t0, t1, _ in dec_spans) / 1e6
    return out


def hf_generate(loaded, prompts, new_tokens: int, **kw):
    """Plain HF generate over the left-padded chat prompts (its own prefill and DynamicCache)."""
    tok = loaded.tokenizer
    enc = [loaded.encode_prompt(p).tolist() for p in prompts]
    n = max(map(len, enc))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.tensor([[pad] * (n - len(e)) + e for e in enc])
    att = torch.tensor([[0] * (n - len(e)) + [1] * len(e) for e in enc])
    with torch.no_grad():
        return loaded.model.generate(input_ids=ids, attention_mask=att, max_new_tokens=new_tokens, do_sample=True,
                                     temperature=1.0, top_p=1.0, top_k=0, pad_token_id=pad, **kw)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--batches", default="16,32")
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--paths", default="sample,generate")
    ap.add_argument("--top", type=int, default=0, help="also print the top ops of each decoding profile")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    from torch.profiler import ProfilerActivity, profile

    from introspect_mech.evals.sampling import sample
    from introspect_mech.models import load_model

    lines = [f"# decode profile: {a.model} threads={torch.get_num_threads()} "
             f"capability={torch.backends.cpu.get_cpu_capability()} torch={torch.__version__} "
             f"date={time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} loadavg={os.getloadavg()[0]:.1f}"]
    print(lines[0], flush=True)
    for dt in a.dtypes.split(","):
        loaded = common.build_model("tiny", torch.device("cpu"), getattr(torch, dt)) if a.model == "tiny" else \
            load_model(a.model, dtype=dt, device="cpu")
        vocab = loaded.base_model.get_output_embeddings().weight.shape[0]
        for bs in map(int, a.batches.split(",")):
            prompts = common.prompts(bs)
            for path in a.paths.split(","):
                fn = (lambda: sample(loaded, prompts, max_new_tokens=a.new_tokens, temperature=1.0, batch_size=bs,
                                     progress=False, seed=0)) if path == "sample" else \
                    (lambda: hf_generate(loaded, prompts, a.new_tokens))
                fn()  # warm-up
                marks = StepMarks(loaded.base_model)
                try:
                    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                        c0, w0 = time.thread_time(), time.perf_counter()
                        fn()
                        cpu, wall = time.thread_time() - c0, time.perf_counter() - w0
                finally:
                    marks.remove()
                b = breakdown(prof, marks, vocab)
                dec, btw, pre = b["decode"], b["between"], b["prefill"]
                n = max(1, b.get("n_decode", 0))
                step = sum(dec.values()) + sum(btw.values())
                head = (f"## {a.model} {dt} batch {bs} {path}: {a.new_tokens} new tokens, {n} decoding forwards; "
                        f"whole call wall {wall:.2f} s, thread CPU {cpu:.2f} s, load {os.getloadavg()[0]:.1f}; "
                        f"prefill {sum(pre.values()):.2f} s; per decoding step {1e3 * step / n:.0f} ms "
                        f"(forward {1e3 * sum(dec.values()) / n:.0f} ms + between forwards {1e3 * sum(btw.values()) / n:.0f} ms)")
                cells = []
                for c in CLASSES:
                    v = dec.get(c, 0.0) + btw.get(c, 0.0)
                    if v:
                        cells.append(f"{c} {100 * v / max(step, 1e-9):.1f}% ({1e3 * v / n:.1f} ms)")
                txt = head + "\n" + "; ".join(cells)
                if a.top:
                    txt += "\n" + prof.key_averages(group_by_input_shape=True).table(
                        sort_by="self_cpu_time_total", row_limit=a.top)
                print(txt + "\n", flush=True)
                lines.append(txt)

    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text("\n\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
