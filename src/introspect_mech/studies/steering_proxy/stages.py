"""The steering-proxy study's stages, in order: `directions` (the coherence references and the base model's EM
and persona directions), `creates_em` (a), `caft` (c; also run for b, whose finetunes it makes), `removes_em` (b)
and `report` (`results.json`).

The `stages` field (letters a, b, c) selects which of (a)-(c) do their work; it selects work, so it is not bound and
the runner keys the stage records by it (with b's `ablate_layers` and `random_per_finetune`). A stage run in a new
process reads what earlier ones left: the reference answers (`reference_answers.json`), the directions
(`directions/`), the finetunes (`caft/`); each experiment resumes from its own keyed logs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ...data import load as load_data
from ...direction import Direction
from ..common.medical_split import MEDICAL_TRAIN_ROWS, medical_heldout_items
from ...evals.metrics import load_em_pairs
from ...finetune import TrainConfig
from ...layers import resolve_layers
from ...models import attach_adapter, load_model
from ...runs import JsonlLog, RunDir
from .. import runner
from ..common.coherence import NEUTRAL_PROMPTS, reference_answers
from ..common.persona import persona_direction
from .config import STUDY_PRESETS, SteeringProxyConfig
from .measures import (_em_directions, _write_json, combine_removal, creates_em, em_eval_fn, removal_tag, removes_em,
                       train_time)

REFERENCES = "reference_answers.json"


def _directions(out: Path, name: str, make: Callable[[], list], which: Sequence[int]) -> list:
    """The directions `directions/<name>_seed<s>` for each seed of `which`: read when all are saved, else made
    (`make()`) and saved."""
    files = [out / "directions" / f"{name}_seed{s}" for s in which]
    if all(Path(str(f) + ".json").exists() for f in files):
        return [Direction.load(f) for f in files]
    ds = make()
    for d, f in zip(ds, files):
        d.save(f)
    return ds


def _setup(ctx: runner.Context) -> dict[str, Any]:
    """Built once per process: the base model (float32 on GPU too: comparable with CPU runs), the steered blocks,
    the held-out medical items (the eval's and the direction pool), and -- once the references exist -- the eval."""
    memo = ctx.resources.setdefault("_steering_proxy", {})
    cfg: SteeringProxyConfig = ctx.config
    if not memo:
        base = load_model(cfg.model, dtype=torch.float32)
        held = medical_heldout_items(None, seed=0, data_dir=ctx.resources.get("data_dir"))  # rows >= MEDICAL_TRAIN_ROWS only
        n_eval = 8 if cfg.quick else 32
        pool = [(it["prompt"] + [{"role": "assistant", "content": it["misaligned"]}],
                 it["prompt"] + [{"role": "assistant", "content": it["aligned"]}]) for it in held[n_eval:]]
        memo.update(base=base, medical=held[:n_eval], pool=pool,
                    layers=list(cfg.layers) if cfg.layers is not None else resolve_layers([0.2, 0.35, 0.5, 0.65],
                                                                                          base.n_layers))
    if "eval_fn" not in memo and (ctx.out / REFERENCES).exists():
        refs = json.loads((ctx.out / REFERENCES).read_text())
        memo["eval_fn"] = em_eval_fn(refs, pairs=load_em_pairs()[: 8 if cfg.quick else None], medical=memo["medical"],
                                     batch_size=cfg.batch_size, self_rating=STUDY_PRESETS[cfg.preset]["self_rating"])
    return memo


def _load(cfg: SteeringProxyConfig) -> Any:
    return load_model(cfg.model, dtype=torch.float32)


def _directions_stage(ctx: runner.Context) -> dict[str, Any]:
    """Stage 1: the manifest; the coherence NLL's references (the base model's greedy answers to neutral prompts);
    one proxy EM direction of the base model per seed (bad minus good held-out medical answers, a seeded subset);
    the evil persona direction per seed when `persona` (a filter that keeps too few pairs is recorded, not fatal)."""
    cfg, out = ctx.config, ctx.out
    memo = _setup(ctx)
    base, sizes = memo["base"], STUDY_PRESETS[cfg.preset]
    if cfg.ablate_layers is None or isinstance(cfg.ablate_layers, (int, float)):
        raise TypeError(f"ablate_layers must be a spec string or block indices, got {cfg.ablate_layers!r}")
    RunDir(out).write_manifest(stage="steering_study", model=base.name, preset=cfg.preset,
                               n_train=sizes["n_train"] if cfg.n_train is None else cfg.n_train,
                               lr=sizes["lr"] if cfg.lr is None else cfg.lr, seeds=list(cfg.seeds),
                               ablate_layers=cfg.ablate_layers if isinstance(cfg.ablate_layers, str)
                               else list(cfg.ablate_layers))
    if not (out / REFERENCES).exists():
        n_ref = 4 if cfg.quick else len(NEUTRAL_PROMPTS)
        _write_json(out / REFERENCES, reference_answers(base, NEUTRAL_PROMPTS[:n_ref],
                                                        max_new_tokens=16 if cfg.quick else 48,
                                                        batch_size=cfg.batch_size))
    _directions(out, "em_base", lambda: _em_directions(base, memo["pool"], cfg.seeds, cfg.n_dir_pairs, cfg.batch_size),
                cfg.seeds)
    result: dict[str, Any] = {"sets": ["em"]}
    if cfg.persona:

        def make_persona():
            return [persona_direction(base, "evil", n_questions=4 if cfg.quick else 20,
                                      n_instructions=2 if cfg.quick else 5, max_new_tokens=16 if cfg.quick else 64,
                                      seed=int(s), batch_size=cfg.batch_size, data_dir=ctx.resources.get("data_dir"),
                                      progress=False) for s in cfg.seeds]
        try:
            _directions(out, "persona_evil_base", make_persona, cfg.seeds)
            result["sets"].append("persona")
        except RuntimeError as e:  # the filter kept too few pairs: record it, go on without
            result["persona_error"] = str(e)
    return result


def _base_directions(ctx: runner.Context, name: str) -> list:
    return [Direction.load(ctx.out / "directions" / f"{name}_seed{s}") for s in ctx.config.seeds]


def _creates_em_stage(ctx: runner.Context) -> dict[str, Any]:
    """Stage 2 (a): add each direction set (EM, persona) to the base at each block and alpha against norm-matched
    random directions."""
    cfg = ctx.config
    if "a" not in cfg.stages:
        return {}
    memo = _setup(ctx)
    names = {"em": "em_base", "persona": "persona_evil_base"}
    return {"creates_em": {k: creates_em(memo["base"], _base_directions(ctx, names[k]), layers=memo["layers"],
                                         alphas=cfg.alphas, eval_fn=memo["eval_fn"], out=ctx.out / f"creates_em_{k}",
                                         seeds=cfg.seeds)
                           for k in ctx.results["directions"]["sets"]}}


def _caft_stage(ctx: runner.Context) -> dict[str, Any]:
    """Stage 3 (c, and b's finetunes): per seed, finetune on bad medical advice plain, with CAFT on the seed's EM
    direction and with CAFT on a norm-matched random direction; each evaluated unsteered."""
    cfg = ctx.config
    if "c" not in cfg.stages and "b" not in cfg.stages:
        return {}
    memo = _setup(ctx)
    sizes = STUDY_PRESETS[cfg.preset]
    train_sizes = dict(batch_size=4, max_seq_len=256, warmup_steps=2) if cfg.quick else sizes["train"]
    tcfg = TrainConfig(r=8 if cfg.quick else 32, lora_alpha=16.0 if cfg.quick else 64.0,
                       lr=sizes["lr"] if cfg.lr is None else cfg.lr,
                       n_examples=sizes["n_train"] if cfg.n_train is None else cfg.n_train, **train_sizes)
    records = load_data("bad_medical_advice", ctx.resources.get("data_dir"))[:MEDICAL_TRAIN_ROWS]
    return {"caft": train_time(lambda: _load(cfg), records, tcfg, _base_directions(ctx, "em_base"), memo["eval_fn"],
                               ctx.out / "caft", kind="caft", seeds=cfg.seeds)}


def _removes_em_stage(ctx: runner.Context) -> dict[str, Any]:
    """Stage 4 (b): in each seed's plain finetune, the EM direction extracted there, ablated at `ablate_layers`
    against norm-matched random directions (all seeds per finetune, or `random_per_finetune` of them, rotated);
    pooled over finetune seeds."""
    cfg, out = ctx.config, ctx.out
    if "b" not in cfg.stages:
        return {}
    memo = _setup(ctx)
    seeds, tag = cfg.seeds, removal_tag(cfg.ablate_layers)
    trained = {(r["condition"], r["seed"]): r["metrics"] for r in JsonlLog(out / "caft" / "train_time.jsonl").read()}
    for i, s in enumerate(seeds):
        k = len(seeds) if cfg.random_per_finetune is None else max(1, min(cfg.random_per_finetune, len(seeds)))
        random_seeds = [seeds[(i + j) % len(seeds)] for j in range(k)]
        # the base and the unsteered finetune were evaluated with the same eval_fn in (c): reuse those rows
        rlog = RunDir(out / f"removes_em{tag}_seed{s}").log("removes_em.jsonl", ("condition", "seed"))
        for cond, src in (("base", ("base", None)), ("finetuned", ("plain", int(s)))):
            if src in trained and rlog.key({"condition": cond, "seed": None}) not in rlog.done_keys():
                rlog.append({"condition": cond, "seed": None, "metrics": trained[src],
                             "copied_from": f"caft/train_time.jsonl {src}"})
        ft = attach_adapter(_load(cfg), out / "caft" / f"plain_seed{s}" / "adapter")
        dirs = _directions(out, "em_finetuned",
                           lambda: _em_directions(ft, memo["pool"], [s], cfg.n_dir_pairs, cfg.batch_size), [s])
        removes_em(ft, dirs, memo["eval_fn"], out / f"removes_em{tag}_seed{s}", layers=cfg.ablate_layers,
                   seeds=random_seeds)
    return {f"removes_em{tag}": combine_removal(out, seeds, tag=tag)}


def _report(ctx: runner.Context) -> dict[str, Any]:
    """Stage 5: every experiment's summary in `results.json`.

    Returns:
        {"persona_error" when the persona direction failed, "creates_em": {direction set: summary}, "caft":
        summary, "removes_em<tag>": pooled summary} for the experiments `stages` ran.
    """
    results: dict[str, Any] = {}
    if "persona_error" in ctx.results["directions"]:
        results["persona_error"] = ctx.results["directions"]["persona_error"]
    for name in ("creates_em", "caft", "removes_em"):
        results.update(ctx.results[name] or {})
    _write_json(ctx.out / "results.json", results)
    return results


STAGES = (
    runner.Stage("directions", _directions_stage, "coherence references; EM and persona directions of the base"),
    runner.Stage("creates_em", _creates_em_stage, "(a) add each direction to the base vs random directions"),
    runner.Stage("caft", _caft_stage, "(c) finetunes: plain, CAFT, CAFT on a random direction (also for b)"),
    runner.Stage("removes_em", _removes_em_stage, "(b) ablate the finetune's own EM direction vs random directions"),
    runner.Stage("report", _report, "results.json"),
)
