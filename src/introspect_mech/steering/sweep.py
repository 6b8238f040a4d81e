"""Steering sweeps with the norm-matched random control, resumable, and their summaries.

`sweep(model, direction, layers, alphas, eval_fn, out=...)` evaluates the model at every
(layer, alpha) with the direction added (or ablated / clamped), and with `random_like(direction,
seed)` for each control seed in the same place at the same alpha (so the same norm), plus one
unsteered baseline. Each evaluation is one JSONL row, appended as soon as it finishes; rerunning
with the same `out` skips the rows already there.

`eval_fn(model)` (or `eval_fn(model, seed=...)` if it takes a `seed`) returns a dict of metrics.
A metric may be a number or a list of per-item numbers (one per prompt / pair); lists are kept in
the row so that summaries can bootstrap over items, and over seeds for the random control.
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Callable, Iterable, Literal, Sequence, Union

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..direction import Direction, DirectionLike
from ..stats import MIN_BOOT_UNITS, Estimate, hierarchical_ci
from ..layers import LayerSpec, resolve_layers
from ..models import LoadedModel
from ..runs import JsonlLog, RunDir
from .hooks import Positions, Steering, ablate, add, clamp, random_like
from ..runs import model_config

KEY = ("op", "layer", "alpha", "kind", "seed")
Values = Union[Sequence[float], np.ndarray]  # per-item numbers of one evaluation
OPS = {"add": add, "ablate": ablate, "clamp": clamp}


def steer(op: str, model: LoadedModel, direction: DirectionLike, *, layers: LayerSpec, alpha: float = 0.0,
          positions: Positions = "all", scale: Literal["unit", "norm"] = "unit") -> Steering:
    """The context manager for `op` with one calling convention.

    Args:
        op: "add", "ablate" or "clamp".
        model: a `LoadedModel`.
        direction: a `Direction` or a raw `[d_model]` / `[layer, d_model]` tensor.
        layers: a `LayerSpec`.
        alpha: `alpha` of "add", `value` of "clamp" (ignored by "ablate").
        positions: `Positions` changed.
        scale: "unit" or "norm" ("add" only).

    Returns:
        A `Steering` context manager.
    """
    if op == "add":
        return add(model, direction, layers=layers, alpha=alpha, positions=positions, scale=scale)
    if op == "ablate":
        return ablate(model, direction, layers=layers, positions=positions)
    if op == "clamp":
        return clamp(model, direction, value=alpha, layers=layers, positions=positions)
    raise ValueError(f"op must be one of {sorted(OPS)}, got {op!r}")


def _call(eval_fn: Callable, model: LoadedModel, seed: int) -> dict[str, Any]:
    try:
        takes_seed = "seed" in inspect.signature(eval_fn).parameters
    except (TypeError, ValueError):
        takes_seed = False
    res = eval_fn(model, seed=seed) if takes_seed else eval_fn(model)
    if not isinstance(res, dict):
        raise TypeError(f"eval_fn must return a dict of metrics, got {type(res).__name__}")
    return res


def _tensor_sha256(t: Tensor) -> str:
    import hashlib

    t = t.detach().cpu().contiguous()
    return hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode() + t.view(-1).view(torch.uint8).numpy().tobytes()
                          ).hexdigest()


def _direction_sha256(direction: DirectionLike) -> str:
    """The direction by value (vectors, norms and layers): a flipped sign is another direction."""
    if isinstance(direction, Direction):
        return _tensor_sha256(direction.vectors) + _tensor_sha256(direction.norms)[:16] + \
            str(list(direction.layers))
    return _tensor_sha256(direction)


def _direction_meta(direction: DirectionLike) -> dict[str, Any]:
    if isinstance(direction, Direction):
        return dict(direction.meta)
    return {"raw_tensor_shape": list(direction.shape)}


def sweep(
    model: LoadedModel,
    direction: DirectionLike,
    *,
    layers: LayerSpec,
    alphas: Sequence[float],
    eval_fn: Callable[..., dict[str, Any]],
    out: str | os.PathLike | None = None,
    op: str = "add",
    seeds: Sequence[int] = (0, 1, 2),
    control: bool = True,
    baseline: bool = True,
    positions: Positions = "all",
    scale: Literal["unit", "norm"] = "unit",
    layers_together: bool = False,
    log_name: str = "sweep.jsonl",
    manifest: dict[str, Any] | None = None,
    binding: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Run `eval_fn` under steering at each (layer, alpha), with norm-matched random controls.

    Rows: `{"op", "layer", "alpha", "kind": "none"|"direction"|"random", "seed", "metrics": {...}}`:
    `kind="none"` is the unsteered baseline (once per seed when `eval_fn` takes a seed, else once),
    `"direction"` the direction (once per seed if `eval_fn` takes one: its sampling seed),
    `"random"` `random_like(direction, seed)` for each seed in `seeds`.

    Args:
        model: the model steered.
        direction: a `Direction` or a raw `[d_model]` / `[layer, d_model]` tensor.
        layers: a `LayerSpec`; each layer is steered on its own unless `layers_together`.
        alphas: multipliers (`op="ablate"` ignores them: one alpha, 0).
        eval_fn: `eval_fn(model)` or `eval_fn(model, seed=...)` -> {metric: number or per-item list}.
        out: a run directory; rows are appended to `out/<log_name>` and a rerun skips done rows.
        op: "add", "ablate" or "clamp".
        seeds: random-control seeds (and eval seeds when `eval_fn` takes one).
        control: run the random controls.
        baseline: run the unsteered baseline.
        positions: `Positions` changed.
        scale: "unit" or "norm" (with a Direction, alpha counts class-mean distances; the random
            control keeps the norms, so it stays matched).
        layers_together: steer all `layers` at once (`layer` in the rows is then the list).
        log_name: file name of the JSONL log.
        manifest: extra manifest fields.
        binding: what else determines the rows (e.g. the evaluation items' hash): `out/<log_name>`
            is bound to it together with the model and adapter (by content), the direction's values
            (a flipped sign is another configuration) and every setting above; a rerun with another
            configuration is refused naming the fields. Code cannot be hashed: what determines
            `eval_fn`'s numbers (its items, judge, sampling settings) belongs here.
        overwrite: with `out=` bound to another configuration, delete its rows and start clean.

    Returns:
        All rows (old and new).
    """
    if op not in OPS:
        raise ValueError(f"op must be one of {sorted(OPS)}, got {op!r}")
    if not seeds:
        raise ValueError("seeds must not be empty")
    idx = resolve_layers(layers, model.n_layers)
    layer_sets: list[Any] = [idx] if layers_together else idx
    alphas = [0.0] if op == "ablate" else [float(a) for a in alphas]
    try:
        takes_seed = "seed" in inspect.signature(eval_fn).parameters
    except (TypeError, ValueError):
        takes_seed = False
    eval_seeds = list(seeds) if takes_seed else [None]

    log: JsonlLog | None = None
    if out is not None:

        run = RunDir(out)
        sweep_cfg = {"op": op, "layers": idx, "alphas": alphas, "seeds": list(seeds), "control": control,
                     "baseline": baseline, "positions": positions if isinstance(positions, str) else
                     "mask:" + _tensor_sha256(positions), "scale": scale, "layers_together": layers_together}
        run.bind(f"rows:{log_name}", {
            "model": model_config(model), "direction_sha256": _direction_sha256(direction),
            "sweep": sweep_cfg, "binding": binding},
            overwrite=overwrite, outputs=[log_name])
        run.write_manifest(
            stage="steering_sweep", model=model.name, adapter=model.meta.get("adapter"),
            sweep={"op": op, "layers": idx, "alphas": alphas, "seeds": list(seeds), "control": control,
                   "positions": positions if isinstance(positions, str) else "mask", "scale": scale,
                   "layers_together": layers_together, "direction": _direction_meta(direction)},
            **(manifest or {}),
        )
        log = run.log(log_name, KEY)
    done = log.done_keys() if log else set()
    rows: list[dict[str, Any]] = log.read() if log else []

    jobs: list[dict[str, Any]] = [
        {"op": op, "layer": None, "alpha": 0.0, "kind": "none", "seed": s} for s in eval_seeds] if baseline else []
    for ls in layer_sets:
        for a in alphas:
            jobs += [{"op": op, "layer": ls, "alpha": a, "kind": "direction", "seed": s} for s in eval_seeds]
            if control:
                jobs += [{"op": op, "layer": ls, "alpha": a, "kind": "random", "seed": int(s)} for s in seeds]
    todo = [j for j in jobs if not log or log.key(j) not in done]
    for job in tqdm(todo, desc=f"steering sweep ({op})", unit="eval"):
        s = job["seed"] if job["seed"] is not None else 0
        if job["kind"] == "none":
            metrics = _call(eval_fn, model, s)
        else:
            d = direction if job["kind"] == "direction" else random_like(direction, s)
            with steer(op, model, d, layers=job["layer"], alpha=job["alpha"], positions=positions, scale=scale):
                metrics = _call(eval_fn, model, s)
        row = {**job, "metrics": metrics}
        rows.append(row)
        if log:
            log.append(row)
    return rows


# ---- summaries --------------------------------------------------------------------------------
def _values(metric_value: Any) -> np.ndarray:
    if isinstance(metric_value, (list, tuple)):
        return np.asarray([float(v) for v in metric_value if v is not None], dtype=float)
    return np.asarray([float(metric_value)], dtype=float)


def summarize(rows: Iterable[dict[str, Any]], metric: str, **ci_kw: Any) -> list[dict[str, Any]]:
    """Summarise sweep rows per (op, layer, alpha, kind).

    Args:
        rows: rows from `sweep`.
        metric: the metric name to summarise (rows without it are skipped).
        **ci_kw: passed to `hierarchical_ci` (n_boot, alpha, seed).

    Returns:
        One dict per (op, layer, alpha, kind): the mean of `metric` with a hierarchical bootstrap CI
        (groups = seeds, items = the per-item values the eval returned), sorted by layer, alpha, kind.
    """
    groups: dict[tuple, list[np.ndarray]] = {}
    for r in rows:
        if metric not in r.get("metrics", {}):
            continue
        layer = tuple(r["layer"]) if isinstance(r["layer"], list) else r["layer"]
        groups.setdefault((r["op"], layer, r["alpha"], r["kind"]), []).append(_values(r["metrics"][metric]))
    out = []
    for (op, layer, a, kind), gs in groups.items():
        est = hierarchical_ci(gs, **ci_kw)
        out.append({"op": op, "layer": list(layer) if isinstance(layer, tuple) else layer, "alpha": a,
                    "kind": kind, "metric": metric, "n_seeds": len(gs), **est.to_dict()})
    kinds = {"none": 0, "direction": 1, "random": 2}
    return sorted(out, key=lambda d: (str(d["layer"]), d["alpha"], kinds.get(d["kind"], 3)))


def relative_reduction(base: Values, full: Values | Sequence[Values],
                       treated: Sequence[Values], *, n_boot: int = 2000, alpha: float = 0.05,
                       seed: int = 0) -> Estimate:
    """(full - treated) / (full - base): the fraction of the finetuning-induced change an intervention removes.

    1 = back to base, 0 = no effect, < 0 = worse (as in the model-organisms papers). The estimate
    is a ratio of means over groups; the bootstrap resamples groups, then items, when there are
    >= `MIN_BOOT_UNITS` groups, and items only (the groups held fixed, named in `method`) with fewer;
    with fewer than `MIN_BOOT_UNITS` items there is no interval.

    Args:
        base: per-item values of the base model.
        full: per-item values of the finetuned model: one sequence shared by all groups, or one per
            group (e.g. each finetune seed with its own intervened run).
        treated: per-item values of each intervened group (random seeds, finetune seeds), paired
            with `base` and `full` item by item.
        n_boot: bootstrap resamples.
        alpha: 1 - confidence level.
        seed: bootstrap seed.

    Returns:
        An `Estimate`; all None when there are no items or the finetuning gap is zero.

    Raises:
        ValueError: conditions that are not on the same items, or mismatched group counts.
    """
    b = np.asarray(base, float)
    ts = [np.asarray(t, float) for t in treated]
    full_arr = [np.asarray(f, float) for f in full] if np.ndim(full) == 2 else None  # type: ignore[arg-type]
    fs = full_arr if full_arr is not None else [np.asarray(full, float)] * len(ts)
    n = len(b)
    if len(fs) != len(ts):
        raise ValueError(f"relative_reduction: {len(fs)} finetuned groups for {len(ts)} treated groups")
    if not ts or any(len(x) != n for x in fs + ts):
        raise ValueError("relative_reduction needs per-item values on the same items in every condition")
    if n == 0:  # a metric with no items (e.g. no usable reference answers): no estimate
        return Estimate(None, None, None, 0)

    def stat(ii: np.ndarray, gi: Sequence[int] | np.ndarray) -> float:
        # ratio of means over the groups (stable when one group's gap is small)
        f_mean = np.mean([fs[g][ii].mean() for g in gi])
        t_mean = np.mean([ts[g][ii].mean() for g in gi])
        gap = f_mean - b[ii].mean()
        return float("nan") if gap == 0 else float((f_mean - t_mean) / gap)

    rng = np.random.default_rng(seed)
    point = stat(np.arange(n), list(range(len(ts))))
    if np.isnan(point):
        return Estimate(None, None, None, n, "item", "none")
    if n < MIN_BOOT_UNITS:  # no percentile bootstrap over a handful of items
        return Estimate(point, None, None, n, "item", f"none ({n} items < {MIN_BOOT_UNITS})")
    two_level = len(ts) >= MIN_BOOT_UNITS  # few groups: resample items only, the groups held fixed
    all_g = list(range(len(ts)))
    boots = np.array([stat(rng.integers(0, n, size=n), rng.integers(0, len(ts), size=len(ts)) if two_level
                           else all_g) for _ in range(n_boot)])
    boots = boots[~np.isnan(boots)]
    if not len(boots):
        return Estimate(point, None, None, n, "item", "none")
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    method = "hierarchical-bootstrap" if two_level else f"item-bootstrap ({len(ts)} groups held fixed)"
    return Estimate(point, float(lo), float(hi), n, "item", method)
