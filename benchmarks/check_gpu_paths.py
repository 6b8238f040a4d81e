"""Correctness of the GPU-only fast paths, checked on the device before they are timed.

* evals.sample: the static-cache (compiled) decode path vs the dynamic-cache path, greedy, on a
  random-weight Qwen2.5-0.5B, plain and under `steering.add` (hooks must still act when compiled).

    python benchmarks/check_gpu_paths.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def check_sampling() -> None:
    """Static vs dynamic cache, plain and under a steering hook (a compiled decode step that ignored
    or froze hooks would show up as steered static == unsteered static, or != steered dynamic)."""
    import inspect

    from introspect_mech import steering
    from introspect_mech.evals import sampling

    if "static_cache" not in inspect.signature(sampling.sample).parameters:
        print("sample has no static_cache option", flush=True)
        return
    lm = common.build_model("qwen2.5-0.5b", torch.device("cuda"))
    prompts = common.prompts(6)
    v = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0))
    v = (v / v.norm()).to(lm.device, lm.dtype)

    def run(static, steer):
        import contextlib

        ctx = steering.add(lm, v, layers=[lm.n_layers // 2], alpha=40.0) if steer else contextlib.nullcontext()
        with ctx:
            res = sampling.sample(lm, prompts, n=2, max_new_tokens=24, temperature=0, batch_size=8,
                                  progress=False, static_cache=static)
        return [r["response"] for r in res]

    plain_dyn, plain_st = run(False, False), run(True, False)
    steer_dyn, steer_st = run(False, True), run(True, True)
    same = lambda a, b: sum(x == y for x, y in zip(a, b))  # noqa: E731
    n = len(plain_dyn)
    print(f"sample greedy bf16: static==dynamic {same(plain_dyn, plain_st)}/{n}; steered static==steered dynamic "
          f"{same(steer_dyn, steer_st)}/{n}; steered static==unsteered static {same(steer_st, plain_st)}/{n} "
          f"(steering must change outputs: expect a low count)", flush=True)


if __name__ == "__main__":
    for fn in (check_sampling,):
        try:
            fn()
        except Exception as e:
            print(f"{fn.__name__} FAILED: {type(e).__name__}: {e}", flush=True)
