"""Activation caching: ours vs a raw HF forward vs hand-rolled hooks vs nnsight vs the TL bridge.

Same model, same token ids, every block's output (the residual stream after each decoder block).
Contenders, all under `torch.inference_mode()`:
  raw HF forward          model(input_ids) -> logits (what caching is measured against)
  HF body only            model.model(input_ids): all blocks + final norm, no lm_head
  hooks on all blocks     plain forward hooks saving every block output, full forward
  nnsight trace+save      nnsight.NNsight(model).trace(ids) with layers[i].output.save()
  TL bridge run_with_cache  TransformerBridge booted on a deep copy (booting mutates the model it is
                            given), names_filter = blocks.*.hook_out
  ours all / ours response_mean   introspect_mech.activations.cache(model, conversations, ...)

    python benchmarks/bench_cache.py --model embedded --shapes 1x128,8x512
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

BENCH = "cache"


def _hooks_forward(lm, ids):
    saved = []
    handles = [layer.register_forward_hook(lambda m, i, o: saved.append(o[0] if isinstance(o, tuple) else o))
               for layer in lm.layers]
    try:
        lm.model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    return saved


def _nnsight_forward(nn_model, n_layers, ids):
    saved = []
    with nn_model.trace(ids):
        for i in range(n_layers):
            saved.append(nn_model.model.layers[i].output.save())
    return saved


def run(report: common.Report, spec: str, device: torch.device, shapes: list[tuple[int, int]],
        repeats: int, with_tl: bool = True, with_nnsight: bool = True) -> None:
    lm = common.build_model(spec, device)
    cache, why = common.ours("activations", "cache")
    if cache is None:
        report.note(BENCH, spec, why)
    sig_before = common.module_signature(lm.model)

    nn_model = None
    if with_nnsight:
        from nnsight import NNsight

        nn_model = NNsight(lm.model)
    bridge = booted_copy = None
    if with_tl:
        from transformer_lens.model_bridge import TransformerBridge

        booted_copy = common.deepcopy_model(lm.model)  # booting mutates the model it is given
        bridge = TransformerBridge.boot_transformers(
            {"qwen2.5-7b": "Qwen/Qwen2.5-7B"}.get(spec, "Qwen/Qwen2.5-0.5B"), hf_model=booted_copy, tokenizer=lm.tokenizer, device=str(device), dtype=lm.dtype)
    if common.module_signature(lm.model) != sig_before:
        report.note(BENCH, spec, "WARNING: a baseline mutated the user's model")

    tl_filter = re.compile(common.TL_BLOCK_OUT)
    for b, s in shapes:
        case = f"{spec} {b}x{s}"
        convs = common.conversations(lm, b, s, seed=b * 1000 + s)
        ids = common.chat_batch(lm, convs)
        fns = {
            "raw HF forward": lambda: lm.model(input_ids=ids),
            "HF body only (no lm_head)": lambda: lm.base_model.model(input_ids=ids),
            "hooks on all blocks": lambda: _hooks_forward(lm, ids),
        }
        if nn_model is not None:
            fns["nnsight trace+save"] = lambda: _nnsight_forward(nn_model, lm.n_layers, ids)
        if bridge is not None:
            fns["TL bridge run_with_cache"] = lambda: bridge.run_with_cache(
                ids, names_filter=lambda n: tl_filter.match(n) is not None)
            fns["HF forward of TL-booted copy"] = lambda: booted_copy(input_ids=ids)
        if cache is not None:
            fns["ours all"] = lambda: cache(lm, convs, positions="all", batch_size=b)
            fns["ours response_mean"] = lambda: cache(lm, convs, positions="response_mean", batch_size=b)
        with torch.inference_mode():
            times = common.interleaved(fns, repeats=repeats, warmup=1, device=device)
            med = {k: report.timing(BENCH, case, k, v, tokens=b * s) for k, v in times.items()}
            if cache is not None:
                _check_equal(report, case, lm, convs, ids, cache)
        raw = med["raw HF forward"]
        big = spec in common.QWEN_SHAPES
        tgt_raw = {"qwen2.5-0.5b": "<=0.85", "qwen2.5-7b": "<=1.02"}.get(spec)
        report.ratio(BENCH, case, "HF body only / raw", med["HF body only (no lm_head)"] / raw)
        report.ratio(BENCH, case, "hooks on all blocks / raw", med["hooks on all blocks"] / raw)
        if "nnsight trace+save" in med:
            report.ratio(BENCH, case, "nnsight trace+save / raw", med["nnsight trace+save"] / raw)
        if "TL bridge run_with_cache" in med:
            report.ratio(BENCH, case, "TL bridge run_with_cache / raw", med["TL bridge run_with_cache"] / raw)
            report.ratio(BENCH, case, "HF forward after TL boot / raw", med["HF forward of TL-booted copy"] / raw)
        for variant in ("ours all", "ours response_mean"):
            if variant not in med:
                continue
            o = med[variant]
            report.ratio(BENCH, case, f"{variant} / raw", o / raw, tgt_raw if big else None)
            if "nnsight trace+save" in med:
                report.ratio(BENCH, case, f"nnsight / {variant} (speedup)", med["nnsight trace+save"] / o,
                             ">=1.3" if spec == "qwen2.5-0.5b" else None)
            if "TL bridge run_with_cache" in med:
                report.ratio(BENCH, case, f"TL bridge / {variant} (speedup)", med["TL bridge run_with_cache"] / o,
                             ">=2.5" if spec == "qwen2.5-0.5b" else None)

    bridge = booted_copy = nn_model = None  # free them (a `del` would confuse linters about the lambdas above)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    _check_backends(report, spec, lm, sig_before)


def _check_equal(report, case, lm, convs, ids, cache) -> None:
    """Ours must equal the block outputs (hand-rolled hooks) at every position."""
    ref = torch.stack([h.float().cpu() for h in _hooks_forward(lm, ids)], dim=1)  # batch layer pos d
    got = cache(lm, convs, positions="all", batch_size=len(convs))
    got = got.float().cpu() if isinstance(got, torch.Tensor) else None
    if got is None or got.shape != ref.shape:
        report.note(BENCH, case, f"ours(all) shape {None if got is None else tuple(got.shape)} != {tuple(ref.shape)}")
        return
    rel = float((got - ref).norm() / ref.norm())
    report.note(BENCH, case, f"ours(all) vs block outputs: relative error {rel:.2e}", rel_err=rel)


def _check_backends(report, spec, lm, sig_before) -> None:
    """Our backends must leave the user's model untouched (TL 3.9 boot mutates what it is given)."""
    backends, why = common.ours("backends")
    if backends is None:
        report.note(BENCH, spec, why)
        return
    for fn_name in ("to_nnsight", "to_transformer_lens"):
        fn = getattr(backends, fn_name, None)
        if fn is None:
            report.note(BENCH, spec, f"backends.{fn_name} missing")
            continue
        try:
            wrapped = fn(lm)
            del wrapped
        except Exception as e:  # a benchmark reports, it does not stop
            report.note(BENCH, spec, f"backends.{fn_name} failed: {type(e).__name__}: {str(e)[:160]}")
            continue
        same = common.module_signature(lm.model) == sig_before
        report.note(BENCH, spec, f"backends.{fn_name}: user's model {'untouched' if same else 'MUTATED'}",
                    untouched=same)


def parse_shapes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in part.split("x")) for part in text.split(",")]  # type: ignore[misc]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded", choices=common.MODEL_SPECS)
    ap.add_argument("--shapes", default="1x128,8x512")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default=None)
    ap.add_argument("--no-tl", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    device = common.pick_device(a.device)
    report = common.Report(a.out)
    report.header(bench=BENCH, model=a.model, machine=common.machine(device), versions=common.versions())
    run(report, a.model, device, parse_shapes(a.shapes), a.repeats, with_tl=not a.no_tl)
    report.summary()


if __name__ == "__main__":
    main()
