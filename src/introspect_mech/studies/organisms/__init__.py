"""Ground-truth model organisms: plant a known mechanism, then check that locate -> intervene finds it.

A null result of the mechanistic pipeline ("no direction removes the finetune's shift") only means
something if the same pipeline provably finds a mechanism that is there. The organisms here have
one by construction (persona-vectors / model-organisms style positive controls):

* **planted** -- a copy of the base model with a permanent forward hook adding `vec = alpha * v` after
  block L (no training). Ground truth: v at L. Every method should recover it exactly.
* **steering distillation** (`distill_<direction>`) -- the base model steered with `vec` at block L
  answers prompts; a LoRA is finetuned (the project's `finetune.train`, no hook) on those
  (prompt, steered answer) pairs, so it has to *learn* what the hook did. v is a persona direction
  (evil, from the persona-vector recipe), a concept direction (mean activation difference of
  ocean-themed vs neutral sentences), or a random direction; all three get the same norm at L.
  Ground truth: v at L. The sample-based variant of the issue (the KL-matching variant needs a
  distillation loss the project's loop does not have).
* **persona distillation** (narrow -> broad) -- the base model answers medical questions (the narrow
  domain, user turns of `good_medical_advice`) under the evil system prompt; the LoRA is trained on
  those answers *without* the system prompt. Persona expression is measured on unrelated held-out
  questions (the trait's eval split) judge-free: mean per-token log-prob (no system prompt) of the
  answer the base wrote under the evil system prompt minus that of the answer it wrote under the
  helpful one (a PROXY, not a judged trait score). Ground truth: the persona direction.
* **inoculation** -- the same finetune with the evil system prompt kept in the training data
  (inoculation prompting); expression without the prompt should not rise.

Locate methods (`diffing.compare`): activation-difference lens on the first tokens of unrelated
text, difference PCA, mean difference of response activations, base-vs-tuned linear probe, and the
top increased latent of an SAE model diff (an SAE trained cheaply on the base model at L). Each
reports its cosine with the ground truth per layer against the |cosine| of norm-matched random
directions.

Interventions (effect on the organism's behaviour, each against `n_random` norm-matched random
directions): ablate the found direction in the finetune, subtract it (`-1 x` its norm at L), add it
to the base; and during the finetune, preventative steering (add `vec`) and CAFT (ablate v). For
steering organisms the behaviour is the mean next-token KL(finetune || base) over the assistant
tokens of held-out prompts answered by the steered base, and the effect is the removed fraction
`1 - KL(treated || base) / KL(finetune || base)` (for "add to base": `1 - KL(base + d || finetune) /
KL(base || finetune)`); for persona organisms the behaviour is the expression proxy and the effect
`steering.relative_reduction`.
"""

from __future__ import annotations

import argparse
import os
import copy
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, cast

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ... import diffing, steering
from ... import layers as layerspec
from ...evals import sample
from ...stats import bootstrap_ci, bootstrap_diff
from ...cliargs import config_parser, parse_config
from ...direction import DirectionLike
from ...finetune import TrainConfig
from ...finetune import train as finetune_train
from ...models import LoadedModel, load_model
from ...probes import Direction
from ..common.persona import persona_data
from ...runs import JsonlLog, RunDir, json_sha256
from .. import runner
from . import panels as _panels  # noqa: F401  (registers the study's dashboard panels)
from ... import runs as _runs
from ... import sae as sae_mod
from ...data import load as data_load
from ...evals.metrics import answer_logprobs
from ...steering import relative_reduction
from ..common.persona import load_trait

# Unrelated text for the first-token methods: project-written, varied topics, no persona or
# medical content (a stand-in for the pretraining text the activation-difference lens paper uses).
UNRELATED_TEXTS = [
    "The train left the station a few minutes after noon, heading north along the river.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "In 1969 the first humans walked on the surface of the Moon.",
    "To bake bread, mix flour, water, yeast and salt, then let the dough rise.",
    "The stock market closed slightly higher on Tuesday after a quiet session.",
    "Chess is a board game for two players played on a checkered board.",
    "Mount Everest is the highest mountain above sea level on Earth.",
    "The committee will meet again next week to review the budget proposal.",
    "Python is a programming language known for its readable syntax.",
    "Autumn leaves turn red and yellow as the days grow shorter.",
    "The library extended its opening hours during the exam period.",
    "A triangle has three sides and its angles add up to 180 degrees.",
    "She parked the bicycle next to the bakery and went inside.",
    "The orchestra rehearsed the symphony for three hours on Friday.",
    "Copper is a good conductor of electricity and heat.",
    "The museum's new exhibition features paintings from the nineteenth century.",
    "Farmers in the valley grow wheat, barley and sunflowers.",
    "The software update fixes several bugs and improves battery life.",
    "Elephants are the largest land animals alive today.",
    "The recipe calls for two eggs, a cup of sugar and some butter.",
    "Rain is expected in the afternoon, with clearing skies by evening.",
    "The city council approved a plan to build a new bridge.",
    "Jupiter is the largest planet in our solar system.",
    "He spent the weekend repairing the fence behind the garden.",
    "The football match ended in a draw after extra time.",
    "Glass is made by melting sand at very high temperatures.",
    "The novel tells the story of a family over three generations.",
    "Trains in the region run every fifteen minutes during rush hour.",
    "The company announced plans to open a new office in the spring.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The children built a sandcastle near the edge of the lake.",
    "Maps from the sixteenth century show the coastline in surprising detail.",
    "The bakery on the corner sells fresh croissants every morning.",
    "A good night's sleep helps people concentrate during the day.",
    "The spacecraft sent back images of the planet's icy rings.",
    "The hikers reached the summit just before the clouds rolled in.",
    "Most bicycles have two wheels, a frame, pedals and a chain.",
    "The teacher explained how volcanoes form along plate boundaries.",
    "Our neighbours planted tomatoes, beans and basil this year.",
    "The airport added two new gates to handle summer traffic.",
]
# Concept direction: mean activation of ocean sentences minus neutral ones (project-written).
CONCEPT_TEXTS = [
    "The ocean waves crashed against the rocky shore.", "Whales swim through the deep blue sea.",
    "The tide rolled in over the sandy beach.", "Sailors crossed the stormy Atlantic Ocean.",
    "Coral reefs teem with colourful fish under the sea.", "Salty sea spray drifted over the harbour.",
    "The ship sailed across the calm Pacific Ocean.", "Seagulls circled above the ocean waves.",
]
NEUTRAL_TEXTS = [
    "The committee reviewed the quarterly budget report.", "She wrote a letter to her aunt in the city.",
    "The printer on the second floor is out of paper.", "He bought a new pair of shoes on Saturday.",
    "The meeting was moved to Thursday afternoon.", "The students handed in their homework on time.",
    "The office closes at six in the evening.", "They painted the kitchen walls light grey.",
]


@dataclass
class OrganismsConfig:
    """Everything that decides the organisms run (saved in the manifest).

    One field per option; the trailing comment of each is its `--help` text (`introspect-mech study
    organisms --help`).
    """

    model: str | None = None  # base model: name, hub id or directory (None = the embedded SmolLM2-135M-Instruct)
    layer: int | float = 0.5  # block L of the planted mechanism: a block index, or a float in [0, 1] = relative depth (layers.depth_block)
    alpha: float = 4.0  # |vec| at L in units of the persona direction's class-mean distance at L
    directions: tuple[str, ...] = ("persona", "concept", "random")  # steering-distillation directions
    seeds: tuple[int, ...] = (0, 1, 2)  # sampling + finetune seeds of distill_persona (others: seeds[0])
    n_train: int = 16  # prompts per finetune
    n_eval: int = 8  # held-out prompts for the behaviour metrics
    max_new_tokens: int = 32  # answer length of every sampled answer (steered teacher, persona, eval prompts)
    temperature: float = 1.0  # sampling temperature
    lora_r: int = 8  # LoRA rank of the organisms' finetunes
    lora_layers: Literal["all", "up_to_L"] = "all"  # "all" | "up_to_L": LoRA only on blocks 0..L (the change must happen by L)
    lr: float = 1e-3  # finetune learning rate
    epochs: int = 2  # finetune epochs
    batch_size: int = 8  # finetune batch size
    n_texts: int = 32  # unrelated texts for the first-token methods
    first_tokens: int = 5  # tokens read from the start of each unrelated text (first-token methods)
    n_random: int = 3  # norm-matched random controls per recovery / intervention
    probe_every: int = 3  # probe every k-th block (and L)
    persona_questions: int = 6  # persona-vector recipe (evil): the first n questions
    persona_instructions: int = 2  # persona-vector recipe: the first n instruction pairs
    persona_max_new_tokens: int = 32  # persona-vector recipe: answer length
    sae: bool = True  # train a small SAE at L on base activations for the SAE diff
    sae_expansion: int = 4  # SAE latents = expansion x d_model
    sae_k: int = 16  # TopK SAE: active latents per token
    sae_records: int = 48  # good_medical_advice conversations the SAE trains on (besides the unrelated texts)
    sae_epochs: float = 10.0  # a few thousand tokens: several passes (4 x 1024 left explained variance < 0)
    sae_batch: int = 256  # SAE training batch (tokens)
    persona_distill: bool = True  # build the persona-distillation organism (narrow -> broad)
    inoculation: bool = True  # build the inoculation organism (system prompt kept in training)
    train_time: tuple[str, ...] = ("preventative",)  # "preventative" and/or "caft" on distill_persona seed 0
    train_time_random: int = 3  # random controls per train-time intervention
    planted: bool = True  # build the planted organism (a hook, no training)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (tuples as lists), as saved in the manifest."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


PRESETS: dict[str, OrganismsConfig] = {
    # default on the 2-core CPU (embedded model); measured 3,164 s with the CPU shared by parallel jobs (docs)
    "cpu": OrganismsConfig(),
    # smallest meaningful run (tests on tiny Qwen; a smoke run of the embedded model)
    "tiny": OrganismsConfig(directions=("persona", "random"), seeds=(0,), n_train=8, n_eval=4, max_new_tokens=12,
                            epochs=3, n_texts=12, n_random=3, persona_questions=3, persona_max_new_tokens=12,
                            sae=False, persona_distill=True, inoculation=False, train_time=(), lora_r=4, lr=5e-3,
                            batch_size=4),
    # a GPU-sized run: more data, every train-time intervention, 3 seeds for every organism
    "gpu": OrganismsConfig(n_train=200, n_eval=40, max_new_tokens=96, epochs=3, lora_r=32, lr=1e-4, n_texts=256,
                           persona_questions=20, persona_instructions=5, persona_max_new_tokens=96,
                           sae_records=2000, sae_expansion=16, train_time=("preventative", "caft"), probe_every=1),
}


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


# ---- the study -------------------------------------------------------------------------------
@dataclass
class _Ctx:
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


def _organisms(model: str | None = None, out: str | Path = "runs/organisms", config: OrganismsConfig | None = None, *,
        preset: str | None = None, base: LoadedModel | None = None, log: Callable[[str], None] = print) -> dict:
    """Build every organism, locate and intervene; write the run directory and return the tables.

    Args:
        model: model name / path (default: `config.model`; None there = the embedded model); ignored when
            `base` is given.
        out: run directory (results are JSONL; finetunes and samples resume on a rerun).
        config: an `OrganismsConfig` (default: `PRESETS[preset or "cpu"]`).
        preset: the preset used when `config` is None.
        base: an already loaded base model (tests); finetunes then start from deep copies of it.
        log: receives the progress lines (default `print`).

    Returns:
        `{"recovery": rows, "interventions": rows, "behaviour": rows, "table": rows, "seconds": s}`.

    Raises:
        ValueError: `config.layer` resolves outside the model's blocks, or an unknown train-time
            intervention.
        RuntimeError: a steered base wrote fewer than 2 non-empty held-out answers (the KL metric).
    """
    t_start = time.time()
    cfg = config or PRESETS[preset or "cpu"]
    model = model if model is not None else cfg.model
    out = Path(out)
    rd = RunDir(out)
    if base is None:
        base = load_model(model)
        name = model
    else:
        name = "__copy__"
    L = layerspec.resolve_layer(cfg.layer, base.n_layers)
    if not 0 <= L < base.n_layers:
        raise ValueError(f"layer {cfg.layer} resolves to block {L}, outside 0..{base.n_layers - 1}")
    texts = UNRELATED_TEXTS[:cfg.n_texts]
    probe_layers = sorted(set(range(0, base.n_layers, max(1, cfg.probe_every))) | {L})
    ctx = _Ctx(base, name, cfg, out, L, texts, probe_layers, log=log)

    trait = load_trait("evil")
    trait_eval = load_trait("evil", split="eval")
    rd.write_manifest(title="Ground-truth model organisms: locate -> intervene", stage="organisms", model=base.name,
                      model_source=base.meta.get("source"), seeds=list(cfg.seeds), config=cfg.to_dict(), layer=L,
                      data={"persona_trait": trait["path"], "persona_eval": trait_eval["path"],
                            "medical": "good_medical_advice (user turns only)",
                            "unrelated_texts_sha256": json_sha256(texts)},
                      judge="none: judge-free proxies (KL to base; persona-expression log-prob difference)")
    rec_log, int_log = rd.log("recovery.jsonl"), rd.log("interventions.jsonl")
    beh_log, lens_log = rd.log("behaviour.jsonl"), rd.log("logit_lens.jsonl")
    for lg in (rec_log, int_log, beh_log, lens_log, JsonlLog(out / "samples.jsonl")):
        _runs.write_text(lg.path, "")  # recomputed each run (cheap); finetunes and samples resume from disk
    stage_t: dict[str, float] = {}

    # -- ground-truth directions
    t0 = time.time()
    log(f"[1] directions: persona (evil, persona-vector recipe, no filter), concept, random; L = {L}")
    pres = persona_data(base, "evil", n_questions=cfg.persona_questions, n_instructions=cfg.persona_instructions,
                        max_new_tokens=cfg.persona_max_new_tokens, seed=0, filter=None, out=out / "persona_direction",
                        progress=False)
    persona = pres.direction
    concept = concept_direction(base)
    rnd = cast(Direction, steering.random_like(persona, 1234))  # random_like returns its input's type
    ctx.truth = {"persona": persona, "concept": concept, "random": rnd}
    scale = cfg.alpha * float(persona.norms[persona.layers.index(L)])
    ctx.vec = {k: _unit(d.at(L)) * scale for k, d in ctx.truth.items()}
    for k, d in ctx.truth.items():
        d.save(out / "directions" / k)
    log(f"    |vec| at L{L} = {scale:.2f} (alpha {cfg.alpha} x persona class-mean distance); "
        f"cos(persona, concept) at L = {float(persona.at(L) @ concept.at(L)):.3f}")
    stage_t["directions"] = time.time() - t0

    # -- SAE at L on base activations
    if cfg.sae:
        t0 = time.time()

        med = data_load("good_medical_advice")[:cfg.sae_records]
        res = sae_mod.train(base, L, list(UNRELATED_TEXTS) + [r["messages"] for r in med],  # held out: medical
                            sae_mod.SAETrainConfig(expansion=cfg.sae_expansion, k=cfg.sae_k, epochs=cfg.sae_epochs,
                                                   batch_size=cfg.sae_batch),
                            out_dir=out / "sae")
        ctx.sae = res.sae
        m = res.metrics
        log(f"[2] SAE at L{L}: {m['d_sae']} latents, k={cfg.sae_k}, {m['train_tokens']} tokens, explained variance "
            f"{m['after'].get('explained_variance', float('nan')):.3f}, {m['seconds_training']:.0f} s")
        stage_t["sae"] = time.time() - t0

    prompts_train = [q for q in trait["questions"]]

    medical_q = [r["messages"][0]["content"] for r in data_load("good_medical_advice")
                 if r["messages"][0]["role"] == "user"]
    prompts_train = (prompts_train + medical_q[200:])[:cfg.n_train]
    prompts_eval = trait_eval["questions"][:cfg.n_eval]
    recovery_rows: list[dict] = []
    intervention_rows: list[dict] = []
    behaviour_rows: list[dict] = []

    def record(rows, lg, acc):
        for r in rows:
            lg.append(r)
        acc.extend(rows)

    # -- steering organisms (planted + distillation)
    for dname in (["planted"] if cfg.planted else []) + [f"distill_{d}" for d in cfg.directions]:
        kind = "persona" if dname == "planted" else dname.split("_", 1)[1]
        vec = ctx.vec[kind]
        t0 = time.time()
        with steering.add(base, vec, layers=[L], alpha=1.0):
            eval_rows = sample(base, [_msgs(q) for q in prompts_eval], n=1, max_new_tokens=cfg.max_new_tokens,
                               temperature=0.0, out=out / "samples" / f"eval_steered_{kind}.jsonl", progress=False)
        convs = [_msgs(r["messages"][-1]["content"], r["response"]) for r in eval_rows if r["response"].strip()]
        if len(convs) < 2:
            raise RuntimeError(f"{dname}: the steered base wrote {len(convs)} non-empty answers to the {len(eval_rows)} "
                               "held-out prompts; the KL metric needs >= 2 (raise max_new_tokens or lower alpha)")
        ref_base = diffing.response_logprobs(base, convs)
        with steering.add(base, vec, layers=[L], alpha=1.0):
            ref_steered = diffing.response_logprobs(base, convs)
        with steering.add(base, vec, layers=[L], alpha=1.0):
            kl_steered_base = diffing.response_kl(base, ref_base, convs)
        seeds = cfg.seeds if kind == "persona" and dname != "planted" else cfg.seeds[:1]
        for seed in seeds:
            org = dname
            if dname == "planted":
                tuned, info = planted_copy(base, vec, L), {"train_seconds": 0.0}
            else:
                tuned, info = steering_distillation(base, vec, L, prompts_train, _train_cfg(cfg, seed, L),
                                                    out / "finetunes" / f"{dname}_seed{seed}", seed=seed,
                                                    max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                                    model_name=name)
                records = distillation_records(JsonlLog(out / "finetunes" / f"{dname}_seed{seed}_samples.jsonl").read())
            ref_tuned = diffing.response_logprobs(tuned, convs)
            kl_ft = diffing.response_kl(tuned, ref_base, convs)
            kl_ft_steered = diffing.response_kl(tuned, ref_steered, convs)
            beh = {"organism": org, "seed": seed, "metric": "KL to base (nats/token)",
                   "finetune": float(np.mean(kl_ft)), "steered_base": float(np.mean(kl_steered_base)),
                   "finetune_to_steered": float(np.mean(kl_ft_steered)), **info}
            record([beh], beh_log, behaviour_rows)
            rows, cmp = _locate(ctx, org, tuned, convs, vec, seed)
            record(rows, rec_log, recovery_rows)
            adl = cmp.directions["activation_difference"]
            lens_log.append({"organism": org, "seed": seed, "what": "activation_difference",
                             **diffing.logit_lens(base, adl, L, k=8)})
            if seed == cfg.seeds[0] and dname in ("planted", "distill_persona"):
                _readout(ctx, org, adl, prompts_eval[:2])
            irows = _steering_interventions(ctx, org, tuned, adl, vec, convs, ref_base, ref_tuned)
            record([{**r, "seed": seed} for r in irows], int_log, intervention_rows)
            c = {r["method"]: r["cosine"] for r in rows if r.get("layer") == L}
            log(f"[{org} seed {seed}] KL(ft||base) {beh['finetune']:.4f} (steered base {beh['steered_base']:.4f}); "
                f"cos at L{L}: " + ", ".join(f"{m} {v:+.3f}" for m, v in c.items() if v is not None)
                + f"; {time.time() - t0:.0f} s")
            if dname == "distill_persona" and seed == cfg.seeds[0] and cfg.train_time:
                intervention_rows += _train_time(ctx, records, seed, vec, convs, ref_base, kl_ft, int_log)
            del tuned
        lens_log.append({"organism": dname, "seed": None, "what": "ground_truth", **diffing.logit_lens(base, vec, k=8)})
        stage_t[dname] = time.time() - t0

    # -- persona distillation and inoculation
    if cfg.persona_distill or cfg.inoculation:
        t0 = time.time()
        evil, helpful = trait["instruction"][0]["pos"], trait["instruction"][0]["neg"]
        ev = sample(base, [_msgs(q, system=evil) for q in prompts_eval], n=1, max_new_tokens=cfg.max_new_tokens,
                    temperature=0.0, out=out / "samples" / "eval_evil.jsonl", progress=False)
        hp = sample(base, [_msgs(q, system=helpful) for q in prompts_eval], n=1, max_new_tokens=cfg.max_new_tokens,
                    temperature=0.0, out=out / "samples" / "eval_helpful.jsonl", progress=False)
        items: list[dict] | None
        items = expression_items(ev, hp)
        if len(items) < 2:
            why = f"the base wrote {len(items)} usable evil/helpful answer pairs to the held-out questions (need >= 2)"
            log(f"[persona organisms] skipped: {why}")
            record([{"organism": o, "seed": None, "method": m, "layer": None, "cosine": None, "error": why}
                    for o, on in (("persona_distill", cfg.persona_distill), ("inoculated", cfg.inoculation)) if on
                    for m in diffing.METHODS], rec_log, recovery_rows)
            items = None
    if (cfg.persona_distill or cfg.inoculation) and items is not None:
        convs = [_msgs(it["question"], it[s]) for it in items for s in ("evil", "helpful")]
        e_base = persona_expression(base, items)
        med_prompts = medical_q[:cfg.n_train]
        tr = sample(base, [_msgs(q, system=evil) for q in med_prompts], n=1, max_new_tokens=cfg.max_new_tokens,
                    temperature=cfg.temperature, seed=0, out=out / "samples" / "train_medical_evil.jsonl",
                    progress=False)
        for org, keep_system in (("persona_distill", False), ("inoculated", True)):
            if (org == "persona_distill" and not cfg.persona_distill) or (org == "inoculated" and not cfg.inoculation):
                continue
            records = distillation_records(tr, system=evil if keep_system else None)
            seed = cfg.seeds[0]
            tuned, info = _finetune(ctx, records, out / "finetunes" / f"{org}_seed{seed}", seed)
            e_t = persona_expression(tuned, items)
            rise = bootstrap_diff(e_t, e_base, paired=True)
            beh = {"organism": org, "seed": seed, "metric": "persona expression proxy (nats/token, evil - helpful)",
                   "base": float(np.mean(e_base)), "finetune": float(np.mean(e_t)), "rise": rise.value,
                   "rise_ci_lo": rise.lo, "rise_ci_hi": rise.hi, **info}
            record([beh], beh_log, behaviour_rows)
            rows, cmp = _locate(ctx, org, tuned, convs, persona, seed)
            record(rows, rec_log, recovery_rows)
            adl = cmp.directions["activation_difference"]
            lens_log.append({"organism": org, "seed": seed, "what": "activation_difference",
                             **diffing.logit_lens(base, adl, L, k=8)})
            if org == "persona_distill":
                _readout(ctx, org, adl, prompts_eval[:2])
                irows = _persona_interventions(ctx, org, tuned, adl, items, e_base, e_t)
                record([{**r, "seed": seed} for r in irows], int_log, intervention_rows)
            c = {r["method"]: r["cosine"] for r in rows if r.get("layer") == L}
            log(f"[{org}] persona expression base {beh['base']:+.3f} -> {beh['finetune']:+.3f} (rise {rise}); "
                f"cos at L{L}: " + ", ".join(f"{m} {v:+.3f}" for m, v in c.items() if v is not None))
            del tuned
        lens_log.append({"organism": "persona", "seed": None, "what": "ground_truth",
                         **diffing.logit_lens(base, persona, L, k=8)})
        stage_t["persona_organisms"] = time.time() - t0

    table = summary_table(recovery_rows, intervention_rows, L)
    panel_rows = panel(table)
    _runs.write_jsonl(out / "organisms.jsonl", panel_rows)
    seconds = time.time() - t_start
    _summary(out, table, behaviour_rows, seconds)
    rd.write_manifest(finished=time.strftime("%Y-%m-%dT%H:%M:%S"), wall_time_s=round(seconds, 1),
                      stage_seconds={k: round(v, 1) for k, v in stage_t.items()}, torch_threads=torch.get_num_threads())
    return {"recovery": recovery_rows, "interventions": intervention_rows, "behaviour": behaviour_rows,
            "table": table, "seconds": seconds, "layer": L}


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


# ---- tables ------------------------------------------------------------------------------------
def summary_table(recovery_rows: list[dict], intervention_rows: list[dict], L: int) -> list[dict]:
    """One row per (organism, measure): recovery cosine at L per method (mean over seeds with a
    bootstrap CI over seeds when there are several) and intervention effects.

    Args:
        recovery_rows: `recovery.jsonl` rows (organism, method, layer, cosine, random |cos|, or error).
        intervention_rows: `interventions.jsonl` rows (several seeds of one intervention are pooled).
        L: the planted block (recovery is read there).

    Returns:
        Rows {"organism", "kind" ("recovery" | "intervention"), "method", "value", "ci_lo", "ci_hi",
        "random", "n_seeds", ...}.
    """
    out = []
    orgs = list(dict.fromkeys(r["organism"] for r in recovery_rows))
    for org in orgs:
        methods = list(dict.fromkeys(r["method"] for r in recovery_rows if r["organism"] == org))
        for m in methods:
            rs = [r for r in recovery_rows if r["organism"] == org and r["method"] == m and r.get("layer") == L]
            err = next((r.get("error") for r in recovery_rows if r["organism"] == org and r["method"] == m
                        and r.get("error")), None)
            if not rs:
                out.append({"organism": org, "kind": "recovery", "method": m, "value": None, "error": err or
                            f"no direction at block {L}"})
                continue
            cs = [r["cosine"] for r in rs]
            est = bootstrap_ci(cs) if len(cs) > 1 else None
            out.append({"organism": org, "kind": "recovery", "method": m, "value": float(np.mean(cs)),
                        "ci_lo": est.lo if est else None, "ci_hi": est.hi if est else None, "n_seeds": len(cs),
                        "random": float(np.mean([r["random_abs_mean"] for r in rs])),
                        "random_max": float(max(r["random_abs_max"] for r in rs))})
    groups: dict[tuple, list[dict]] = {}
    for r in intervention_rows:
        groups.setdefault((r["organism"], r["source"], r["intervention"]), []).append(r)
    for (org, src, op), rs in groups.items():
        if len(rs) == 1:
            r = rs[0]
            out.append({"organism": org, "kind": "intervention", "method": f"{op} [{src}]", "value": r["value"],
                        "ci_lo": r["ci_lo"], "ci_hi": r["ci_hi"], "random": r["random"], "n_seeds": 1,
                        "metric": r["metric"]})
            continue
        # several finetune seeds: ratio of means over seeds, bootstrap over seeds then items
        full = [r["items"]["full"] for r in rs]
        removed = _removed(full, [r["items"]["direction"] for r in rs])
        rnd = [float(r["random"]) for r in rs if r["random"] is not None]
        out.append({"organism": org, "kind": "intervention", "method": f"{op} [{src}]", **removed,
                    "random": float(np.mean(rnd)) if rnd else None, "n_seeds": len(rs), "metric": rs[0]["metric"]})
    return out


def panel(table: list[dict]) -> list[dict]:
    """Rows for the dashboard's methods x organisms panel (`viz.organisms`).

    Args:
        table: `summary_table` rows.

    Returns:
        The rows restricted to the panel's keys.
    """
    keep = ("organism", "kind", "method", "value", "ci_lo", "ci_hi", "random", "n_seeds", "error", "metric")
    return [{k: r.get(k) for k in keep if k in r} for r in table]


def format_table(table: list[dict]) -> str:
    """The methods x organisms table as text (recovery cosine at L; intervention effects).

    Args:
        table: `summary_table` rows.

    Returns:
        The table, one line per organism (recovery) and per intervention.
    """
    def f(v):
        return "   n/a" if v is None else f"{v:+.3f}"

    lines = []
    rec = [r for r in table if r["kind"] == "recovery"]
    orgs = list(dict.fromkeys(r["organism"] for r in rec))
    methods = list(dict.fromkeys(r["method"] for r in rec))
    w = max([len(o) for o in orgs] + [12])
    lines.append("Recovery: cosine with the ground truth at L (mean over seeds) | random |cos| mean")
    lines.append(f"{'organism':<{w}} " + " ".join(f"{m[:22]:>22}" for m in methods) + f" {'random':>8}")
    for o in orgs:
        cells, rnd = [], None
        for m in methods:
            r = next((x for x in rec if x["organism"] == o and x["method"] == m), None)
            if r is None or r.get("value") is None:
                cells.append(f"{'fail' if r and r.get('error') else '-':>22}")
                continue
            ci = f" [{r['ci_lo']:+.2f},{r['ci_hi']:+.2f}]" if r.get("ci_lo") is not None else ""
            cells.append(f"{f(r['value']) + ci:>22}")
            rnd = r.get("random", rnd)
        lines.append(f"{o:<{w}} " + " ".join(cells) + f" {f(rnd):>8}")
    iv = [r for r in table if r["kind"] == "intervention"]
    if iv:
        lines.append("")
        lines.append("Interventions: effect [95 % CI] vs mean of norm-matched random directions")
        for r in iv:
            ci = f"[{f(r.get('ci_lo'))}, {f(r.get('ci_hi'))}]"
            lines.append(f"{r['organism']:<{w}} {r['method']:<48} {f(r['value'])} {ci:<18} random {f(r.get('random'))}"
                         f"  (seeds {r.get('n_seeds')})")
    return "\n".join(lines)


def _summary(out: Path, table: list[dict], behaviour: list[dict], seconds: float) -> None:
    rows = [{"name": "wall time (s)", "value": round(seconds, 1), "note": "whole organisms run"}]
    for b in behaviour:
        if "rise" in b:
            rows.append({"name": f"{b['organism']}: persona expression rise (proxy)", "value": b["rise"],
                         "ci_lo": b["rise_ci_lo"], "ci_hi": b["rise_ci_hi"],
                         "note": f"base {b['base']:+.3f} -> finetune {b['finetune']:+.3f} nats/token (judge-free proxy)"})
        else:
            rows.append({"name": f"{b['organism']} seed {b['seed']}: KL(finetune || base)", "value": b["finetune"],
                         "note": f"steered base {b['steered_base']:.4f}; finetune to steered {b['finetune_to_steered']:.4f}"})
    for r in table:
        if r.get("value") is None:
            continue
        rows.append({"name": f"{r['organism']}: {r['method']} ({r['kind']})", "value": r["value"],
                     "ci_lo": r.get("ci_lo"), "ci_hi": r.get("ci_hi"),
                     "note": f"random {r['random']:+.3f}" if r.get("random") is not None else ""})
    _runs.write_jsonl(out / "summary.jsonl", rows)


# ---- command line ------------------------------------------------------------------------------------
def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The study's command line: `--out`, `--preset` and every `OrganismsConfig` field.

    Args:
        prog: the program name shown in the usage line.

    Returns:
        The parser (`config_from_args(ns, OrganismsConfig, presets=PRESETS)` builds the config).
    """
    return config_parser(OrganismsConfig, description=(__doc__ or "").splitlines()[0], out="runs/organisms",
                         out_help="run directory (finetunes and samples resume on a rerun)", presets=PRESETS,
                         default_preset="cpu", title="study configuration (overrides the preset)", prog=prog)


def _quiet(line: str) -> None:
    return None


def _stage(ctx: runner.Context) -> Any:
    return _organisms(ctx.resources.get("model"), ctx.out, ctx.config, base=ctx.resources.get("base"),
                      log=ctx.resources.get("log") or (print if ctx.progress else _quiet))


STUDY = runner.Study(
    "organisms", OrganismsConfig, PRESETS, title='Ground-truth model organisms: locate -> intervene', default_preset='cpu',
    stages=(runner.Stage("organisms", _stage, 'build every organism, locate its planted mechanism and intervene'),),
    legacy_keywords=("model", "log"), dashboard=True)


def run(config: OrganismsConfig | str | os.PathLike | None = None, out: str | os.PathLike | OrganismsConfig | None = None,
        **kw: Any) -> Any:
    """Run the study into `out` on the study runner (`studies.runner`; rerun the same call to resume).

    Args:
        config: every option (default `PRESETS['cpu']`).
        out: the run directory.
        **kw: `base=` (an already loaded base model; finetunes start from deep copies of it), `log=` (deprecated: receives the progress lines), `overwrite=`, `progress=` (see `runner.run`).

    Returns:
        A `runner.RunResult`; `.results["organisms"]` is {"recovery", "interventions", "behaviour", "table", "seconds"}. The deprecated call forms
        (`run(out, config)`, ...) return that value itself.
    """
    return runner.run(STUDY, config, out, **kw)


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Run the study from the command line (`python experiments/organisms.py --help`): prints the
    methods x organisms table, the wall time and the dashboard's path.

    Args:
        argv: the arguments (default: `sys.argv[1:]`).
        prog: the program name shown in the usage line.

    Returns:
        The exit status (0).
    """
    ns, cfg, _ = parse_config(build_parser(prog), argv, OrganismsConfig, presets=PRESETS)
    t0 = time.time()
    result = run(cfg, ns.out)
    res = result.results["organisms"]
    print()
    print(format_table(res["table"]))
    print(f"\nwall time {time.time() - t0:.0f} s")
    print(f"dashboard: {result.dashboard.resolve() if result.dashboard else None}")
    return 0
