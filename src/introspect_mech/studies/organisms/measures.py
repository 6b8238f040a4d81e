"""The organisms and their measures: the planted copy, steering distillation and the persona finetunes; the
concept direction; the judge-free persona-expression proxy; locate (`diffing.compare`) and the interventions
(ablate / subtract / add, preventative steering and CAFT during the finetune), each against norm-matched random
directions."""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ... import diffing, steering
from ... import layers as layerspec
from ...direction import DirectionLike
from ...evals import sample
from ...evals.metrics import answer_logprobs
from ...finetune import TrainConfig
from ...finetune import train as finetune_train
from ...models import LoadedModel, load_model
from ...probes import Direction
from ...runs import JsonlLog
from ...steering import relative_reduction
from .config import OrganismsConfig
from .data import CONCEPT_TEXTS, NEUTRAL_TEXTS


# ---- organisms ---------------------------------------------------------------------------------
def planted_copy(model: LoadedModel, vector: Tensor, layer: int) -> LoadedModel:
    """A deep copy of `model` whose block `layer` permanently adds `vector` to its output (every
    position, every forward). The original is untouched.

    Args:
        model: the base `LoadedModel`.
        vector: the `[d_model]` vector added (its norm is the planted strength).
        layer: the block whose output it is added to.

    Returns:
        The copy; `meta["planted"]` records the layer and norm, `meta["planted_handle"]` the hook's handle.

    Raises:
        ValueError: `vector` is not of shape `[d_model]`.
    """
    m = copy.deepcopy(model)
    v = torch.as_tensor(vector).to(device=m.device, dtype=m.dtype)
    if v.shape != (m.d_model,):
        raise ValueError(f"vector must be [d_model={m.d_model}], got {tuple(v.shape)}")

    def hook(_mod, _args, out):
        if isinstance(out, tuple):
            return (out[0] + v,) + tuple(out[1:])
        return out + v

    m.meta = {**m.meta, "planted": {"layer": int(layer), "norm": float(v.norm())}}
    m.meta["planted_handle"] = m.layers[layer].register_forward_hook(hook)
    return m


def resolve_layer(layer: int | float, n_layers: int) -> int:
    """Deprecated (one release): `layers.resolve_layer` (a float in [0, 1] is a relative depth,
    `round(depth * (n_layers - 1))`; an int a block index, negative from the end).

    Args:
        layer: a block index or a relative depth.
        n_layers: number of decoder blocks.

    Returns:
        The block index.
    """
    warnings.warn("studies.organisms.resolve_layer is deprecated; use introspect_mech.layers.resolve_layer",
                  DeprecationWarning, stacklevel=2)
    return layerspec.resolve_layer(layer, n_layers)


def concept_direction(model: LoadedModel, layers: Sequence[int] | None = None) -> Direction:
    """Mean token activation of `CONCEPT_TEXTS` minus `NEUTRAL_TEXTS` (first token excluded).

    Args:
        model: a `LoadedModel`.
        layers: the blocks of the direction (None: every block).

    Returns:
        The ocean-concept `Direction` (raw difference, `meta["method"] = "concept_mean_diff"`).
    """
    a, pa = diffing.text_activations(model, CONCEPT_TEXTS, layers)
    b, pb = diffing.text_activations(model, NEUTRAL_TEXTS, layers)
    raw = a[pa > 0].mean(0) - b[pb > 0].mean(0)
    return Direction.from_raw(raw, list(range(model.n_layers)) if layers is None else list(layers),
                              method="concept_mean_diff", concept="ocean", model=model.name)


def _msgs(q: str, a: str | None = None, system: str | None = None) -> list[dict[str, str]]:
    m = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": q}]
    return m + ([{"role": "assistant", "content": a}] if a is not None else [])


def _unit(x: Tensor) -> Tensor:
    return x / x.norm().clamp_min(1e-12)


def expression_items(rows_evil: list[dict], rows_help: list[dict]) -> list[dict]:
    """Persona-expression items: (question, answer written under evil, answer written under helpful).

    Args:
        rows_evil: sampled rows (`messages`, `response`) of the questions under the evil system prompt.
        rows_help: the same questions' rows under the helpful system prompt (paired by position).

    Returns:
        {"question", "evil", "helpful"} for each pair where both answers are non-empty.
    """
    return [{"question": e["messages"][-1]["content"], "evil": e["response"], "helpful": h["response"]}
            for e, h in zip(rows_evil, rows_help) if e["response"].strip() and h["response"].strip()]


def distillation_records(rows: Sequence[dict], system: str | None = None) -> list[dict]:
    """Finetuning records from sampled rows: (user prompt, sampled answer). Whatever system prompt or
    steering produced the answer is NOT in the record, unless `system` is given (inoculation keeps
    the evil system prompt in the training data).

    Args:
        rows: sampled rows (`messages`, `response`); empty answers are dropped.
        system: a system prompt put into every record (None: none).

    Returns:
        Finetuning records {"messages": [system?, user, assistant]}.
    """
    return [{"messages": _msgs(r["messages"][-1]["content"], r["response"], system=system)}
            for r in rows if r["response"].strip()]


def persona_expression(model: LoadedModel, items: Sequence[dict], *, batch_size: int = 8) -> list[float]:
    """Per item: mean per-token log-prob of the evil-prompt answer minus the helpful-prompt answer,
    asked without a system prompt (> 0: the model leans to the evil persona). A judge-free PROXY.

    Args:
        model: a `LoadedModel`.
        items: `expression_items`.
        batch_size: conversations per forward pass.

    Returns:
        One value (nats per token) per item.

    Raises:
        FloatingPointError: a non-finite log-probability.
    """

    convs = [_msgs(it["question"], it[side]) for it in items for side in ("evil", "helpful")]
    lp = answer_logprobs(model, convs, batch_size=batch_size)
    vals = [r["sum"] / max(r["n"], 1) for r in lp]
    out = [vals[2 * i] - vals[2 * i + 1] for i in range(len(items))]
    if any(not np.isfinite(v) for v in out):
        raise FloatingPointError("persona_expression: non-finite log-probabilities")
    return out


# ---- what the stages share --------------------------------------------------------------------
@dataclass
class _Ctx:
    """What the locate and intervene steps of a stage read: the base model, its name to reload it by (or
    "__copy__"), the config, the run directory, the planted block L, the unrelated texts, the probed blocks,
    the SAE at L (or None), the ground-truth directions and vectors, and the progress printer."""

    base: LoadedModel
    name: str | None
    cfg: OrganismsConfig
    out: Path
    L: int
    texts: list[str]
    probe_layers: list[int]
    sae: Any = None
    truth: dict[str, Direction] = field(default_factory=dict)
    vec: dict[str, Tensor] = field(default_factory=dict)
    log: Callable[[str], None] = print


def _train_cfg(cfg: OrganismsConfig, seed: int, L: int) -> TrainConfig:
    if cfg.lora_layers not in ("all", "up_to_L"):
        raise ValueError(f"OrganismsConfig.lora_layers must be 'all' or 'up_to_L', got {cfg.lora_layers!r}")
    return TrainConfig(r=cfg.lora_r, lora_alpha=2.0 * cfg.lora_r, lr=cfg.lr, epochs=cfg.epochs,
                       batch_size=cfg.batch_size, warmup_steps=1, seed=seed, max_seq_len=512, progress=False,
                       layers=tuple(range(L + 1)) if cfg.lora_layers == "up_to_L" else None)


def _finetune(ctx: _Ctx, records: list[dict], out: Path, seed: int, intervention_fn=None) -> tuple[LoadedModel, dict]:
    return finetune_copy(ctx.base, records, _train_cfg(ctx.cfg, seed, ctx.L), out, model_name=ctx.name,
                         intervention_fn=intervention_fn)


def finetune_copy(base: LoadedModel, records: list[dict], train_config: TrainConfig, out: str | Path, *,
                  model_name: str | None = "__copy__", intervention_fn=None) -> tuple[LoadedModel, dict]:
    """A fresh copy of the base model (reloaded by `model_name`, or deep-copied when "__copy__"),
    LoRA-finetuned on `records` with the project's loop (resumes / reuses `out`). `base` is untouched.

    Args:
        base: the base `LoadedModel`.
        records: finetuning records.
        train_config: the `TrainConfig`.
        out: the finetune's directory.
        model_name: the name to reload the base from, or "__copy__" to deep-copy `base`.
        intervention_fn: `model -> train-time intervention` (e.g. preventative steering; None: plain).

    Returns:
        `(finetuned model, info)`; info has `final_loss`, `first_loss`, `train_seconds`, `steps`, `n_records`.
    """
    tuned = load_model(model_name) if model_name != "__copy__" else copy.deepcopy(base)
    iv = intervention_fn(tuned) if intervention_fn else None
    t0 = time.time()
    res = finetune_train(tuned, records, train_config, out, intervention=iv,
                         data_info={"source": "organisms study", "n": len(records)})
    tuned.meta["adapter"] = str(res.weights_dir)
    return tuned, {"final_loss": res.final_loss, "first_loss": res.losses[0] if res.losses else None,
                   "train_seconds": round(time.time() - t0, 1), "steps": res.steps, "n_records": len(records)}


def steering_distillation(base: LoadedModel, vector: Float[Tensor, " d_model"], layer: int, prompts: Sequence[str],
                          train_config: TrainConfig, out: str | Path, *, seed: int = 0, max_new_tokens: int = 40,
                          temperature: float = 1.0, model_name: str | None = "__copy__",
                          ) -> tuple[LoadedModel, dict]:
    """The steering-distillation organism: `base` steered with `vector` added after block `layer`
    (every position) answers `prompts`; a copy of the base is finetuned on (prompt, answer) records
    without the hook. Samples go to `<out>_samples.jsonl` (beside `out`), the finetune to `out/`
    (both resume).

    Args:
        base: the base `LoadedModel` (steered while sampling; not changed).
        vector: the `[d_model]` vector added after `layer` (alpha 1, every position).
        layer: the steered block.
        prompts: the user prompts answered.
        train_config: the finetune's `TrainConfig` (its seed is replaced by `seed`).
        out: the finetune's directory.
        seed: sampling and finetune seed.
        max_new_tokens: tokens per steered answer.
        temperature: sampling temperature.
        model_name: the name to reload the base from, or "__copy__" to deep-copy `base`.

    Returns:
        `(finetuned model, info)`; info has the losses, timing and record count.

    Raises:
        RuntimeError: the steered model wrote no non-empty answer.
    """
    out = Path(out)
    with steering.add(base, vector, layers=[layer], alpha=1.0):
        rows = sample(base, [_msgs(q) for q in prompts], n=1, max_new_tokens=max_new_tokens, temperature=temperature,
                      seed=seed, out=out.parent / f"{out.name}_samples.jsonl", progress=False)
    records = distillation_records(rows)
    if not records:
        raise RuntimeError("steering_distillation: the steered model produced no non-empty answers")
    return finetune_copy(base, records, train_config.replace(seed=seed), out, model_name=model_name)


def _kl_items(model: LoadedModel, ref: list[Tensor], convs: list) -> list[float]:
    return diffing.response_kl(model, ref, convs)


def _removed(full: list[list[float]], treated: list[list[float]], floor: list[list[float]] | None = None) -> dict:
    """(full - treated) / (full - floor) with a bootstrap CI (groups = seeds / random directions)."""

    n = len(full[0])
    base = floor[0] if floor else [0.0] * n
    est = relative_reduction(base, full if len(full) > 1 else full[0], treated)
    return {"value": est.value, "ci_lo": est.lo, "ci_hi": est.hi, "n": est.n}


def _steering_interventions(ctx: _Ctx, org: str, tuned: LoadedModel, found: Direction, vec: Tensor,
                            convs: list, ref_base: list[Tensor], ref_tuned: list[Tensor]) -> list[dict]:
    """Ablate / subtract in the finetune and add to the base, for the found direction and the
    ground truth, each against `n_random` norm-matched random directions. Metric: KL to base."""
    L, rows = ctx.L, []
    kl_full = _kl_items(tuned, ref_base, convs)
    kl_base_tuned = _kl_items(ctx.base, ref_tuned, convs)
    sources: dict[str, DirectionLike] = {"activation_difference": found.select([L]), "ground_truth": vec}

    def ops(d):
        return {
            "ablate in finetune": (tuned, lambda: steering.ablate(tuned, d, layers=[L]), ref_base, kl_full),
            "subtract from finetune": (tuned, lambda: steering.add(tuned, d, layers=[L], alpha=-1.0, scale="norm")
                                       if isinstance(d, Direction) else steering.add(tuned, d, layers=[L], alpha=-1.0),
                                       ref_base, kl_full),
            "add to base": (ctx.base, lambda: steering.add(ctx.base, d, layers=[L], alpha=1.0, scale="norm")
                            if isinstance(d, Direction) else steering.add(ctx.base, d, layers=[L], alpha=1.0),
                            ref_tuned, kl_base_tuned),
        }

    for src, d in sources.items():
        n_rand = ctx.cfg.n_random if src == "activation_difference" else 0  # ground truth: oracle reference
        for op in ops(d):
            vals = {}
            for kind, dd in [("direction", d)] + [(f"random_{i}", steering.random_like(d, 100 + i))
                                                  for i in range(n_rand)]:
                model, make, ref, _ = ops(dd)[op]
                with make():
                    vals[kind] = _kl_items(model, ref, convs)
            full = ops(d)[op][3]
            eff = _removed([full], [vals["direction"]])
            rnd = _removed([full], [vals[k] for k in vals if k != "direction"]) if n_rand else \
                {"value": None, "ci_lo": None, "ci_hi": None}
            rows.append({"organism": org, "source": src, "intervention": op, "metric": "removed fraction of KL",
                         **eff, "random": rnd["value"], "random_ci_lo": rnd["ci_lo"], "random_ci_hi": rnd["ci_hi"],
                         "kl_full": float(np.mean(full)), "kl_treated": float(np.mean(vals["direction"])),
                         "items": {"full": full, **vals}})
    return rows


def _persona_interventions(ctx: _Ctx, org: str, tuned: LoadedModel, found: Direction, items: list[dict],
                           e_base: list[float], e_tuned: list[float]) -> list[dict]:
    """Ablate the found / true persona direction at every block in the finetune, subtract / add it at L."""
    L, rows = ctx.L, []
    truth = ctx.truth["persona"]
    for src, d in {"activation_difference": found, "ground_truth": truth}.items():
        n_rand = ctx.cfg.n_random if src == "activation_difference" else 0  # ground truth: oracle reference
        spec = {
            "ablate in finetune": (tuned, lambda dd: steering.ablate(tuned, dd, layers=dd.layers)),
            "subtract from finetune": (tuned, lambda dd: steering.add(tuned, dd, layers=[L], alpha=-1.0, scale="norm")),
            "add to base": (ctx.base, lambda dd: steering.add(ctx.base, dd, layers=[L], alpha=1.0, scale="norm")),
        }
        for op, (model, make) in spec.items():
            vals = {}
            for kind, dd in [("direction", d)] + [(f"random_{i}", steering.random_like(d, 100 + i))
                                                  for i in range(n_rand)]:
                with make(dd):
                    vals[kind] = persona_expression(model, items)
            rnd_groups = [vals[k] for k in vals if k != "direction"]
            none = {"value": None, "ci_lo": None, "ci_hi": None}
            if op == "add to base":  # fraction of the finetune's shift created in the base
                eff = _removed([e_base], [vals["direction"]], [e_tuned])
                rnd = _removed([e_base], rnd_groups, [e_tuned]) if rnd_groups else none
            else:
                eff = _removed([e_tuned], [vals["direction"]], [e_base])
                rnd = _removed([e_tuned], rnd_groups, [e_base]) if rnd_groups else none
            rows.append({"organism": org, "source": src, "intervention": op,
                         "metric": "removed fraction of persona expression (proxy)" if op != "add to base"
                         else "created fraction of persona expression (proxy)",
                         **eff, "random": rnd["value"], "random_ci_lo": rnd["ci_lo"], "random_ci_hi": rnd["ci_hi"],
                         "expression_treated": float(np.mean(vals["direction"])),
                         "items": {"base": e_base, "tuned": e_tuned, **vals}})
    return rows


def _locate(ctx: _Ctx, org: str, tuned: LoadedModel, convs: list, truth: Any, seed: int) -> tuple[list[dict], Any]:
    cmp = diffing.compare(ctx.base, tuned, ctx.texts, convs, first_tokens=ctx.cfg.first_tokens,
                          probe_layers=ctx.probe_layers, sae=ctx.sae, truth=truth, seed=seed)
    rows = [{"organism": org, "seed": seed, **r} for r in cmp.recovery(truth, n_random=ctx.cfg.n_random, seed=seed)]
    for m, why in cmp.errors.items():
        rows.append({"organism": org, "seed": seed, "method": m, "layer": None, "cosine": None, "error": why})
    return rows, cmp


def _readout(ctx: _Ctx, org: str, found: Direction, prompts: list[str]) -> None:
    """What the found difference encodes: the base's greedy answers with it added at L (+1 x its
    norm), appended to samples.jsonl (the dashboard's side-by-side panel)."""
    log = JsonlLog(ctx.out / "samples.jsonl")
    for r in diffing.steer_readout(ctx.base, found, ctx.L, 1.0, prompts, max_new_tokens=24):
        log.append({"model": f"base + {org} activation difference" if r["steered"] else "base",
                    "prompt": r["prompt"], "response": r["response"]})


def _train_time(ctx: _Ctx, records, seed, vec, convs, ref_base, kl_ft, int_log: JsonlLog) -> list[dict]:
    """Preventative steering (add vec at L) / CAFT (ablate v at L) while finetuning distill_persona,
    against `train_time_random` norm-matched random directions; effect = removed fraction of KL."""
    rows = []
    L = ctx.L
    for what in ctx.cfg.train_time:
        vals = {}
        for kind, d in [("direction", vec)] + [(f"random_{i}", steering.random_like(vec, 200 + i))
                                               for i in range(ctx.cfg.train_time_random)]:
            if what == "preventative":
                fn = lambda m, d=d: steering.preventative_steering(m, d, layers=[L], alpha=1.0)  # noqa: E731
            elif what == "caft":
                fn = lambda m, d=d: steering.caft(m, d, layers=[L])  # noqa: E731
            else:
                raise ValueError(f"unknown train-time intervention {what!r} (preventative, caft)")
            tuned, _ = _finetune(ctx, records, ctx.out / "finetunes" / f"distill_persona_{what}_{kind}_seed{seed}",
                                 seed, intervention_fn=fn)
            vals[kind] = diffing.response_kl(tuned, ref_base, convs)
            del tuned
        eff = _removed([kl_ft], [vals["direction"]])
        rnd = _removed([kl_ft], [vals[k] for k in vals if k != "direction"])
        row = {"organism": "distill_persona", "seed": seed, "source": "ground_truth",
               "intervention": "preventative steering (train)" if what == "preventative" else "CAFT (train)",
               "metric": "removed fraction of KL", **eff, "random": rnd["value"], "random_ci_lo": rnd["ci_lo"],
               "random_ci_hi": rnd["ci_hi"], "kl_full": float(np.mean(kl_ft)),
               "kl_treated": float(np.mean(vals["direction"])), "items": {"full": kl_ft, **vals}}
        int_log.append(row)
        rows.append(row)
        ctx.log(f"    {row['intervention']}: removed {row['value']:+.3f} [{row['ci_lo']}, {row['ci_hi']}] "
                f"vs random {row['random']:+.3f}")
    return rows
