"""The three experiments of the steering-proxy study and their summaries, scored with the judge-free EM proxy
(`evals.em.em_proxy_fn`): (a) `creates_em` (add a direction to the base), (b) `removes_em` (ablate it in a finetune;
`combine_removal` pools finetune seeds), (c) `train_time` (CAFT / preventative steering during the finetune); the
finetune gap and the reductions gated on it; the proxy EM directions (`_em_directions`)."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence, cast

import numpy as np
from torch import Tensor

from ... import runs as _runs
from ...direction import Direction, DirectionLike
from ..common.em_proxy import em_proxy_fn
from ...layers import LayerSpec, resolve_layers
from ...models import LoadedModel
from ...probes.em import em_direction_from_pairs
from ...runs import JsonlLog, RunDir
from ...stats import bootstrap_ci, hierarchical_ci
from ...steering.hooks import ablate, random_like
from ...steering.sweep import Values, relative_reduction, summarize, sweep
from ...steering.train_time import caft, preventative_steering

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


def _em_directions(model: LoadedModel, pool: Sequence[tuple], seeds: Sequence[int], n: int, batch_size: int) -> list:
    """Proxy EM directions (teacher-forced bad minus good held-out medical answers), one per seed (subset)."""
    dirs = []
    for s in seeds:
        pick = random.Random(s).sample(range(len(pool)), min(n, len(pool)))
        d = em_direction_from_pairs(model, [pool[i][0] for i in pick], [pool[i][1] for i in pick],
                                    batch_size=batch_size, progress=False)
        d.meta.update(seed=int(s), n_pairs=len(pick))
        dirs.append(d)
    return dirs


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
