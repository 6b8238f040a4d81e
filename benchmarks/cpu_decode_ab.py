"""Decoding on a CPU, side by side in one process: `evals.sample` (dynamic cache, one prefill per prompt) against
plain HF `generate` and against `sample(static_cache=True)` (HF's static KV cache, a public `generate` argument),
interleaved, wall and thread CPU time, and whether the sampled tokens are identical under the same seed.

    OMP_NUM_THREADS=1 python benchmarks/cpu_decode_ab.py --model qwen2.5-coder-0.5b-instruct --dtypes bfloat16,float32

Then, on the logits of one real decoding step ([batch, vocab] in the model's dtype), the per-step sampling work
`generate` does at temperature 1 / top_p 1 (float32 copy, softmax, `torch.multinomial`, whose Gumbel-style draw is
one `exponential_` per vocabulary entry) against the decoding forward that produced them, and against a sampler
that draws one uniform per row (inverse CDF over the float32 cumulative sum): the same distribution, a different
random stream, so NOT what `sample` does; it is timed to show what the full-vocabulary draw costs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def timed(fn) -> tuple[float, float, object]:
    c0, t0 = time.thread_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, time.thread_time() - c0, out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    from introspect_mech.evals.sampling import _batch_seed, sample, stop_token_ids
    from introspect_mech.kv_cache import cache_kwargs, output_cache
    from introspect_mech.models import load_model

    report = common.Report(a.out)
    report.header(bench="cpu_decode_ab", model=a.model, machine=common.machine(torch.device("cpu")),
                  capability=torch.backends.cpu.get_cpu_capability(), versions=common.versions(),
                  command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]))
    bs, nt = a.batch, a.new_tokens
    prompts = common.prompts(bs)
    for dt in a.dtypes.split(","):
        m = common.build_model("tiny", torch.device("cpu"), getattr(torch, dt)) if a.model == "tiny" else \
            load_model(a.model, dtype=dt, device="cpu")
        case = f"{a.model} {dt} b{bs}"
        tok = m.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else stop_token_ids(m)[0]
        enc = [m.encode_prompt(p).tolist() for p in prompts]
        n = max(map(len, enc))
        ids = torch.tensor([[pad] * (n - len(e)) + e for e in enc])
        att = torch.tensor([[0] * (n - len(e)) + [1] * len(e) for e in enc])

        def hf():
            torch.manual_seed(_batch_seed(0, 0))  # the seed `sample(seed=0)` gives its first batch
            with torch.no_grad():
                out = m.model.generate(input_ids=ids, attention_mask=att, max_new_tokens=nt, do_sample=True,
                                       temperature=1.0, top_p=1.0, top_k=0, pad_token_id=pad,
                                       eos_token_id=stop_token_ids(m))
            return [tok.decode([t for t in row if t not in stop_token_ids(m)], skip_special_tokens=True).strip()
                    for row in out[:, n:].tolist()]

        fns = {"sample (dynamic cache, shared prefill)": lambda: [r["response"] for r in sample(
                   m, prompts, max_new_tokens=nt, temperature=1.0, batch_size=bs, progress=False, seed=0)],
               "sample static_cache=True": lambda: [r["response"] for r in sample(
                   m, prompts, max_new_tokens=nt, temperature=1.0, batch_size=bs, progress=False, seed=0,
                   static_cache=True)],
               "HF generate (dynamic cache)": hf}
        names = list(fns)
        res: dict[str, list] = {k: [] for k in names}
        outs: dict[str, list] = {}
        for k in names:
            outs[k] = fns[k]()  # warm-up, and the texts
        for r in range(a.repeats):
            for k in names[r % len(names):] + names[: r % len(names)]:
                w, c, o = timed(fns[k])
                res[k].append((w, c))
                assert o == outs[k], f"{k}: not reproducible under the same seed"
        base = names[0]
        for k in names:
            report.timing("cpu-decode", case, f"{k}, {nt} new", [w for w, _ in res[k]],
                          thread_cpu_s=common.median([c for _, c in res[k]]), loadavg_1m=os.getloadavg()[0])
        for k in names[1:]:
            report.ratio("cpu-decode", case, f"{k} / sample: thread CPU time",
                         common.median([c for _, c in res[k]]) / common.median([c for _, c in res[base]]))
            same = sum(x == y for x, y in zip(outs[k], outs[base]))
            report.note("cpu-decode", case, f"{k}: {same}/{bs} responses identical to sample's under seed 0")

        # one real decoding step's logits, then the sampling work on them
        with torch.no_grad():
            cache = output_cache(m.model(input_ids=ids, attention_mask=att, use_cache=True, logits_to_keep=1))
            step_ids = torch.tensor([[enc[0][-1]]] * bs)
            att2 = torch.cat([att, torch.ones(bs, 1, dtype=att.dtype)], 1)

            def forward_step():
                out = m.model(input_ids=step_ids, attention_mask=att2, use_cache=True, logits_to_keep=1,
                              **cache_kwargs(m, cache))
                cache.crop(-1)  # back to the prompt (a negative count removes tokens)
                return out.logits[:, -1, :]

            logits = forward_step()

            def hf_sampling():  # what generate does per step at temperature 1, top_p 1, top_k 0
                probs = torch.softmax(logits.to(copy=True, dtype=torch.float32), dim=-1)
                return torch.multinomial(probs, num_samples=1)

            def one_uniform():  # same distribution, one random number per row (a different random stream)
                probs = torch.softmax(logits.to(copy=True, dtype=torch.float32), dim=-1)
                cdf = probs.cumsum(-1)
                u = torch.rand(bs, 1) * cdf[:, -1:]
                return torch.searchsorted(cdf, u).clamp(max=probs.shape[-1] - 1)

            steps = {"decoding forward (1 token/row)": forward_step, "HF sampling (fp32 softmax + multinomial)":
                     hf_sampling, "one-uniform sampler (not used)": one_uniform}
            st: dict[str, list] = {k: [] for k in steps}
            for r in range(3 * a.repeats + 1):
                for k in steps:
                    w, c, _ = timed(steps[k])
                    if r:
                        st[k].append((w, c))
        for k in steps:
            report.timing("cpu-decode", case, k, [w for w, _ in st[k]],
                          thread_cpu_s=common.median([c for _, c in st[k]]))
        fwd_c = common.median([c for _, c in st["decoding forward (1 token/row)"]])
        for k in list(steps)[1:]:
            report.ratio("cpu-decode", case, f"{k} / decoding forward (thread CPU)",
                         common.median([c for _, c in st[k]]) / fwd_c)
    report.summary()


if __name__ == "__main__":
    main()
