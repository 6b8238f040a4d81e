"""Generation: steered / ablated vs plain `generate`, and sampling for evals vs HF `generate`.

Part 1 -- steering cost (tokens/s, greedy, exactly `new` tokens per row via min_new_tokens):
  plain generate | steering.add (one middle layer, positions="all") | steering.add (positions=
  "response") | steering.ablate (every layer). Target: steered / plain throughput >= 0.98.

Part 2 -- sampling for evals (temperature 1, the same prompts and n samples per prompt):
  naive per-prompt generate (one row at a time) | batched HF generate (left padding, batch 16) |
  HF generate with a static KV cache + torch.compile (GPU only, --compile) | ours
  `introspect_mech.evals.sampling.sample`. Throughput counts generated tokens up to the first stop
  token. Targets: ours >= 3x naive on CPU; >= 10x batched HF generate at batch 16 on the GPU.

    python benchmarks/bench_generate.py --model embedded --new 32
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def _left_pad(lm, prompt_ids: list[list[int]]):
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    n = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), n), pad, dtype=torch.long)
    att = torch.zeros((len(prompt_ids), n), dtype=torch.long)
    for i, p in enumerate(prompt_ids):
        ids[i, n - len(p):] = torch.tensor(p)
        att[i, n - len(p):] = 1
    return ids.to(lm.device), att.to(lm.device)


def _stop_ids(lm) -> list[int]:
    fn, _ = common.ours("evals.sampling", "stop_token_ids")
    if fn is not None:
        return fn(lm)
    return [int(lm.tokenizer.eos_token_id)]


def _count(new: torch.Tensor, stop: set[int]) -> int:
    n = 0
    for row in new.tolist():
        cut = next((j for j, t in enumerate(row) if t in stop), None)
        n += len(row) if cut is None else cut
    return n


# ---- part 1: steering -------------------------------------------------------------------------
def run_steering(report: common.Report, spec: str, device: torch.device, batch: int, new: int,
                 repeats: int, lm=None) -> None:
    bench = "steer-gen"
    lm = lm or common.build_model(spec, device)
    steering, why = common.ours("steering")
    if steering is None:
        report.note(bench, spec, why)
        return
    case = f"{spec} b{batch} new{new}"
    ids, att = _left_pad(lm, [lm.encode_prompt(p).tolist() for p in common.prompts(batch)])
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    g = torch.Generator().manual_seed(0)
    v = torch.randn(lm.d_model, generator=g)
    v = (v / v.norm()).to(lm.device, lm.dtype)
    mid = lm.n_layers // 2

    def gen():
        return lm.model.generate(input_ids=ids, attention_mask=att, max_new_tokens=new, min_new_tokens=new,
                                 do_sample=False, pad_token_id=pad, temperature=None, top_p=None, top_k=None)

    def steered(ctx_factory):
        def f():
            with ctx_factory():
                return gen()
        return f

    fns = {
        "plain generate": gen,
        "add (1 layer, all positions)": steered(lambda: steering.add(lm, v, layers=[mid], alpha=4.0)),
        "add (1 layer, response)": steered(lambda: steering.add(lm, v, layers=[mid], alpha=4.0, positions="response")),
        "ablate (all layers)": steered(lambda: steering.ablate(lm, v, layers="all")),
    }
    with torch.inference_mode():
        times = common.interleaved(fns, repeats=repeats, warmup=1, device=device)
    toks = batch * new
    med = {k: report.timing(bench, case, k, t, tok_per_s=toks / common.median(t)) for k, t in times.items()}
    plain = med["plain generate"]
    for k in fns:
        if k != "plain generate":
            report.ratio(bench, case, f"{k} / plain (throughput)", plain / med[k], ">=0.98")


# ---- part 2: sampling ---------------------------------------------------------------------------
def run_sampling(report: common.Report, spec: str, device: torch.device, n_prompts: int, n: int, new: int,
                 repeats: int, hf_batch: int = 16, with_naive: bool = True, with_compile: bool = False,
                 ours_batch: int | None = None, lm=None) -> None:
    bench = "sample"
    lm = lm or common.build_model(spec, device)
    sample, why = common.ours("evals.sampling", "sample")
    case = f"{spec} {n_prompts}p x n{n} new{new}"
    prompts = common.prompts(n_prompts)
    rows = [(p, s) for p in range(n_prompts) for s in range(n)]
    prompt_ids = [lm.encode_prompt(p).tolist() for p in prompts]
    stop = _stop_ids(lm)
    stop_set = set(stop)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else stop[0]
    kw = dict(max_new_tokens=new, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, pad_token_id=pad,
              eos_token_id=stop)
    counts: dict[str, list[int]] = {}

    def naive():
        k = 0
        for p, _ in rows:
            ids = torch.tensor([prompt_ids[p]], device=lm.device)
            out = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
            k += _count(out[:, ids.shape[1]:], stop_set)
        counts.setdefault("naive per-prompt generate", []).append(k)

    def batched(bs: int, name: str, **extra):
        def f():
            k = 0
            for i in range(0, len(rows), bs):
                ids, att = _left_pad(lm, [prompt_ids[p] for p, _ in rows[i:i + bs]])
                out = lm.model.generate(input_ids=ids, attention_mask=att, **kw, **extra)
                k += _count(out[:, ids.shape[1]:], stop_set)
            counts.setdefault(name, []).append(k)
        return f

    fns = {}
    if with_naive:
        fns["naive per-prompt generate"] = naive
    fns[f"HF generate batch {hf_batch}"] = batched(hf_batch, f"HF generate batch {hf_batch}")
    if with_compile and device.type == "cuda":
        fns[f"HF generate batch {hf_batch} static+compile"] = batched(
            hf_batch, f"HF generate batch {hf_batch} static+compile", cache_implementation="static")
    if sample is not None:
        bs = ours_batch or max(hf_batch, 1)
        import inspect

        has_static = "static_cache" in inspect.signature(sample).parameters

        def ours(name: str, ctx=None, **extra):
            def f():
                import contextlib

                with (ctx() if ctx else contextlib.nullcontext()):
                    res = sample(lm, prompts, n=n, max_new_tokens=new, temperature=1.0, seed=0, batch_size=bs,
                                 progress=False, **extra)
                counts.setdefault(name, []).append(sum(int(r.get("n_tokens", 0)) for r in res))
            return f
        fns["ours sample"] = ours("ours sample")
        if has_static and device.type == "cuda":
            fns["ours sample (static_cache=True)"] = ours("ours sample (static_cache=True)", static_cache=True)
        steering, _ = common.ours("steering")
        if steering is not None and device.type == "cuda":
            v = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0))
            v = (v / v.norm()).to(lm.device, lm.dtype)
            fns["ours sample + steering.add"] = ours(
                "ours sample + steering.add", ctx=lambda: steering.add(lm, v, layers=[lm.n_layers // 2], alpha=4.0))
    else:
        report.note(bench, case, why)
    with torch.inference_mode():
        times = common.interleaved(fns, repeats=repeats, warmup=1, device=device)
    tps = {}
    for k, t in times.items():
        c = counts[k][1:] or counts[k]  # counts of the timed calls (the first is the warm-up)
        tps[k] = (sum(c) / len(c)) / common.median(t)
        report.timing(bench, case, k, t, tok_per_s=tps[k], tokens=sum(c) / len(c))
    if "ours sample" in tps:
        o = tps["ours sample"]
        if "naive per-prompt generate" in tps:
            report.ratio(bench, case, "ours / naive per-prompt (tokens/s)", o / tps["naive per-prompt generate"],
                         ">=3" if device.type == "cpu" else None)
        report.ratio(bench, case, f"ours / HF generate batch {hf_batch} (tokens/s)", o / tps[f"HF generate batch {hf_batch}"],
                     ">=10" if device.type == "cuda" else None)
        for k in ("ours sample (static_cache=True)", "ours sample + steering.add"):
            if k in tps:
                report.ratio(bench, case, f"{k} / HF generate batch {hf_batch} (tokens/s)",
                             tps[k] / tps[f"HF generate batch {hf_batch}"], ">=10" if "static" in k else None)
    if "naive per-prompt generate" in tps:
        report.ratio(bench, case, f"HF batch {hf_batch} / naive per-prompt (tokens/s)",
                     tps[f"HF generate batch {hf_batch}"] / tps["naive per-prompt generate"])
    key = f"HF generate batch {hf_batch} static+compile"
    if key in tps:
        report.ratio(bench, case, f"HF static+compile / HF batch {hf_batch} (tokens/s)", tps[key] / tps[f"HF generate batch {hf_batch}"])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded", choices=common.MODEL_SPECS)
    ap.add_argument("--batch", type=int, default=4, help="steering: rows per generate call")
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--hf-batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="add HF static cache + torch.compile (GPU)")
    ap.add_argument("--no-naive", action="store_true")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    device = common.pick_device(a.device)
    report = common.Report(a.out)
    report.header(bench="generate", model=a.model, machine=common.machine(device), versions=common.versions())
    lm = common.build_model(a.model, device)
    run_steering(report, a.model, device, a.batch, a.new, a.repeats, lm=lm)
    run_sampling(report, a.model, device, a.prompts, a.n, a.new, a.repeats, hf_batch=a.hf_batch,
                 with_naive=not a.no_naive, with_compile=a.compile, lm=lm)
    report.summary()


if __name__ == "__main__":
    main()
