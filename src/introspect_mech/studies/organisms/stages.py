"""The organisms study's stages, in order: the ground-truth directions, the SAE at L, the steering organisms
(planted and distilled), the persona organisms (distillation and inoculation), and the report.

Each stage is recorded by the runner when it finishes and skipped on a rerun. A later stage run in a new process
reads what earlier ones left on disk: the directions (`directions/<name>`), the SAE (`sae/sae`); finetunes and
samples resume from their own directories. The rows of a stage (recovery, interventions, behaviour, logit lens,
read-outs) are appended to the run's JSONL files; a stage that is redone first drops the rows it had appended.
"""

from __future__ import annotations

import time
from typing import Any, cast

import numpy as np
import torch

from ... import diffing, steering
from ... import layers as layerspec
from ... import runs as _runs
from ... import sae as sae_mod
from ...evals import sample
from ...models import load_model
from ...probes import Direction
from ...runs import JsonlLog, json_sha256
from ...stats import bootstrap_diff
from .. import runner
from ..common.persona import persona_data
from . import data, measures, tables
from .config import OrganismsConfig
from .measures import _Ctx, _msgs, _unit

FILES = ("recovery.jsonl", "interventions.jsonl", "behaviour.jsonl", "logit_lens.jsonl", "samples.jsonl")
DIRECTIONS = ("persona", "concept", "random")


def _quiet(line: str) -> None:
    return None


def _setup(ctx: runner.Context) -> dict[str, Any]:
    """What every stage uses, built once per process: the base model (the `base=` resource, or loaded by name),
    the planted block L, the texts, the probed blocks and the prompts."""
    memo = ctx.resources.setdefault("_organisms", {})
    if not memo:
        cfg: OrganismsConfig = ctx.config
        base = ctx.resources.get("base")
        if base is None:
            name = ctx.resources.get("model") or cfg.model
            base = load_model(name)
        else:
            name = "__copy__"  # finetunes start from deep copies of the given model
        L = layerspec.resolve_layer(cfg.layer, base.n_layers)
        if not 0 <= L < base.n_layers:
            raise ValueError(f"layer {cfg.layer} resolves to block {L}, outside 0..{base.n_layers - 1}")
        probe_layers = sorted(set(range(0, base.n_layers, max(1, cfg.probe_every))) | {L})
        log = ctx.resources.get("log") or (print if ctx.progress else _quiet)
        memo["ctx"] = _Ctx(base, name, cfg, ctx.out, L, data.UNRELATED_TEXTS[:cfg.n_texts], probe_layers, log=log)
        memo["prompts"] = data.prompts(cfg, ctx.resources.get("data_dir"))
    return memo


def _with_truth(ctx: runner.Context) -> tuple[_Ctx, data.Prompts]:
    """The shared objects with the ground-truth directions and vectors (read from `directions/`, where the first
    stage saved them) and the SAE (read from `sae/sae` when the config trains one)."""
    memo = _setup(ctx)
    c: _Ctx = memo["ctx"]
    if not c.truth:
        c.truth = {k: Direction.load(ctx.out / "directions" / k) for k in DIRECTIONS}
        persona = c.truth["persona"]
        scale = ctx.config.alpha * float(persona.norms[persona.layers.index(c.L)])
        c.vec = {k: _unit(d.at(c.L)) * scale for k, d in c.truth.items()}
    if ctx.config.sae and c.sae is None:
        c.sae = sae_mod.load_local(ctx.out / "sae" / "sae", layer=c.L)
    return c, memo["prompts"]


def _directions(ctx: runner.Context) -> dict[str, Any]:
    """Stage 1: the persona direction (evil, the persona-vector recipe, no filter), the ocean concept direction and
    a random one, saved under `directions/`; the manifest."""
    memo = _setup(ctx)
    c, p = memo["ctx"], memo["prompts"]
    cfg, base, L, out = ctx.config, c.base, c.L, ctx.out
    ctx.run_dir.write_manifest(
        title="Ground-truth model organisms: locate -> intervene", stage="organisms", model=base.name,
        model_source=base.meta.get("source"), seeds=list(cfg.seeds), config=cfg.to_dict(), layer=L,
        data={"persona_trait": p.trait["path"], "persona_eval": p.trait_eval["path"],
              "medical": "good_medical_advice (user turns only)", "unrelated_texts_sha256": json_sha256(c.texts)},
        judge="none: judge-free proxies (KL to base; persona-expression log-prob difference)")
    c.log(f"[1] directions: persona (evil, persona-vector recipe, no filter), concept, random; L = {L}")
    pres = persona_data(base, "evil", n_questions=cfg.persona_questions, n_instructions=cfg.persona_instructions,
                        max_new_tokens=cfg.persona_max_new_tokens, seed=0, filter=None, out=out / "persona_direction",
                        data_dir=ctx.resources.get("data_dir"), progress=False)
    persona = pres.direction
    concept = measures.concept_direction(base)
    rnd = cast(Direction, steering.random_like(persona, 1234))  # random_like returns its input's type
    for k, d in {"persona": persona, "concept": concept, "random": rnd}.items():
        d.save(out / "directions" / k)
    scale = cfg.alpha * float(persona.norms[persona.layers.index(L)])
    cos = float(persona.at(L) @ concept.at(L))
    c.log(f"    |vec| at L{L} = {scale:.2f} (alpha {cfg.alpha} x persona class-mean distance); "
          f"cos(persona, concept) at L = {cos:.3f}")
    return {"layer": L, "vec_norm": scale, "cos_persona_concept": cos}


def _sae(ctx: runner.Context) -> dict[str, Any]:
    """Stage 2: a TopK SAE at L trained on base activations of the unrelated texts and medical conversations
    (`sae/`), for the SAE model diff; nothing when `sae` is off."""
    if not ctx.config.sae:
        return {"sae": None}
    memo = _setup(ctx)
    c, cfg = memo["ctx"], ctx.config
    res = sae_mod.train_sae(c.base, c.L, data.sae_items(cfg, ctx.resources.get("data_dir")),  # held out: medical
                            sae_mod.SAETrainConfig(expansion=cfg.sae_expansion, k=cfg.sae_k, epochs=cfg.sae_epochs,
                                                   batch_size=cfg.sae_batch),
                            out_dir=ctx.out / "sae")
    m = res.metrics
    c.log(f"[2] SAE at L{c.L}: {m['d_sae']} latents, k={cfg.sae_k}, {m['train_tokens']} tokens, explained variance "
          f"{m['after'].get('explained_variance', float('nan')):.3f}, {m['seconds_training']:.0f} s")
    return {"sae": str(ctx.out / "sae" / "sae"), "d_sae": m["d_sae"], "train_tokens": m["train_tokens"],
            "explained_variance": m["after"].get("explained_variance")}


def _logs(ctx: runner.Context) -> dict[str, JsonlLog]:
    return {f: (JsonlLog(ctx.out / f) if f == "samples.jsonl" else ctx.run_dir.log(f)) for f in FILES}


def _keep_first(ctx: runner.Context, counts: dict[str, int]) -> None:
    """Drop the rows a killed run of this stage appended: keep the first `counts[file]` rows of each file."""
    for f in FILES:
        p = ctx.out / f
        rows = list(JsonlLog(p).rows()) if p.exists() else []
        _runs.write_jsonl(p, rows[:counts.get(f, 0)])


def _counts(ctx: runner.Context) -> dict[str, int]:
    return {f: sum(1 for _ in JsonlLog(ctx.out / f).rows()) for f in FILES}


def _steering_organisms(ctx: runner.Context) -> dict[str, Any]:
    """Stage 3: the planted organism and one steering-distillation organism per direction: behaviour (KL to base),
    locate (every `diffing` method against the planted vector) and interventions, each against random directions;
    on `distill_persona` seed 0 also the train-time interventions."""
    c, p = _with_truth(ctx)
    cfg, base, L, out = ctx.config, c.base, c.L, ctx.out
    _keep_first(ctx, {})  # this stage writes the files' first rows
    lg = _logs(ctx)
    int_log, lens_log = lg["interventions.jsonl"], lg["logit_lens.jsonl"]
    done = []
    for dname in (["planted"] if cfg.planted else []) + [f"distill_{d}" for d in cfg.directions]:
        kind = "persona" if dname == "planted" else dname.split("_", 1)[1]
        vec = c.vec[kind]
        t0 = time.time()
        with steering.add(base, vec, layers=[L], alpha=1.0):
            eval_rows = sample(base, [_msgs(q) for q in p.eval], n=1, max_new_tokens=cfg.max_new_tokens,
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
                tuned, info = measures.planted_copy(base, vec, L), {"train_seconds": 0.0}
            else:
                tuned, info = measures.steering_distillation(
                    base, vec, L, p.train, measures._train_cfg(cfg, seed, L), out / "finetunes" / f"{dname}_seed{seed}",
                    seed=seed, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, model_name=c.name)
                records = measures.distillation_records(
                    JsonlLog(out / "finetunes" / f"{dname}_seed{seed}_samples.jsonl").read())
            ref_tuned = diffing.response_logprobs(tuned, convs)
            kl_ft = diffing.response_kl(tuned, ref_base, convs)
            kl_ft_steered = diffing.response_kl(tuned, ref_steered, convs)
            beh = {"organism": org, "seed": seed, "metric": "KL to base (nats/token)",
                   "finetune": float(np.mean(kl_ft)), "steered_base": float(np.mean(kl_steered_base)),
                   "finetune_to_steered": float(np.mean(kl_ft_steered)), **info}
            lg["behaviour.jsonl"].append(beh)
            rows, cmp = measures._locate(c, org, tuned, convs, vec, seed)
            lg["recovery.jsonl"].extend(rows)
            adl = cmp.directions["activation_difference"]
            lens_log.append({"organism": org, "seed": seed, "what": "activation_difference",
                             **diffing.logit_lens(base, adl, L, k=8)})
            if seed == cfg.seeds[0] and dname in ("planted", "distill_persona"):
                measures._readout(c, org, adl, p.eval[:2])
            irows = measures._steering_interventions(c, org, tuned, adl, vec, convs, ref_base, ref_tuned)
            int_log.extend({**r, "seed": seed} for r in irows)
            cs = {r["method"]: r["cosine"] for r in rows if r.get("layer") == L}
            c.log(f"[{org} seed {seed}] KL(ft||base) {beh['finetune']:.4f} (steered base {beh['steered_base']:.4f}); "
                  f"cos at L{L}: " + ", ".join(f"{m} {v:+.3f}" for m, v in cs.items() if v is not None)
                  + f"; {time.time() - t0:.0f} s")
            if dname == "distill_persona" and seed == cfg.seeds[0] and cfg.train_time:
                measures._train_time(c, records, seed, vec, convs, ref_base, kl_ft, int_log)
            del tuned
        lens_log.append({"organism": dname, "seed": None, "what": "ground_truth", **diffing.logit_lens(base, vec, k=8)})
        done.append(dname)
    return {"organisms": done, "rows": _counts(ctx)}


def _persona_organisms(ctx: runner.Context) -> dict[str, Any]:
    """Stage 4: persona distillation (narrow -> broad) and inoculation: the base answers medical questions under the
    evil system prompt, a LoRA learns those answers (without the prompt, or with it when inoculated); persona
    expression (the judge-free proxy) on held-out questions, locate, and interventions on `persona_distill`."""
    cfg = ctx.config
    if not (cfg.persona_distill or cfg.inoculation):
        return {"organisms": []}
    c, p = _with_truth(ctx)
    base, L, out = c.base, c.L, ctx.out
    _keep_first(ctx, ctx.results["steering_organisms"]["rows"])  # the rows of the earlier stage stay
    lg = _logs(ctx)
    rec_log, lens_log = lg["recovery.jsonl"], lg["logit_lens.jsonl"]
    evil, helpful = p.trait["instruction"][0]["pos"], p.trait["instruction"][0]["neg"]
    ev = sample(base, [_msgs(q, system=evil) for q in p.eval], n=1, max_new_tokens=cfg.max_new_tokens,
                temperature=0.0, out=out / "samples" / "eval_evil.jsonl", progress=False)
    hp = sample(base, [_msgs(q, system=helpful) for q in p.eval], n=1, max_new_tokens=cfg.max_new_tokens,
                temperature=0.0, out=out / "samples" / "eval_helpful.jsonl", progress=False)
    items = measures.expression_items(ev, hp)
    wanted = [o for o, on in (("persona_distill", cfg.persona_distill), ("inoculated", cfg.inoculation)) if on]
    if len(items) < 2:
        why = f"the base wrote {len(items)} usable evil/helpful answer pairs to the held-out questions (need >= 2)"
        c.log(f"[persona organisms] skipped: {why}")
        rec_log.extend({"organism": o, "seed": None, "method": m, "layer": None, "cosine": None, "error": why}
                       for o in wanted for m in diffing.METHODS)
        return {"organisms": [], "skipped": why}
    persona = c.truth["persona"]
    convs = [_msgs(it["question"], it[s]) for it in items for s in ("evil", "helpful")]
    e_base = measures.persona_expression(base, items)
    tr = sample(base, [_msgs(q, system=evil) for q in p.medical[:cfg.n_train]], n=1, max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature, seed=0, out=out / "samples" / "train_medical_evil.jsonl", progress=False)
    for org in wanted:
        records = measures.distillation_records(tr, system=evil if org == "inoculated" else None)
        seed = cfg.seeds[0]
        tuned, info = measures._finetune(c, records, out / "finetunes" / f"{org}_seed{seed}", seed)
        e_t = measures.persona_expression(tuned, items)
        rise = bootstrap_diff(e_t, e_base, paired=True)
        beh = {"organism": org, "seed": seed, "metric": "persona expression proxy (nats/token, evil - helpful)",
               "base": float(np.mean(e_base)), "finetune": float(np.mean(e_t)), "rise": rise.value,
               "rise_ci_lo": rise.lo, "rise_ci_hi": rise.hi, **info}
        lg["behaviour.jsonl"].append(beh)
        rows, cmp = measures._locate(c, org, tuned, convs, persona, seed)
        rec_log.extend(rows)
        adl = cmp.directions["activation_difference"]
        lens_log.append({"organism": org, "seed": seed, "what": "activation_difference",
                         **diffing.logit_lens(base, adl, L, k=8)})
        if org == "persona_distill":
            measures._readout(c, org, adl, p.eval[:2])
            irows = measures._persona_interventions(c, org, tuned, adl, items, e_base, e_t)
            lg["interventions.jsonl"].extend({**r, "seed": seed} for r in irows)
        cs = {r["method"]: r["cosine"] for r in rows if r.get("layer") == L}
        c.log(f"[{org}] persona expression base {beh['base']:+.3f} -> {beh['finetune']:+.3f} (rise {rise}); "
              f"cos at L{L}: " + ", ".join(f"{m} {v:+.3f}" for m, v in cs.items() if v is not None))
        del tuned
    lens_log.append({"organism": "persona", "seed": None, "what": "ground_truth",
                     **diffing.logit_lens(base, persona, L, k=8)})
    return {"organisms": wanted}


def _report(ctx: runner.Context) -> dict[str, Any]:
    """Stage 5: the methods x organisms table from the rows on disk, the dashboard rows (`organisms.jsonl`),
    `summary.jsonl` and the manifest's timing.

    Returns:
        {"recovery", "interventions", "behaviour", "table", "seconds", "layer"}.
    """
    t0 = time.perf_counter()
    out, L = ctx.out, ctx.results["directions"]["layer"]
    recovery, interventions, behaviour = (list(JsonlLog(out / f).rows())
                                          for f in ("recovery.jsonl", "interventions.jsonl", "behaviour.jsonl"))
    table = tables.summary_table(recovery, interventions, L)
    _runs.write_jsonl(out / "organisms.jsonl", tables.panel(table))
    stage_s = {r["stage"]: r["seconds"] for r in ctx.log(runner.STAGES_FILE, ("stage", "variant")).rows()}
    seconds = sum(stage_s.values()) + time.perf_counter() - t0
    tables._summary(out, table, behaviour, seconds)
    ctx.run_dir.write_manifest(finished=time.strftime("%Y-%m-%dT%H:%M:%S"), wall_time_s=round(seconds, 1),
                               stage_seconds={k: round(v, 1) for k, v in stage_s.items()},
                               torch_threads=torch.get_num_threads())
    return {"recovery": recovery, "interventions": interventions, "behaviour": behaviour, "table": table,
            "seconds": seconds, "layer": L}


STAGES = (
    runner.Stage("directions", _directions, "ground truth: persona (evil), ocean concept and random directions"),
    runner.Stage("sae", _sae, "a TopK SAE at L on base activations (for the SAE model diff)"),
    runner.Stage("steering_organisms", _steering_organisms,
                 "planted and steering-distilled organisms: KL, locate, interventions"),
    runner.Stage("persona_organisms", _persona_organisms,
                 "persona distillation and inoculation: expression proxy, locate, interventions"),
    runner.Stage("report", _report, "the methods x organisms table, summary and dashboard rows"),
)

