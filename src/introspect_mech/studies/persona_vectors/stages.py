"""Persona vectors' stages, in order: `extract` (always), `probes`, `select`, `screen`, `finetune`, `controls`, `shift`,
`report`.

The config's `stages` field names which of probes / select / screen / finetune / controls / shift do their work (it selects
work, so it is not bound: the runner keys the stage records by it). Each stage's summary lines are its result
(`notes`); `report` writes them, in stage order, to `summary.jsonl` and exports the dashboard. A stage run in a
new process reads what earlier ones left: the direction (`<extract dir>/direction`), the answers of the
extraction (`extract` resumes from its files), the chosen layer and the checkpoints' expression (stage results),
the finetunes (`finetunes/<condition>/checkpoints`).
"""

from __future__ import annotations

import json
import random
from typing import Any, Callable, Literal

import torch

from ... import runs as _runs
from ...activations import cache
from ...data.specs import load_records
from ...direction import Direction
from ...evals import judge_record as _jr
from ...evals import paired_preference
from ...finetune import preset as train_preset
from ...models import load_model
from ...probes import layer_sweep
from ...runs import JsonlLog
from ...sae.diff import detector_auroc
from ...stats import bootstrap_diff
from ...steering import random_like
from ...viz import export_dashboard
from .. import runner
from ..common.medical_split import medical_advice_pairs
from ..common.persona import load_trait
from .config import UPSTREAM_POSITIONS, PVConfig
from .measures import (extract, finetune_and_express, screen_dataset, select_layer, shift_correlation,
                       shift_correlation_note, steering_layer_plan, trait_expression)

CONDITIONS = ("plain", "preventative")  # the finetunes: without and with preventative steering


class Notes:
    """A stage's summary lines (`summary.jsonl` rows), echoed as they are measured; a judged line carries its
    judge's validation record (`evals.judge_record`).

    Args:
        jrec: the judge's record (from the gate).
        echo: called with each line (None: silent).
    """

    def __init__(self, jrec: Any, echo: Callable[[str], Any] | None):
        self.jrec, self.echo = jrec, echo
        self.rows: list[Any] = []

    def __call__(self, name: str, value: Any, est: dict | None = None, text: str = "", judged: bool = False) -> None:
        if judged:  # a number the judge produced: its validation record travels with it
            name = _jr.tag(self.jrec) + name
        row = {"name": name, "value": value if est is None else est["value"], "note": text}
        if judged:
            row.update(_jr.fields(self.jrec))
        if est is not None:
            row.update(ci_lo=est["lo"], ci_hi=est["hi"], n=est["n"])
        self.rows.append(row)
        if self.echo is not None:
            self.echo(f"{name}: {row['value']}" + (f" [{est['lo']}, {est['hi']}]" if est else "")
                      + (f"  ({text})" if text else ""))


def _setup(ctx: runner.Context) -> dict[str, Any]:
    """Built once per process: the base model (the `model=` resource, else loaded in float32), the layer plan and
    the judge gate -- no judged number (pair filter, trait scores, layer selection) from a judge without a passing
    validation unless allowed; each judged line and row is then labelled "unvalidated judge"."""
    memo = ctx.resources.setdefault("_pv", {})
    if not memo:
        cfg: PVConfig = ctx.config
        judge = ctx.resources.get("judge")
        memo["jrec"] = _jr.gate(judge, what="judged trait scores (persona pair filter, trait expression, layer selection)",
                                allow_unvalidated=cfg.allow_unvalidated_judge)
        model = ctx.resources.get("model")
        memo["model"] = model if model is not None else load_model(cfg.model, dtype=torch.float32, device=cfg.device)
        memo["plan"] = steering_layer_plan(cfg, memo["model"].n_layers, have_judge=judge is not None)
        memo["echo"] = ctx.resources["echo"] if "echo" in ctx.resources else (print if ctx.progress else None)
    return memo


def _notes(ctx: runner.Context) -> Notes:
    memo = _setup(ctx)
    return Notes(memo["jrec"], memo["echo"])


def _direction(ctx: runner.Context) -> Direction:
    return Direction.load(ctx.out / ctx.results["extract"]["dir"] / "direction")


def _extract(ctx: runner.Context) -> dict[str, Any]:
    """Stage 1: the persona direction (trait judge + upstream filter when a judge is given, else the judge-free proxy
    filter, said so in the manifest); a judge that keeps < 2 pairs falls back to the proxy filter, said so."""
    memo = _setup(ctx)
    cfg, out, judge, note = ctx.config, ctx.out, ctx.resources.get("judge"), _notes(ctx)
    model = memo["model"]
    ctx.run_dir.write_manifest(
        title=f"Persona vectors: {cfg.trait}", model=model.name, preset=ctx.resources.get("preset_name"), seed=cfg.seed,
        trait=cfg.trait, judge=judge.describe() if judge else "none: judge-free proxy filter and proxy expression",
        judge_validation=memo["jrec"], coef=cfg.coef, steering_positions=UPSTREAM_POSITIONS, stages=sorted(cfg.stages))
    dd = ctx.resources.get("data_dir")
    where = "extract"
    try:
        ex = extract(model, cfg.trait, judge=judge, preset=cfg, out=out / where, seed=cfg.seed,
                     max_heldout=cfg.max_heldout, data_dir=dd)
    except RuntimeError as e:  # the judge kept < 2 pairs (e.g. it abstained): say so, use the proxy filter
        if judge is None:
            raise
        kept = sum(1 for r in (out / "extract" / "pairs.jsonl").read_text().splitlines() if json.loads(r).get("kept")) // 2
        scored = [json.loads(r) for r in (out / "extract" / "judge_scores.jsonl").read_text().splitlines()]
        note("judge filter: pairs kept", kept, text=f"{e}; judge abstained (trait None) on "
             f"{sum(r['trait'] is None for r in scored)} of {len(scored)} answers; falling back to the judge-free proxy filter", judged=True)
        where = "extract_proxy"
        ex = extract(model, cfg.trait, judge=None, preset=cfg, out=out / where, seed=cfg.seed,
                     max_heldout=cfg.max_heldout, data_dir=dd)
    memo["extracted"] = ex
    d = ex.direction
    note("pairs kept by the filter", len(ex.kept), text=f"of {len(ex.rows) // 2}; filter {d.meta['filter']}",
         judged=d.meta.get("filter") == "judge")
    return {"dir": where, "filter": d.meta["filter"], "notes": note.rows}


def _probes(ctx: runner.Context) -> dict[str, Any]:
    """Stage 2 ("probes"): a linear probe of pos vs neg answers at every block (`probe_layers.jsonl`)."""
    cfg, out, note = ctx.config, ctx.out, _notes(ctx)
    if "probes" not in cfg.stages:
        return {"notes": []}
    memo = _setup(ctx)
    model = memo["model"]
    ex = memo.get("extracted")
    if ex is None:  # a new process: the extraction resumes from its files (no answer is sampled again)
        proxy = ctx.results["extract"]["dir"] == "extract_proxy"
        ex = extract(model, cfg.trait, judge=None if proxy else ctx.resources.get("judge"), preset=cfg,
                     out=out / ctx.results["extract"]["dir"], seed=cfg.seed, max_heldout=cfg.max_heldout,
                     data_dir=ctx.resources.get("data_dir"))
    rows = [r for r in ex.rows if r["response"].strip()]
    x = cache(model, [[{"role": "system", "content": r["system"]}, {"role": "user", "content": r["question"]},
                       {"role": "assistant", "content": r["response"]}] for r in rows], progress=False)
    sw = layer_sweep(x, [int(r["side"] == "pos") for r in rows], layers=list(range(model.n_layers)), seed=cfg.seed)
    _runs.write_text(out / "probe_layers.jsonl", "".join(json.dumps({"probe": f"{cfg.trait}: pos vs neg answers", "layer": l,
                                                                **q.as_dict()}) + "\n" for l, q in zip(sw.layers, sw.probes)))
    bl, b = sw.best()
    note("best probe layer (pos vs neg answers)", bl, text=f"CV accuracy {b.accuracy:.3f}")
    return {"notes": note.rows}


def _expr_kw(cfg: PVConfig) -> dict[str, Any]:
    return dict(n_questions=cfg.n_questions, n_per_question=cfg.n_per_question, max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature, seed=cfg.seed)


def _select(ctx: runner.Context) -> dict[str, Any]:
    """Stage 3: the steering layer -- `--layer` or the middle block, or ("select", with a judge) the layer with the
    largest judged trait expression among `layers` whose answers stay coherent (mean coherence >= 50)."""
    memo = _setup(ctx)
    cfg, out, judge, note, plan = ctx.config, ctx.out, ctx.resources.get("judge"), _notes(ctx), memo["plan"]
    layer = plan["layer"]
    note("steering layer", layer, text=plan["reason"])
    if "select" in cfg.stages and plan["select"]:
        model, dd = memo["model"], ctx.resources.get("data_dir")
        base_expr = trait_expression(model, cfg.trait, judge, out=out / "expression_base", data_dir=dd, **_expr_kw(cfg))
        note("trait expression, base (judged)", None, base_expr["trait"],
             f"{base_expr['n_trait_none']} of {base_expr['n']} abstained", judged=True)
        sel = select_layer(model, cfg.trait, _direction(ctx), judge, layers=plan["candidates"], coef=cfg.coef, out=out,
                           data_dir=dd, **_expr_kw(cfg))
        for l, r in sel["per_layer"].items():
            note(f"steered L{l} x{cfg.coef}: trait (judged)", None, r["trait"],
                 f"coherence {r['coherence']['value']}; {r['n_trait_none']} abstained", judged=True)
        note("selected layer", sel["selected_layer"], text="max trait with mean coherence >= 50; None: no layer qualified",
             judged=True)
        if sel["selected_layer"] is not None:
            layer = sel["selected_layer"]
    return {"layer": layer, "notes": note.rows}


def _screen(ctx: runner.Context) -> dict[str, Any]:
    """Stage 4 ("screen"): projection-difference screening of a planted mix of bad and good medical advice."""
    cfg, out, note = ctx.config, ctx.out, _notes(ctx)
    if "screen" not in cfg.stages:
        return {"notes": []}
    layer = ctx.results["select"]["layer"]
    bad, good = medical_advice_pairs(cfg.n_screen, seed=cfg.seed, data_dir=ctx.resources.get("data_dir"))
    recs = [{"messages": m, "planted": 1} for m in bad] + [{"messages": m, "planted": 0} for m in good]
    random.Random(cfg.seed).shuffle(recs)
    rows = screen_dataset(_setup(ctx)["model"], _direction(ctx), recs, layer=layer, max_new_tokens=cfg.max_new_tokens,
                          seed=cfg.seed, out=out / "screen")
    lab = [r["planted"] for r in recs]
    au_d = detector_auroc([r["delta"] for r in rows], lab)
    au_raw = detector_auroc([r["proj_dataset"] for r in rows], lab)
    top = sum(recs[r["index"]]["planted"] for r in rows if r["rank"] < cfg.n_screen)
    note(f"screening L{layer}: AUROC of projection difference, bad vs good advice", round(au_d, 4),
         text=f"raw projection AUROC {au_raw:.4f}; bad-advice records among the top {cfg.n_screen}: {top}")
    return {"notes": note.rows}


def _finetune(ctx: runner.Context) -> dict[str, Any]:
    """Stage 5 ("finetune" or "shift"): finetune on bad medical advice without and with preventative steering, with
    checkpoints, and measure trait expression at each checkpoint (judged, or the labelled proxy: paired
    preference on the project's EM items): the mean (`expression`) and the values per unit (`units`)."""
    cfg, out, judge, note = ctx.config, ctx.out, ctx.resources.get("judge"), _notes(ctx)
    if "finetune" not in cfg.stages and "shift" not in cfg.stages:
        return {"expression": {}, "notes": []}
    layer, dd = ctx.results["select"]["layer"], ctx.resources.get("data_dir")
    d = _direction(ctx)
    expr: dict[str, Any] = {}
    units: dict[str, list[Any]] = {}  # each checkpoint's values per unit (the controls stage compares them)
    for cond, prev in zip(CONDITIONS, (None, {"direction": d, "layer": layer, "coef": cfg.coef})):
        fdir = _finetuned(ctx, cond, prev)
        for ck in sorted((fdir / "checkpoints").glob("step_*")):
            name = f"{cond}/{ck.name}"
            m = load_model(cfg.model, adapter=ck / "adapter", dtype=torch.float32, device=cfg.device)
            expr[name], units[name], _ = _expression(cfg, judge, m, out / "expression" / name, dd)
            del m
    label = _label(judge)
    for cond in CONDITIONS:
        last = sorted(k for k in expr if k.startswith(cond))[-1]
        note(f"{cond} finetune, final: {label}", round(expr[last], 4) if expr[last] is not None else None,
             judged=judge is not None)
    return {"expression": expr, "units": units, "notes": note.rows}


def _finetuned(ctx: runner.Context, cond: str, preventative: dict[str, Any] | None) -> Any:
    """The directory of finetune `cond` on bad medical advice (`finetunes/<cond>`), trained first if it is not
    finished; `preventative`: the steering during training (None: a plain finetune)."""
    cfg = ctx.config
    fdir = ctx.out / "finetunes" / cond
    if not (fdir / "adapter" / "complete").exists():
        records = load_records("bad_medical_advice", data_dir=ctx.resources.get("data_dir"))[: cfg.n_train]
        tcfg = train_preset("em", lr=2e-4, batch_size=4, warmup_steps=2, max_seq_len=384, max_steps=cfg.steps,
                            save_every=cfg.save_every, seed=cfg.seed, epochs=100)
        finetune_and_express(lambda: load_model(cfg.model, dtype=torch.float32, device=cfg.device), records, tcfg,
                             fdir, evaluate=lambda m: {}, preventative=preventative)
    return fdir


def _expression(cfg: PVConfig, judge: Any, model: Any, out: Any, data_dir: Any = None) -> tuple[Any, list[Any], str]:
    """`model`'s trait expression: (the mean, one value per unit in a fixed unit order, the unit). With a judge: the
    judged trait score (mean over the scored answers; per unit, the mean of each eval question; answers in the run
    directory `out`, resumable); without: the proxy's mean difference and its per-item differences on the project's
    EM items."""
    if judge is None:
        pp = paired_preference(model, seed=cfg.seed)
        return pp["mean_diff"]["value"], [r["diff"] for r in pp["rows"]], "item"
    te = trait_expression(model, cfg.trait, judge, out=out, data_dir=data_dir, progress=False, **_expr_kw(cfg))
    by_q: dict[int, list[float]] = {}
    for r in te["rows"]:
        if r.get("trait") is not None:
            by_q.setdefault(int(r["prompt_id"]), []).append(float(r["trait"]))
    n_q = len({int(r["prompt_id"]) for r in te["rows"]})
    return (te["trait"]["value"], [sum(by_q[q]) / len(by_q[q]) if q in by_q else None for q in range(n_q)],
            "question")


def _controls(ctx: runner.Context) -> dict[str, Any]:
    """Stage ("controls"; beyond the paper): is preventative steering's effect the persona direction's? The same
    finetune with `random_controls` norm-matched random directions (`steering.random_like`, seeds seed+1, ...) in
    the direction's place, and the base model; each model's expression (judged per eval question, or the labelled
    proxy per item) at the final checkpoint, compared paired over the units (`controls.json`)."""
    cfg, out, judge, note = ctx.config, ctx.out, ctx.resources.get("judge"), _notes(ctx)
    if "controls" not in cfg.stages or not ({"finetune", "shift"} & set(cfg.stages)):
        return {"notes": []}
    layer, d = ctx.results["select"]["layer"], _direction(ctx)
    vals: dict[str, list[Any]] = {}
    dd = ctx.resources.get("data_dir")
    _, vals["base"], unit = _expression(cfg, judge, _setup(ctx)["model"], out / "expression_base", dd)
    measured = ctx.results["finetune"].get("units", {})  # the plain and preventative checkpoints' values
    randoms = [f"random{k}" for k in range(1, cfg.random_controls + 1)]
    for k, cond in enumerate(CONDITIONS + tuple(randoms)):
        prev = None if cond == "plain" else {"direction": d if cond == "preventative" else
                                             random_like(d, seed=cfg.seed + k - 1), "layer": layer, "coef": cfg.coef}
        last = sorted((_finetuned(ctx, cond, prev) / "checkpoints").glob("step_*"))[-1]
        name = f"{cond}/{last.name}"
        if name not in measured:  # a random-direction finetune (or a finetune stage recorded before "units")
            m = load_model(cfg.model, adapter=last / "adapter", dtype=torch.float32, device=cfg.device)
            measured[name] = _expression(cfg, judge, m, out / "expression" / name, dd)[1]
            del m
        vals[cond] = measured[name]
    if randoms:  # the random directions' mean per unit (None where any is missing)
        vals["random (mean)"] = [None if any(vals[c][i] is None for c in randoms) else
                                 sum(vals[c][i] for c in randoms) / len(randoms) for i in range(len(vals["base"]))]
    measure: Literal["judged", "proxy"] = "judged" if judge is not None else "proxy"
    pairs = [("plain", "base"), ("preventative", "plain")]
    if randoms:
        pairs += [("random (mean)", "plain"), ("preventative", "random (mean)")]
    comps = {f"{a} - {b}": bootstrap_diff(vals[a], vals[b], paired=True, seed=cfg.seed, unit=unit,
                                          measure=measure).to_dict() for a, b in pairs}
    _runs.write_json(out / "controls.json", {"unit": unit, "measure": measure, "values": vals, "comparisons": comps,
                                             "random_seeds": [cfg.seed + k for k in range(1, len(randoms) + 1)]},
                     indent=2)
    for name, est in comps.items():
        note(f"{_label(judge)}, final checkpoints: {name}", None, est,
             text=f"paired over {est['n']} {unit}s; random = norm-matched random directions in the persona "
                  f"direction's place (preventative steering at L{layer} x{cfg.coef})", judged=judge is not None)
    return {"comparisons": comps, "notes": note.rows}


def _checkpoint(cfg: PVConfig, out: Any, name: str) -> Callable[[], Any]:
    """A loader of checkpoint `name` ("<condition>/step_<n>") of the finetunes."""
    cond, step = name.split("/")
    return lambda: load_model(cfg.model, adapter=out / "finetunes" / cond / "checkpoints" / step / "adapter",
                              dtype=torch.float32, device=cfg.device)


def _label(judge: Any) -> str:
    return "judged trait score" if judge is not None else "PROXY: paired-preference mean diff (nats/token)"


def _shift(ctx: runner.Context) -> dict[str, Any]:
    """Stage 6 ("finetune" or "shift"): the finetuning shift along the direction at the steering layer (mean
    activation at the last prompt token of the eval prompts, finetuned minus base) against trait expression across
    the checkpoints (`shift_correlation.json`; paper: r = 0.76-0.97, judged)."""
    cfg, out, judge, note = ctx.config, ctx.out, ctx.resources.get("judge"), _notes(ctx)
    if "finetune" not in cfg.stages and "shift" not in cfg.stages:
        return {"notes": []}
    layer = ctx.results["select"]["layer"]
    prompts = [[{"role": "user", "content": q}]
               for q in load_trait(cfg.trait, ctx.resources.get("data_dir"), split="eval")["questions"]]
    ok = {k: v for k, v in ctx.results["finetune"]["expression"].items() if v is not None}
    load = {k: _checkpoint(cfg, out, k) for k in ok}  # loaded one at a time
    sc = shift_correlation(_setup(ctx)["model"], load, _direction(ctx), layer=layer, prompts=prompts, expression=ok)
    _runs.write_json(out / "shift_correlation.json", sc, indent=2)
    label = _label(judge)
    for r in sc["rows"]:
        note(f"shift along the direction at L{layer}: {r['model']}", round(r["shift"], 4),
             text=f"{label} {r['expression']:.4f}", judged=judge is not None)
    note("Pearson r, finetuning shift vs expression across checkpoints", round(sc["pearson_r"], 4),
         text=shift_correlation_note(sc["n"], judged=judge is not None), judged=judge is not None)
    return {"pearson_r": sc["pearson_r"], "n": sc["n"], "notes": note.rows}


def _report(ctx: runner.Context) -> dict[str, Any]:
    """Stage 7: every stage's summary lines, in stage order, to `summary.jsonl`; the dashboard.

    Returns:
        {"summary": the rows of summary.jsonl, "dashboard": its path}.
    """
    rows = [r for s in ctx.study.stages if s.name != "report" for r in (ctx.results.get(s.name) or {}).get("notes", [])]
    _runs.write_jsonl(ctx.out / "summary.jsonl", rows)
    return {"summary": JsonlLog(ctx.out / "summary.jsonl").read(), "dashboard": export_dashboard(ctx.out)}


STAGES = (
    runner.Stage("extract", _extract, "the persona direction (judge filter, or the judge-free proxy filter)"),
    runner.Stage("probes", _probes, "linear probes of pos vs neg answers by block"),
    runner.Stage("select", _select, "the steering layer (judged selection over the candidates, or the default)"),
    runner.Stage("screen", _screen, "projection-difference screening of a planted bad/good medical-advice mix"),
    runner.Stage("finetune", _finetune, "finetunes without / with preventative steering; expression per checkpoint"),
    runner.Stage("controls", _controls, "random-direction preventative finetunes and the base: paired comparisons"),
    runner.Stage("shift", _shift, "finetuning shift along the direction vs expression across checkpoints"),
    runner.Stage("report", _report, "summary.jsonl and the dashboard"),
)
