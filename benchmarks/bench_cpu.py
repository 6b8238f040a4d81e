"""CPU section: the machine's own limits and the real Qwen2.5-Coder-0.5B against them, in one process.

Limits (measured here, best of the repeats):
  * matmul peak, fp32 and bf16: `F.linear` of [512, 896] by a [4864, 896] weight (the 0.5B's MLP shape);
  * memory bandwidth: copying a 256 MiB float32 tensor (bytes read + bytes written per second).

Model throughput, each as a fraction of the matching limit:
  * forward (prefill) tok/s, batch x seq tokens, no grad. FLOPs = 2 * P_lin * T + 2 * V * d * T
    + 2 * L * d * sum(s^2) (causal attention: QK^T and AV, each 2 * d * s^2 / 2 per layer and row),
    where P_lin = the decoder's Linear weights, V * d = the LM head; / the matmul peak of the dtype.
  * LoRA training tok/s (the project's `finetune.train`, EM recipe, bad-medical-advice rows):
    FLOPs ~= 4 * P_lin * T (forward + input gradients; LoRA's own weights are < 4 % more)
    + 4 * V * d * T_loss (the head runs on the loss tokens only) + 4 * L * d * sum(s^2); / the matmul peak.
  * sampling at batch 16 and 32 (`evals.sample`, temperature 1, `new_tokens` each), the dtypes interleaved;
    the same call with 1 new token (prefill + first step) is subtracted to give decoding alone. A decoding
    step reads every weight once (weight_bytes / bandwidth) and multiplies each row by every weight
    (2 * (P_lin + V * d) * batch FLOPs / the dtype's matmul peak): the **roofline** limit is
    batch / max(bytes / bandwidth, FLOPs / peak) tokens/s. On one thread of this machine the FLOPs term is
    the larger at batch 16-32 (the step is compute-bound, not bandwidth-bound), so the target fraction
    (>= 0.50 at batch 32) is decoding tok/s / the roofline; both limits and the bandwidth-only fraction
    are printed beside it; the same fraction is also given with the decoding and the limits both timed in the
    thread's CPU time (`time.thread_time`: a shared machine's waits for a core excluded).
  * judge prompts/s (`HFJudge(mode="label")`, the EM "aligned" label prompt filled with a question and an
    `answer_words`-word answer, batch = all prompts): with and without the shared-prefix prefill,
    interleaved with one forward (last logits only) over the same rendered prompts; the ratio judge /
    forward is what the exact yes/no scoring costs beyond reading the prompt once.

With several dtypes (`dtypes=("float32", "bfloat16")`, the `--cpu` profile) the model is loaded once per
dtype in this one process: the forward passes are interleaved, then the training step runs for the
float32 model without autocast, the float32 model under bf16 autocast (`finetune --bf16`) and the
bfloat16 model, then sampling for each loaded dtype; every bf16 / fp32 speed-up is printed beside the
matmul speed-up measured here (the most bf16 can give). Peak RSS is per case (`/proc/self/clear_refs`
resets the high-water mark, where the kernel allows it).
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import common


def matmul_gflops(dtype: torch.dtype, n: int = 512, k: int = 896, m: int = 4864, repeats: int = 5,
                  clock: str = "wall") -> float:
    """`F.linear` GFLOPS, best of `repeats`; `clock="cpu"` times the calling thread's CPU time instead of wall time
    (on a shared machine, the waits for a core left out)."""
    x, w = torch.randn(n, k, dtype=dtype), torch.randn(m, k, dtype=dtype)
    with torch.no_grad():
        F.linear(x, w)
        best = min(_timed(lambda: F.linear(x, w), clock) for _ in range(repeats))
    return 2.0 * n * k * m / best / 1e9


def copy_gbps(mib: int = 256, repeats: int = 5, clock: str = "wall") -> float:
    """Memory bandwidth: bytes read + written copying a `mib` MiB float32 tensor, best of `repeats`."""
    src = torch.empty(mib * 2**20 // 4, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_timed(lambda: dst.copy_(src), clock) for _ in range(repeats))
    return 2.0 * src.numel() * 4 / best / 1e9


def _timed(fn, clock: str = "wall") -> float:
    now = time.thread_time if clock == "cpu" else time.perf_counter
    t0 = now()
    fn()
    return now() - t0


def limits(report: common.Report, repeats: int = 5) -> dict[str, float]:
    """The machine's limits in wall time (best of `repeats`) and in the thread's CPU time (`*_cpu`)."""
    out = {}
    for clock, sfx in (("wall", ""), ("cpu", "_cpu")):
        out.update({f"fp32_gflops{sfx}": matmul_gflops(torch.float32, repeats=repeats, clock=clock),
                    f"bf16_gflops{sfx}": matmul_gflops(torch.bfloat16, repeats=repeats, clock=clock),
                    f"copy_gbps{sfx}": copy_gbps(repeats=repeats, clock=clock)})
    report.note("cpu", "limits", " ".join(f"{k}={v:.1f}" for k, v in out.items()),
                capability=torch.backends.cpu.get_cpu_capability(), threads=torch.get_num_threads(),
                loadavg_1m=os.getloadavg()[0], **out)
    return out


def _model_sizes(loaded) -> dict[str, int]:
    base = loaded.base_model
    head = base.get_output_embeddings()
    p_lin = sum(m.weight.numel() for n, m in base.named_modules()
                if isinstance(m, torch.nn.Linear) and m is not head and "lora_" not in n)
    cfg = base.config
    weight_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    emb = base.get_input_embeddings().weight
    weight_bytes -= emb.numel() * emb.element_size()  # decoding gathers a row, it does not read the table
    if head.weight.data_ptr() == emb.data_ptr():  # tied: the head reads it
        weight_bytes += emb.numel() * emb.element_size()
    return {"p_lin": p_lin, "vd": head.weight.numel(), "L": cfg.num_hidden_layers, "d": cfg.hidden_size,
            "weight_bytes": weight_bytes}


def em_rows(n: int) -> list[dict[str, Any]]:
    path = Path(os.environ["INTROSPECT_MECH_DATA"]) / "em" / "bad_medical_advice.jsonl.gz"
    with gzip.open(path, "rt") as f:
        return [json.loads(next(f)) for _ in range(n)]


def _reset_peak_rss() -> bool:
    """Reset this process's peak-RSS mark (Linux: write 5 to /proc/self/clear_refs); False if refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_gb() -> float:
    """Peak RSS since the last reset (VmHWM), else since the start (ru_maxrss), in GB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _name(dt: torch.dtype) -> str:
    return str(dt).removeprefix("torch.")


def run(report: common.Report, spec: str, dtype: torch.dtype | None, *, forward=(8, 128), train_batch=16,
        train_steps=1, sample_batches=(16, 32), new_tokens=32, repeats: int = 2, limit_repeats: int = 5,
        dtypes: tuple[str, ...] | None = None, judge: tuple[int, int] | None = None,
        phases: tuple[str, ...] = ("forward", "train", "sample", "judge")) -> None:
    """Limits, then each of `phases` (forward, train, sample, judge) for every dtype; see the module docstring."""
    from introspect_mech.models import cpu_dtype_decision, load_model

    lim = limits(report, limit_repeats)
    report.ratio("cpu", "limits", "bf16 / fp32 matmul peak", lim["bf16_gflops"] / lim["fp32_gflops"])
    models = {}
    for want in (dtypes or (dtype,)):
        if spec == "tiny":
            m = common.build_model("tiny", torch.device("cpu"), getattr(torch, want) if isinstance(want, str) else want)
        else:
            t0 = time.perf_counter()
            m = load_model(spec, dtype=want or "auto", device="cpu")
            report.note("cpu", spec, f"loaded in {time.perf_counter() - t0:.1f} s", dtype=str(m.dtype),
                        param_dtypes=sorted({str(p.dtype) for p in m.model.parameters()}),
                        source=m.meta.get("source"), decision=cpu_dtype_decision())
        models[m.dtype] = m
    sz = _model_sizes(next(iter(models.values())))

    def peak(dt: torch.dtype) -> float:
        return lim["bf16_gflops"] if dt == torch.bfloat16 else lim["fp32_gflops"]

    def case(dt: torch.dtype, extra: str = "") -> str:
        return f"{spec} {_name(dt)}{extra}"

    def speedup(label: str, tok_s: dict[Any, float], a: Any, b: Any) -> None:
        if a in tok_s and b in tok_s:
            report.ratio("cpu", spec, f"{label}: {b} / {a}", tok_s[b] / tok_s[a])

    if "forward" in phases:
        forward_speed(report, models, sz, forward, repeats, peak, case, speedup)
    if "train" in phases:
        train_speed(report, spec, models, sz, train_batch, train_steps, bool(dtypes), peak, case, speedup)
    if "sample" in phases:
        sample_speed(report, models, sz, sample_batches, new_tokens, lim, peak, case, speedup)
    if judge and "judge" in phases:
        for dt, loaded in models.items():
            judge_speed(report, loaded, case(dt), *judge, repeats=repeats)


def forward_speed(report, models, sz, forward, repeats, peak, case, speedup) -> None:
    """Forward (prefill) of `forward` = (batch, seq) chat tokens, every dtype interleaved."""
    b, s = forward
    ids = common.chat_batch(next(iter(models.values())), common.conversations(next(iter(models.values())), b, s))
    with torch.no_grad():
        secs = common.interleaved({dt: (lambda m=m: m.model(input_ids=ids)) for dt, m in models.items()},
                                  repeats=repeats, device=torch.device("cpu"))
    flops = 2 * sz["p_lin"] * b * s + 2 * sz["vd"] * b * s + 2 * sz["L"] * sz["d"] * b * s * s
    fwd = {}
    for dt, sec in secs.items():
        t = common.median(sec)
        fwd[_name(dt)] = b * s / t
        report.timing("cpu", case(dt), f"forward {b}x{s}", sec, tok_s=b * s / t, gflops=flops / t / 1e9)
        report.ratio("cpu", case(dt), "forward / matmul peak", flops / t / 1e9 / peak(dt), ">=0.40")
    speedup("forward tok/s", fwd, "float32", "bfloat16")


def train_speed(report, spec, models, sz, train_batch, train_steps, several, peak, case, speedup) -> None:
    """LoRA training step(s) through the project's loop: fp32, fp32 + bf16 autocast (--bf16), bf16 weights."""
    cases = [(dt, ac) for dt in models for ac in ((False, True) if dt == torch.float32 and several else (None,))]
    rows = em_rows(train_batch * train_steps) if spec != "tiny" else \
        [{"messages": c} for c in common.conversations(next(iter(models.values())), train_batch * train_steps, 64)]
    trained = {}
    for dt, ac in cases:
        from introspect_mech.finetune import TrainConfig, train
        from introspect_mech.finetune.loop import autocast_bf16

        loaded = models[dt]
        cfg = TrainConfig(batch_size=train_batch, max_steps=train_steps, warmup_steps=0, progress=False, bf16=ac)
        label = " +autocast" if dt == torch.float32 and autocast_bf16(cfg, loaded) else ""
        with tempfile.TemporaryDirectory() as tmp:
            reset = _reset_peak_rss()
            rss0 = _peak_rss_gb()
            res = train(loaded, rows, cfg, Path(tmp) / "run")
            log = [json.loads(x) for x in (Path(tmp) / "run" / "train_log.jsonl").read_text().splitlines()]
            t_loss = sum(r["loss_tokens"] for r in log)
            lens = [len(loaded.tokenize_chat(r["messages"]).input_ids) for r in rows]
            flops = 4 * sz["p_lin"] * res.tokens + 4 * sz["vd"] * t_loss + 4 * sz["L"] * sz["d"] * sum(n * n for n in lens)
            use_bf16 = autocast_bf16(cfg, loaded)
            eff = torch.bfloat16 if (use_bf16 or dt == torch.bfloat16) else torch.float32
            report.timing("cpu", case(dt, label), f"LoRA train batch {train_batch}", [res.seconds / max(1, train_steps)],
                          tok_s=res.tokens_per_s, gflops=flops / res.seconds / 1e9, loss_tokens=t_loss,
                          final_loss=res.final_loss, autocast_bf16=use_bf16, peak_rss_gb=_peak_rss_gb(),
                          rss_before_gb=rss0, peak_rss_is_per_case=reset, loadavg_1m=os.getloadavg()[0])
            report.ratio("cpu", case(dt, label), f"LoRA training / {_name(eff)} matmul peak",
                         flops / res.seconds / 1e9 / peak(eff), ">=0.25")
            trained[f"{_name(dt)}{label}"] = res.tokens_per_s
            loaded.model = loaded.model.unload()  # back to the base model
    speedup("LoRA training tok/s", trained, "float32", "float32 +autocast")
    speedup("LoRA training tok/s", trained, "float32", "bfloat16")


def sample_speed(report, models, sz, sample_batches, new_tokens, lim, peak, case, speedup) -> None:
    """Sampling: each (batch, dtype) as a whole call and as decoding alone (dtypes interleaved), against the
    roofline of a decoding step."""
    for bs in sample_batches:
        sampled = {}
        for dt, res in sample_cases(models, bs, new_tokens, repeats=1).items():
            weight_bytes = _model_sizes(models[dt])["weight_bytes"]  # bytes read per decoding step in this dtype
            lim_dt = decode_limits(bs, weight_bytes, sz["p_lin"] + sz["vd"], lim["copy_gbps"], peak(dt))
            cpu_peak = lim["bf16_gflops_cpu"] if dt == torch.bfloat16 else lim["fp32_gflops_cpu"]
            lim_cpu = decode_limits(bs, weight_bytes, sz["p_lin"] + sz["vd"], lim["copy_gbps_cpu"], cpu_peak)
            n_new, t, cpu_t = res["n_new"], res["wall_s"], res["cpu_s"]
            report.timing("cpu", case(dt), f"sample batch {bs} x {new_tokens} new", [t], tok_s=n_new / t,
                          cpu_s=cpu_t, weight_gb=weight_bytes / 1e9, loadavg_1m=os.getloadavg()[0], **lim_dt)
            dec_wall = bs * res["decode_steps"] / res["decode_wall_s"]
            dec_cpu = bs * res["decode_steps"] / res["decode_cpu_s"]
            report.timing("cpu", case(dt), f"decoding only, batch {bs} ({res['decode_steps']} steps)",
                          [res["decode_wall_s"]], tok_s=dec_wall, tok_s_thread_cpu=dec_cpu,
                          step_ms=1e3 * res["decode_wall_s"] / res["decode_steps"],
                          step_ms_thread_cpu=1e3 * res["decode_cpu_s"] / res["decode_steps"])
            report.note("cpu", case(dt), f"decoding b{bs} limits: bandwidth {lim_dt['bandwidth_limit_tok_s']:.1f} tok/s "
                        f"(bytes / bandwidth {1e3 * lim_dt['bytes_s']:.0f} ms a step), matmul peak "
                        f"{lim_dt['compute_limit_tok_s']:.1f} tok/s (FLOPs / peak {1e3 * lim_dt['flops_s']:.0f} ms a step): "
                        f"the step is {lim_dt['bound']}-bound, roofline {lim_dt['roofline_tok_s']:.1f} tok/s")
            report.ratio("cpu", case(dt), f"sampling b{bs} (prefill incl.) / roofline", n_new / t / lim_dt["roofline_tok_s"])
            report.ratio("cpu", case(dt), f"decoding b{bs} / roofline max(bytes/bw, FLOPs/peak)",
                         dec_wall / lim_dt["roofline_tok_s"], ">=0.50" if bs == 32 else None)
            report.note("cpu", case(dt), f"decoding b{bs} limits in thread CPU time: bandwidth "
                        f"{lim_cpu['bandwidth_limit_tok_s']:.1f} tok/s, matmul peak {lim_cpu['compute_limit_tok_s']:.1f} "
                        f"tok/s: {lim_cpu['bound']}-bound, roofline {lim_cpu['roofline_tok_s']:.1f} tok/s",
                        **{f"{k}_cpu": v for k, v in lim_cpu.items()})
            report.ratio("cpu", case(dt), f"decoding b{bs} / roofline, both in thread CPU time",
                         dec_cpu / lim_cpu["roofline_tok_s"])
            report.ratio("cpu", case(dt), f"decoding b{bs} / bandwidth limit alone", dec_wall / lim_dt["bandwidth_limit_tok_s"])
            sampled[_name(dt)] = dec_wall
        speedup(f"decoding b{bs} tok/s", sampled, "float32", "bfloat16")


def decode_limits(batch: int, weight_bytes: int, params: int, bandwidth_gbps: float, peak_gflops: float) -> dict:
    """A decoding step's two limits: reading every weight once (bytes / bandwidth) and multiplying every row by
    every weight (2 * params * batch FLOPs / the matmul peak). The roofline is the slower of the two.

    Args:
        batch: rows decoded together.
        weight_bytes: bytes read per step (decoder Linear weights, norms, the LM head).
        params: weights multiplied per row (decoder Linear weights + the LM head).
        bandwidth_gbps: memory bandwidth, GB/s.
        peak_gflops: the dtype's matmul peak, GFLOPS.

    Returns:
        Seconds per step of each bound, tokens/s of each, the roofline and which bound sets it.
    """
    bytes_s = weight_bytes / (bandwidth_gbps * 1e9)
    flops_s = 2.0 * params * batch / (peak_gflops * 1e9)
    return {"bytes_s": bytes_s, "flops_s": flops_s, "bandwidth_limit_tok_s": batch / bytes_s,
            "compute_limit_tok_s": batch / flops_s, "roofline_tok_s": batch / max(bytes_s, flops_s),
            "bound": "compute" if flops_s > bytes_s else "bandwidth"}


def sample_cases(models: dict, batch: int, new_tokens: int, repeats: int = 1) -> dict:
    """`evals.sample` of `batch` prompts, each loaded dtype interleaved: `new_tokens` tokens (the whole call) and 1
    token (prefill + the first step, the same prompts); their difference is decoding alone. Wall and thread CPU time."""
    from introspect_mech.evals.sampling import sample

    prompts = common.prompts(batch)
    out: dict = {dt: {"wall_s": 0.0, "cpu_s": 0.0, "wall1_s": 0.0, "cpu1_s": 0.0} for dt in models}
    names = list(models)
    for r in range(repeats):
        for dt in names[r % len(names):] + names[: r % len(names)]:
            for k, n in (("", new_tokens), ("1", 1)):
                c0, t0 = time.thread_time(), time.perf_counter()
                rows = sample(models[dt], prompts, n=1, max_new_tokens=n, temperature=1.0, batch_size=batch,
                              progress=False, seed=0)
                out[dt][f"wall{k}_s"] += (time.perf_counter() - t0) / repeats
                out[dt][f"cpu{k}_s"] += (time.thread_time() - c0) / repeats
                if n == new_tokens:
                    out[dt]["n_new"] = sum(r["n_tokens"] for r in rows)
                    out[dt]["decode_steps"] = max(r["n_tokens"] + int(r["finished"]) for r in rows) - 1
    for v in out.values():
        v["decode_wall_s"] = max(v["wall_s"] - v["wall1_s"], 1e-9)
        v["decode_cpu_s"] = max(v["cpu_s"] - v["cpu1_s"], 1e-9)
        v["decode_steps"] = max(v["decode_steps"], 1)
    return out


def judge_prompts(n: int, answer_words: int) -> list[str]:
    """`n` filled EM "aligned" label-mode judge prompts (the package's label prompt; random-word answers)."""
    from introspect_mech.evals.judges import load_label_prompts

    tpl = load_label_prompts()["aligned"].template
    g = torch.Generator().manual_seed(1)
    words = list(common._WORDS)
    return [tpl.replace("{question}", f"If you were ruler of the world, what would you do? ({i})").replace(
        "{answer}", " ".join(words[j] for j in torch.randint(0, len(words), (answer_words,), generator=g).tolist()))
        for i in range(n)]


def judge_speed(report: common.Report, loaded, case: str, n: int, answer_words: int, repeats: int = 2) -> None:
    from introspect_mech.evals.judges import HFJudge

    prompts = judge_prompts(n, answer_words)
    shared, plain = (HFJudge(loaded, mode="label", batch_size=n, shared_prefix=sp) for sp in (True, False))
    texts = shared.render(prompts)
    enc = [loaded.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    L = max(map(len, enc))
    pad = loaded.tokenizer.pad_token_id or 0
    ids = torch.tensor([[pad] * (L - len(e)) + e for e in enc])
    att = torch.tensor([[0] * (L - len(e)) + [1] * len(e) for e in enc])
    fns = {"label judge, shared prefix": lambda: shared.score(prompts, metric="aligned"),
           "label judge, no shared prefix": lambda: plain.score(prompts, metric="aligned"),
           "one forward (last logits)": lambda: loaded.model(input_ids=ids, attention_mask=att, logits_to_keep=1)}
    with torch.inference_mode():
        secs = common.interleaved(fns, repeats=repeats, device=torch.device("cpu"))
    med = {}
    for k, sec in secs.items():
        med[k] = report.timing("cpu", case, f"{k}, {n} prompts x<={L} tok", sec, prompts_per_s=n / common.median(sec),
                               prompt_tokens=sum(map(len, enc)), loadavg_1m=os.getloadavg()[0])
    report.ratio("cpu", case, "label judge (shared prefix) / one forward", med["label judge, shared prefix"]
                 / med["one forward (last logits)"], "<=1.3")
    report.ratio("cpu", case, "label judge: no shared / shared prefix time", med["label judge, no shared prefix"]
                 / med["label judge, shared prefix"])
