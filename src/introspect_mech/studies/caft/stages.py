"""CAFT's runner stages, in order: `finetune` (the plain finetune; run 2's judge gate first), `components`
(generic answers, activation differences, PCA), `cards` (the component cards), `conditions` (run 2: the
finetunes with the picked and random-PC subspaces ablated, scored with base and plain; run 1 stops here on
purpose until a person picks) and `summary`.

The config's `pick` and `conditions` select work (`Study.unbound`): the stage records are keyed by them, so
run 2 in run 1's directory runs every stage again, each finding its files (finetune, components, cards) done.
What later stages need from earlier ones (the models, the records, the judge) is kept in this process
(`setup(ctx)`) and rebuilt from the run directory by a stage resumed in a new process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ... import load_model
from ... import runs as _runs
from ...data.specs import load_records
from ...evals import judge_record as _jr
from ...evals import paired_preference, sample
from ..common.em_eval import run_em_eval
from ...evals.judge_spec import JudgeOptions
from ...finetune import preset as train_preset
from ...runs import json_sha256
from ...steering.train_time import caft_subspace
from ...viz import export_dashboard
from .. import runner
from ..common.em_questions import em_questions
from .components import (
    activation_differences, component_cards, generic_prompts, in_domain_logprob, load_components, parse_picks, pca,
    picked_subspace, preset_layers, random_pc_subspace, save_components, summarize, write_cards,
)

STATE = "_caft"  # ctx.resources key: what this process already loaded


def setup(ctx: runner.Context) -> dict[str, Any]:
    """The base model, the judge (run 2, gated on its validation before any finetuning), the layers, the
    training and held-out records and the finetune config: this process's, or built now.

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    st = ctx.resources.setdefault(STATE, {})
    if st:
        return st
    cfg = ctx.config
    judge_opts = ctx.resources.get("judge") or JudgeOptions()
    load = lambda adapter=None: load_model(cfg.model, adapter=adapter, dtype=torch.float32)  # noqa: E731
    base = load()
    # the one gate, before any finetuning: run 2's judged EM rate only from a judge with a passing validation
    scorer = judge_opts.build(model=base if cfg.model is None else None) if cfg.pick is not None else None
    jrec = _jr.gate(scorer, what="a judged EM rate (CAFT run 2)", allow_unvalidated=cfg.allow_unvalidated_judge)
    records = load_records(cfg.data, data_dir=ctx.resources.get("data_dir"))
    st.update(judge_opts=judge_opts, load=load, base=base, scorer=scorer, jrec=jrec, records=records,
              layers=preset_layers(base.n_layers, cfg.layer_fractions), train_recs=records[: cfg.n_train],
              heldout=[r["messages"] for r in records[len(records) - cfg.n_heldout:]],  # never trained on
              tcfg=train_preset("em", lr=cfg.lr, batch_size=4, warmup_steps=2, max_seq_len=384, max_steps=cfg.steps,
                                seed=cfg.seed, epochs=100),
              plain_dir=ctx.out / "finetunes" / "plain")
    return st


def _finetuned(ctx: runner.Context) -> Any:
    st = setup(ctx)
    if "ft" not in st:
        st["ft"] = st["load"](st["plain_dir"] / "adapter")
    return st["ft"]


def _conversations(ctx: runner.Context) -> list[list[dict]]:
    """The generic prompts with the plain finetune's answers (sampled once, logged in `generic_answers.jsonl`)."""
    st = setup(ctx)
    if "convs" not in st:
        cfg = ctx.config
        prompts = [{"id": str(i), "messages": m}
                   for i, m in enumerate(generic_prompts(cfg.n_prompts, ctx.resources.get("data_dir")))]
        rows = sample(_finetuned(ctx), prompts, n=1, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                      out=ctx.out / "generic_answers.jsonl")
        st["convs"] = [r["messages"] + [{"role": "assistant", "content": r["response"]}]
                       for r in rows if r["response"].strip()]
    return st["convs"]


def finetune_stage(ctx: runner.Context) -> dict[str, Any]:
    """The manifest and the plain finetune (no intervention).

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    from ...finetune import train  # resolved at call time (tests replace it)

    cfg, st = ctx.config, setup(ctx)
    records, judge_opts = st["records"], st["judge_opts"]
    ctx.run_dir.write_manifest(
        title=f"CAFT on {cfg.data}", model=st["base"].name, preset=ctx.resources.get("preset_name"), seed=cfg.seed,
        layers=st["layers"], data={"train": cfg.data, "train_ids": list(range(cfg.n_train)),
                                   "heldout_ids": list(range(len(records) - cfg.n_heldout, len(records))),
                                   "train_sha256": json_sha256([r["messages"] for r in st["train_recs"]])},
        judge=judge_opts.judge if judge_opts.judge != "none" else "none: judge-free OOD proxy (paired preference)",
        judge_validation=st["jrec"])
    plain_dir = st["plain_dir"]
    if not (plain_dir / "adapter" / "complete").exists():
        train(st["load"](), st["train_recs"], st["tcfg"], plain_dir)
    return {"plain": str(plain_dir)}


def components_stage(ctx: runner.Context) -> dict[str, Any]:
    """Generic answers of the plain finetune, per-token activation differences (finetuned - base), their PCA.

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    st = setup(ctx)
    comp_file = ctx.out / "components.safetensors"
    convs = _conversations(ctx)
    if not comp_file.exists():
        deltas = activation_differences(st["base"], _finetuned(ctx), convs, st["layers"])
        save_components(comp_file, {l: pca(x, ctx.config.n_components) for l, x in deltas.items()})
    return {"components": str(comp_file), "layers": st["layers"], "n_conversations": len(convs)}


def cards_stage(ctx: runner.Context) -> dict[str, Any]:
    """One card per component: top / bottom activating examples of the base model and logit-lens tokens.

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    cfg, st = ctx.config, setup(ctx)
    cards_file = ctx.out / "caft_components.jsonl"
    if not cards_file.exists():
        texts = _conversations(ctx) + st["heldout"]  # interpretation texts (the paper: pretraining text; see docs)
        pcs = load_components(ctx.out / "components.safetensors")
        write_cards(ctx.out, component_cards(st["base"], pcs, texts, n_top=cfg.n_top_examples,
                                             n_tokens=cfg.n_logit_tokens))
    return {"cards": str(cards_file)}


def conditions_stage(ctx: runner.Context) -> Any:
    """Run 2: base, plain, CAFT (picked subspace ablated while finetuning) and random-PC controls, one row each
    (`caft_results.jsonl`, keyed by condition and pick). Run 1 (no pick) stops here until a person picks.

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    from ...finetune import train  # resolved at call time (tests replace it)

    cfg, out, st = ctx.config, ctx.out, setup(ctx)
    cards_file = out / "caft_components.jsonl"
    if cfg.pick is None:
        return runner.NotDone({"dashboard": str(export_dashboard(out).resolve())})
    pcs = load_components(out / "components.safetensors")
    picks = parse_picks(cfg.pick)
    chosen = picked_subspace(pcs, picks)
    cards = [json.loads(l) for l in cards_file.read_text().splitlines()]
    for c in cards:
        c["picked"] = c["component"] in picks.get(c["layer"], [])
    write_cards(out, cards)
    ctx.run_dir.write_manifest(picks={str(k): v for k, v in picks.items()})
    log = ctx.log("caft_results.jsonl", ("condition", "pick"))
    done = {r["condition"]: r for r in log.rows() if r.get("pick") == cfg.pick}
    conds: dict[str, Any] = {"base": None, "plain": st["plain_dir"], "caft": chosen}
    for i in range(cfg.n_random):  # the control: random PCs of the same PCA (the paper's), not isotropic noise
        conds[f"random_{i}"] = random_pc_subspace(pcs, picks, seed=cfg.seed + 1 + i)
    only = set(cfg.conditions) if cfg.conditions else set(conds)
    load, scorer, heldout = st["load"], st["scorer"], st["heldout"]
    for name, spec in conds.items():
        if name in done or name not in only:
            continue
        if name == "base":
            m = st["base"]
        elif name == "plain":
            m = _finetuned(ctx)
        else:
            fdir = out / "finetunes" / f"{name}_{json_sha256(cfg.pick)[:8]}"
            m = load()
            if not (fdir / "adapter" / "complete").exists():
                train(m, st["train_recs"], st["tcfg"], fdir, intervention=caft_subspace(m, spec))
            else:
                m = load(fdir / "adapter")
        row = {"condition": name, "pick": cfg.pick, "in_domain": in_domain_logprob(m, heldout),
               "ood": paired_preference(m, seed=cfg.seed)["mean_diff"]["value"],
               "ood_metric": "PROXY: paired-preference mean diff, misaligned - aligned (nats/token)"}
        if scorer is not None:
            rep = run_em_eval(m, out / "em" / name, judge=scorer, n=2, max_new_tokens=cfg.max_new_tokens,
                              seed=cfg.seed, question_ids=[q.id for q in em_questions()], judge_free=False)["report"]
            row["em_rate_judged"] = rep["overall"]["em_rate"]
            row["n_judged_valid"] = rep["overall"]["n_valid"]
            row.update(_jr.fields(st["jrec"]))  # the judge's validation line and label beside the judged rate
        log.append(row)
        done[name] = row
        print(json.dumps(row))
    done = {r["condition"]: r for r in log.rows() if r.get("pick") == cfg.pick}
    result = {"rows": done, "todo": [c for c in conds if c not in done], "conditions": list(conds)}
    return runner.NotDone(result) if result["todo"] else result  # conditions left: a rerun continues


def summary_stage(ctx: runner.Context) -> dict[str, Any]:
    """In-domain learning kept and the OOD proxy change per condition (`caft_summary.json`, `summary.jsonl`).

    Args:
        ctx: the run's context (config, run directory, resources, earlier stages' results).
    """
    out, res = ctx.out, ctx.results["conditions"]
    summ = summarize([res["rows"][c] for c in res["conditions"]])
    _runs.write_json(out / "caft_summary.json", summ, indent=2)
    key_rows = [{"name": "in-domain held-out log-prob/token learned by the plain finetune",
                 "value": summ["in_domain_learned_by_plain"]},
                {"name": "OOD proxy shift by the plain finetune (nats/token)", "value": summ["ood_shift_by_plain"]}]
    for k in ("caft", "random_mean"):
        key_rows.append({"name": f"{k}: in-domain learning kept", "value": summ[k]["in_domain_kept"]})
        key_rows.append({"name": f"{k}: OOD proxy change vs plain", "value": summ[k]["ood_change_vs_plain"],
                         "note": "proxy (paired preference), not an EM rate"})
    _runs.write_jsonl(out / "summary.jsonl", key_rows)
    return {"summary": summ, "dashboard": str(export_dashboard(out).resolve())}


def outcome(result: runner.RunResult) -> dict[str, Any]:
    """What a CAFT run holds now, in the form `run` returned before the stages: {"cards": path of
    caft_components.jsonl, "dashboard": path of the dashboard (None while run 2 has conditions left), "rows":
    {condition: result row} (run 2), "todo": conditions still to run, "summary": the `summarize` dict or None}.

    Args:
        result: a `runner.RunResult` of `run`.

    Returns:
        The dict above.
    """
    r = result.results
    cond = r.get("conditions") or {}
    dash = (r.get("summary") or {}).get("dashboard") or cond.get("dashboard")
    return {"cards": result.out / "caft_components.jsonl", "dashboard": Path(dash) if dash else None,
            "rows": cond.get("rows", {}), "todo": cond.get("todo", []), "summary": (r.get("summary") or {}).get("summary")}
