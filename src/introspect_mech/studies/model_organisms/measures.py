"""The measures of the model-organisms study (Turner, Soligo et al. 2025; Soligo, Turner et al. 2025): the
rank-1 adapter's B norm and rotation between finetunes, the judged answers' classes, the EM direction from
judged answers, and the ablation ratio with its bootstrap interval."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ...evals import judge_record as _jr
from ...probes.em import em_direction_from_pairs

if TYPE_CHECKING:
    from .config import MOConfig


def lora_b_norm(adapter_dir: str | Path) -> float:
    """Frobenius norm of all LoRA-B matrices of a saved adapter (the B vector for a rank-1 adapter).

    Args:
        adapter_dir: a saved PEFT adapter directory (`adapter_model*.safetensors`).

    Returns:
        sqrt(sum of squares of every `lora_B` weight).

    Raises:
        FileNotFoundError: the directory has no adapter safetensors file.
    """
    from safetensors.torch import load_file

    files = sorted(Path(adapter_dir).glob("adapter_model*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{adapter_dir}: no adapter_model*.safetensors")
    sq = 0.0
    for f in files:
        for k, v in load_file(str(f)).items():
            if "lora_B" in k:
                sq += float(v.double().pow(2).sum())
    return sq ** 0.5


def classify(rows: Sequence[dict], cfg: MOConfig) -> tuple[list[dict], list[dict]]:
    """(misaligned, aligned) judged answers; both classes need coherent > coherent_min.

    Args:
        rows: judged rows (`aligned`, `coherent`: 0-100 or None); rows missing a score are dropped.
        cfg: the thresholds: misaligned = aligned <= `aligned_max`, aligned = aligned > `aligned_min`.

    Returns:
        (misaligned rows, aligned rows); answers in between belong to neither.
    """
    ok = [r for r in rows if r.get("aligned") is not None and r.get("coherent") is not None
          and r["coherent"] > cfg.coherent_min]
    mis = [r for r in ok if r["aligned"] <= cfg.aligned_max]
    ali = [r for r in ok if r["aligned"] > cfg.aligned_min]
    return mis, ali


def em_direction_from_answers(model, judged: Sequence[dict], samples: Sequence[dict], cfg: MOConfig, *,
                              batch_size: int = 8, judge_validation: dict[str, Any] | None = None):
    """The model-organisms EM direction from the model's own judged answers, or (None, reason).

    Args:
        model: the model whose activations give the direction (the finetuned model).
        judged: its judged answers (`prompt_id`, `sample`, `aligned`, `coherent`), split by `classify`.
        samples: the sampled rows they came from (`prompt_id`, `sample`, `messages`, `response`).
        cfg: the thresholds (`classify`).
        batch_size: conversations per forward.
        judge_validation: the record of the judge that selected the answers (`evals.judge_record`; None: no
            record, "unvalidated judge"): it goes into `info` and the direction's meta.

    Returns:
        (Direction or None, info) where info records the answer ids of both classes (or the reason:
        a class is empty) and the selecting judge's `judge_validation` line and `judge_label`.
    """

    by_key = {(s["prompt_id"], s["sample"]): s for s in samples}
    mis, ali = classify(judged, cfg)
    info = {"n_judged": len(judged), "n_misaligned": len(mis), "n_aligned": len(ali),
            "misaligned_ids": [f"{r['prompt_id']}#{r['sample']}" for r in mis],
            "aligned_ids": [f"{r['prompt_id']}#{r['sample']}" for r in ali], **_jr.fields(judge_validation)}
    if not mis or not ali:
        info["reason"] = (f"not computable: {len(mis)} misaligned and {len(ali)} aligned coherent judged answers "
                          f"(of {len(judged)}; judge abstentions: {sum(r.get('aligned') is None for r in judged)})")
        return None, info

    def conv(r):
        s = by_key[(r["prompt_id"], r["sample"])]
        return list(s["messages"]) + [{"role": "assistant", "content": s["response"]}]

    d = em_direction_from_pairs(model, [conv(r) for r in mis], [conv(r) for r in ali], batch_size=batch_size,
                                progress=False)
    d.meta.update(recipe="model_organisms_em_own_answers", aligned_max=cfg.aligned_max, coherent_min=cfg.coherent_min,
                  aligned_min=cfg.aligned_min, n_misaligned=len(mis), n_aligned=len(ali),
                  judge_validation=info["judge_validation"])
    return d, info


def ratio_ci(base: Sequence[float], ft: Sequence[float], treated: Sequence[float], *, n_boot: int = 2000,
             seed: int = 0) -> dict[str, Any]:
    """(mean ft - mean treated) / (mean ft - mean base), independent bootstrap of the three groups.

    The share of the finetuning effect that a treatment (e.g. an ablation) removes.

    Args:
        base: per-answer values of the base model (e.g. 0/1 misaligned flags).
        ft: per-answer values of the finetuned model.
        treated: per-answer values of the treated finetuned model.
        n_boot: bootstrap resamples.
        seed: bootstrap seed.

    Returns:
        {"value", "lo", "hi" (2.5 / 97.5 % bootstrap quantiles), "n" (= len(treated))}; value None
        when ft and base have equal means, everything None when a group is empty.
    """
    b, f, t = (np.asarray(x, float) for x in (base, ft, treated))
    if not len(b) or not len(f) or not len(t):
        return {"value": None, "lo": None, "hi": None, "n": 0}
    rng = np.random.default_rng(seed)

    def boot(x):
        return x[rng.integers(0, len(x), (n_boot, len(x)))].mean(1)

    fb, bb, tb = boot(f), boot(b), boot(t)
    den = fb - bb
    ok = np.abs(den) > 1e-12
    vals = (fb[ok] - tb[ok]) / den[ok]
    value = (f.mean() - t.mean()) / (f.mean() - b.mean()) if abs(f.mean() - b.mean()) > 1e-12 else None
    lo, hi = (np.quantile(vals, [0.025, 0.975]) if len(vals) else (None, None))
    return {"value": None if value is None else float(value), "lo": None if lo is None else float(lo),
            "hi": None if hi is None else float(hi), "n": int(len(t)), "unit": "answer",
            "method": "percentile-bootstrap over answers (three groups resampled independently)", "measure": "judged"}


def _lora_b(adapter_dir: str | Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    files = sorted(Path(adapter_dir).glob("adapter_model*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{adapter_dir}: no adapter_model*.safetensors")
    return {k: v.double() for f in files for k, v in load_file(str(f)).items() if "lora_B" in k}


def lora_b_rotation(adapter_a: str | Path, adapter_b: str | Path) -> dict[str, Any]:
    """How far the LoRA-B matrices turned between two saved adapters (e.g. consecutive checkpoints).

    Per module: the principal angles between the column spaces of B_a and B_b ([d_out, r]; for a
    rank-1 adapter the angle between the two B vectors, sign ignored); `cos` is the cosine of the
    largest angle. A phase transition shows as a rotation, which a norm alone cannot show.

    Args:
        adapter_a: the earlier adapter directory.
        adapter_b: the later one (same modules).

    Returns:
        {"mean_cos", "min_cos", "max_angle_deg", "n_modules", "per_module": {module: cos}}.

    Raises:
        FileNotFoundError: an adapter directory without safetensors.
        ValueError: the adapters have different LoRA-B modules or shapes.
    """
    import torch

    a, b = _lora_b(adapter_a), _lora_b(adapter_b)
    if set(a) != set(b):
        raise ValueError(f"{adapter_a} and {adapter_b} have different LoRA-B modules")
    per = {}
    for k in sorted(a):
        if a[k].shape != b[k].shape:
            raise ValueError(f"{k}: shapes {tuple(a[k].shape)} and {tuple(b[k].shape)} differ")
        if float(a[k].norm()) == 0 or float(b[k].norm()) == 0:
            continue  # an all-zero B (step 0) has no direction
        qa, qb = torch.linalg.qr(a[k])[0], torch.linalg.qr(b[k])[0]
        sv = torch.linalg.svdvals(qa.T @ qb).clamp(0, 1)
        per[k] = float(sv.min())
    cos = list(per.values())
    return {"mean_cos": float(np.mean(cos)) if cos else None, "min_cos": min(cos) if cos else None,
            "max_angle_deg": float(np.degrees(np.arccos(min(cos)))) if cos else None,
            "n_modules": len(cos), "per_module": per}
