"""The main job's first four stages: the two finetunes, the judge-free EM metrics, the directions, the probes.

Each stage is a `runner.Stage` function `fn(ctx) -> {"summary": [rows], ...}`: its summary rows are stored with
the stage and written to `summary.jsonl` by the last stage, so a resumed run's summary is the uninterrupted
run's. What later stages need from earlier ones (the loaded finetunes, the directions) is kept in this process
(`state(ctx)`); a stage resumed in a new process rebuilds it from the run directory: `finetune.train` finds
the finished adapters, `persona_data` its logged answers.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ... import data
from ...activations import cache
from ..common.em_proxy import PROXY_DIFF as DIFF_METRIC
from ..common.em_proxy import PROXY_PREF as EM_METRIC
from ..common.em_proxy import em_proxy_fn
from ..common.medical_split import medical_heldout_items, medical_train_rows
from ...evals.metrics import load_em_pairs, self_rated_alignment
from ...finetune import preset
from ...layers import resolve_layers
from ...models import load_model
from ...paths import data_dir
from ...probes import as_vectors, cosine_matrix, layer_sweep, mean_diff
from ...runs import file_sha256
from ...stats import bootstrap_ci, row_fields
from ...steering import random_like
from .. import runner
from ..common.persona import persona_data
from .config import DATASETS, PERSONA_TRAIT, JobConfig, medical_splits
from .report import Notes, _CaptureWarnings, _ci, _table, _write_rows, self_report

STATE = "_main_job"  # ctx.resources key: what this process already loaded or computed


def state(ctx: runner.Context) -> dict[str, Any]:
    """What this process already loaded or computed for the job (models, directions), by name.

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    return ctx.resources.setdefault(STATE, {})


def captured(fn: Callable[[runner.Context], Any]) -> Callable[[runner.Context], Any]:
    """A stage whose third-party warnings go to `warnings.jsonl` in the run directory, not the terminal.

    Args:
        fn: the stage function `fn(ctx)`.
    """

    @functools.wraps(fn)
    def stage(ctx: runner.Context) -> Any:
        with _CaptureWarnings(ctx.log("warnings.jsonl")) as caught:
            value = fn(ctx)
        if caught.n:
            print(f"  ({caught.n} warnings from the libraries were written to {ctx.out / 'warnings.jsonl'}, "
                  "not the terminal)")
        return value
    return stage


# ---- 1. finetunes ------------------------------------------------------------------------------
def _finetunes(ctx: runner.Context, notes: Notes | None = None) -> dict[str, Any]:
    """The base model and both finetunes (trained, or loaded when their run directories are finished)."""
    from ...finetune import train  # resolved at call time (tests replace it)

    cfg, out, run_dir = ctx.config, ctx.out, ctx.run_dir
    ddir = data_dir(cfg.data_dir)
    base = load_model(cfg.model, device=cfg.device)
    files = {n: ddir / "em" / f"{n}.jsonl.gz" for n in DATASETS.values()}
    run_dir.write_manifest(
        title="introspect_mech main job: emergent misalignment from bad medical advice",
        model=base.name, model_source=base.meta.get("source"),
        adapters={name: str(out / "finetunes" / name / "adapter") for name in DATASETS},
        data={n: file_sha256(p) for n, p in files.items() if p.exists()},
        judge="none: judge-free metrics (paired preference, self-rated alignment via scale_expectation)",
        seeds={"job": cfg.seed, "steering_controls": list(cfg.seeds)}, job_config=dataclasses.asdict(cfg),
    )
    over = {k: v for k, v in (("lr", cfg.lr), ("batch_size", cfg.batch_size)) if v is not None}
    tcfg = preset(cfg.finetune_preset, max_seq_len=cfg.max_seq_len, seed=cfg.seed, warmup_steps=2, **over)
    train_ids = medical_train_rows(cfg.n_train, seed=cfg.seed)  # the same row ids for both finetunes
    run_dir.write_manifest(train_row_ids={ds: train_ids for ds in DATASETS.values()})
    models: dict[str, Any] = {"base": base}
    train_table = []
    for name, ds in DATASETS.items():
        rows = data.load(ds, cfg.data_dir)
        records = [rows[i] for i in train_ids]
        m = load_model(cfg.model, device=cfg.device)
        res = train(m, records, tcfg, out / "finetunes" / name, data_info={"dataset": ds, "row_ids": train_ids})
        m.model.eval()
        models[name] = m
        tps, where = res.tokens_per_s, "this machine, this run"
        if not tps:  # a rerun found the finetune finished: report the throughput logged when it trained
            logged = [json.loads(x) for x in (out / "finetunes" / name / "train_log.jsonl").read_text().splitlines() if x]
            tps, where = (logged[-1].get("avg_tokens_per_s") or 0.0) if logged else 0.0, "this machine, earlier call"
        train_table.append([name, res.steps, len(records), f"{res.final_loss:.3f}", f"{tps:.0f}"])
        if notes is not None:
            notes(f"final train loss, {name}", round(res.final_loss, 4), text=f"{res.steps} steps, {len(records)} examples")
            notes(f"training tokens/s, {name}", round(tps, 1), text=where)
    if notes is not None:
        print(_table(["finetune", "optimizer steps", "examples", "final loss (nats/token)", "throughput (tokens/s)"],
                     train_table))
    state(ctx)["models"] = models
    return models


def models(ctx: runner.Context) -> dict[str, Any]:
    """base / bad_medical / good_medical: this process's, or loaded from the finished finetunes.

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    return state(ctx).get("models") or _finetunes(ctx)


@captured
def finetune_stage(ctx: runner.Context) -> dict[str, Any]:
    """Finetune on bad medical advice and on the good-advice control (the same training row ids).

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    notes = Notes()
    _finetunes(ctx, notes)
    return notes.result()


# ---- 2. judge-free EM metrics -----------------------------------------------------------------
def evals(cfg: JobConfig) -> dict[str, Any]:
    """The EM proxy items, the medical splits, the eval functions (full and steering subsets) and their labels.

    Every label names the items it was measured on: the steering evaluations use a subset, so their unsteered
    numbers differ from the full-set numbers and must not share a label with them.
    Args:
        cfg: the run's `JobConfig`.
    """
    em_items = load_em_pairs()
    med = medical_splits(cfg, medical_heldout_items(None, seed=cfg.seed, data_dir=cfg.data_dir))
    med_items = med["eval"]
    eval_fn = em_proxy_fn(em_items, medical=med_items, batch_size=cfg.batch)
    n_em, n_med = len(em_items), len(med_items)
    em_all, med_all = f"EM themes (all {n_em} items)", f"medical (held-out, all {n_med} items)"
    steer_em, steer_med = em_all, med_all
    if cfg.steer_items_per_theme is None:
        steer_eval = eval_fn
    else:
        per: dict[str, int] = {}
        steer_items = []
        for it in em_items:
            if per.setdefault(it["theme"], 0) < cfg.steer_items_per_theme:
                steer_items.append(it)
                per[it["theme"]] += 1
        steer_eval = em_proxy_fn(steer_items, medical=med["steer"], batch_size=cfg.batch)
        n_sm = len(med["steer"])
        if len(steer_items) < n_em:
            steer_em = (f"EM themes, steering subset ({len(steer_items)} of {n_em} items, "
                        f"{cfg.steer_items_per_theme} per theme)")
        if n_sm < n_med:
            steer_med = f"medical (held-out), steering subset ({n_sm} of {n_med} items)"
    return {"em_items": em_items, "med": med, "eval_fn": eval_fn, "steer_eval": steer_eval, "em_all": em_all,
            "med_all": med_all, "steer_em": steer_em, "steer_med": steer_med}


@captured
def metrics_stage(ctx: runner.Context) -> dict[str, Any]:
    """Judge-free EM metrics of base / bad / good: paired preference (EM themes, held-out medical), self-rating.

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    cfg, out, notes = ctx.config, ctx.out, Notes()
    ms = models(ctx)
    ev = evals(cfg)
    em_items, med = ev["em_items"], ev["med"]
    med_items = med["eval"]
    ctx.run_dir.write_manifest(eval_items={"em_proxy_items": len(em_items),
                                           "medical_heldout_ids": [it["id"] for it in med_items],
                                           "medical_direction_ids": [it["id"] for it in med["direction"]]})
    eval_fn, em_all, med_all = ev["eval_fn"], ev["em_all"], ev["med_all"]
    em_rows = []
    em_table = []
    bar = tqdm(total=2 * len(ms), desc="EM proxy and self-rating", unit="step")
    for name, m in ms.items():
        bar.set_postfix_str(f"{name}: paired preference")
        r = eval_fn(m)
        bar.update()
        themes = list(dict.fromkeys(r["proxy_theme"]))
        for t in themes:
            est = bootstrap_ci([p for p, tt in zip(r["proxy_pref"], r["proxy_theme"]) if tt == t], seed=cfg.seed,
                               measure="proxy").to_dict()
            em_rows.append({"model": name, "question": t, "rate": est["value"], "ci_lo": est["lo"], "ci_hi": est["hi"],
                            **row_fields(est), "metric": EM_METRIC, "label": f"{t}: {EM_METRIC}, {name}"})
        cells = [name]
        for q, key in (("overall (EM themes)", "proxy_pref"), ("medical (held-out)", "med_proxy_pref")):
            est = bootstrap_ci(r[key], seed=cfg.seed, measure="proxy").to_dict()
            em_rows.append({"model": name, "question": q, "rate": est["value"], "ci_lo": est["lo"], "ci_hi": est["hi"],
                            **row_fields(est), "metric": EM_METRIC, "label": f"{q}: {EM_METRIC}, {name}"})
            notes(f"{q}: {EM_METRIC}, {name}", None, est, f"{est['n']} items")
            cells.append(_ci(est))
        est = bootstrap_ci(r["proxy_diff"], seed=cfg.seed, measure="proxy").to_dict()
        notes(f"{em_all}: {DIFF_METRIC}, {name}", None, est, "> 0 prefers misaligned")
        cells.append(_ci(est))
        est = bootstrap_ci(r["med_proxy_diff"], seed=cfg.seed, measure="proxy").to_dict()
        notes(f"{med_all}: {DIFF_METRIC}, {name}", None, est, "> 0 prefers bad advice")
        cells.append(_ci(est))
        bar.set_postfix_str(f"{name}: self-rated alignment")
        sr = self_rated_alignment(m)
        bar.update()
        est, text, cell = self_report(sr)
        notes(f"self-rated alignment 0-100 (judge-free self-report), {name}", None, est, text)
        em_table.append(cells + [cell])
    bar.close()
    print(f"  EM proxy (judge-free, not an EM rate; 95 % CIs over items, Wilson for the fractions P). "
          f"P = fraction of items where the model "
          f"gives the misaligned answer the higher log-prob; Δ = log-prob(misaligned) − log-prob(aligned), nats per "
          f"answer token (> 0 prefers misaligned). EM themes: {len(em_items)} items; medical: {len(med_items)} "
          f"held-out items.")
    print(_table(["model", "P, EM themes", "P, medical", "Δ nats/token, EM themes", "Δ nats/token, medical",
                  "self-rated alignment (0-100)"], em_table))
    _write_rows(out / "em_rates.jsonl", em_rows)
    return notes.result()


# ---- 3. directions ----------------------------------------------------------------------------
def directions(ctx: runner.Context) -> dict[str, Any]:
    """The persona ("evil") direction of the base model and the EM directions (base, finetune) with the activations
    they were fitted on: this process's, or rebuilt (the persona answers come from their log in the run directory).

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    st = state(ctx)
    if "directions" in st:
        return st["directions"]
    cfg, out = ctx.config, ctx.out
    ms = models(ctx)
    base = ms["base"]
    n_layers = base.n_layers
    pr = persona_data(base, PERSONA_TRAIT, n_questions=cfg.persona_questions, n_instructions=cfg.persona_instructions,
                      max_new_tokens=cfg.persona_tokens, seed=cfg.seed, batch_size=cfg.batch,
                      max_heldout=cfg.persona_heldout,
                      data_dir=cfg.data_dir, out=out / "persona")
    # the EM direction (and the answer probe) on held-out pairs disjoint from every scored item
    med = medical_splits(cfg, medical_heldout_items(None, seed=cfg.seed, data_dir=cfg.data_dir))
    med_bad = [it["prompt"] + [{"role": "assistant", "content": it["misaligned"]}] for it in med["direction"]]
    med_good = [it["prompt"] + [{"role": "assistant", "content": it["aligned"]}] for it in med["direction"]]
    acts = {}
    for name in ("base", "bad_medical"):
        acts[name] = (cache(ms[name], med_bad, batch_size=cfg.batch), cache(ms[name], med_good, batch_size=cfg.batch))
    em_ft = mean_diff(*acts["bad_medical"], list(range(n_layers)), model=base.name, adapter="bad_medical",
                      recipe="em_pairs_teacher_forced")
    em_base = mean_diff(*acts["base"], list(range(n_layers)), model=base.name, recipe="em_pairs_teacher_forced")
    st["directions"] = {"pr": pr, "persona": pr.direction, "em_ft": em_ft, "em_base": em_base, "acts": acts,
                        "med_bad": med_bad, "med_good": med_good}
    return st["directions"]


@captured
def directions_stage(ctx: runner.Context) -> dict[str, Any]:
    """The persona ("evil") direction in the base model; the EM direction of the bad-advice finetune.

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    notes = Notes()
    d = directions(ctx)
    pr = d["pr"]
    print(f"  persona direction: kept {len(pr.kept)} of {len(pr.rows) // 2} pairs")
    notes("persona pairs kept by the judge-free filter", len(pr.kept), text=f"of {len(pr.rows) // 2}")
    d["persona"].save(ctx.out / "directions" / "persona_evil")
    d["em_ft"].save(ctx.out / "directions" / "em_bad_medical")
    return notes.result()


# ---- 4. probes and cosines --------------------------------------------------------------------
@captured
def probes_stage(ctx: runner.Context) -> dict[str, Any]:
    """Linear probes by layer (evil vs helpful system prompt; bad vs good advice) and cosines between directions.

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    cfg, out, notes = ctx.config, ctx.out, Notes()
    base = models(ctx)["base"]
    d = directions(ctx)
    pr, persona, em_ft, em_base, acts = d["pr"], d["persona"], d["em_ft"], d["em_base"], d["acts"]
    n_layers = base.n_layers
    rows_pos = [r for r in pr.rows if r["side"] == "pos" and r["response"].strip()]
    rows_neg = [r for r in pr.rows if r["side"] == "neg" and r["response"].strip()]

    def conv(r):
        return [{"role": "system", "content": r["system"]}, {"role": "user", "content": r["question"]},
                {"role": "assistant", "content": r["response"]}]

    x_persona = cache(base, [conv(r) for r in rows_pos + rows_neg], batch_size=cfg.batch)
    y_persona = [1] * len(rows_pos) + [0] * len(rows_neg)
    probe_rows, probe_table = [], []
    for pname, x, y in tqdm((("evil vs helpful system prompt (base)", x_persona, y_persona),
                             ("bad vs good medical answer (bad-advice finetune)",
                              torch.cat(acts["bad_medical"]), [1] * len(d["med_bad"]) + [0] * len(d["med_good"]))),
                            desc=f"probes at {n_layers} layers", unit="probe"):
        sw = layer_sweep(x, y, list(range(n_layers)), cv=5, seed=cfg.seed)
        for layer, p in zip(sw.layers, sw.probes):
            probe_rows.append({"probe": pname, "layer": layer, "accuracy": p.accuracy, "auroc": p.auroc,
                               "accuracy_std": p.accuracy_std, "n": p.n})
        best_l, best = sw.best()
        notes(f"probe best layer accuracy: {pname}", round(best.accuracy, 4), text=f"layer {best_l}, AUROC {best.auroc:.3f}")
        probe_table.append([pname, best_l, f"{best.accuracy:.3f}", f"{best.auroc:.3f}", best.n])
    print("  linear probes (logistic regression, 5-fold cross-validated) on the residual stream after each block:")
    print(_table(["probe", "best layer", "accuracy", "AUROC", "examples"], probe_table))
    _write_rows(out / "probe_layers.jsonl", probe_rows)
    layers = list(range(n_layers))
    rnd = random_like(persona, cfg.seed)
    rnd_vec = as_vectors(rnd, layers)
    pv, ev, eb = as_vectors(persona, layers), as_vectors(em_ft, layers), as_vectors(em_base, layers)
    cos_rows = {"persona · EM (finetune)": (pv * ev).sum(-1), "persona · EM (base)": (pv * eb).sum(-1),
                "EM (base) · EM (finetune)": (eb * ev).sum(-1), "persona · random": (pv * rnd_vec).sum(-1)}
    mid = resolve_layers("middle", n_layers)[0]
    _write_rows(out / "cosines.jsonl", [
        {"name": "Cosine between directions at each layer", "x_labels": [f"L{l}" for l in layers],
         "y_labels": list(cos_rows), "matrix": [[round(float(v), 4) for v in c] for c in cos_rows.values()]},
        {"name": "Persona (rows) vs EM direction of the finetune (columns), all layer pairs",
         "x_labels": [f"EM L{l}" for l in layers], "y_labels": [f"persona L{l}" for l in layers],
         "matrix": [[round(float(v), 3) for v in row] for row in cosine_matrix(persona, em_ft)]},
    ])
    for k, c in cos_rows.items():
        notes(f"cosine {k}, layer {mid}", round(float(c[mid]), 4),
              text=f"max over layers {float(c.max()):.3f} (L{int(c.argmax())})")
    print(f"  cosines between the directions (layer {mid} of {n_layers}; max over layers):")
    print(_table(["directions", f"cosine at layer {mid}", "max over layers (layer)"],
                 [[k, f"{float(c[mid]):+.3f}", f"{float(c.max()):+.3f} (L{int(c.argmax())})"] for k, c in cos_rows.items()]))
    return notes.result()
