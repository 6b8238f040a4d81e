"""The judge-free steering study (proxy metrics): does adding a direction move the EM proxy, does
ablating it undo a finetune's proxy shift, and does ablating it during finetuning (CAFT) prevent it?

Every metric is the one judge-free EM proxy (`evals.em.em_proxy_fn`), per item, so every number
gets a bootstrap CI over items and seeds. **These are proxies, not EM rates**: they are never
compared with the papers' judged numbers (the judged model-organisms protocol, with the EM
direction from the model's own judged answers, is `studies.model_organisms`). The EM direction
here is the teacher-forced proxy direction (bad minus good held-out medical answers).

* `proxy_diff` / `proxy_pref`: paired preference on the project's 40 EM items (PROXY_DIFF / PROXY_PREF);
* `med_proxy_diff`: the same on held-out bad-vs-good medical advice pairs (the finetuning domain);
* `self_alignment`: expected 0-100 self-rated alignment (5 paraphrases);
* `coherence_nll`: mean per-token NLL of the unsteered base model's own greedy answers to neutral
  prompts (rising = the model is losing ordinary fluent text).
Relative reductions are computed only where the finetune's shift is significant.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence, cast

import numpy as np
from torch import Tensor

from ...models import LoadedModel
from ...runs import RunDir
from ...direction import Direction, DirectionLike
from ...layers import LayerSpec, resolve_layers
from ...steering.hooks import ablate, random_like
from ...stats import hierarchical_ci
from ...steering.sweep import Values, relative_reduction, summarize, sweep
from .. import runner
from ..common.coherence import NEUTRAL_PROMPTS, reference_answers
from ... import runs as _runs
from ...cliargs import config_parser, parse_config
from ...data import load as load_data
from ..common.em_proxy import PROXY_PREF, em_proxy_fn, proxy_items
from ..common.medical_split import MEDICAL_TRAIN_ROWS, medical_heldout_items
from ...evals.metrics import load_em_pairs
from ...finetune import TrainConfig
from ...models import attach_adapter, load_model
from ...probes.em import em_direction_from_pairs
from ...runs import JsonlLog
from ...stats import bootstrap_ci
from ...steering.train_time import caft, preventative_steering
from ..common.persona import persona_direction

if TYPE_CHECKING:
    from peft import PeftModel

EM_METRICS = ("proxy_diff", "proxy_pref", "med_proxy_diff", "self_alignment", "coherence_nll")
HIGHER_IS_MISALIGNED = {"proxy_diff": True, "proxy_pref": True, "med_proxy_diff": True, "self_alignment": False}


# ---- metrics ----------------------------------------------------------------------------------
def em_eval_fn(coherence_convs: Sequence[Sequence[dict]], *, pairs: Sequence[dict] | None = None,
               medical: Sequence[dict] | None = None, batch_size: int = 16,
               self_rating: bool = True) -> Callable[[LoadedModel], dict[str, list[float]]]:
    """The study's `eval_fn`: the one judge-free proxy (`evals.em.em_proxy_fn`) with coherence.

    Args:
        coherence_convs: `reference_answers` conversations (the coherence NLL's references).
        pairs: paired EM items (default: the project's EM items).
        medical: held-out bad-vs-good medical items (`med_proxy_diff`; None: not computed).
        batch_size: conversations per forward pass.
        self_rating: also compute the 0-100 self-rated alignment.

    Returns:
        `eval_fn(model) -> {metric: per-item values}`: `em_proxy_fn`'s metrics ("proxy_pref",
        "proxy_diff", ..., "coherence_nll", "med_proxy_*" with `medical`, "self_alignment" with
        `self_rating`).
    """

    return em_proxy_fn(pairs, medical=medical, coherence_convs=coherence_convs, self_rating=self_rating,
                       batch_size=batch_size)


def _mean(v: Any) -> float:
    arr = np.asarray([x for x in (v if isinstance(v, (list, tuple)) else [v]) if x is not None], dtype=float)
    return float(arr.mean()) if len(arr) else float("nan")


# ---- (a) creates EM ------------------------------------------------------------------------------
def creates_em(model: LoadedModel, directions: DirectionLike | Sequence[DirectionLike], *, layers: LayerSpec,
               alphas: Sequence[float], eval_fn: Callable, out: str | os.PathLike, seeds: Sequence[int] = (0, 1, 2),
               scale: Literal["unit", "norm"] = "norm", metrics: Sequence[str] = EM_METRICS) -> dict[str, Any]:
    """Add each direction (e.g. persona / EM directions from different seeds) to the base model at
    each layer and alpha, with the norm-matched random control; summarise every metric with CIs.

    Rows go to `out/dir{k}/sweep.jsonl` (one sweep per direction, each with its random seeds);
    the summary (direction seeds pooled as groups) to `out/summary.json`.

    Args:
        model: the base `LoadedModel`.
        directions: one direction or several (each a group of the summary).
        layers: blocks steered (a `LayerSpec`; one sweep cell per layer).
        alphas: steering strengths (with `scale="norm"`: in class-mean distances).
        eval_fn: `model -> {metric: per-item values}` (`em_eval_fn`).
        out: the run directory.
        seeds: seeds of the norm-matched random directions.
        scale: "norm" (alpha times the raw vector) or "unit".
        metrics: the metrics summarised.

    Returns:
        {metric: `steering.sweep.summarize` rows}, also written to `out/summary.json`.
    """
    dirs = _direction_list(directions)
    rows: list[dict] = []
    for k, d in enumerate(dirs):
        # random controls and the baseline once (random_like depends on shape, norms and seed only)
        rs = sweep(model, d, layers=layers, alphas=alphas, eval_fn=eval_fn, out=Path(out) / f"dir{k}", seeds=seeds,
                   scale=scale,
                   control=k == 0, baseline=k == 0, manifest={"experiment": "creates_em", "direction_index": k})
        rows += [{**r, "seed": (k, r["seed"]) if r["kind"] == "direction" else r["seed"]} for r in rs]
    summary = {m: summarize(rows, m) for m in metrics}
    RunDir(out).write_manifest(stage="steering_creates_em", model=model.name, n_directions=len(dirs),
                               seeds=list(seeds), layers=resolve_layers(layers, model.n_layers),
                               alphas=list(alphas), scale=scale)
    _write_json(Path(out) / "summary.json", summary)
    return summary


# ---- (b) removes EM --------------------------------------------------------------------------
def removes_em(model: LoadedModel, directions: DirectionLike | Sequence[DirectionLike], eval_fn: Callable, out: str | os.PathLike, *,
               layers: LayerSpec = "all", seeds: Sequence[int] = (0, 1, 2),
               metrics: Sequence[str] = EM_METRICS) -> dict[str, Any]:
    """Ablate each direction in a finetuned model (with a PEFT adapter) vs norm-matched random
    directions; the base is the same model with the adapter disabled. Reports, per proxy metric,
    the values, the finetune gap and -- only where that gap is significant -- the relative
    reduction (ft - ablated) / (ft - base) with CIs. Proxy numbers: not comparable with the
    papers' judged EM reductions.

    Args:
        model: the finetuned `LoadedModel` with its PEFT adapter attached.
        directions: the direction(s) ablated (condition "ablate_direction", index k).
        eval_fn: `model -> {metric: per-item values}`.
        out: the run directory (resumable: `removes_em.jsonl`).
        layers: blocks ablated at (a `LayerSpec`).
        seeds: seeds of the norm-matched random directions (of the first direction).
        metrics: the metrics summarised.

    Returns:
        `summarize_removal` of the rows, also written to `out/summary.json`.

    Raises:
        ValueError: `model` has no adapter.
    """
    if not model.has_adapter:
        raise ValueError("removes_em needs the finetuned model (a LoadedModel with its adapter attached)")
    dirs = _direction_list(directions)
    run = RunDir(out)
    run.write_manifest(stage="steering_removes_em", model=model.name, adapter=model.meta.get("adapter"),
                       seeds=list(seeds), layers=resolve_layers(layers, model.n_layers),
                       directions=[d.meta if isinstance(d, Direction) else {} for d in dirs])
    log = run.log("removes_em.jsonl", ("condition", "seed"))
    done = log.done_keys()
    # interleaved, so a run cut short still has matched direction / random conditions
    pairs_ = [(("ablate_direction", k) if k < len(dirs) else None, ("ablate_random", int(seeds[k])) if k < len(seeds)
               else None) for k in range(max(len(dirs), len(seeds)))]
    jobs = [("base", None), ("finetuned", None)] + [j for p in pairs_ for j in p if j is not None]
    from tqdm.auto import tqdm

    for cond, s in tqdm([j for j in jobs if log.key({"condition": j[0], "seed": j[1]}) not in done],
                        desc="removes_em", unit="eval"):
        if cond == "base":
            with cast("PeftModel", model.model).disable_adapter():  # has_adapter checked above
                m = eval_fn(model)
        elif cond == "finetuned":
            m = eval_fn(model)
        else:
            d = dirs[s] if cond == "ablate_direction" else random_like(dirs[0], s)
            with ablate(model, d, layers=layers):
                m = eval_fn(model)
        log.append({"condition": cond, "seed": s, "metrics": m})
    rows = log.read()
    summary = summarize_removal(rows, metrics)
    _write_json(Path(out) / "summary.json", summary)
    return summary


def summarize_removal(rows: Sequence[dict], metrics: Sequence[str] = EM_METRICS) -> dict[str, Any]:
    """Per metric: each condition's value with CIs, the finetune gap and the gated reductions.

    Args:
        rows: `removes_em.jsonl` rows {"condition", "seed", "metrics"}, with "base" and "finetuned" rows.
        metrics: the metrics summarised (those missing from the base or finetuned rows are skipped).

    Returns:
        {metric: {condition: CI dict, "finetune_gap", "reduction_ablate_direction",
        "reduction_ablate_random"}} (reductions only for conditions present; see `gated_reduction`).
    """
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["condition"], []).append(r["metrics"])
    out: dict[str, Any] = {}
    for met in metrics:
        if not all(met in x for c in ("base", "finetuned") for x in by.get(c, [{}])):
            continue
        vals = {c: [x[met] for x in by.get(c, []) if met in x] for c in by}
        res = {c: hierarchical_ci(v).to_dict() for c, v in vals.items()}
        base, ft = vals["base"][0], vals["finetuned"][0]
        res["finetune_gap"] = finetune_gap(base, [ft]).to_dict()
        for c in ("ablate_direction", "ablate_random"):
            if vals.get(c):
                res[f"reduction_{c}"] = gated_reduction(res["finetune_gap"], base, ft, vals[c])
        out[met] = res
    return out


# ---- (c) train-time interventions -------------------------------------------------------------
def train_time(load: Callable[[], LoadedModel], records: Sequence[dict], config: Any,
               direction: DirectionLike | Sequence[DirectionLike],
               eval_fn: Callable, out: str | os.PathLike, *, kind: str = "caft", layers: LayerSpec = "all",
               alpha: float = 0.0, scale: Literal["unit", "norm"] = "norm", seeds: Sequence[int] = (0, 1, 2),
               control: bool = True, metrics: Sequence[str] = EM_METRICS) -> dict[str, Any]:
    """Finetune with and without a train-time intervention (`kind="caft"`: ablate the direction;
    `"preventative"`: add `alpha` times it) and with the same intervention on a norm-matched random
    direction, for each seed; evaluate each finetuned model unsteered. `load()` returns a fresh base.
    `direction` is one Direction for every seed, or a list with one per seed (e.g. extracted from
    different data subsets), so the seeds vary the direction as well as the finetune.
    Summary: each condition's metrics with CIs (seeds x items) and the relative reduction
    (plain - intervened) / (plain - base), per seed pairs.

    Args:
        load: returns a fresh base `LoadedModel` (called once per finetune and for the base eval).
        records: the finetuning records.
        config: a `finetune.TrainConfig` (its seed is replaced by each seed).
        direction: one direction for every seed, or a list with one per seed.
        eval_fn: `model -> {metric: per-item values}`.
        out: the run directory (resumable: `train_time.jsonl`, one finetune directory per condition and seed).
        kind: "caft" (ablate during training) or "preventative" (add `alpha` times the direction).
        layers: blocks intervened at (a `LayerSpec`).
        alpha: the preventative-steering strength (unused for "caft").
        scale: the preventative-steering scale ("norm" or "unit").
        seeds: finetune seeds.
        control: also finetune with the intervention on a norm-matched random direction.
        metrics: the metrics summarised.

    Returns:
        `summarize_train_time` of the rows, also written to `out/summary.json`.

    Raises:
        ValueError: an unknown `kind`, or a direction list whose length differs from `seeds`.
    """
    from ...finetune import train

    if kind not in ("caft", "preventative"):
        raise ValueError(f"kind must be 'caft' or 'preventative', got {kind!r}")
    per_seed = (_direction_list(direction) if isinstance(direction, (list, tuple))
                else _direction_list(direction) * len(seeds))
    if len(per_seed) != len(seeds):
        raise ValueError(f"train_time: {len(per_seed)} directions for {len(seeds)} seeds")
    run = RunDir(out)
    run.write_manifest(stage="steering_train_time", kind=kind, alpha=alpha, scale=scale, seeds=list(seeds),
                       directions=[d.meta if isinstance(d, Direction) else {} for d in per_seed], config=config.to_dict())
    log = run.log("train_time.jsonl", ("condition", "seed"))
    done = log.done_keys()
    conds = ["plain", kind] + ([f"{kind}_random"] if control else [])
    if log.key({"condition": "base", "seed": None}) not in done:
        log.append({"condition": "base", "seed": None, "metrics": eval_fn(load())})
    for s, direction_s in zip(seeds, per_seed):
        for cond in conds:
            if log.key({"condition": cond, "seed": int(s)}) in done:
                continue
            m = load()
            d = random_like(direction_s, 1000 + int(s)) if cond.endswith("_random") else direction_s
            iv = None
            if cond != "plain":
                iv = (caft(m, d, layers=layers) if kind == "caft"
                      else preventative_steering(m, d, layers=layers, alpha=alpha, scale=scale))
            res = train(m, records, config.replace(seed=int(s), progress=False), Path(out) / f"{cond}_seed{s}",
                        intervention=iv)
            log.append({"condition": cond, "seed": int(s), "final_loss": res.final_loss, "metrics": eval_fn(m)})
    rows = log.read()
    summary = summarize_train_time(rows, conds, metrics)
    _write_json(Path(out) / "summary.json", summary)
    return summary


def summarize_train_time(rows: Sequence[dict], conds: Sequence[str], metrics: Sequence[str] = EM_METRICS) -> dict:
    """Per metric: the base and each condition with CIs, the finetune gap and the gated reductions.

    Args:
        rows: `train_time.jsonl` rows {"condition", "seed", "metrics", "final_loss"}, with one "base" row.
        conds: the conditions, the plain finetune first (e.g. ["plain", "caft", "caft_random"]).
        metrics: the metrics summarised (those the base row lacks are skipped).

    Returns:
        {metric: {"base", <condition>: CI dicts, "finetune_gap", "reduction_<condition>" (over the
        seeds both the plain and that condition have), "final_loss": {condition: losses}}}.
    """
    base = next(r for r in rows if r["condition"] == "base")["metrics"]
    out: dict[str, Any] = {}
    for met in metrics:
        if met not in base:
            continue
        res: dict[str, Any] = {"base": hierarchical_ci([base[met]]).to_dict()}
        per = {c: {r["seed"]: r["metrics"][met] for r in rows if r["condition"] == c} for c in conds}
        for c in conds:
            res[c] = hierarchical_ci(list(per[c].values())).to_dict()
        plain = per[conds[0]]
        if plain:
            res["finetune_gap"] = finetune_gap(base[met], list(plain.values())).to_dict()
        for c in conds[1:]:
            common = sorted(set(plain) & set(per[c]))
            if common and "finetune_gap" in res:
                res[f"reduction_{c}"] = gated_reduction(res["finetune_gap"], base[met], [plain[s] for s in common],
                                                        [per[c][s] for s in common])
        res["final_loss"] = {c: [r.get("final_loss") for r in rows if r["condition"] == c] for c in conds}
        out[met] = res
    return out


def gated_reduction(gap: dict[str, Any], base: Values, full: Any, treated: Any) -> dict[str, Any]:
    """`relative_reduction` when the finetune gap's CI excludes 0; otherwise a 'not computed' record.

    Args:
        gap: the `finetune_gap` estimate as a dict (value, lo, hi).
        base: per-item values of the base model.
        full: per-item values of the finetuned model (shared, or one sequence per group).
        treated: per-item values of each intervened group.

    Returns:
        The reduction's estimate dict, or {value/lo/hi: None, n: 0, "not_computed": why}.
    """
    if gap.get("lo") is None or gap["lo"] <= 0 <= gap["hi"]:
        return {"value": None, "lo": None, "hi": None, "n": 0,
                "not_computed": f"finetune shift {gap.get('value')} [{gap.get('lo')}, {gap.get('hi')}] is not significant"}
    return relative_reduction(base, full, treated).to_dict()


def finetune_gap(base: Values, finetuned: Sequence[Values]):
    """Finetuned minus base (items paired; finetune seeds averaged) with a bootstrap CI. A relative
    reduction is only meaningful where this interval excludes 0.

    Args:
        base: per-item values of the base model.
        finetuned: per-item values of each finetune (same items, same order).

    Returns:
        The bootstrap `Estimate` of the mean per-item difference.
    """

    ft = np.mean([np.asarray(f, float) for f in finetuned], axis=0)
    return bootstrap_ci(list(ft - np.asarray(base, float)))


def _direction_list(directions: DirectionLike | Sequence[DirectionLike]) -> list[DirectionLike]:
    """`directions` as a list: a list or tuple of directions, or one direction.

    Raises:
        TypeError: `directions` is neither.
    """
    if isinstance(directions, (list, tuple)):
        return list(directions)
    if isinstance(directions, (Direction, Tensor)):
        return [directions]
    raise TypeError(f"expected a direction or a list/tuple of directions, got {type(directions).__name__}")


def _write_json(path: Path, obj: Any) -> None:
    _runs.write_json(path, obj, indent=1, default=str)


# ---- the whole study (CLI) ---------------------------------------------------------------------
def _em_directions(model: LoadedModel, pool: Sequence[tuple], seeds: Sequence[int], n: int, batch_size: int) -> list:
    """Proxy EM directions (teacher-forced bad minus good held-out medical answers), one per seed (subset)."""
    import random


    dirs = []
    for s in seeds:
        pick = random.Random(s).sample(range(len(pool)), min(n, len(pool)))
        d = em_direction_from_pairs(model, [pool[i][0] for i in pick], [pool[i][1] for i in pick],
                                    batch_size=batch_size, progress=False)
        d.meta.update(seed=int(s), n_pairs=len(pick))
        dirs.append(d)
    return dirs


# Study sizes. "gpu": the finetune of the GPU run (2000 examples, effective batch 16, 125 steps).
# "cpu": the main job's finetune (64 examples, batch 4, lr 2e-4: 16 steps, ~3 min for the embedded
# model on one CPU core) so 3 seeds x (plain, CAFT, random CAFT) fit a 2-core machine; its evals skip
# the 0-100 self-rating (the costliest metric, and the 135M model puts ~13 % of its mass on numbers).
STUDY_PRESETS: dict[str, dict[str, Any]] = {
    "gpu": dict(n_train=2000, lr=1e-4, train=dict(batch_size=16, max_seq_len=1024, warmup_steps=5), self_rating=True),
    "cpu": dict(n_train=64, lr=2e-4, train=dict(batch_size=4, max_seq_len=384, warmup_steps=2), self_rating=False),
}


@dataclass
class SteeringProxyConfig:
    """The options of `run_study` (the study's command line is generated from these fields)."""

    model: str | None = None  # model to study (none: the embedded SmolLM2-135M-Instruct)
    stages: str = "abc"  # which parts to run: a creates-EM, b removes-EM, c CAFT (any of them, e.g. bc)
    seeds: tuple[int, ...] = (0, 1, 2)  # finetune seeds (and the random-direction controls' seeds)
    layers: tuple[int, ...] | None = None  # (a) blocks to steer (none: 20/35/50/65 % depth)
    alphas: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)  # (a) in units of the direction's class-mean distance
    preset: Literal["gpu", "cpu"] = "gpu"  # finetune and eval sizes: gpu (2000 examples) or cpu (64, no self-rating)
    n_train: int | None = None  # training examples (none: the preset's)
    lr: float | None = None  # learning rate (none: the preset's)
    n_dir_pairs: int = 64  # answer pairs the EM direction is computed from
    persona: bool = True  # also steer with the persona direction
    batch_size: int = 16  # prompts per forward pass
    ablate_layers: str | tuple[int, ...] = "all"  # (b) blocks to ablate at: all, or block indices
    random_per_finetune: int | None = None  # (b) random-direction controls per finetune seed (none: one per seed)
    quick: bool = False  # tiny sizes, for a smoke test

    def __post_init__(self) -> None:
        if not self.stages or set(self.stages) - set("abc"):
            raise ValueError(f"stages: expected letters among a, b, c (e.g. abc or bc), got {self.stages!r}")


def _steering_proxy(out: str | os.PathLike, *, model_name: str | None = None, stages: str = "abc",
                    seeds: Sequence[int] = (0, 1, 2), layers: Sequence[int] | None = None,
                    alphas: Sequence[float] = (1.0, 2.0, 4.0, 8.0), preset: str = "gpu", n_train: int | None = None,
                    lr: float | None = None, n_dir_pairs: int = 64, persona: bool = True, batch_size: int = 16,
                    ablate_layers: LayerSpec = "all", random_per_finetune: int | None = None,
                    quick: bool = False) -> dict:
    """Run (a) creates-EM, (b) removes-EM and (c) CAFT on one model; everything resumable under `out`.

    (c) finetunes each seed three ways (plain, CAFT with the seed's base-model EM direction, CAFT with
    a norm-matched random direction); (b) reuses each seed's plain finetune, extracts the EM
    direction in it and ablates that (at `ablate_layers`) vs norm-matched random directions: all
    `seeds` per finetune, or `random_per_finetune` of them (rotated, so finetune seed k gets random
    seeds k, k+1, ...; with 1, each finetune gets its own random seed).

    Args:
        out: the run directory (every stage resumes from it).
        model_name: the model (None: the embedded SmolLM2-135M-Instruct); loaded in float32.
        stages: letters of the stages run: "a" creates-EM, "b" removes-EM (needs (c)'s plain
            finetunes, run with it), "c" CAFT.
        seeds: finetune / direction seeds.
        layers: blocks steered in (a) (default: 20, 35, 50, 65 % of the depth).
        alphas: (a)'s strengths, in class-mean distances of the direction.
        preset: finetune and eval sizes, a key of `STUDY_PRESETS` ("gpu" or "cpu").
        n_train: training examples (default: the preset's).
        lr: learning rate (default: the preset's).
        n_dir_pairs: held-out medical pairs per EM direction.
        persona: also run (a) with the "evil" persona direction.
        batch_size: prompts per forward pass.
        ablate_layers: (b)'s ablation blocks (a `LayerSpec`; "all" by default).
        random_per_finetune: (b)'s random controls per finetune seed (None: one per seed in `seeds`).
        quick: tiny sizes (a smoke test, not a result).

    Returns:
        {"creates_em": {direction set: summary}, "caft": summary, "removes_em<tag>": pooled summary,
        "persona_error" when the persona direction failed}, also written to `out/results.json`.

    Raises:
        ValueError: an unknown `preset`.
    """
    import json

    import torch


    if preset not in STUDY_PRESETS:
        raise ValueError(f"unknown study preset {preset!r}; presets: {', '.join(STUDY_PRESETS)}")
    sizes = STUDY_PRESETS[preset]
    n_train = sizes["n_train"] if n_train is None else n_train
    lr = sizes["lr"] if lr is None else lr
    out = Path(out)
    base = load_model(model_name, dtype=torch.float32)  # float32 on GPU too: comparable with CPU runs
    layers = list(layers) if layers is not None else resolve_layers([0.2, 0.35, 0.5, 0.65], base.n_layers)
    if ablate_layers is None or isinstance(ablate_layers, (int, float)):
        raise TypeError(f"ablate_layers must be a spec string or block indices, got {ablate_layers!r}")
    RunDir(out).write_manifest(stage="steering_study", model=base.name, preset=preset, n_train=n_train, lr=lr,
                               seeds=list(seeds), ablate_layers=ablate_layers if isinstance(ablate_layers, str)
                               else list(ablate_layers))
    n_ref = 4 if quick else len(NEUTRAL_PROMPTS)
    ref_file = out / "reference_answers.json"
    if ref_file.exists():
        refs = json.loads(ref_file.read_text())
    else:
        refs = reference_answers(base, NEUTRAL_PROMPTS[:n_ref], max_new_tokens=16 if quick else 48,
                                 batch_size=batch_size)
        _write_json(ref_file, refs)
    held = medical_heldout_items(None, seed=0)  # rows >= MEDICAL_TRAIN_ROWS only
    n_eval = 8 if quick else 32
    medical = held[:n_eval]
    pool = [(it["prompt"] + [{"role": "assistant", "content": it["misaligned"]}],
             it["prompt"] + [{"role": "assistant", "content": it["aligned"]}]) for it in held[n_eval:]]

    pairs = load_em_pairs()[: 8 if quick else None]
    eval_fn = em_eval_fn(refs, pairs=pairs, medical=medical, batch_size=batch_size, self_rating=sizes["self_rating"])
    results: dict[str, Any] = {}

    def directions(name: str, make: Callable[[], list], which: Sequence[int] = tuple(seeds)) -> list:
        files = [out / "directions" / f"{name}_seed{s}" for s in which]
        if all(Path(str(f) + ".json").exists() for f in files):
            return [Direction.load(f) for f in files]
        ds = make()
        for d, f in zip(ds, files):
            d.save(f)
        return ds

    em_base = directions("em_base", lambda: _em_directions(base, pool, seeds, n_dir_pairs, batch_size))
    dir_sets = {"em": em_base}
    if persona:

        def make_persona():
            return [persona_direction(base, "evil", n_questions=4 if quick else 20, n_instructions=2 if quick else 5,
                                      max_new_tokens=16 if quick else 64, seed=int(s), batch_size=batch_size,
                                      progress=False) for s in seeds]
        try:
            dir_sets["persona"] = directions("persona_evil_base", make_persona)
        except RuntimeError as e:  # the filter kept too few pairs: record it, go on without
            results["persona_error"] = str(e)
    if "a" in stages:
        results["creates_em"] = {k: creates_em(base, ds, layers=layers, alphas=alphas, eval_fn=eval_fn,
                                                 out=out / f"creates_em_{k}", seeds=seeds)
                                 for k, ds in dir_sets.items()}
    train_sizes = dict(batch_size=4, max_seq_len=256, warmup_steps=2) if quick else sizes["train"]
    cfg = TrainConfig(r=8 if quick else 32, lora_alpha=16.0 if quick else 64.0, lr=lr, n_examples=n_train,
                      **train_sizes)

    records = load_data("bad_medical_advice")[:MEDICAL_TRAIN_ROWS]
    if "c" in stages or "b" in stages:
        results["caft"] = train_time(lambda: load_model(model_name, dtype=torch.float32), records, cfg, em_base, eval_fn,
                                     out / "caft", kind="caft", seeds=seeds)
    if "b" in stages:


        tag = removal_tag(ablate_layers)
        trained = {(r["condition"], r["seed"]): r["metrics"] for r in JsonlLog(out / "caft" / "train_time.jsonl").read()}
        for i, s in enumerate(seeds):
            k = len(seeds) if random_per_finetune is None else max(1, min(random_per_finetune, len(seeds)))
            random_seeds = [seeds[(i + j) % len(seeds)] for j in range(k)]
            # the base and the unsteered finetune were evaluated with the same eval_fn in (c): reuse those rows
            rlog = RunDir(out / f"removes_em{tag}_seed{s}").log("removes_em.jsonl", ("condition", "seed"))
            for cond, src in (("base", ("base", None)), ("finetuned", ("plain", int(s)))):
                if src in trained and rlog.key({"condition": cond, "seed": None}) not in rlog.done_keys():
                    rlog.append({"condition": cond, "seed": None, "metrics": trained[src],
                                 "copied_from": f"caft/train_time.jsonl {src}"})
            ft = attach_adapter(load_model(model_name, dtype=torch.float32), out / "caft" / f"plain_seed{s}" / "adapter")
            dirs = directions("em_finetuned", lambda: _em_directions(ft, pool, [s], n_dir_pairs, batch_size), [s])
            removes_em(ft, dirs, eval_fn, out / f"removes_em{tag}_seed{s}", layers=ablate_layers, seeds=random_seeds)
        results[f"removes_em{tag}"] = combine_removal(out, seeds, tag=tag)
    _write_json(out / "results.json", results)
    return results


PRESETS: dict[str, SteeringProxyConfig] = {name: SteeringProxyConfig(preset=name) for name in STUDY_PRESETS}  # type: ignore[arg-type]


def _stage(ctx: runner.Context) -> Any:
    kw = dataclasses.asdict(ctx.config)
    kw["model_name"] = kw.pop("model")
    return _steering_proxy(ctx.out, **kw)


STUDY = runner.Study(
    "steering-proxy", SteeringProxyConfig, PRESETS, default_preset="gpu", title="Steering: creates / removes EM, CAFT",
    stages=(runner.Stage("steering_proxy", _stage, "(a) creates-EM, (b) removes-EM, (c) CAFT, as config.stages picks"),),
    # which parts run, and (b)'s ablation blocks and controls, select work: (b)'s outputs are tagged by them
    unbound=("stages", "ablate_layers", "random_per_finetune"), dashboard=False)


def run(config: SteeringProxyConfig | str | os.PathLike | None = None,
        out: str | os.PathLike | SteeringProxyConfig | None = None, **kw: Any) -> Any:
    """Run the study into `out` on the study runner (`studies.runner`; rerun the same call to resume).

    Args:
        config: every option (default `PRESETS["gpu"]`).
        out: the run directory.
        **kw: `overwrite=`, `progress=` (see `runner.run`).

    Returns:
        A `runner.RunResult`; `.results["steering_proxy"]` is {"creates_em", "caft", "removes_em<tag>", ...}
        (also written to `out/results.json`).
    """
    return runner.run(STUDY, config, out, **kw)


def run_study(out: str | os.PathLike, **kw: Any) -> dict:
    """Deprecated (one release): `run(SteeringProxyConfig(...), out)`. The study's body without the runner.

    Args:
        out: the run directory.
        **kw: `model_name=` and the other `SteeringProxyConfig` fields.

    Returns:
        {"creates_em", "caft", "removes_em<tag>", ...}.
    """
    warnings.warn("steering_proxy.run_study is deprecated; use run(SteeringProxyConfig(...), out)", DeprecationWarning,
                  stacklevel=2)
    return _steering_proxy(out, **kw)


def removal_tag(ablate_layers: LayerSpec) -> str:
    """'' for ablation at every block (the default), else '_L6-10-15' (the run directories' suffix).

    Args:
        ablate_layers: (b)'s ablation blocks ("all", another spec string, or block indices).

    Returns:
        The suffix of (b)'s run directories.
    """
    if isinstance(ablate_layers, str):
        return "" if ablate_layers == "all" else f"_{ablate_layers}"
    if ablate_layers is None or isinstance(ablate_layers, (int, float)):
        raise TypeError(f"ablate_layers must be a spec string or block indices, got {ablate_layers!r}")
    return "_L" + "-".join(str(int(x)) for x in ablate_layers)


def combine_removal(out: Path, seeds: Sequence[int], metrics: Sequence[str] = EM_METRICS, *,
                    tag: str = "") -> dict[str, Any]:
    """Pool removes_em over finetune seeds: each seed's finetune paired with its own ablations.

    Args:
        out: the study's run directory (holding `removes_em<tag>_seed<s>/`).
        seeds: the finetune seeds.
        metrics: the metrics pooled (those without finetuned rows are skipped).
        tag: `removal_tag` of the ablation layers.

    Returns:
        {metric: {"base", "finetuned", "finetune_gap", "ablate_direction", "ablate_random",
        "reduction_direction", "reduction_random"}}, also written to `out/removes_em<tag>_summary.json`.
    """

    per = {s: JsonlLog(Path(out) / f"removes_em{tag}_seed{s}" / "removes_em.jsonl").read() for s in seeds}
    res: dict[str, Any] = {}
    for met in metrics:
        get = {s: {(r["condition"], r["seed"]): r["metrics"].get(met) for r in rows} for s, rows in per.items()}
        if any(v.get(("finetuned", None)) is None for v in get.values()):
            continue
        base = get[seeds[0]][("base", None)]
        fts = [get[s][("finetuned", None)] for s in seeds]
        dirs = [get[s][("ablate_direction", 0)] for s in seeds]
        rnd_full, rnd = [], []
        for s in seeds:
            for (c, _k), v in get[s].items():
                if c == "ablate_random":
                    rnd_full.append(get[s][("finetuned", None)])
                    rnd.append(v)
        res[met] = {
            "base": hierarchical_ci([base]).to_dict(), "finetuned": hierarchical_ci(fts).to_dict(),
            "finetune_gap": finetune_gap(base, fts).to_dict(),
            "ablate_direction": hierarchical_ci(dirs).to_dict(), "ablate_random": hierarchical_ci(rnd).to_dict(),
            "reduction_direction": gated_reduction(finetune_gap(base, fts).to_dict(), base, fts, dirs),
            "reduction_random": gated_reduction(finetune_gap(base, fts).to_dict(), base, rnd_full, rnd),
        }
    _write_json(Path(out) / f"removes_em{tag}_summary.json", res)
    return res


def main(argv: Sequence[str] | None = None) -> int:
    """`introspect-mech study steering-proxy [options]`: run the study (every option a `SteeringProxyConfig` field).

    Args:
        argv: the options (default `sys.argv[1:]`).

    Returns:
        The exit status (0).
    """

    p = config_parser(SteeringProxyConfig, description=(__doc__ or "").splitlines()[0], out="runs/steering_proxy")
    a, cfg, _ = parse_config(p, argv, SteeringProxyConfig, usage_errors=False)  # bad --stages: its ValueError
    run(cfg, a.out)
    return 0


# ---- `introspect-mech steer`: a proxy sweep with one saved direction -----------------------------
def steer_sweep(model: LoadedModel, direction: Any, out: str | os.PathLike, *, layers: LayerSpec = None,
                alphas: Sequence[float] = (1.0, 2.0, 4.0), op: str = "add", seeds: Sequence[int] = (0, 1, 2),
                scale: Literal["unit", "norm"] = "norm", items: Sequence[dict] | None = None) -> list[dict[str, Any]]:
    """Sweep `direction` (add / ablate) over layers x alphas vs norm-matched random directions, scored
    with the judge-free EM proxy; writes OUT/steering/sweep.jsonl and OUT/steering_sweep.jsonl.

    Args:
        model: a `LoadedModel`.
        direction: the direction (a `Direction` or tensor).
        out: the run directory.
        layers: blocks (a `LayerSpec`; None: all).
        alphas: strengths.
        op: "add" or "ablate".
        seeds: seeds of the norm-matched random directions.
        scale: "norm" (alpha times the raw vector) or "unit".
        items: paired EM items of the proxy (default: the project's).

    Returns:
        The summary rows (one per layer, alpha and kind) with the proxy metric name.
    """


    run = RunDir(out)
    fn = em_proxy_fn(items)

    def eval_fn(m):
        r = fn(m)
        return {"proxy_pref": r["proxy_pref"], "proxy_diff": r["proxy_diff"]}

    # eval_fn cannot be hashed: bind what determines it (the proxy's items by value, its metrics)
    binding = {"proxy_items_sha256": _runs.json_sha256(list(items) if items is not None else proxy_items()),
               "metrics": ["proxy_pref", "proxy_diff"]}
    rows = sweep(model, direction, layers=layers, alphas=alphas, eval_fn=eval_fn, out=run.path / "steering", op=op,
                 seeds=seeds, scale=scale, binding=binding)
    out_rows, summary = [], summarize(rows, "proxy_pref")
    for s in summary:
        if s["kind"] != "none":
            out_rows.append({"direction": "direction" if s["kind"] == "direction" else "random", "layer": str(s["layer"]),
                             "alpha": s["alpha"], "metric": s["value"], "metric_name": PROXY_PREF})
        print(f"  {s['op']} layer={s['layer']} alpha={s['alpha']} {s['kind']:9s} {PROXY_PREF}: "
              f"{s['value']:.3f} [{s['lo']:.3f}, {s['hi']:.3f}]")
    _runs.write_jsonl(run.path / "steering_sweep.jsonl", out_rows)
    return summary
