"""The CPU's dtype for `dtype="auto"`: bfloat16 only where the cores multiply it natively (measured once per machine).

torch has no public "this CPU multiplies bf16 natively" query, so `cpu_dtype_decision` times one linear layer
in both dtypes and caches the verdict as JSON in the user cache; `models.load_model(dtype="auto")` and the
finetune loop's autocast read it through `default_dtype`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from .paths import cache_dir
from .runs import write_json

CPU_DTYPE_ENV = "INTROSPECT_MECH_CPU_DTYPE"  # "auto" (default), "float32" or "bfloat16"
BF16_MIN_SPEEDUP = 1.5  # bf16 is chosen on a CPU only where its matmul is at least this much faster


def _cpu_key() -> dict[str, Any]:
    """What decides whether the CPU multiplies bf16 natively: model name and flags, torch version.

    Not the thread count: the choice is a property of the cores (measured on one thread, see
    `measure_cpu_bf16`), so `OMP_NUM_THREADS=1` and the default pick the same dtype and the same
    dequantised cache.
    """
    import platform

    model, flags, seen = platform.processor(), "", False
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = line.partition(":")
            if k.strip() == "model name" and not seen:
                model, seen = v.strip(), True
            elif k.strip() in ("flags", "Features") and not flags:
                flags = v.strip()
    except OSError:
        pass
    return {"cpu": model, "flags_sha256": hashlib.sha256(flags.encode()).hexdigest()[:16],
            "torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability()}


def measure_cpu_bf16(n: int = 128, k: int = 896, m: int = 2048, reps: int = 10, threads: int = 1) -> dict[str, Any]:
    """Time one linear layer (`F.linear` of `[n, k]` by a `[m, k]` weight, the layout a model's layers
    use) in float32 and in bfloat16 on the CPU, best of `reps`, interleaved, on `threads` threads.

    One thread by default: whether bf16 is native is a property of the core's instructions, and on a
    shared machine a multi-threaded timing mostly measures waiting for the slowest thread (at load ~8
    on 2 cores, 2 threads gave 1.36x where one thread gave 13.6x, on an AVX512-BF16 CPU that reaches
    3.5x on 2 idle threads). The thread count is restored afterwards.

    Args:
        n: rows of the input.
        k: input features.
        m: output features.
        reps: timed repetitions per dtype.
        threads: torch threads during the measurement.

    Returns:
        `{"fp32_gflops", "bf16_gflops", "speedup", "threads"}` (speedup = bf16 / fp32 throughput).
    """
    g = torch.Generator().manual_seed(0)
    a, w = torch.randn(n, k, generator=g), torch.randn(m, k, generator=g)
    pairs = {torch.float32: (a, w), torch.bfloat16: (a.bfloat16(), w.bfloat16())}
    best = {dt: float("inf") for dt in pairs}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            for x, y in pairs.values():  # warm-up (oneDNN primitive creation)
                torch.nn.functional.linear(x, y)
            for _ in range(reps):
                for dt, (x, y) in pairs.items():
                    t0 = time.perf_counter()
                    torch.nn.functional.linear(x, y)
                    best[dt] = min(best[dt], time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    flops = 2.0 * n * k * m
    f32, b16 = flops / best[torch.float32] / 1e9, flops / best[torch.bfloat16] / 1e9
    return {"fp32_gflops": round(f32, 3), "bf16_gflops": round(b16, 3), "speedup": round(b16 / f32, 3),
            "threads": threads}


_CPU_DTYPE: dict[str, Any] = {}


def cpu_dtype_decision() -> dict[str, Any]:
    """The CPU's dtype choice for `dtype="auto"`, with its evidence.

    torch 2.13 has no public "this CPU multiplies bf16 natively" query (`get_cpu_capability()` says
    "AVX512" on AMX machines as on plain AVX512 ones), so the choice is measured: a 128 x 896 -> 2048
    linear layer in both dtypes on one thread, once per machine (CPU model + flags, torch version), cached
    as JSON in the user cache. bfloat16 is chosen when it is at least `BF16_MIN_SPEEDUP` times faster
    than float32 (AMX / AVX512-BF16 machines: ~10x; AVX2 machines, which emulate it: slower).
    `$INTROSPECT_MECH_CPU_DTYPE=float32|bfloat16` overrides the measurement (the test suite pins float32).

    Returns:
        `{"dtype": "float32"|"bfloat16", "source": "measured"|"env", ...the key and measurement}`.
    """
    env = os.environ.get(CPU_DTYPE_ENV, "auto").strip().lower() or "auto"
    if env not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"${CPU_DTYPE_ENV} must be auto, float32 or bfloat16, got {env!r}")
    if env != "auto":
        return {"dtype": env, "source": "env"}
    key = _cpu_key()
    tag = json.dumps(key, sort_keys=True)
    if tag in _CPU_DTYPE:
        return _CPU_DTYPE[tag]
    path = cache_dir() / "cpu_dtype.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if tag not in known:
        meas = measure_cpu_bf16()
        dt = "bfloat16" if meas["speedup"] >= BF16_MIN_SPEEDUP else "float32"
        known[tag] = {"dtype": dt, "source": "measured", **key, **meas,
                      "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json(path, known, indent=1)  # the one writer: a temp file of its own, no symlink followed
    _CPU_DTYPE[tag] = known[tag]
    return known[tag]


def default_dtype(device: str | torch.device | None) -> torch.dtype:
    """The "auto" dtype: bfloat16 on CUDA; on CPU bfloat16 only where it multiplies natively (measured).

    Args:
        device: the target device (None: CUDA if available, else CPU).

    Returns:
        The dtype (`cpu_dtype_decision()` explains a CPU's choice).
    """
    dev = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.startswith("cuda") or dev == "auto":
        return torch.bfloat16
    return getattr(torch, cpu_dtype_decision()["dtype"])
